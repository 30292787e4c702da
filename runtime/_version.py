"""Single source of the package version (read by pyproject and written into every artifact)."""

__version__ = "0.1.0"
