"""Mamba and Mamba-2 language-model checkpoints, read and written without a CUDA build.

Two formats people have on disk are read:

* Hugging Face transformers (``MambaForCausalLM``, ``Mamba2ForCausalLM``): a
  ``config.json`` with ``model_type`` "mamba" or "mamba2" and weights in
  ``model.safetensors`` (possibly sharded, with ``model.safetensors.index.json``)
  or ``pytorch_model.bin``; tensor names ``backbone.embeddings.weight``,
  ``backbone.layers.{i}.norm.weight``, ``backbone.layers.{i}.mixer.*``,
  ``backbone.norm_f.weight``, ``lm_head.weight``.
* The original ``mamba_ssm`` format: a ``config.json`` with ``d_model``,
  ``n_layer``, ``vocab_size`` and ``ssm_cfg`` (``"layer": "Mamba2"`` for
  Mamba-2) and a ``pytorch_model.bin`` with ``backbone.embedding.weight`` and the
  same layer names (``d_intermediate > 0`` adds a gated MLP per block).

:func:`save_hf` writes the Hugging Face format (config.json + model.safetensors),
so the result opens with ``transformers`` as well as with :func:`load_reference`;
:func:`hf_unsupported` says why a model cannot be written so (only pure Mamba or
Mamba-2 language models without MLP blocks can). The mixers' parameter names are
those of the reference implementation, so only the embedding, the block norms and
the MLP need renaming. ssmlab's own format, which holds any model, is in
:mod:`ssmlab.interop.pretrained`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from ssmlab.models import create_model
from ssmlab.models.heads import LanguageModel


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or trusted, or does not belong to this model or run (a model
    directory here, a training checkpoint in :mod:`ssmlab.train.checkpoint`), or a model that cannot
    be written in the format asked for."""


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if (path / "model.safetensors").is_file():
        return load_file(path / "model.safetensors")
    index = path / "model.safetensors.index.json"
    if index.is_file():
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        weights = {}
        for shard in shards:
            weights.update(load_file(path / shard))
        return weights
    if (path / "pytorch_model.bin").is_file():
        return torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise CheckpointError(f"{path}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin")


def is_reference_config(config: dict) -> bool:
    """Whether ``config`` (a parsed config.json) is a transformers Mamba/Mamba2 or a mamba_ssm config."""
    return config.get("model_type") in ("mamba", "mamba2") or ("d_model" in config and "n_layer" in config)


def _hf_spec(config: dict) -> tuple[str, dict, dict]:
    """(mixer, mixer options, model options) from a transformers config."""
    kind = config["model_type"]
    common = {"d_model": config["hidden_size"], "n_layers": config["num_hidden_layers"],
              "vocab_size": config["vocab_size"], "norm_eps": config.get("layer_norm_epsilon", 1e-5),
              "tie_embeddings": config.get("tie_word_embeddings", True), "mlp": False}
    if kind == "mamba":
        rank = config.get("time_step_rank", "auto")
        mixer = {"d_state": config["state_size"], "d_conv": config["conv_kernel"], "expand": config["expand"],
                 "dt_rank": math.ceil(config["hidden_size"] / 16) if rank == "auto" else rank,
                 "conv_bias": config.get("use_conv_bias", True), "bias": config.get("use_bias", False)}
        return "mamba", mixer, common
    if not config.get("rms_norm", True):
        raise CheckpointError("mamba2 checkpoints with rms_norm=false (no gated norm) are not supported")
    limit = config.get("time_step_limit", [0.0, float("inf")])
    if limit and (limit[0] not in (0, 0.0) or (isinstance(limit[1], (int, float)) and math.isfinite(limit[1]))):
        raise CheckpointError(f"mamba2 checkpoints with a finite time_step_limit {limit} are not supported")
    mixer = {"d_state": config["state_size"], "d_conv": config["conv_kernel"], "expand": config["expand"],
             "headdim": config["head_dim"], "ngroups": config["n_groups"], "chunk_size": config["chunk_size"],
             "conv_bias": config.get("use_conv_bias", True), "bias": config.get("use_bias", False),
             "norm_eps": config.get("layer_norm_epsilon", 1e-5)}
    heads = config.get("num_heads")
    if heads is not None and heads * config["head_dim"] != config["expand"] * config["hidden_size"]:
        raise CheckpointError(f"num_heads * head_dim = {heads * config['head_dim']} != expand * hidden_size")
    return "mamba2", mixer, common


