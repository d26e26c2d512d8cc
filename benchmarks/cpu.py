"""The CPU targets of issue 16, side by side in one process: ratios against the peers and against the bounds.

Sections (``--sections``, all by default):

* ``scan``: the selective scan, B=4, D=1536, N=16, float32, forward and forward+backward, against
  mambapy's ``pscan`` (its Mamba block's ``selective_scan``, on the same inputs) and against the
  exponential bound, ``torch.exp`` over the B L D N decays (the scan needs at least that many).
* ``model``: 2-layer Mamba (d_model 768) and Mamba-2 (d_model 768, N=128, head size 64) backbones,
  no MLP, B=1, L=2048, forward, against transformers' ``MambaModel`` and ``Mamba2Model`` of the same
  shapes (random weights) and, for Mamba, mambapy's ``Mamba`` (its blocks with ``pscan``), beside
  the same model's matrix-multiplication time alone (every ``nn.Linear`` of the model run on the
  inputs it received during one forward).
* ``step``: one training step (forward, backward, gradient clipping, AdamW) of 2-layer language
  models, d_model 64, vocab 32, B=32, L=64, as the harness trains them; ratios to attention's step.
* ``generate``: the Mamba-130M shape (d_model 768, 24 layers, vocab 50280, no MLP): prefill of a
  prompt (``model.prefill``) and time per generated token (``model.step``), in float32, with
  ``ssmlab.quantize_int8`` ("int8": weight-only int8, a scale per row) and with torch's dynamic int8
  quantisation (``torch.ao.quantization.quantize_dynamic``, "int8 dynamic"), each on every linear layer but
  ``dt_proj``, at each ``--contexts`` prompt length; then the per-token time by context, with steps from
  every context's state taken in turn (so that the machine's drift between rows does not enter the ratios).
  llama.cpp on the same shape: ``benchmarks/llamacpp.py``.

Each comparison warms up once, then runs its contenders in turn ``--repeats`` times (interleaved) and
reports medians of wall-clock time. The machine may be shared: the load average and the thread count
are printed, and only ratios within one run are comparable. Nothing is installed; a missing peer
(``pip install 'ssmlab[bench]'``) is reported and its rows skipped.

    python benchmarks/cpu.py [--sections scan model step generate] [--lengths 1024 4096]
                             [--backward-lengths 1024] [--repeats 5] [--contexts 256 2048]
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import importlib.util
import os
import platform
import statistics
import time
import warnings

import torch
import torch.nn.functional as F

import ssmlab
from ssmlab.layers.linear import quantize_int8
from ssmlab.ops import selective_scan


def interleaved(contenders: dict, repeats: int) -> dict:
    """Median seconds of each callable: one warm-up each, then ``repeats`` rounds taking them in turn."""
    for fn in contenders.values():
        fn()
    times = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def header() -> None:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    versions = {"torch": torch.__version__}
    for name in ("numba", "mambapy", "transformers"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "missing"
    print(f"CPU: {cpu}, nproc {os.cpu_count()}, torch threads {torch.get_num_threads()}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    print(f"load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}\n")


def load() -> str:
    return f"(load {os.getloadavg()[0]:.2f})"


def scan_section(lengths, repeats, backward_lengths) -> None:
    batch, channels, n_state = 4, 1536, 16
    pscan = None
    if importlib.util.find_spec("mambapy"):
        from mambapy.pscan import pscan
    else:
        print("mambapy is missing: pip install 'ssmlab[bench]'; its rows are skipped")
    for length in lengths:
        g = torch.Generator().manual_seed(0)
        u = torch.randn(batch, length, channels, generator=g)
        delta = F.softplus(torch.randn(batch, length, channels, generator=g) - 3)
        A = -torch.arange(1, n_state + 1, dtype=torch.float32).repeat(channels, 1)
        B, C = torch.randn(batch, length, n_state, generator=g), torch.randn(batch, length, n_state, generator=g)
        D = torch.ones(channels)
        decay_args = torch.randn(batch, length, channels, n_state, generator=g)

        def ours(backend):
            return lambda: selective_scan(u, delta, A, B, C, D=D, backend=backend)

        def mambapy_scan(u, delta, A, B, C, D):
            # mambapy.mamba.MambaBlock.selective_scan, with its pscan.
            decay = torch.exp(delta.unsqueeze(-1) * A)
            bx = delta.unsqueeze(-1) * B.unsqueeze(2) * u.unsqueeze(-1)
            hs = pscan(decay, bx)
            return (hs @ C.unsqueeze(-1)).squeeze(3) + D * u

        with torch.no_grad():
            forward = {"ssmlab numba": ours("numba"), "ssmlab torch": ours("torch"),
                       "exp bound": lambda: torch.exp(decay_args)}
            if pscan is not None:
                forward["mambapy pscan"] = lambda: mambapy_scan(u, delta, A, B, C, D)
            forward = {k: v for k, v in forward.items() if k != "ssmlab numba" or _has_numba()}
            times = interleaved(forward, repeats)
        _print_ratios(f"selective scan forward, B={batch} D={channels} N={n_state} L={length}", times)

        if length not in backward_lengths:
            continue
        leaves = [t.clone().requires_grad_(True) for t in (u, delta, A, B, C, D)]

        def backward(fn):
            def run():
                for t in leaves:
                    t.grad = None
                fn(*leaves).sum().backward()
            return run

        both = {"ssmlab numba": backward(lambda *a: selective_scan(*a[:5], D=a[5], backend="numba")),
                "ssmlab torch": backward(lambda *a: selective_scan(*a[:5], D=a[5], backend="torch"))}
        if not _has_numba():
            del both["ssmlab numba"]
        if pscan is not None:
            both["mambapy pscan"] = backward(mambapy_scan)
        _print_ratios(f"selective scan forward+backward, L={length}", interleaved(both, max(1, repeats // 2)))


def _has_numba() -> bool:
    return importlib.util.find_spec("numba") is not None


def _print_ratios(title: str, times: dict) -> None:
    """One row per contender: its median and its time over the first contender's (ssmlab's default path)."""
    print(f"{title} {load()}")
    base_name, base = next(iter(times.items()))
    for name, seconds in times.items():
        print(f"  {name:<34}{seconds * 1e3:10.1f} ms  {seconds / base:7.2f}x {base_name}")
    print()


def linear_time(model: torch.nn.Module, run, repeats: int) -> float:
    """Seconds of every ``nn.Linear`` of ``model`` on the inputs it received during ``run()``, alone."""
    calls = []
    hooks = [m.register_forward_hook(lambda m, args, out: calls.append((m, args[0])))
             for m in model.modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        run()
    for h in hooks:
        h.remove()

    def matmuls():
        for m, x in calls:
            F.linear(x, m.weight, m.bias)

    with torch.no_grad():
        return interleaved({"linear": matmuls}, repeats)["linear"]


def model_section(length, repeats) -> None:
    from ssmlab.models.backbone import Backbone

    have = importlib.util.find_spec("transformers") is not None
    if not have:
        print("transformers is missing: pip install 'ssmlab[bench]'; its rows are skipped")
    x = torch.randn(1, length, 768, generator=torch.Generator().manual_seed(0))
    for name, options in (("mamba", {}), ("mamba2", {"d_state": 128, "headdim": 64, "chunk_size": 256})):
        torch.manual_seed(0)
        ours = Backbone(name, 768, 2, mlp=False, mixer_options=options).eval()
        contenders = {f"ssmlab {name}": lambda: ours(x)}
        if have:
            import transformers
            if name == "mamba":
                config = transformers.MambaConfig(hidden_size=768, num_hidden_layers=2, state_size=16, expand=2,
                                                  conv_kernel=4, vocab_size=1000)
                peer = transformers.MambaModel(config).eval()
            else:
                config = transformers.Mamba2Config(hidden_size=768, num_hidden_layers=2, state_size=128, expand=2,
                                                   head_dim=64, num_heads=24, n_groups=1, chunk_size=256,
                                                   conv_kernel=4, vocab_size=1000)
                peer = transformers.Mamba2Model(config).eval()
            contenders[f"transformers {type(peer).__name__}"] = lambda: peer(inputs_embeds=x)
        if name == "mamba" and importlib.util.find_spec("mambapy") is not None:
            from mambapy.mamba import Mamba, MambaConfig
            mambapy_model = Mamba(MambaConfig(d_model=768, n_layers=2, d_state=16, expand_factor=2, d_conv=4)).eval()
            contenders["mambapy Mamba (pscan)"] = lambda: mambapy_model(x)
        with torch.no_grad():
            times = interleaved(contenders, repeats)
        times[f"ssmlab {name}: nn.Linear alone"] = linear_time(ours, lambda: ours(x), repeats)
        _print_ratios(f"2-layer {name} backbone forward, d_model 768, B=1, L={length}", times)


def step_section(repeats) -> None:
    batch, length, vocab = 32, 64, 32
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, vocab, (batch, length), generator=g), torch.randint(0, vocab, (batch, length), generator=g)
    steps = {}
    for label, mixer, options in (("attention", "attention", {}), ("mamba", "mamba", {}),
                                  ("mamba (torch scan)", "mamba", {"backend": "torch"}), ("mamba2", "mamba2", {}),
                                  ("s4", "s4", {})):
        torch.manual_seed(0)
        model = ssmlab.create_model(mixer, d_model=64, n_layers=2, vocab_size=vocab, mixer_options=options)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        params = [p for p in model.parameters() if p.requires_grad]

        def step(model=model, optimizer=optimizer, params=params):
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x).reshape(-1, vocab), y.reshape(-1))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()

        steps[label] = step
    times = interleaved(steps, repeats)
    print(f"training step, 2 layers, d_model 64, vocab {vocab}, B={batch}, L={length} {load()}")
    for name, seconds in times.items():
        print(f"  {name:<28}{seconds * 1e3:10.1f} ms  {seconds / times['attention']:6.2f}x attention")
    print()


def generate_section(contexts, repeats, new_tokens=16) -> None:
    torch.manual_seed(0)
    vocab = 50280
    model = ssmlab.create_model("mamba", d_model=768, n_layers=24, vocab_size=vocab, mlp=False).eval()
    # Every linear layer but Mamba's dt_proj, whose weight the mixer multiplies by directly.
    linears = {name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)
               and not name.endswith("dt_proj")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantised = torch.ao.quantization.quantize_dynamic(
            copy.deepcopy(model), {name: torch.ao.quantization.default_dynamic_qconfig for name in linears},
            dtype=torch.qint8)
    int8 = quantize_int8(model)
    print(f"Mamba-130M shape (d_model 768, 24 layers, vocab {vocab}), B=1: prefill (model.prefill) and the median "
          f"time of {new_tokens} model.step calls after it, medians of {repeats} {load()}")
    nets = {"float32": model, "int8": int8, "int8 dynamic": quantised}
    after = {label: {} for label in nets}  # the states after each context's prompt, for the interleaved steps
    for context in contexts:
        prompt = torch.randint(0, vocab, (1, context), generator=torch.Generator().manual_seed(context))
        for label, net in nets.items():
            prefills, per_token = [], []
            with torch.no_grad():
                for _ in range(repeats):
                    start = time.perf_counter()
                    logits, states = net.prefill(prompt)
                    prefills.append(time.perf_counter() - start)
                    token = logits.argmax(-1)
                    for _ in range(new_tokens):
                        start = time.perf_counter()
                        logits, states = net.step(token, states)
                        token = logits.argmax(-1)
                        per_token.append(time.perf_counter() - start)
            after[label][context] = (token, states)
            prefill, token_time = statistics.median(prefills), statistics.median(per_token)
            print(f"  context {context:>5} {label:<13} prefill {prefill:7.2f} s ({context / prefill:7.1f} tokens/s), "
                  f"{token_time * 1e3:7.1f} ms/token {load()}", flush=True)
    # The per-token time against the context, without the machine's drift between the rows above: steps that
    # continue each context's state, taken in turn (one step per context per round), medians.
    print(f"per-token time by context, steps interleaved across contexts ({repeats * new_tokens} rounds) {load()}")
    with torch.no_grad():
        for label, net in nets.items():
            times = {context: [] for context in contexts}
            for _ in range(repeats * new_tokens):
                for context in contexts:
                    token, states = after[label][context]
                    start = time.perf_counter()
                    logits, states = net.step(token, states)
                    times[context].append(time.perf_counter() - start)
                    after[label][context] = (logits.argmax(-1), states)
            medians = {context: statistics.median(t) for context, t in times.items()}
            print(f"  {label:<13}" + "".join(f"  context {c}: {m * 1e3:6.1f} ms ({m / medians[contexts[0]]:.2f}x)"
                                            for c, m in medians.items()), flush=True)
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sections", nargs="+", default=["scan", "model", "step", "generate"],
                        choices=["scan", "model", "step", "generate"])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024], help="selective scan lengths")
    parser.add_argument("--backward-lengths", type=int, nargs="+", default=[1024],
                        help="selective scan lengths also timed forward+backward (mambapy's keeps O(B L D N) tensors)")
    parser.add_argument("--model-length", type=int, default=2048)
    parser.add_argument("--contexts", type=int, nargs="+", default=[256, 2048])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    header()
    for section in args.sections:
        if section == "scan":
            scan_section(args.lengths, args.repeats, args.backward_lengths)
        elif section == "model":
            model_section(args.model_length, args.repeats)
        elif section == "step":
            step_section(max(args.repeats, 11))
        else:
            generate_section(args.contexts, args.repeats)
    print(f"load average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
