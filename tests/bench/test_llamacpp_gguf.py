"""``benchmarks/llamacpp.py`` writes ssmlab's Mamba language model as a GGUF file of llama.cpp's ``mamba``
architecture: read back with gguf's reader, it holds exactly the model's weights under llama.cpp's names,
shapes and per-tensor types. Needs only the pure-Python ``gguf`` package, not llama.cpp."""

import pytest
import torch

import ssmlab
from tests.utils import assert_close

gguf = pytest.importorskip("gguf")

from benchmarks.llamacpp import write_gguf  # noqa: E402


def _tiny():
    torch.manual_seed(0)
    return ssmlab.create_model("mamba", d_model=16, n_layers=2, vocab_size=64, mlp=False).eval()


def _expected(model) -> dict[str, torch.Tensor]:
    """llama.cpp's tensors, numpy layout, as its converter makes them from a transformers Mamba checkpoint."""
    out = {"token_embd.weight": model.encoder.embed.weight, "output_norm.weight": model.backbone.norm_f.weight}
    for i, layer in enumerate(model.backbone.layers):
        m = layer.mixer
        out.update({f"blk.{i}.attn_norm.weight": layer.norm1.weight, f"blk.{i}.ssm_in.weight": m.in_proj.weight,
                    f"blk.{i}.ssm_conv1d.weight": m.conv1d.weight[:, 0], f"blk.{i}.ssm_conv1d.bias": m.conv1d.bias,
                    f"blk.{i}.ssm_x.weight": m.x_proj.weight, f"blk.{i}.ssm_dt.weight": m.dt_proj.weight,
                    f"blk.{i}.ssm_dt.bias": m.dt_proj.bias, f"blk.{i}.ssm_a": -torch.exp(m.A_log),
                    f"blk.{i}.ssm_d": m.D, f"blk.{i}.ssm_out.weight": m.out_proj.weight})
    return {k: v.detach().float() for k, v in out.items()}


def _field(reader, key):
    field = reader.get_field(key)
    return field.contents() if field is not None else None


def _read(path) -> dict:
    reader = gguf.GGUFReader(path)
    tensors = {}
    for t in reader.tensors:
        values = gguf.quants.dequantize(t.data, t.tensor_type)
        tensors[t.name] = (t.tensor_type.name, torch.from_numpy(values.copy()).float())
    return reader, tensors


@pytest.mark.parametrize("file_type", ["F32", "F16", "Q8_0"])
def test_gguf_holds_the_model_weights(tmp_path, file_type):
    model = _tiny()
    reader, tensors = _read(write_gguf(model, tmp_path / "tiny.gguf", file_type=file_type))
    expected = _expected(model)
    # Tied head: no output.weight, llama.cpp reuses token_embd.
    assert set(tensors) == set(expected)
    for name, want in expected.items():
        kind, got = tensors[name]
        assert got.shape == want.shape, name
        vector_like = want.dim() == 1 or "norm" in name or "conv1d" in name or not name.endswith(".weight")
        if vector_like or file_type == "F32":
            assert kind == "F32", name
            assert torch.equal(got, want), name
        elif file_type == "Q8_0" and want.shape[-1] % 32 == 0:
            assert kind == "Q8_0", name
            # One float16 scale per block of 32: error at most half a step of 1/127 of the block's largest value.
            assert (got - want).abs().max() <= want.abs().max() / 127 * 0.51 + 1e-3, name
        else:
            assert kind == "F16", name
            assert torch.equal(got, want.half().float()), name
    mixer = model.backbone.layers[0].mixer
    assert _field(reader, "general.architecture") == "mamba"
    assert _field(reader, "mamba.block_count") == 2
    assert _field(reader, "mamba.embedding_length") == 16
    assert _field(reader, "mamba.vocab_size") == 64
    assert _field(reader, "mamba.ssm.inner_size") == mixer.d_inner == 32
    assert _field(reader, "mamba.ssm.state_size") == mixer.d_state
    assert _field(reader, "mamba.ssm.conv_kernel") == mixer.d_conv
    assert _field(reader, "mamba.ssm.time_step_rank") == mixer.dt_rank
    assert _field(reader, "mamba.attention.layer_norm_rms_epsilon") == pytest.approx(model.backbone.norm_f.eps)
    assert _field(reader, "tokenizer.ggml.model") == "none"


def test_gguf_refuses_models_llama_cpp_cannot_run(tmp_path):
    model = ssmlab.create_model("mamba", d_model=16, n_layers=2, vocab_size=64, mlp=True)
    with pytest.raises(ValueError, match="without MLP"):
        write_gguf(model, tmp_path / "mlp.gguf")
    model = ssmlab.create_model("mamba", d_model=16, n_layers=2, vocab_size=64, mlp=False,
                                mixer_options={"expand": 3})
    with pytest.raises(ValueError, match="expand=2"):
        write_gguf(model, tmp_path / "expand.gguf")


def test_llama_cpp_computes_the_models_logits(tmp_path):
    """Where llama-cpp-python is installed: llama.cpp runs the F32 file to ssmlab's logits, prefill and steps."""
    pytest.importorskip("llama_cpp")
    from benchmarks.llamacpp import LlamaCpp

    model = _tiny()
    llm = LlamaCpp(write_gguf(model, tmp_path / "tiny.gguf", file_type="F32"), n_ctx=64, n_batch=16, threads=1)
    try:
        prompt = torch.randint(0, 64, (1, 13), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            ours = model(prompt)[0]
        prefill = torch.from_numpy(llm.decode(prompt[0].tolist(), all_logits=True))
        llm.reset()
        steps = torch.stack([torch.from_numpy(llm.decode([t]).copy()) for t in prompt[0].tolist()])
    finally:
        llm.close()
    assert_close(prefill, ours, atol=1e-4, name="llama.cpp prefill vs ssmlab forward")
    assert_close(steps, ours, atol=1e-4, name="llama.cpp steps vs ssmlab forward")