def _mamba_ssm_spec(config: dict, weights: dict) -> tuple[str, dict, dict]:
    ssm_cfg = dict(config.get("ssm_cfg") or {})
    layer = ssm_cfg.pop("layer", "Mamba1")
    if not config.get("rms_norm", True):
        raise CheckpointError("mamba_ssm checkpoints with rms_norm=false (LayerNorm) are not supported")
    if config.get("attn_layer_idx"):
        raise CheckpointError("mamba_ssm hybrid checkpoints with attention layers are not supported yet")
    vocab = weights["backbone.embedding.weight"].shape[0]  # already padded to pad_vocab_size_multiple
    d_intermediate = config.get("d_intermediate", 0)
    common = {"d_model": config["d_model"], "n_layers": config["n_layer"], "vocab_size": vocab,
              "norm_eps": config.get("norm_epsilon", 1e-5), "tie_embeddings": config.get("tie_embeddings", True),
              "mlp": d_intermediate > 0, "mlp_hidden": d_intermediate or None}
    names = {"d_state": "d_state", "d_conv": "d_conv", "expand": "expand", "conv_bias": "conv_bias", "bias": "bias"}
    if layer == "Mamba2":
        names.update(headdim="headdim", ngroups="ngroups", chunk_size="chunk_size")
        mixer_name = "mamba2"
        defaults = {"d_state": 128, "headdim": 64}
    elif layer == "Mamba1":
        names.update(dt_rank="dt_rank")
        mixer_name = "mamba"
        defaults = {}
    else:
        raise CheckpointError(f"unknown mamba_ssm layer {layer!r}; expected Mamba1 or Mamba2")
    unknown = set(ssm_cfg) - set(names) - {"dt_min", "dt_max", "dt_init_floor", "dt_scale", "dt_init",
                                          "A_init_range", "dt_limit", "rmsnorm", "norm_before_gate", "use_fast_path",
                                          "D_has_hdim", "d_ssm", "layer_idx"}
    if unknown:
        raise CheckpointError(f"unsupported ssm_cfg options {sorted(unknown)}")
    if ssm_cfg.get("D_has_hdim") or ssm_cfg.get("norm_before_gate") or ssm_cfg.get("d_ssm") not in (None,) or \
            ssm_cfg.get("rmsnorm") is False:
        raise CheckpointError("mamba_ssm Mamba2 variants with D_has_hdim, d_ssm, norm_before_gate or without "
                              "rmsnorm are not supported")
    mixer = {**defaults, **{ours: ssm_cfg[theirs] for theirs, ours in names.items() if theirs in ssm_cfg}}
    if mixer.get("dt_rank") == "auto":
        mixer.pop("dt_rank")
    return mixer_name, mixer, common


def _from_reference_names(weights: dict, embed_key: str, mlp_names: tuple[str, str] | None) -> dict:
    """Rename reference tensor names to ssmlab's."""
    out = {}
    for key, value in weights.items():
        if key == embed_key:
            out["encoder.embed.weight"] = value
        elif key.startswith("backbone.layers.") and ".norm." in key and ".mixer." not in key:
            out[key.replace(".norm.", ".norm1.")] = value
        elif mlp_names and key.endswith(".mlp.fc1.weight"):
            # mamba_ssm's GatedMLP computes value * silu(gate) from (value, gate) halves; ours (gate, value).
            value_half, gate_half = value.chunk(2, dim=0)
            out[key.replace(".mlp.fc1.", ".mlp.fc_in.")] = torch.cat([gate_half, value_half], dim=0)
        elif mlp_names and key.endswith(".mlp.fc2.weight"):
            out[key.replace(".mlp.fc2.", ".mlp.fc_out.")] = value
        else:
            out[key] = value
    return out


