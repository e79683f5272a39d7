"""Importable helpers of the test suite (``from tests.support.<module> import ...``); the fixtures among
them are registered in ``tests/conftest.py``."""
