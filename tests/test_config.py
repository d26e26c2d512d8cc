from dataclasses import dataclass, field

import pytest

from ssmlab.config import ConfigError, from_dict


@dataclass
class Example:
    steps: int = 10
    lr: float = 1e-3
    name: str = "x"
    dims: list[int] = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    limit: int | None = None


def test_builds_and_coerces():
    cfg = from_dict(Example, {"steps": 5, "lr": 1, "dims": [1, 2], "limit": None})
    assert cfg.steps == 5 and cfg.lr == 1.0 and isinstance(cfg.lr, float) and cfg.dims == [1, 2]


def test_unknown_key_lists_valid_ones():
    with pytest.raises(ConfigError, match="unknown key.*stepz.*valid keys: dims, extra, limit, lr, name, steps"):
        from_dict(Example, {"stepz": 3})


@pytest.mark.parametrize("key, value", [("steps", "ten"), ("steps", 1.5), ("steps", True), ("lr", "fast"),
                                        ("dims", 3), ("dims", ["a"]), ("limit", "none")])
def test_wrong_type(key, value):
    with pytest.raises(ConfigError, match=key):
        from_dict(Example, {key: value})
