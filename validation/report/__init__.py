"""Results and their reading: ``results`` (run folders, table formats, provenance), ``tables`` (typed CSV
tables), ``stats`` (intervals and paired tests), ``evidence`` / ``render`` / ``summary`` (a run's summary.json and
report.md), ``curation`` (the curated-training result tables). ``paper_figs`` draws from these."""
