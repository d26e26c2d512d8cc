"""Time and peak memory of every backend of the recurrence ops, with ratios to the reference.

The selective scan and SSD in shapes as in the Mamba papers' 1.3B-scale layers: B=4, D=1536, N=16 for the
selective scan; B=4, H=24, P=64 (D = 1536), N=16, G=1 for SSD; the linear scan over (B=4, L, D=1536);
L in {1024, 4096}.
The gated delta rule (Gated DeltaNet, arXiv 2412.06464) and GLA (arXiv 2312.06635)
run B=4, H=8 heads of K=V=64 with chunk size 64 by default, and so do the mLSTM
(arXiv 2405.04517), RWKV-7 (arXiv 2503.14456) and Mamba-3 (arXiv 2603.15569; SISO, P=N=64, rotary angles on
half the state); ``--batch`` and ``--heads`` change B and H of these, and ``--ops``
picks the ops to time.

Time is the median of ``--repeats`` runs (``--reference-repeats`` for the slow
reference loop), forward only by default, forward and backward with
``--backward``, in one process, after one warm-up run. "speed-up" is reference
time / time and "mem/ref" is peak memory / the reference's peak memory.

Peak memory is the high-water mark of the bytes PyTorch allocates during one
run, inputs not counted: every allocation and free that torch.profiler records
with ``profile_memory=True`` (its event tree, so allocations inside an op and
inside a custom autograd function are seen at the time they happen), summed in
time order. Resident-set measurements were tried first and rejected, since the C
allocator keeps freed memory and hides the difference between backends.

After each op and length, a "bound" line gives a simple lower bound and the fastest backend's time over it:
the larger of (a) the matrix-multiplication FLOPs of the op's chunked form (chunk 64; counted per position and
head below, three times over with ``--backward``), timed as 64x64 batched ``torch.matmul`` products of the
same total FLOPs, and (b) ``torch.exp`` over the decays the op must exponentiate (the selective scan's
B L D N; GLA's B L H K) or, for the linear scan, one ``torch.addcmul`` over its (B, L, D) inputs (the same
memory traffic as the scan), each repeated over a fixed buffer so that memory allocation is not timed.
The bound is a floor of this machine's speed for that work, not an achievable target: it leaves out every
elementwise pass, the sequential part and, for (a), the time of the exponentials.

The machine this runs on may be shared; the load average is printed with the
table, and timings are only comparable within one run. Tensors above glibc's
mmap threshold (at most 32 MiB) come as fresh pages on every allocation, and the
page faults show up in the time of backends that allocate such tensors (SSD's
chunked form at L=4096 runs about 2.5x faster with
``MALLOC_MMAP_THRESHOLD_=8000000000 MALLOC_TRIM_THRESHOLD_=8000000000``); the
table is measured with the allocator's defaults.

    python benchmarks/ops.py [--lengths 1024 4096] [--repeats 5] [--reference-repeats 2]
                             [--backward] [--dtype float32] [--ops gla ...] [--batch 4] [--heads 8]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from torch._C._profiler import _EventType
from torch.profiler import ProfilerActivity, profile

from ssmlab.ops import gated_delta_rule, gla, linear_scan, mamba3, mlstm, rwkv7, selective_scan, ssd
from ssmlab.ops.gated_delta_rule import gated_delta_rule_op
from ssmlab.ops.gla import gla_op
from ssmlab.ops.mamba3 import mamba3_op
from ssmlab.ops.mlstm import mlstm_op
from ssmlab.ops.rwkv7 import rwkv7_op
from ssmlab.ops.scan import linear_scan_op
from ssmlab.ops.selective_scan import selective_scan_op
from ssmlab.ops.ssd import ssd_op


def selective_scan_case(length, dtype, grad):
    b, d, n = 4, 1536, 16
    g = torch.Generator().manual_seed(0)
    u = torch.randn(b, length, d, generator=g, dtype=dtype, requires_grad=grad)
    delta = (torch.randn(b, length, d, generator=g, dtype=dtype) * 0.5).requires_grad_(grad)
    A = (-torch.rand(d, n, generator=g, dtype=dtype) * 4).requires_grad_(grad)
    B = torch.randn(b, length, n, generator=g, dtype=dtype, requires_grad=grad)
    C = torch.randn(b, length, n, generator=g, dtype=dtype, requires_grad=grad)
    D = torch.ones(d, dtype=dtype, requires_grad=grad)
    z = torch.randn(b, length, d, generator=g, dtype=dtype, requires_grad=grad)
    return lambda backend: selective_scan(u, delta, A, B, C, D=D, z=z, delta_softplus=True, backend=backend)


def linear_scan_case(length, dtype, grad):
    b, d = 4, 1536
    g = torch.Generator().manual_seed(0)
    a = torch.sigmoid(torch.randn(b, length, d, generator=g, dtype=dtype) + 2).requires_grad_(grad)
    x = torch.randn(b, length, d, generator=g, dtype=dtype, requires_grad=grad)
    return lambda backend: linear_scan(a, x, backend=backend)


def ssd_case(length, dtype, grad):
    b, h, p, n = 4, 24, 64, 16
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, length, h, p, generator=g, dtype=dtype, requires_grad=grad)
    dt = (torch.rand(b, length, h, generator=g, dtype=dtype) * 0.1).requires_grad_(grad)
    A = (-torch.rand(h, generator=g, dtype=dtype) * 4).requires_grad_(grad)
    B = torch.randn(b, length, 1, n, generator=g, dtype=dtype, requires_grad=grad)
    C = torch.randn(b, length, 1, n, generator=g, dtype=dtype, requires_grad=grad)
    D = torch.ones(h, dtype=dtype, requires_grad=grad)
    return lambda backend: ssd(x, dt, A, B, C, D=D, chunk_size=64, backend=backend)


def gated_delta_rule_case(length, dtype, grad, batch=4, heads=8):
    k_dim = v_dim = 64
    g = torch.Generator().manual_seed(0)
    q = torch.randn(batch, length, heads, k_dim, generator=g, dtype=dtype, requires_grad=grad)
    k = torch.nn.functional.normalize(torch.randn(batch, length, heads, k_dim, generator=g, dtype=dtype), dim=-1)
    k.requires_grad_(grad)
    v = torch.randn(batch, length, heads, v_dim, generator=g, dtype=dtype, requires_grad=grad)
    beta = torch.rand(batch, length, heads, generator=g, dtype=dtype).requires_grad_(grad)
    log_alpha = (-torch.rand(batch, length, heads, generator=g, dtype=dtype) * 0.1).requires_grad_(grad)
    return lambda backend: gated_delta_rule(q, k, v, beta, log_alpha=log_alpha, chunk_size=64, backend=backend)


def gla_case(length, dtype, grad, batch=4, heads=8):
    k_dim = v_dim = 64
    g = torch.Generator().manual_seed(0)
    q = torch.randn(batch, length, heads, k_dim, generator=g, dtype=dtype, requires_grad=grad)
    k = torch.randn(batch, length, heads, k_dim, generator=g, dtype=dtype, requires_grad=grad)
    v = torch.randn(batch, length, heads, v_dim, generator=g, dtype=dtype, requires_grad=grad)
    log_decay = torch.nn.functional.logsigmoid(torch.randn(batch, length, heads, k_dim, generator=g, dtype=dtype) + 3)
    log_decay.requires_grad_(grad)
    return lambda backend: gla(q, k, v, log_decay, chunk_size=64, backend=backend)


def mlstm_case(length, dtype, grad, batch=4, heads=8):
    k_dim = v_dim = 64
    g = torch.Generator().manual_seed(0)
    q = torch.randn(batch, length, heads, k_dim, generator=g, dtype=dtype, requires_grad=grad)
    k = torch.randn(batch, length, heads, k_dim, generator=g, dtype=dtype, requires_grad=grad)
    v = torch.randn(batch, length, heads, v_dim, generator=g, dtype=dtype, requires_grad=grad)
    i = torch.randn(batch, length, heads, generator=g, dtype=dtype, requires_grad=grad)
    f = (torch.randn(batch, length, heads, generator=g, dtype=dtype) + 3).requires_grad_(grad)
    return lambda backend: mlstm(q, k, v, i, f, chunk_size=64, backend=backend)


def mamba3_case(length, dtype, grad, batch=4, heads=8):
    """Mamba-3 SISO with rotary angles on half the state: H heads of P=64, N=64, one group of B and C."""
    p, n = 64, 64
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, length, heads, p, generator=g, dtype=dtype, requires_grad=grad)
    dt = (torch.rand(batch, length, heads, generator=g, dtype=dtype) * 0.1).requires_grad_(grad)
    log_alpha = (-dt.detach() * 2).requires_grad_(grad)
    B = torch.randn(batch, length, 1, n, generator=g, dtype=dtype, requires_grad=grad)
    C = torch.randn(batch, length, 1, n, generator=g, dtype=dtype, requires_grad=grad)
    trap = torch.rand(batch, length, heads, generator=g, dtype=dtype).requires_grad_(grad)
    theta = torch.randn(batch, length, heads, n // 4, generator=g, dtype=dtype, requires_grad=grad)
    return lambda backend: mamba3(x, dt, log_alpha, B, C, trap, theta=theta, chunk_size=64, backend=backend)
def rwkv7_case(length, dtype, grad, batch=4, heads=8):
    dim = 64
    g = torch.Generator().manual_seed(0)
    r, k, v = (torch.randn(batch, length, heads, dim, generator=g, dtype=dtype, requires_grad=grad) for _ in range(3))
    kappa = torch.nn.functional.normalize(torch.randn(batch, length, heads, dim, generator=g, dtype=dtype), dim=-1)
    iclr = torch.sigmoid(torch.randn(batch, length, heads, dim, generator=g, dtype=dtype))
    log_decay = -0.6065 * torch.sigmoid(torch.randn(batch, length, heads, dim, generator=g, dtype=dtype))
    a, b = (-kappa).requires_grad_(grad), (kappa * iclr).requires_grad_(grad)
    log_decay.requires_grad_(grad)
    return lambda backend: rwkv7(r, k, v, log_decay, a, b, chunk_size=64, backend=backend)


BOUND_CHUNK = 64  # the chunk length whose matrix products the FLOP bound counts


def chunked_flops(name, length, batch, heads):
    """Multiply-add FLOPs of the op's chunked form, forward: its main matrix products, per position and head."""
    t = BOUND_CHUNK
    if name == "ssd":
        b, h, p, n = 4, 24, 64, 16
        # C B^T per group (one group of 24 heads), (L o C B^T) (dt x), the chunk states B^T x, the carried C h.
        return 2 * b * length * (t * n + h * (t * p + 2 * p * n))
    d = 64  # K = V = 64
    if name == "gla":
        # q k^T with the decays, the scores times v, q S and the state update k^T v.
        return 2 * batch * heads * length * (2 * t * d + 2 * d * d)
    if name == "gated_delta_rule":
        # k k^T, the triangular solve (T^3 / 3 per chunk), W and U, q k^T, scores times u, W S, q S and k^T u.
        return 2 * batch * heads * length * (4 * t * d + t * t // 3 + t * d + 3 * d * d)
    return None


def matmul_seconds(flops, dtype, repeats):
    """Median seconds of ``flops`` worth of 64x64 batched products, in batches of at most 256 products."""
    per_product = 2 * 64 ** 3
    count = max(1, round(flops / per_product))
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(min(count, 256), 64, 64, generator=g, dtype=dtype) for _ in range(2))
    out = torch.empty_like(a)
    full, rest = divmod(count, 256)

    def run():
        for _ in range(full):
            torch.matmul(a, b, out=out)
        if rest:
            torch.matmul(a[:rest], b[:rest], out=out[:rest])

    return median_seconds(lambda _backend: run(), None, False, repeats)


