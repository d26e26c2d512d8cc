"""Generation at the Mamba-130M shape against llama.cpp (through llama-cpp-python), side by side in one process.

The model is ssmlab's Mamba language model of the shape of ``state-spaces/mamba-130m`` (d_model 768, 24
layers, vocab 50280, d_state 16, expand 2, d_conv 4, dt_rank 48, no MLP, RMSNorm, tied embeddings; Gu and
Dao, arXiv 2312.00752) with random weights (seeded). :func:`write_gguf` writes exactly those weights to a
GGUF file in llama.cpp's ``mamba`` architecture (its names, shapes and per-tensor types are those of
llama.cpp's own converter, ``convert_hf_to_gguf.py``), so nothing is downloaded and both libraries compute
the same function: the script first checks that llama.cpp's logits for a short prompt, prefill and step by
step, match ssmlab's (F32 file), and prints the largest difference.

Then, at each ``--contexts`` prompt length (``--long`` adds 8192), it times, interleaved, ``--repeats``
rounds (medians): the prefill of the prompt (tokens/s, from an empty state to the last position's logits)
and the time per generated token (greedy, ``--new-tokens`` tokens after the prompt), for

* llama.cpp with the GGUF in each of ``--types`` (F16 by default, also F32 and Q8_0: the converter's
  choices; norms, the convolution, A and D stay F32 in every type, and a matrix whose rows Q8_0 cannot
  split into blocks of 32, ``ssm_dt`` with dt_rank 48, falls back to F16, as in the converter);
* ssmlab in float32 and with int8 weights (``torch.ao.quantization.quantize_dynamic`` on every
  ``nn.Linear`` but the mixers' ``dt_proj``, as in ``benchmarks/cpu.py``), through its public
  ``generate_tokens``: the first token yielded ends the prefill, the others are the generated tokens.

Both use the same number of threads (``--threads``, default ``torch.get_num_threads()``). The machine may
be shared: the load average is printed with every figure, and only ratios within one run are comparable.
Nothing is installed: without llama-cpp-python or gguf the script says what to install and prints no rows.
The file is not named ``llama_cpp.py``, which would shadow the ``llama_cpp`` package when run as a script.

    python benchmarks/llamacpp.py [--contexts 256 2048] [--long] [--types F16 F32 Q8_0]
                                  [--repeats 3] [--new-tokens 16] [--threads N] [--gguf-dir DIR]
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import importlib.metadata
import importlib.util
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import ssmlab
from ssmlab.interop.checkpoints import hf_state_dict

MAMBA_130M = {"d_model": 768, "n_layers": 24, "vocab_size": 50280, "mlp": False,
              "mixer_options": {"d_state": 16, "expand": 2, "d_conv": 4, "dt_rank": 48}}
INSTALL = ("pip install 'ssmlab[bench]' (llama-cpp-python builds llama.cpp from source: about ten minutes "
           "on 2 cores; gguf is pure Python)")


def gguf_tensors(model) -> dict[str, torch.Tensor]:
    """``model``'s weights (a Mamba language model built by ssmlab) under llama.cpp's GGUF names and layouts,
    float32: ``token_embd.weight`` (V, D), ``blk.{i}.attn_norm.weight``, ``blk.{i}.ssm_in.weight`` (2 E, D),
    ``blk.{i}.ssm_conv1d.weight`` (E, K) and ``.bias``, ``blk.{i}.ssm_x.weight`` (R + 2 N, E),
    ``blk.{i}.ssm_dt.weight`` (E, R) and ``.bias``, ``blk.{i}.ssm_a`` (E, N) holding A = -exp(A_log),
    ``blk.{i}.ssm_d`` (E,), ``blk.{i}.ssm_out.weight`` (D, E), ``output_norm.weight``, and ``output.weight``
    only when the head is not tied to the embedding (llama.cpp then reuses ``token_embd``).

    The names go through ssmlab's transformers names (:func:`ssmlab.interop.checkpoints.hf_state_dict`) and
    gguf's own name map for them, as llama.cpp's converter does for a transformers checkpoint.
    """
    import gguf

    layers = model.backbone.layers
    mixers = [layer.mixer for layer in layers]
    if any(m.registry_name != "mamba" for m in mixers) or layers[0].mlp is not None:
        raise ValueError("llama.cpp's mamba architecture holds pure Mamba stacks without MLP blocks")
    if any(m.d_inner != 2 * m.d_model for m in mixers):
        raise ValueError("llama.cpp's mamba architecture supports only expand=2")
    if any(m.in_proj.bias is not None or m.conv1d.bias is None for m in mixers):
        raise ValueError("llama.cpp's mamba architecture needs bias=False and conv_bias=True")
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.MAMBA, len(layers))
    out = {}
    for key, value in hf_state_dict(model).items():
        name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ValueError(f"no GGUF name for {key}")
        value = value.float()
        if key.endswith(".A_log"):
            value = -torch.exp(value)
        elif key.endswith(".conv1d.weight"):
            value = value.squeeze(1)  # (E, 1, K) -> (E, K)
        out[name] = value
    return out


def tensor_type(name: str, shape: tuple, file_type: str):
    """The GGML type llama.cpp's converter gives tensor ``name`` in a file of ``file_type`` (F32, F16, Q8_0):
    vectors, norms, the convolution and the un-suffixed ``ssm_a``/``ssm_d`` stay F32; other matrices take
    the file's type, Q8_0 falling back to F16 for rows that are not a whole number of 32-blocks."""
    import gguf

    types = gguf.GGMLQuantizationType
    if len(shape) <= 1 or name.endswith("_norm.weight") or ".ssm_conv1d." in name or not name.endswith(".weight"):
        return types.F32
    wanted = types[file_type]
    block = gguf.GGML_QUANT_SIZES[wanted][0]
    return wanted if shape[-1] % block == 0 else types.F16


