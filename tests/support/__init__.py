"""Helpers the tests share (tiny nets, images, datasets, state dicts, the fault corpus); fixtures built
on them live in tests/conftest.py. Not test modules: nothing here is collected."""