def elementwise_seconds(numel, dtype, repeats, kind):
    """Median seconds of ``torch.exp`` (kind "exp") or ``torch.addcmul`` over ``numel`` numbers, in 2^20 at a time."""
    size = min(numel, 1 << 20)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(size, generator=g, dtype=dtype)
    out = torch.empty_like(x)
    full, rest = divmod(numel, size)

    def run():
        for i in range(full + (1 if rest else 0)):
            part = size if i < full else rest
            if kind == "exp":
                torch.exp(x[:part], out=out[:part])
            else:
                torch.addcmul(x[:part], x[:part], x[:part], out=out[:part])

    return median_seconds(lambda _backend: run(), None, False, repeats)


def bound_line(name, length, results, dtype, grad, repeats, batch, heads):
    """The op's lower bound (see the module docstring) and the fastest backend's time over it, or None."""
    passes = 3 if grad else 1
    parts = {}
    flops = chunked_flops(name, length, batch, heads)
    if flops is not None:
        parts[f"matmul {passes * flops / 1e9:.2f} GFLOP"] = matmul_seconds(passes * flops, dtype, repeats)
    if name == "selective_scan":
        numel = 4 * length * 1536 * 16
        parts[f"exp {numel / 1e6:.0f} M"] = elementwise_seconds(numel, dtype, repeats, "exp")
    elif name == "gla":
        numel = batch * length * heads * 64
        parts[f"exp {numel / 1e6:.1f} M"] = elementwise_seconds(numel, dtype, repeats, "exp")
    elif name == "linear_scan":
        numel = 4 * length * 1536
        parts[f"addcmul {passes}x {numel / 1e6:.1f} M"] = passes * elementwise_seconds(numel, dtype, repeats,
                                                                                      "addcmul")
    if not parts:
        return None
    label, seconds = max(parts.items(), key=lambda item: item[1])
    backend, (best, _) = min(results.items(), key=lambda item: item[1][0])
    others = "".join(f", {k} {v:.4f} s" for k, v in parts.items() if k != label)
    return (f"{name:<17}{length:>6}  {'bound':<12}{seconds:>10.4f}   ({label}{others}); "
            f"fastest {backend} {best / seconds:.2f}x the bound")


