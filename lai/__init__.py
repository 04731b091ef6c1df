"""The ``lai`` command (``lai.command``): it sits above ``influence``, ``theory``, ``validation`` and ``paper_figs``
and dispatches to them, so that none of those imports a package above it."""
