"""Forward and forward+backward time of every op's Triton backend on a GPU, against the ``torch`` backend and
flash-linear-attention's Triton kernels, and a whole Mamba-2 layer stack beside its matrix multiplications
(issue 17).

The cases come from every module in ``benchmarks/gpu_cases/``: each has ``cases(size)``, a list of dicts
with a ``name``, ``inputs(device, dtype)`` (a dict of tensors, requiring grad where gradients exist),
``run`` (callables for "triton", "torch" and "fla", or None where fla has no such op) and ``bytes``, the
bytes the forward pass must read and write at least, for bf16 inputs.

Timing: CUDA events around each call, after ``--warmup`` calls of each backend (Triton compiles and
autotunes there); the backends of a case take turns within each of ``--repeats`` repetitions, in an order
that rotates, and the table gives the medians. "forward" runs without autograd; "fwd+bwd" runs the forward
pass and ``torch.autograd.grad`` of its outputs (fixed random output gradients) with respect to every
input that requires grad. The ratios are triton's time over torch's and over fla's (below 1: triton is
faster). "HBM" is ``bytes / forward time / peak`` for the Triton forward, with the peak bandwidth of the
GPU from a table by name, or ``--peak-gbs``.

The Mamba-2 stack is ``ssmlab.create_model("mamba2", ...)``'s backbone (d_model 2048, ``--layers`` layers,
no MLP, B=4, L=2048 at the real size), forward and backward, once with the triton backend of every op that
has one and once with ``SSMLAB_BACKEND=torch``, printed beside the time of its in and out projections run
by themselves (forward and backward of the same matrix multiplications).

    python benchmarks/gpu.py [--size real] [--dtype bfloat16] [--repeats 20] [--warmup 3] [--ops ssd ...]
                             [--peak-gbs 4800] [--layers 4] [--no-model]

Smoke test on the CPU, through Triton's interpreter (no meaningful times):

    TRITON_INTERPRET=1 python benchmarks/gpu.py --size tiny --device cpu
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import statistics
import sys
import time
from pathlib import Path

import torch

CASES_DIR = Path(__file__).resolve().parent / "gpu_cases"

# Peak HBM bandwidth in GB/s by a part of the device name, the first match from the top.
PEAK_GBS = [("GH200", 4000.0), ("H200", 4800.0), ("H100 PCIe", 2000.0), ("H100 NVL", 3900.0), ("H100", 3350.0),
            ("H800", 3350.0), ("B200", 8000.0), ("A100-SXM4-80GB", 2039.0), ("A100 80GB PCIe", 1935.0),
            ("A100", 1555.0), ("L40S", 864.0), ("RTX 4090", 1008.0)]


def peak_bandwidth(device: torch.device, override: float | None) -> float | None:
    """The GPU's peak memory bandwidth in bytes per second, or None when it is not known."""
    if override:
        return override * 1e9
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, gbs in PEAK_GBS:
        if key in name:
            return gbs * 1e9
    return None