def load_reference(path, config: dict, *, dtype: torch.dtype | None = None) -> LanguageModel:
    """Load a Mamba or Mamba-2 language model from a Hugging Face or mamba_ssm checkpoint directory
    whose config.json, already read, is ``config``.

    The model is built by :func:`ssmlab.create_model`, so ``model.config`` records its
    options. A config written by ssmlab (:func:`save_hf`) also holds, under the key
    ``"ssmlab"``, the options that the transformers config has no field for (``dropout``,
    the mixers' initialisation ranges ...); they are restored, and the transformers
    fields win where both say something.
    """
    path = Path(path)
    hf_format = config.get("model_type") in ("mamba", "mamba2")
    if not is_reference_config(config):
        raise CheckpointError(f"{path}: config.json is neither a transformers Mamba/Mamba2 config (model_type "
                              f"{config.get('model_type')!r}) nor a mamba_ssm config (d_model, n_layer)")
    weights = _read_weights(path)
    if hf_format:
        mixer, mixer_options, options = _hf_spec(config)
        embed_key, mlp_names = "backbone.embeddings.weight", None
    else:
        mixer, mixer_options, options = _mamba_ssm_spec(config, weights)
        embed_key, mlp_names = "backbone.embedding.weight", ("fc1", "fc2")
    recorded = dict((config.get("ssmlab") or {}).get("model") or {})
    if recorded.get("mixer") != mixer or recorded.get("head") != "lm":
        recorded = {}
    for key in ("mixer", "head", "dtype", "device"):
        recorded.pop(key, None)
    mixer_options = {**(recorded.pop("mixer_options", None) or {}), **mixer_options}
    model = create_model(mixer, head="lm", **{**recorded, **options}, mixer_options=mixer_options,
                         dtype=dtype or torch.float32)
    state = _from_reference_names(weights, embed_key, mlp_names)
    if options["tie_embeddings"]:
        state.pop("lm_head.weight", None)
        state["lm_head.weight"] = state["encoder.embed.weight"]
    result = model.load_state_dict({k: v.to(dtype or v.dtype) for k, v in state.items()}, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(f"{path}: weights do not match a {mixer} model of this config: "
                              f"missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}")
    return model


def hf_unsupported(model) -> str | None:
    """Why ``model`` cannot be written in the transformers format, or None if it can.

    The transformers ``MambaForCausalLM`` and ``Mamba2ForCausalLM`` hold a language model
    whose every block is one Mamba (or every block one Mamba-2) mixer with no MLP.
    """
    if not isinstance(model, LanguageModel):
        return f"the transformers Mamba formats hold causal language models, not a {type(model).__name__}"
    names = [layer.mixer.registry_name for layer in model.backbone.layers]
    if names[0] not in ("mamba", "mamba2") or len(set(names)) > 1:
        return f"the transformers Mamba formats hold pure mamba or mamba2 stacks, not {'+'.join(dict.fromkeys(names))}"
    if model.backbone.layers[0].mlp is not None:
        return "the transformers Mamba formats have no MLP blocks (this model was built with mlp=True)"
    eps = {model.backbone.norm_f.eps} | {layer.norm1.eps for layer in model.backbone.layers}
    if names[0] == "mamba2":
        eps |= {layer.mixer.norm.eps for layer in model.backbone.layers}
    if len(eps) > 1:
        return f"the transformers Mamba formats have one layer_norm_epsilon for all norms, this model has {sorted(eps)}"
    return None


def save_hf(model: LanguageModel, path, *, extra: dict | None = None) -> Path:
    """Write ``model`` (a Mamba or Mamba-2 LM built by ssmlab) in the Hugging Face transformers format.

    ``extra`` goes into config.json under the key ``"ssmlab"`` (transformers keeps keys it
    does not know); :func:`load_reference` reads it back.
    """
    from safetensors.torch import save_file

    reason = hf_unsupported(model)
    if reason is not None:
        raise CheckpointError(f"cannot save in the transformers format: {reason}; use format='ssmlab'")
    layers = model.backbone.layers
    mixer = layers[0].mixer
    name = mixer.registry_name
    d_model = mixer.d_model
    tied = model.lm_head.weight is model.encoder.embed.weight
    config = {"hidden_size": d_model, "num_hidden_layers": len(layers), "vocab_size": model.encoder.vocab_size,
              "state_size": mixer.d_state, "conv_kernel": mixer.d_conv, "expand": mixer.d_inner // d_model,
              "use_conv_bias": mixer.conv1d.bias is not None, "use_bias": mixer.in_proj.bias is not None,
              "layer_norm_epsilon": model.backbone.norm_f.eps, "tie_word_embeddings": tied, "residual_in_fp32": True}
    if name == "mamba":
        config.update(model_type="mamba", architectures=["MambaForCausalLM"], intermediate_size=mixer.d_inner,
                      time_step_rank=mixer.dt_rank)
    else:
        config.update(model_type="mamba2", architectures=["Mamba2ForCausalLM"], head_dim=mixer.headdim,
                      n_groups=mixer.ngroups, num_heads=mixer.nheads, chunk_size=mixer.chunk_size, rms_norm=True)
    if extra:
        config["ssmlab"] = extra
    state = hf_state_dict(model)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    with open(path / "config.json", "w") as f:
        json.dump(config, f, indent=2)
    save_file(state, path / "model.safetensors", metadata={"format": "pt"})
    return path


def hf_state_dict(model: LanguageModel) -> dict[str, torch.Tensor]:
    """``model``'s weights under the transformers ``MambaForCausalLM`` / ``Mamba2ForCausalLM`` names
    (``backbone.embeddings.weight``, ``backbone.layers.{i}.norm.weight``, ``backbone.layers.{i}.mixer.*``,
    ``backbone.norm_f.weight``; ``lm_head.weight`` only when not tied), as :func:`save_hf` writes them.
    Converters keyed on those names (llama.cpp's GGUF writer) read it too."""
    tied = model.lm_head.weight is model.encoder.embed.weight
    state = {}
    for key, value in model.state_dict().items():
        if key == "encoder.embed.weight":
            key = "backbone.embeddings.weight"
        elif key == "lm_head.weight" and tied:
            continue
        key = key.replace(".norm1.", ".norm.")
        state[key] = value.detach().contiguous()
    return state