def write_gguf(model, path, *, file_type: str = "F16") -> Path:
    """Write ``model`` (a Mamba LM built by ssmlab: pure Mamba blocks, expand 2, no MLP) as a GGUF file of
    llama.cpp's ``mamba`` architecture with tensors of ``file_type`` ("F32", "F16" or "Q8_0").

    The vocabulary is llama.cpp's "none" tokenizer with ``mamba.vocab_size`` dummy tokens (the embedding's
    rows), so no tokenizer file is needed: the file is run on token ids. Returns ``path``.
    """
    import gguf

    file_types = {"F32": gguf.LlamaFileType.ALL_F32, "F16": gguf.LlamaFileType.MOSTLY_F16,
                  "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}
    if file_type not in file_types:
        raise ValueError(f"file_type must be one of {sorted(file_types)}, got {file_type!r}")
    tensors = gguf_tensors(model)
    mixer = model.backbone.layers[0].mixer
    eps = {model.backbone.norm_f.eps} | {layer.norm1.eps for layer in model.backbone.layers}
    if len(eps) > 1:
        raise ValueError(f"llama.cpp's mamba architecture has one norm epsilon, this model has {sorted(eps)}")
    path = Path(path)
    writer = gguf.GGUFWriter(path, "mamba")
    writer.add_context_length(2**20)
    writer.add_embedding_length(mixer.d_model)
    writer.add_feed_forward_length(0)
    writer.add_head_count(0)
    writer.add_block_count(len(model.backbone.layers))
    writer.add_ssm_conv_kernel(mixer.d_conv)
    writer.add_ssm_inner_size(mixer.d_inner)
    writer.add_ssm_state_size(mixer.d_state)
    writer.add_ssm_time_step_rank(mixer.dt_rank)
    writer.add_layer_norm_rms_eps(eps.pop())
    writer.add_ssm_dt_b_c_rms(False)
    writer.add_file_type(file_types[file_type])
    writer.add_vocab_size(model.encoder.vocab_size)
    writer.add_tokenizer_model("none")
    for name, value in tensors.items():
        qtype = tensor_type(name, tuple(value.shape), file_type)
        writer.add_tensor(name, gguf.quants.quantize(value.numpy(), qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
