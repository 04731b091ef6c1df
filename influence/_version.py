"""The package version: the single source read by the build (``[tool.hatch.version]``) and ``lai --version``."""

__version__ = "0.1.0"
