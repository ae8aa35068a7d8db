"""The test suite (``make test``); shared helpers in :mod:`tests.helpers`, fixtures in ``conftest.py``."""
