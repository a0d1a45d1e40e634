"""Fixtures of the export tests: the persistent compilation cache of the training
tests and the ``slow`` marker."""

from tests.train.conftest import compilation_cache, pytest_configure, quiet_config  # noqa: F401
