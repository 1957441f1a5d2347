"""The ``fcnseg`` command line."""
