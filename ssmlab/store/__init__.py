"""Results store: every run's configs, metrics, curves and environment in one SQLite file."""

from ssmlab.store.sqlite import ResultStore, StoreError, default_path, environment_fingerprint
