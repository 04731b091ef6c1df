"""Command-line modules: ``options`` (the conventions every ``lai`` command shares: --out, --seeds, --threads,
exit codes), ``run`` (``lai run``) and ``score`` (``lai score``). The other commands live with their experiment:
``validation.bench.command``, ``validation.curation.cli``, ``validation.suites.tightness``."""
