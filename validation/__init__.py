"""The experiments that validate the estimators, grouped by concern (imports point down this list only):

- ``cli``: the command-line conventions every ``lai`` command shares (``options``), ``lai run`` and ``lai score``
- ``bench``: ``lai bench``, the cost benchmark: workloads, timing, real-size rows, targets and its report
- ``report``: run folders and results tables, statistics, the run report, the curation result tables
- ``suites``: the experiments: bound, fidelity, cost, counterfactual, tightness, research-only LAI variants
- ``curation``: ``lai curate``, the curated-training comparison
- ``training``: the models and the training task (data, model, SGD loop) the suites score
- ``settings``: the run profiles and their checked configuration
- ``data``: the offline data sets and label/document noise

The ``lai`` command itself (``lai.command``) sits above this package and ``paper_figs``.
"""
