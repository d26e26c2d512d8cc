"""Results store: every run's configs, metrics, curves and environment in one SQLite file."""

from ssmlab.store.sqlite import Claim, ResultStore, StoreError, config_hash, default_path, environment_fingerprint
