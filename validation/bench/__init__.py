"""``lai bench``, the cost benchmark of the estimators: ``command`` (the command), ``workloads`` (what is timed),
``measure`` (timing and peak memory), ``estimator_cost`` (one cost row per estimator and its baselines),
``floor`` / ``overhead`` / ``tasks`` (sections), ``realsize*`` and ``rows`` / ``isolate`` (real-size rows in a
guarded child process), ``targets`` (the bounds checked), ``report`` (bench.json / bench.txt) and
``verify_cost`` (what Ghost's verification costs); ``score`` is ``lai score`` (a whole data set scored with each
estimator: throughput and peak memory)."""
