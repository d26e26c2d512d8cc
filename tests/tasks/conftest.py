import pytest


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    # Cached tasks write their splits to disk; keep that out of the user's home.
    monkeypatch.setenv("SSMLAB_CACHE", str(tmp_path / "cache"))
