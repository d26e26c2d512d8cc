"""ssmlab's checkpoint format: every mixer and head saves and loads with identical outputs; the format rule."""

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import ssmlab
from ssmlab.interop import CheckpointError, load_pretrained

ROOT = Path(__file__).resolve().parents[2]
CAUSAL_MIXERS = [n for n in ssmlab.list_mixers() if ssmlab.registry.get("mixer", n).obj.causal]


from tests.mixers.variants import first_variant as _variant_options


def _train_a_little(model, inputs_fn, steps=2):
    """A few optimiser steps, so that the saved weights are not the seed's initial ones."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        model(inputs_fn()).float().square().mean().backward()
        opt.step()
    return model.eval()


def _lm(mixer, **options):
    torch.manual_seed(0)
    model = ssmlab.create_model(mixer, d_model=16, n_layers=2, vocab_size=13, **options)
    return _train_a_little(model, lambda: torch.randint(0, 13, (2, 9)))


@pytest.mark.parametrize("mixer", CAUSAL_MIXERS)
def test_every_causal_mixer_round_trips_with_identical_logits_and_greedy_tokens(mixer, tmp_path):
    model = _lm(mixer, mixer_options=_variant_options(mixer))
    model.save_pretrained(tmp_path, format="ssmlab")
    torch.manual_seed(123)  # a different initialisation: the loaded weights must be the saved ones
    loaded = load_pretrained(tmp_path)
    ids = torch.randint(0, 13, (2, 11))
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))
    assert torch.equal(loaded.generate(ids[:1, :4], 6, temperature=0), model.generate(ids[:1, :4], 6, temperature=0))
    assert loaded.config == model.config


HEADS = {
    "classify": ({"n_classes": 3, "vocab_size": 11, "pooling": "last"}, lambda: torch.randint(0, 11, (2, 10))),
    "classify-features": ({"n_classes": 3, "input_dim": 4}, lambda: torch.randn(2, 10, 4)),
    "forecast": ({"input_dim": 2, "horizon": 3}, lambda: torch.randn(2, 12, 2)),
    "retrieval": ({"vocab_size": 11, "head_hidden": 8}, lambda: torch.randint(0, 11, (2, 2, 10))),
    "vision": ({"image_shape": (8, 8), "in_channels": 1, "n_classes": 3, "patch_size": 2, "class_token": "middle",
                "scan": "random"}, lambda: torch.rand(2, 8, 8, 1)),
}


@pytest.mark.parametrize("head", sorted(HEADS))
@pytest.mark.parametrize("mixer", ["s4d", "bi-mamba"])
def test_every_head_round_trips(head, mixer, tmp_path):
    options, inputs = HEADS[head]
    torch.manual_seed(0)
    model = ssmlab.create_model(mixer, head=head.split("-")[0], d_model=16, n_layers=2, **options)
    model = _train_a_little(model, inputs)
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["format"] == "ssmlab"
    torch.manual_seed(1)
    loaded = load_pretrained(tmp_path)
    x = inputs()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert loaded.config == model.config and type(loaded) is type(model)


def test_grid_mixer_and_hybrid_with_per_mixer_options(tmp_path):
    torch.manual_seed(0)
    vision = ssmlab.create_model("cross-scan", head="vision", d_model=16, n_layers=1, image_shape=(4, 6),
                                 in_channels=2, n_classes=3, patch_size=2, mixer_options={"d_state": 4})
    vision.save_pretrained(tmp_path / "v")
    images = torch.rand(2, 4, 6, 2)
    with torch.no_grad():
        assert torch.equal(load_pretrained(tmp_path / "v")(images), vision.eval()(images))
    pattern = ssmlab.models.hybrid_pattern(4, 2, base="mamba2", other="retnet")
    torch.manual_seed(0)
    hybrid = ssmlab.create_model(pattern, d_model=16, n_layers=4, vocab_size=13, mlp=False, dropout=0.1,
                                 norm_eps=1e-6, mixer_options={"mamba2": {"d_state": 8, "headdim": 8, "chunk_size": 4},
                                                               "retnet": {"n_heads": 2}})
    hybrid = _train_a_little(hybrid, lambda: torch.randint(0, 13, (2, 9)))
    hybrid.save_pretrained(tmp_path / "h")
    config = json.loads((tmp_path / "h" / "config.json").read_text())
    assert config["model"]["mixer"] == pattern and config["model"]["mixer_options"]["retnet"] == {"n_heads": 2}
    loaded = load_pretrained(tmp_path / "h")
    ids = torch.randint(0, 13, (3, 10))
    with torch.no_grad():
        assert torch.equal(loaded(ids), hybrid(ids))
    assert loaded.backbone.layers[0].dropout.p == 0.1 and loaded.backbone.norm_f.eps == 1e-6


def test_tied_weights_are_stored_once_and_tied_again(tmp_path):
    tied = _lm("s4d")
    tied.save_pretrained(tmp_path / "tied")
    assert set(load_file(tmp_path / "tied" / "model.safetensors")) & {"lm_head.weight", "encoder.embed.weight"} \
        == {"encoder.embed.weight"}
    loaded = load_pretrained(tmp_path / "tied")
    assert loaded.lm_head.weight is loaded.encoder.embed.weight
    untied = _lm("s4d", tie_embeddings=False)
    untied.save_pretrained(tmp_path / "untied")
    loaded = load_pretrained(tmp_path / "untied")
    assert loaded.lm_head.weight is not loaded.encoder.embed.weight
    assert torch.equal(loaded.lm_head.weight, untied.lm_head.weight)


def test_dtypes_come_back(tmp_path):
    torch.manual_seed(0)
    built = ssmlab.create_model("mamba", d_model=16, n_layers=1, vocab_size=13, dtype=torch.bfloat16)
    a_log = built.backbone.layers[0].mixer.A_log
    a_log.data = a_log.data.float()  # mixed dtypes, as where SSM parameters stay float32 in a bf16 model
    built.save_pretrained(tmp_path / "bf16")
    loaded = load_pretrained(tmp_path / "bf16")
    assert {n: p.dtype for n, p in loaded.named_parameters()} == {n: p.dtype for n, p in built.named_parameters()}
    cast = ssmlab.create_model("s4d", d_model=16, n_layers=1, vocab_size=13).to(torch.float64)
    cast.save_pretrained(tmp_path / "f64")
    assert load_pretrained(tmp_path / "f64").encoder.embed.weight.dtype == torch.float64
    assert load_pretrained(tmp_path / "f64", dtype=torch.float32).encoder.embed.weight.dtype == torch.float32


def test_format_rule(tmp_path):
    """auto: transformers where it maps (pure mamba/mamba2 LM, no MLP), else ssmlab; hf asks; ssmlab always works."""
    plain = _lm("mamba", mlp=False, mixer_options={"d_state": 4})
    plain.save_pretrained(tmp_path / "auto-hf")
    config = json.loads((tmp_path / "auto-hf" / "config.json").read_text())
    assert config["model_type"] == "mamba" and "format" not in config
    assert config["ssmlab"]["model"] == plain.config
    with_mlp = _lm("mamba2", mixer_options={"d_state": 8, "headdim": 8, "chunk_size": 4})
    with_mlp.save_pretrained(tmp_path / "auto-ssmlab")
    assert json.loads((tmp_path / "auto-ssmlab" / "config.json").read_text())["format"] == "ssmlab"
    with pytest.raises(CheckpointError, match="^cannot save in the transformers format: .*no MLP blocks") as info:
        with_mlp.save_pretrained(tmp_path / "no", format="hf")
    assert "\n" not in str(info.value)
    with pytest.raises(CheckpointError, match="not a SequenceClassifier"):
        ssmlab.create_model("mamba", head="classify", d_model=16, n_layers=1, n_classes=2, vocab_size=5,
                            mlp=False).save_pretrained(tmp_path / "no", format="hf")
    plain.save_pretrained(tmp_path / "forced", format="ssmlab")
    ids = torch.randint(0, 13, (2, 7))
    with torch.no_grad():
        for name in ("auto-hf", "auto-ssmlab", "forced"):
            model = with_mlp if name == "auto-ssmlab" else plain
            assert torch.equal(load_pretrained(tmp_path / name)(ids), model(ids)), name
    # The options transformers has no field for come back from the "ssmlab" key.
    assert load_pretrained(tmp_path / "auto-hf").config["mixer_options"]["d_state"] == 4
    with pytest.raises(ValueError, match="format must be one of"):
        plain.save_pretrained(tmp_path / "x", format="onnx")


def test_task_and_tokeniser_are_recorded(tmp_path):
    model = ssmlab.create_model("s4d", d_model=16, n_layers=1, vocab_size=256)
    model.save_pretrained(tmp_path / "s", task="shakespeare-char")
    config = json.loads((tmp_path / "s" / "config.json").read_text())
    assert config["task"]["name"] == "shakespeare-char" and config["tokenizer"] == {"type": "bytes"}
    assert config["task"]["options"]["seq_len"] == 256
    loaded = load_pretrained(tmp_path / "s")
    assert loaded.task_info["tokenizer"] == {"type": "bytes"}
    loaded.save_pretrained(tmp_path / "again")  # kept when saved again
    assert json.loads((tmp_path / "again" / "config.json").read_text())["tokenizer"] == {"type": "bytes"}
    with pytest.raises(ValueError, match="vocab_size=128"):
        model.save_pretrained(tmp_path / "m", task="mqar")
    with pytest.raises(ValueError, match="'classify' head"):
        model.save_pretrained(tmp_path / "m", task="lra-text")


def test_loading_never_unpickles(tmp_path, monkeypatch):
    model = _lm("hyena")
    model.save_pretrained(tmp_path)

    def refuse(*args, **kwargs):
        raise AssertionError("unpickling while loading an ssmlab checkpoint")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    loaded = load_pretrained(tmp_path)
    ids = torch.randint(0, 13, (1, 5))
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]


def test_what_cannot_be_saved_or_loaded_says_why(tmp_path):
    from ssmlab.models import LanguageModel

    with pytest.raises(CheckpointError, match="not built by ssmlab.create_model"):
        LanguageModel("s4d", d_model=8, n_layers=1, vocab_size=5).save_pretrained(tmp_path / "a")
    odd = ssmlab.create_model("s4d", d_model=8, n_layers=1, vocab_size=5)
    odd.config["mixer_options"] = {"init": torch.nn.init.normal_}
    with pytest.raises(CheckpointError, match="model.mixer_options.init=.*no JSON form"):
        odd.save_pretrained(tmp_path / "b")
    good = ssmlab.create_model("s4d", d_model=8, n_layers=1, vocab_size=5)
    good.save_pretrained(tmp_path / "c")
    config = json.loads((tmp_path / "c" / "config.json").read_text())
    (tmp_path / "c" / "config.json").write_text(json.dumps({**config, "format_version": 99}))
    with pytest.raises(CheckpointError, match="newer ssmlab"):
        load_pretrained(tmp_path / "c")
    (tmp_path / "c" / "config.json").write_text(json.dumps({**config, "model": {**config["model"], "d_model": 4}}))
    with pytest.raises(CheckpointError, match="does not fit the model of its config.json"):
        load_pretrained(tmp_path / "c")


FRESH_PROCESS = """
import sys, torch, ssmlab
from safetensors.torch import save_file
out = {}
for i, path in enumerate(sys.argv[2:]):
    model = ssmlab.load_pretrained(path)
    ids = torch.arange(20).remainder(13)[None]
    with torch.no_grad():
        out[f"logits{i}"] = model(ids)
    out[f"greedy{i}"] = model.generate(ids[:, :5], 8, temperature=0)
save_file(out, sys.argv[1])
"""


def test_round_trip_in_a_fresh_process(tmp_path):
    """Save trained models here; load them in a new Python process: identical logits and greedy tokens."""
    models = [_lm("mamba2", mixer_options=_variant_options("mamba2")),
              _lm(["hyena", "attention"], mixer_options={"hyena": _variant_options("hyena")}),
              _lm("mamba", mlp=False, mixer_options={"d_state": 4})]  # the last in the transformers format
    paths = [str(tmp_path / f"m{i}") for i in range(len(models))]
    for model, path in zip(models, paths):
        model.save_pretrained(path)
    out = tmp_path / "out.safetensors"
    env = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(out), *paths], check=True, env=env, cwd=tmp_path,
                   timeout=300)
    got = load_file(out)
    ids = torch.arange(20).remainder(13)[None]
    for i, model in enumerate(models):
        with torch.no_grad():
            assert torch.equal(got[f"logits{i}"], model(ids)), i
        assert torch.equal(got[f"greedy{i}"], model.generate(ids[:, :5], 8, temperature=0)), i
