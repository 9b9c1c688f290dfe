"""granite-storage 0.1.0's own tests, run against granite_storage.sync (see conftest.py)."""
