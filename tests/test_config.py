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


def test_unknown_options_list_the_valid_ones_before_anything_is_built():
    import ssmlab
    from ssmlab.tasks import create_task

    with pytest.raises(ConfigError, match=r"mixer 'attention': bad options: unknown n_head; valid options: .*n_heads"):
        ssmlab.create_mixer("attention", 16, n_head=2)
    with pytest.raises(ConfigError, match=r"task 'mqar': bad options: unknown colour; valid options: .*num_kv_pairs"):
        create_task("mqar", colour="red")
    with pytest.raises(ConfigError, match=r"mixer 'mamba': .*unknown d_stat; valid options: .*d_state"):
        ssmlab.create_mixer("cross-scan", 16, image_shape=(4, 4), mixer="mamba", d_stat=4)
    from ssmlab.experiment import RunSpec, check_options

    spec = RunSpec("s4d", "mqar", model_options={"poolin": "last"})
    with pytest.raises(ConfigError, match=r"model s4d: bad options: unknown poolin; valid options: .*mixer_options"):
        check_options(spec)
    with pytest.raises(ConfigError, match="task mqar sets vocab_size"):
        check_options(RunSpec("s4d", "mqar", model_options={"vocab_size": 5}))


def test_a_type_error_inside_a_constructor_is_not_called_a_bad_option(monkeypatch):
    import ssmlab
    from ssmlab.mixers.attention import Attention

    def broken(self, *args, **kwargs):
        raise TypeError("a bug inside the constructor")

    monkeypatch.setattr(Attention, "__init__", lambda self, d_model, *, n_heads=4: broken(self))
    with pytest.raises(TypeError, match="a bug inside the constructor"):
        ssmlab.create_mixer("attention", 16, n_heads=2)


@pytest.mark.parametrize("mixer, old, new", [("s4d", "disc", "discretization"), ("dss", "postact", "activation"),
                                             ("h3", "head_dim", "headdim"), ("mamba2", "head_dim", "headdim")])
def test_renamed_mixer_options_name_the_new_one(mixer, old, new):
    import ssmlab

    with pytest.raises(ConfigError, match=f"option {old} is now called {new}$"):
        ssmlab.create_mixer(mixer, 16, **{old: 2})