def run_once(fn, backend, grad):
    if grad:
        fn(backend).sum().backward()
    else:
        with torch.no_grad():
            fn(backend)


def _allocations(node, out):
    """Collect (time in ns, bytes; negative for a free) of every allocation event under ``node``."""
    if node.tag == _EventType.Allocation:
        out.append((node.start_time_ns, node.extra_fields.alloc_size))
    for child in node.children:
        _allocations(child, out)
    return out


def peak_mib(fn, backend, grad):
    """High-water mark of the memory PyTorch allocates during one run, in MiB, from the profiler's events."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run_once(fn, backend, grad)
    events = []
    for root in prof.profiler.kineto_results.experimental_event_tree():
        _allocations(root, events)
    live = peak = 0
    for _, size in sorted(events):
        live += size
        peak = max(peak, live)
    return peak / 2**20


def median_seconds(fn, backend, grad, repeats):
    run_once(fn, backend, grad)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run_once(fn, backend, grad)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


CASES = {"selective_scan": selective_scan_case, "linear_scan": linear_scan_case, "ssd": ssd_case,
         "gated_delta_rule": gated_delta_rule_case,
         "gla": gla_case, "mlstm": mlstm_case, "mamba3": mamba3_case, "rwkv7": rwkv7_case}
OPS = {"selective_scan": selective_scan_op, "linear_scan": linear_scan_op, "ssd": ssd_op,
       "gated_delta_rule": gated_delta_rule_op, "gla": gla_op,
       "mlstm": mlstm_op, "mamba3": mamba3_op, "rwkv7": rwkv7_op}
HEADED = ("gated_delta_rule", "gla", "mlstm", "mamba3", "rwkv7")  # ops whose case takes --batch and --heads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--reference-repeats", type=int, default=2, help="the reference loop is slow")
    parser.add_argument("--backward", action="store_true", help="time forward + backward")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--ops", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--batch", type=int, default=4, help="B of the cases with heads (" + ", ".join(HEADED) + ")")
    parser.add_argument("--heads", type=int, default=8, help="H of the cases with heads")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.dtype}, "
          f"{'forward+backward' if args.backward else 'forward'}; median of {args.repeats} runs "
          f"({args.reference_repeats} for the reference); load average {os.getloadavg()[0]:.2f}\n")
    print(f"{', '.join(HEADED)}: B={args.batch}, H={args.heads}, K=V=64 (mamba3: P=N=64), chunk size 64\n")
    header = f"{'op':<17}{'L':>6}  {'backend':<12}{'time (s)':>10}{'speed-up':>10}{'peak MiB':>10}{'mem/ref':>9}"
    print(header)
    print("-" * len(header))
    for name in args.ops:
        op = OPS[name]
        for length in args.lengths:
            sizes = {"batch": args.batch, "heads": args.heads} if name in HEADED else {}
            fn = CASES[name](length, dtype, args.backward, **sizes)
            results = {}
            for backend in ["reference"] + sorted(b for b in op.available_backends("cpu")
                                                 if b != "reference" and op.backends[b].alias_of is None):
                repeats = args.reference_repeats if backend == "reference" else args.repeats
                if backend in ("quadratic", "parallel") and length > 2048:
                    print(f"{name:<17}{length:>6}  {backend:<12}  skipped: O(L^2) memory at this length")
                    continue
                seconds = median_seconds(fn, backend, args.backward, repeats)
                mib = peak_mib(fn, backend, args.backward)
                results[backend] = (seconds, mib)
                ref_s, ref_m = results["reference"]
                print(f"{name:<17}{length:>6}  {backend:<12}{seconds:>10.3f}{ref_s / seconds:>9.2f}x"
                      f"{mib:>10.1f}{mib / ref_m if ref_m else float('nan'):>8.2f}x", flush=True)
            line = bound_line(name, length, results, dtype, args.backward, args.repeats, args.batch, args.heads)
            if line:
                print(line, flush=True)
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
