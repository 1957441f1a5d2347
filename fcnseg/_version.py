"""The package version (one place: fcnseg.__version__, export metadata and provenance read it)."""
__version__ = "0.1.0"
