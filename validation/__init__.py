"""The experiments that validate the estimators, grouped by concern (imports point down this list only):

- ``suites``: ``lai run`` and the experiments: bound, fidelity, cost, counterfactual, ``lai tightness``,
  research-only LAI variants (``lai-fit``)
- ``bench``: ``lai bench`` (the cost benchmark: workloads, timing, real-size rows, targets, its report) and
  ``lai score`` (whole data sets scored: throughput and memory)
- ``curation``: ``lai curate``, the curated-training comparison
- ``report``: run folders and results tables, statistics, the run report, the curation result tables
- ``training``: the models and the training task (data, model, SGD loop) the suites score
- ``settings``: the run profiles and their checked configuration
- ``data``: the offline data sets and label/document noise
- ``options`` (module): the command-line conventions every ``lai`` command shares (--out, --seeds, exit codes)

The ``lai`` command itself (``lai.command``) sits above this package and ``paper_figs``.
"""
