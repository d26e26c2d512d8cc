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

* llama.cpp with the GGUF in each of ``--types`` (F16, F32 and Q8_0 by default; ratios are to the first;
  the converter's choices: norms, the convolution, A and D stay F32 in every type, and a matrix whose rows
  Q8_0 cannot split into blocks of 32, ``ssm_dt`` with dt_rank 48, falls back to F16, as in the converter);
* ssmlab in float32 and with int8 weights, both ways of ``benchmarks/cpu.py``: ``ssmlab.quantize_int8``
  (weight-only int8 with a scale per row, activations in float32, every ``nn.Linear`` but the mixers'
  ``dt_proj``) and ``torch.ao.quantization.quantize_dynamic`` on the same layers ("torch dynamic"), through
  its public ``generate_tokens``: the first token yielded ends the prefill, the others are the generated tokens.

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
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import ssmlab
from ssmlab.interop.checkpoints import hf_state_dict
from ssmlab.layers.linear import quantize_int8

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


class LlamaCpp:
    """One llama.cpp model and context (llama-cpp-python's low-level API), CPU only, one sequence, decoding
    token ids: :meth:`prefill` from an empty state, then :meth:`step` one token at a time."""

    def __init__(self, path, *, n_ctx: int, n_batch: int, threads: int):
        import llama_cpp

        self.ll = llama_cpp
        model_params = llama_cpp.llama_model_default_params()
        model_params.n_gpu_layers = 0
        self.model = llama_cpp.llama_model_load_from_file(str(path).encode(), model_params)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {path}")
        params = llama_cpp.llama_context_default_params()
        params.n_ctx, params.n_batch, params.n_ubatch, params.n_seq_max = n_ctx, n_batch, min(512, n_batch), 1
        params.n_threads = params.n_threads_batch = threads
        params.no_perf = True
        self.ctx = llama_cpp.llama_init_from_model(self.model, params)
        if not self.ctx:
            raise RuntimeError(f"llama.cpp could not make a context for {path}")
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(self.model))
        self.n_batch = n_batch
        self.batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self.position = 0

    def reset(self) -> None:
        self.ll.llama_memory_clear(self.ll.llama_get_memory(self.ctx), True)
        self.position = 0

    def decode(self, tokens, *, all_logits: bool = False) -> np.ndarray:
        """Feed ``tokens`` (at most n_batch ids) after those already fed: logits (n, V), or (V,) of the last."""
        n, batch = len(tokens), self.batch
        for i, token in enumerate(tokens):
            batch.token[i] = int(token)
            batch.pos[i] = self.position + i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = all_logits or i == n - 1
        batch.n_tokens = n
        if self.ll.llama_decode(self.ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")
        self.position += n
        if all_logits:
            return np.ctypeslib.as_array(self.ll.llama_get_logits(self.ctx), shape=(n, self.n_vocab)).copy()
        return np.ctypeslib.as_array(self.ll.llama_get_logits_ith(self.ctx, -1), shape=(self.n_vocab,))

    def prefill(self, tokens) -> int:
        """Reset, feed the prompt in batches of n_batch; the greedy next token."""
        self.reset()
        for start in range(0, len(tokens), self.n_batch):
            logits = self.decode(tokens[start:start + self.n_batch])
        return int(logits.argmax())

    def step(self, token: int) -> int:
        return int(self.decode([token]).argmax())

    def close(self) -> None:
        self.ll.llama_batch_free(self.batch)
        self.ll.llama_free(self.ctx)
        self.ll.llama_model_free(self.model)


def quantised(model):
    """int8 dynamic quantisation of every ``nn.Linear`` but Mamba's ``dt_proj`` (whose weight the mixer
    multiplies by directly), on a copy of ``model``."""
    names = {name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)
             and not name.endswith("dt_proj")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(
            copy.deepcopy(model), {name: torch.ao.quantization.default_dynamic_qconfig for name in names},
            dtype=torch.qint8)


def ssmlab_run(model, prompt: torch.Tensor, new_tokens: int) -> tuple[float, float]:
    """(prefill seconds, seconds per generated token) through ``generate_tokens``, greedy."""
    tokens = model.generate_tokens(prompt, new_tokens + 1, temperature=0)
    start = time.perf_counter()
    next(tokens)
    middle = time.perf_counter()
    for _ in tokens:
        pass
    return middle - start, (time.perf_counter() - middle) / new_tokens


def llama_run(llm: LlamaCpp, prompt: list, new_tokens: int) -> tuple[float, float]:
    start = time.perf_counter()
    token = llm.prefill(prompt)
    middle = time.perf_counter()
    for _ in range(new_tokens):
        token = llm.step(token)
    return middle - start, (time.perf_counter() - middle) / new_tokens


def load() -> str:
    return f"(load {os.getloadavg()[0]:.2f})"


def check_logits(model, llm: LlamaCpp, length: int = 16) -> None:
    """Largest difference between llama.cpp's logits (F32 file) and ssmlab's for one random prompt:
    prefill (all positions in one batch) against ``model(prompt)``, and one token at a time against
    ``model.step``."""
    prompt = torch.randint(0, model.encoder.vocab_size, (1, length), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(prompt)[0].double()  # (L, V)
        states = model.init_state(1)
        steps = []
        for t in range(length):
            logits, states = model.step(prompt[:, t], states)
            steps.append(logits[0])
        ours_steps = torch.stack(steps).double()
    llm.reset()
    theirs = torch.from_numpy(llm.decode(prompt[0].tolist(), all_logits=True)).double()
    llm.reset()
    theirs_steps = torch.stack([torch.from_numpy(llm.decode([t]).copy()) for t in prompt[0].tolist()]).double()
    scale = ours.abs().max().item()
    print(f"logits of a {length}-token prompt, llama.cpp F32 file against ssmlab float32 "
          f"(largest |logit| {scale:.3g}):")
    print(f"  prefill (one batch):   max abs difference {(theirs - ours).abs().max().item():.3g}, "
          f"same argmax at {(theirs.argmax(-1) == ours.argmax(-1)).sum().item()}/{length} positions")
    print(f"  one token at a time:   max abs difference {(theirs_steps - ours_steps).abs().max().item():.3g} "
          f"(ssmlab forward vs its own steps: {(ours_steps - ours).abs().max().item():.3g})\n", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--contexts", type=int, nargs="+", default=[256, 2048])
    parser.add_argument("--long", action="store_true", help="also a prompt of 8192 tokens")
    parser.add_argument("--types", nargs="+", default=["F16", "F32", "Q8_0"], choices=["F16", "F32", "Q8_0"],
                        help="GGUF tensor types timed in llama.cpp")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--n-batch", type=int, default=2048, help="llama.cpp's logical batch (n_ubatch 512)")
    parser.add_argument("--gguf-dir", type=Path, default=None, help="keep the GGUF files here (default: a temporary"
                        " directory, removed at the end)")
    parser.add_argument("--no-int8", action="store_true", help="leave out ssmlab with int8 weights")
    args = parser.parse_args()
    missing = [name for name in ("llama_cpp", "gguf") if importlib.util.find_spec(name) is None]
    if missing:
        print(f"missing {', '.join(missing)}: {INSTALL}. No rows.")
        return
    contexts = sorted(set(args.contexts + ([8192] if args.long else [])))
    torch.set_num_threads(args.threads)
    import llama_cpp

    versions = {"torch": torch.__version__, "llama-cpp-python": llama_cpp.__version__,
                "gguf": importlib.metadata.version("gguf")}
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    print(f"threads: {args.threads} for both (torch.get_num_threads() {torch.get_num_threads()}), nproc "
          f"{os.cpu_count()}")
    llama_cpp.llama_backend_init()
    print("llama.cpp: " + llama_cpp.llama_print_system_info().decode().strip())
    print(f"load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}\n", flush=True)
    # llama.cpp's log goes to stderr unless a callback takes it; keep a reference to the callback.
    quiet = llama_cpp.llama_log_callback(lambda level, text, user_data: None)
    llama_cpp.llama_log_set(quiet, ctypes.c_void_p(0))

    torch.manual_seed(0)
    model = ssmlab.create_model("mamba", **MAMBA_130M).eval()
    with tempfile.TemporaryDirectory() as scratch:
        directory = args.gguf_dir or Path(scratch)
        directory.mkdir(parents=True, exist_ok=True)
        types = list(dict.fromkeys(["F32"] + args.types))
        paths = {}
        for file_type in types:
            start = time.perf_counter()
            paths[file_type] = write_gguf(model, directory / f"mamba-130m-random-{file_type}.gguf",
                                          file_type=file_type)
            print(f"wrote {paths[file_type]} ({paths[file_type].stat().st_size / 2**20:.0f} MiB) in "
                  f"{time.perf_counter() - start:.1f} s")
        print()
        n_ctx = max(contexts) + args.new_tokens + 16
        n_batch = min(args.n_batch, max(contexts))
        llms = {}
        for file_type in types:
            llm = LlamaCpp(paths[file_type], n_ctx=n_ctx, n_batch=n_batch, threads=args.threads)
            if file_type == "F32":
                check_logits(model, llm)
            if file_type in args.types:
                llms[file_type] = llm
            else:
                llm.close()
        contenders = {f"llama.cpp {t}": (lambda p, llm=llms[t]: llama_run(llm, p[0].tolist(), args.new_tokens))
                      for t in args.types}
        contenders["ssmlab float32"] = lambda p: ssmlab_run(model, p, args.new_tokens)
        if not args.no_int8:
            int8, dynamic = quantize_int8(model), quantised(model)
            contenders["ssmlab int8"] = lambda p: ssmlab_run(int8, p, args.new_tokens)
            contenders["ssmlab int8 (torch dynamic)"] = lambda p: ssmlab_run(dynamic, p, args.new_tokens)
        base = f"llama.cpp {args.types[0]}"
        print(f"Mamba-130M shape, random weights, B=1, greedy, {args.new_tokens} tokens after the prompt, "
              f"{args.threads} threads, median of {args.repeats} interleaved rounds; ratios are times over {base}'s")
        # One round of every contender first; 512 tokens reach llama.cpp's largest physical batch (n_ubatch).
        warm = torch.randint(0, MAMBA_130M["vocab_size"], (1, min(contexts + [512])))
        with torch.no_grad():
            for run in contenders.values():
                run(warm)
            for context in contexts:
                prompt = torch.randint(0, MAMBA_130M["vocab_size"], (1, context),
                                       generator=torch.Generator().manual_seed(context))
                times = {name: [] for name in contenders}
                for _ in range(args.repeats):
                    for name, run in contenders.items():
                        times[name].append(run(prompt))
                print(f"context {context} {load()}")
                medians = {name: (statistics.median(p for p, _ in t), statistics.median(g for _, g in t))
                           for name, t in times.items()}
                for name, (prefill, per_token) in medians.items():
                    print(f"  {name:<16} prefill {context / prefill:8.1f} tokens/s ({prefill / medians[base][0]:5.2f}x)"
                          f"   {per_token * 1e3:7.1f} ms/token ({per_token / medians[base][1]:5.2f}x)")
                print(flush=True)
        for llm in llms.values():
            llm.close()
    print(f"load average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