def load_cases(size: str, ops: list[str] | None = None) -> list[tuple[str, dict]]:
    """``(op, case)`` for every case of every module in ``gpu_cases/`` (those in ``ops`` when given)."""
    found = []
    for path in sorted(CASES_DIR.glob("*.py")):
        if path.stem.startswith("_") or (ops and path.stem not in ops):
            continue
        spec = importlib.util.spec_from_file_location(f"gpu_cases_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        found.extend((path.stem, case) for case in module.cases(size))
    return found


def _tensors(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for item in out for t in _tensors(item)]
    if isinstance(out, dict):
        return [t for item in out.values() for t in _tensors(item)]
    return []


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_call(fn, inputs: dict, backward: bool):
    """A callable running ``fn(**inputs)``: without autograd, or forward and backward. It is called once
    here, so that a backend that cannot run (fla not installed) fails before the timing."""
    if not backward:
        def forward():
            with torch.no_grad():
                fn(**inputs)
        forward()
        return forward
    leaves = [t for t in inputs.values() if isinstance(t, torch.Tensor) and t.requires_grad]
    first = [t for t in _tensors(fn(**inputs)) if t.requires_grad]
    grads = [torch.randn_like(t) for t in first]

    def forward_backward():
        outs = [t for t in _tensors(fn(**inputs)) if t.requires_grad]
        torch.autograd.grad(outs, leaves, grads, allow_unused=True)
    return forward_backward


def time_interleaved(calls: dict, device: torch.device, repeats: int, warmup: int) -> dict:
    """Median seconds of each callable, the callables taking turns within each repetition."""
    for _ in range(warmup):
        for call in calls.values():
            call()
    _sync(device)
    names = list(calls)
    times = {name: [] for name in names}
    pending = []
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                calls[name]()
                end.record()
                pending.append((name, start, end))
            else:
                t0 = time.perf_counter()
                calls[name]()
                times[name].append(time.perf_counter() - t0)
    _sync(device)
    for name, start, end in pending:
        times[name].append(start.elapsed_time(end) / 1e3)
    return {name: statistics.median(v) for name, v in times.items()}


@contextlib.contextmanager
def backends(name: str):
    """Every op on backend ``name``: "torch" for all of them, or "triton" for each op that has it (asked for
    by name, so that it runs on the CPU too under Triton's interpreter)."""
    from ssmlab.ops._dispatch import registered_ops

    if name == "torch":
        changes = {"SSMLAB_BACKEND": "torch"}
    else:
        changes = {op.env_var: name for op in registered_ops() if name in op.backends}
    saved = {key: os.environ.get(key) for key in changes}
    os.environ.update(changes)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                del os.environ[key]
            else:
                os.environ[key] = value


def _fmt_ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.3f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None else f"{a / b:.3f}"


def run_cases(args, device: torch.device, dtype: torch.dtype) -> list[list[str]]:
    peak = peak_bandwidth(device, args.peak_gbs)
    rows = []
    for op, case in load_cases(args.size, args.ops):
        for backward in (False, True):
            calls, errors = {}, {}
            for backend in ("triton", "torch", "fla"):
                fn = case["run"].get(backend)
                if fn is None:
                    continue
                try:
                    calls[backend] = make_call(fn, case["inputs"](device, dtype), backward)
                except Exception as error:  # fla not installed, or a kernel that does not run here
                    errors[backend] = f"{type(error).__name__}: {error}".splitlines()[0][:120]
            times = time_interleaved(calls, device, args.repeats, args.warmup)
            for backend, message in errors.items():
                print(f"  {case['name']} {backend}: not run ({message})", file=sys.stderr)
            t, to, fl = times.get("triton"), times.get("torch"), times.get("fla")
            hbm = "-"
            if not backward and t is not None and peak is not None and dtype in (torch.bfloat16, torch.float16):
                hbm = f"{case['bytes'] / t / peak:.2f}"
            rows.append([case["name"], "fwd+bwd" if backward else "forward", _fmt_ms(t), _fmt_ms(to), _fmt_ms(fl),
                         _ratio(t, to), _ratio(t, fl), hbm])
            print(" | ".join(rows[-1]), file=sys.stderr, flush=True)
    return rows


def run_model(args, device: torch.device, dtype: torch.dtype) -> list[list[str]]:
    """The Mamba-2 stack's forward and backward with the triton and the torch backends, and its projections."""
    import ssmlab

    if args.size == "real":
        d_model, batch, length, options = 2048, 4, 2048, {}
    else:
        d_model, batch, length, options = 64, 1, 24, {"d_state": 16, "headdim": 16, "chunk_size": 8}
    torch.manual_seed(0)
    model = ssmlab.create_model("mamba2", head="lm", d_model=d_model, n_layers=args.layers, vocab_size=256,
                                mlp=False, mixer_options=options, device=device, dtype=dtype)
    stack = model.backbone
    x = torch.randn(batch, length, d_model, device=device, dtype=dtype, requires_grad=True)
    params = [p for p in stack.parameters() if p.requires_grad]
    grad_out = torch.randn(batch, length, d_model, device=device, dtype=dtype)

    def stack_call(backend):
        def call():
            with backends(backend):
                y, _ = stack(x)
                torch.autograd.grad(y, [x] + params, grad_out)
        return call

    mixers = [layer.mixer for layer in stack.layers]
    ins = [torch.randn(batch, length, d_model, device=device, dtype=dtype, requires_grad=True) for _ in mixers]
    mids = [torch.randn(batch, length, m.out_proj.in_features, device=device, dtype=dtype, requires_grad=True)
            for m in mixers]
    proj_grads = [(torch.randn(batch, length, m.in_proj.out_features, device=device, dtype=dtype),
                   torch.randn(batch, length, d_model, device=device, dtype=dtype)) for m in mixers]

    def projections():
        for m, a, b, (ga, gb) in zip(mixers, ins, mids, proj_grads):
            outs = [m.in_proj(a), m.out_proj(b)]
            leaves = [a, b] + [p for p in (*m.in_proj.parameters(), *m.out_proj.parameters())]
            torch.autograd.grad(outs, leaves, [ga, gb])

    calls = {"triton": stack_call("triton"), "torch": stack_call("torch"), "matmuls": projections}
    if args.size == "tiny":
        times = time_interleaved(calls, device, args.repeats, args.warmup)
    else:
        times = time_interleaved(calls, device, max(3, args.repeats // 4), max(1, args.warmup))
    name = f"mamba2 stack d_model={d_model} layers={args.layers} B={batch} L={length}"
    return [[name, "fwd+bwd", _fmt_ms(times["triton"]), _fmt_ms(times["torch"]), _fmt_ms(times["matmuls"]),
             _ratio(times["triton"], times["torch"]), _ratio(times["triton"], times["matmuls"])]]


def print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    for r in [header, ["-" * w for w in widths]] + rows:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=["real", "tiny"], default="real")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--ops", nargs="*", help="the gpu_cases modules to run (all by default)")
    parser.add_argument("--peak-gbs", type=float, default=None, help="peak HBM bandwidth in GB/s")
    parser.add_argument("--layers", type=int, default=4, help="layers of the Mamba-2 stack")
    parser.add_argument("--no-model", action="store_true", help="skip the Mamba-2 stack")
    args = parser.parse_args(argv)
    if args.size == "tiny":
        args.repeats, args.warmup = 1, 0
        args.layers = min(args.layers, 2)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = peak_bandwidth(device, args.peak_gbs)
    import triton

    print(f"device {name}, peak {'unknown' if peak is None else f'{peak / 1e9:.0f} GB/s'}; torch {torch.__version__},"
          f" triton {triton.__version__}; {args.dtype}; median of {args.repeats} after {args.warmup} warm-up")
    rows = run_cases(args, device, dtype)
    print_table(["case", "pass", "triton ms", "torch ms", "fla ms", "triton/torch", "triton/fla", "HBM"], rows)
    if not args.no_model:
        print()
        print_table(["model", "pass", "triton ms", "torch ms", "matmuls ms", "triton/torch", "triton/matmuls"],
                    run_model(args, device, dtype))


if __name__ == "__main__":
    main()
