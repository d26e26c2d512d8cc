"""Round trips with the transformers implementations of Mamba and Mamba-2, without network."""

import json

import pytest
import torch

import ssmlab
from ssmlab.interop import CheckpointError, load_pretrained

transformers = pytest.importorskip("transformers")


def _hf_model(kind):
    torch.manual_seed(0)
    if kind == "mamba":
        config = transformers.MambaConfig(vocab_size=64, hidden_size=32, state_size=8, num_hidden_layers=2,
                                          conv_kernel=4, expand=2, time_step_rank=3)
        return transformers.MambaForCausalLM(config).eval()
    config = transformers.Mamba2Config(vocab_size=64, hidden_size=32, state_size=8, num_hidden_layers=2, head_dim=16,
                                       n_groups=2, expand=2, num_heads=4, chunk_size=8, tie_word_embeddings=False)
    return transformers.Mamba2ForCausalLM(config).eval()


def _randomise(model):
    # Non-trivial norms and D, so that every mapped tensor matters to the logits.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith("norm_f.weight") or name.endswith(".D"):
                p.add_(torch.randn_like(p) * 0.3)


@pytest.mark.parametrize("kind", ["mamba", "mamba2"])
def test_transformers_checkpoint_loads_with_same_logits_and_generation(kind, tmp_path):
    hf = _hf_model(kind)
    _randomise(hf)
    hf.save_pretrained(tmp_path)
    ours = load_pretrained(tmp_path).eval()
    ids = torch.randint(0, 64, (2, 37))
    with torch.no_grad():
        want = hf(ids).logits
        got = ours(ids)
    assert (got - want).abs().max() < 1e-4
    prompt = ids[:1, :5]
    hf_tokens = hf.generate(prompt, max_new_tokens=8, do_sample=False, min_new_tokens=8)
    assert torch.equal(ours.generate(prompt, 8, temperature=0), hf_tokens)


@pytest.mark.parametrize("kind", ["mamba", "mamba2"])
def test_export_opens_in_transformers(kind, tmp_path):
    options = {"mamba": {"d_state": 8, "dt_rank": 2}, "mamba2": {"d_state": 8, "headdim": 16, "ngroups": 2,
                                                                 "chunk_size": 8}}[kind]
    torch.manual_seed(1)
    ours = ssmlab.create_model(kind, d_model=32, n_layers=2, vocab_size=50, mlp=False, mixer_options=options).eval()
    ours.save_pretrained(tmp_path)
    auto = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 50, (2, 21))
    with torch.no_grad():
        assert (auto(ids).logits - ours(ids)).abs().max() < 1e-4
    again = load_pretrained(tmp_path)
    with torch.no_grad():
        assert torch.equal(again(ids), ours(ids))


@pytest.mark.parametrize("kind", ["mamba", "mamba2"])
def test_mamba_ssm_format(kind, tmp_path):
    """The original mamba_ssm layout: backbone.embedding, ssm_cfg, pytorch_model.bin."""
    hf = _hf_model(kind)
    _randomise(hf)
    cfg = hf.config
    state = {k.replace("backbone.embeddings.", "backbone.embedding."): v for k, v in hf.state_dict().items()}
    ssm_cfg = {"d_state": cfg.state_size, "d_conv": cfg.conv_kernel, "expand": cfg.expand}
    if kind == "mamba":
        ssm_cfg["dt_rank"] = cfg.time_step_rank
    else:
        ssm_cfg.update(layer="Mamba2", headdim=cfg.head_dim, ngroups=cfg.n_groups, chunk_size=cfg.chunk_size)
    config = {"d_model": cfg.hidden_size, "n_layer": cfg.num_hidden_layers, "vocab_size": cfg.vocab_size,
              "ssm_cfg": ssm_cfg, "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True,
              "pad_vocab_size_multiple": 8, "tie_embeddings": cfg.tie_word_embeddings, "d_intermediate": 0}
    (tmp_path / "config.json").write_text(json.dumps(config))
    torch.save(state, tmp_path / "pytorch_model.bin")
    ours = load_pretrained(tmp_path)
    ids = torch.randint(0, 64, (1, 19))
    with torch.no_grad():
        assert (ours(ids) - hf(ids).logits).abs().max() < 1e-4


def test_bad_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        load_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(CheckpointError, match="neither a transformers Mamba/Mamba2 config"):
        load_pretrained(tmp_path)
    hf = _hf_model("mamba")
    hf.save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["state_size"] = 4  # weights no longer fit
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises((CheckpointError, RuntimeError), match="size mismatch|do not match"):
        load_pretrained(tmp_path / "m")
    with pytest.raises(CheckpointError, match="pure mamba or mamba2 stacks, not attention"):
        ssmlab.create_model("attention", d_model=16, n_layers=1, vocab_size=5).save_pretrained(tmp_path / "a",
                                                                                                format="hf")


def test_generate_command_with_and_without_tokenizer(tmp_path, capsys):
    from ssmlab.cli import main

    torch.manual_seed(0)
    model = ssmlab.create_model("mamba", d_model=16, n_layers=1, vocab_size=256, mlp=False,
                                mixer_options={"d_state": 4})
    model.save_pretrained(tmp_path)
    assert main(["generate", "--checkpoint", str(tmp_path), "--prompt", "hello", "--max-new-tokens", "5",
                 "--temperature", "0"]) == 0
    out = capsys.readouterr().out.rstrip("\n")
    want = model.generate(torch.tensor([list(b"hello")]), 5, temperature=0)[0].tolist()
    assert out == bytes(t for t in want).decode("utf-8", errors="replace")

    tokenizers = pytest.importorskip("tokenizers")
    vocab = {"[UNK]": 0, "hello": 1, "world": 2, **{f"w{i}": i for i in range(3, 256)}}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    assert main(["generate", "--checkpoint", str(tmp_path), "--prompt", "hello world", "--max-new-tokens", "3",
                 "--temperature", "0"]) == 0
    words = capsys.readouterr().out.split()
    assert words[:2] == ["hello", "world"] and len(words) == 5
