"""Efficiency of mixers against sequence length: time, throughput and peak memory.

For each mixer at one width, a batch of random inputs of each length runs
forward (inference, no autograd) and forward + backward; the time is the
median of ``repeats`` runs after a warm-up, in one process, so mixers are
compared side by side under the same load. Peak memory is the high-water mark
of the memory PyTorch allocates during one forward + backward run (inputs not
counted): ``torch.cuda.max_memory_allocated`` on a GPU, the profiler's memory
events on a CPU.

From the times, :func:`scaling_exponent` fits ``time ~ L^k`` by least squares
on a log-log scale (k near 1 for a scan or a chunked SSM, near 2 for
attention at long lengths), and :func:`crossover` finds the length at which a
mixer becomes faster than attention, interpolating between measured lengths on
the log-log scale.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass

import torch

from ssmlab.registry import get


@dataclass
class Measurement:
    mixer: str
    length: int
    batch_size: int
    d_model: int
    forward_ms: float
    forward_backward_ms: float
    tokens_per_s: float  # forward (inference) tokens per second
    peak_memory_mb: float | None
    n_params: int

    def as_dict(self) -> dict:
        return asdict(self)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_ms(fn, repeats: int, device: torch.device) -> float:
    fn()  # warm-up: allocator, kernels, caches
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _cpu_peak_mb(fn) -> float | None:
    """High-water mark of PyTorch's CPU allocations during ``fn``, from the profiler's memory events."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    try:
        from torch._C._profiler import _EventType

        events = []
        stack = list(prof.profiler.kineto_results.experimental_event_tree())
        while stack:
            node = stack.pop()
            if node.tag == _EventType.Allocation:
                events.append((node.start_time_ns, node.extra_fields.alloc_size))
            stack.extend(node.children)
    except (ImportError, AttributeError):  # the event tree is not public API: fall back to op totals
        events = [(e.time_range.start, e.cpu_memory_usage) for e in prof.events() if e.cpu_memory_usage]
    live = peak = 0
    for _, size in sorted(events):
        live += size
        peak = max(peak, live)
    return peak / 2**20


def measure(mixer_name: str, lengths, *, d_model: int = 128, batch_size: int = 4, repeats: int = 5,
            device: str = "cpu", dtype: torch.dtype = torch.float32, backward: bool = True, memory: bool = True,
            mixer_options: dict | None = None, seed: int = 0) -> list[Measurement]:
    """Time ``mixer_name`` (built at ``d_model`` with ``mixer_options``) at each length."""
    cls = get("mixer", mixer_name).obj
    dev = torch.device(device)
    torch.manual_seed(seed)
    mixer = cls(d_model, **(mixer_options or {}), device=dev, dtype=dtype)
    n_params = sum(p.numel() for p in mixer.parameters())
    out = []
    for length in lengths:
        x = torch.randn(batch_size, int(length), d_model, device=dev, dtype=dtype)

        def forward():
            with torch.no_grad():
                mixer(x)

        def forward_backward():
            xg = x.detach().requires_grad_()
            mixer(xg).float().square().mean().backward()
            mixer.zero_grad(set_to_none=True)

        fwd = _median_ms(forward, repeats, dev)
        fwd_bwd = _median_ms(forward_backward, repeats, dev) if backward else math.nan
        peak = None
        if memory:
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
                base = torch.cuda.memory_allocated(dev)
                forward_backward()
                _sync(dev)
                peak = (torch.cuda.max_memory_allocated(dev) - base) / 2**20
            else:
                peak = _cpu_peak_mb(forward_backward)
        out.append(Measurement(mixer_name, int(length), batch_size, d_model, fwd, fwd_bwd,
                               batch_size * length / (fwd / 1e3), peak, n_params))
    return out


def scaling_exponent(lengths, times) -> float:
    """Least-squares slope k of ``log time = k log L + c``; needs two or more lengths."""
    points = [(math.log(length), math.log(t)) for length, t in zip(lengths, times) if t > 0 and math.isfinite(t)]
    if len(points) < 2:
        raise ValueError("a scaling exponent needs times at two or more lengths")
    mean_x = statistics.fmean(p[0] for p in points)
    mean_y = statistics.fmean(p[1] for p in points)
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    if sxx == 0:
        raise ValueError("a scaling exponent needs two or more distinct lengths")
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / sxx


def crossover(lengths, times, reference_times) -> float | None:
    """The length from which ``times`` stay below ``reference_times`` (attention's).

    Returns the first measured length if the mixer is faster everywhere, None if it
    is faster at no measured length or falls behind again at the longest; between
    two measured lengths the crossing is interpolated on the log-log scale.
    """
    pairs = sorted(zip(lengths, times, reference_times))
    faster = [t < r for _, t, r in pairs]
    if not faster or not faster[-1]:
        return None
    i = len(faster) - 1
    while i > 0 and faster[i - 1]:
        i -= 1
    if i == 0:
        return float(pairs[0][0])
    (l0, t0, r0), (l1, t1, r1) = pairs[i - 1], pairs[i]
    # log(t / r) goes from >= 0 at l0 to < 0 at l1: find its zero on log L.
    g0, g1 = math.log(t0 / r0), math.log(t1 / r1)
    frac = g0 / (g0 - g1)
    return math.exp(math.log(l0) + frac * (math.log(l1) - math.log(l0)))


def summarise(measurements: list[Measurement], reference: str = "attention") -> list[dict]:
    """Per mixer: the scaling exponents of forward and forward+backward time and the crossover with
    ``reference`` (when it was measured), from measurements at several lengths."""
    by_mixer: dict[str, list[Measurement]] = {}
    for m in measurements:
        by_mixer.setdefault(m.mixer, []).append(m)
    ref = {m.length: m for m in by_mixer.get(reference, [])}
    rows = []
    for name, ms in by_mixer.items():
        ms = sorted(ms, key=lambda m: m.length)
        lengths = [m.length for m in ms]
        row = {"mixer": name, "lengths": lengths}
        for key in ("forward_ms", "forward_backward_ms"):
            times = [getattr(m, key) for m in ms]
            try:
                row[f"{key}_exponent"] = scaling_exponent(lengths, times)
            except ValueError:
                row[f"{key}_exponent"] = None
            common = [m for m in ms if m.length in ref]
            row[f"{key}_crossover"] = None if name == reference or len(common) < 1 else crossover(
                [m.length for m in common], [getattr(m, key) for m in common],
                [getattr(ref[m.length], key) for m in common])
        rows.append(row)
    return rows


def store_measurements(store, measurements: list[Measurement], environment: dict | None = None) -> list[int]:
    """Record each measurement as a finished run of the ``efficiency`` suite (task ``length-L``)."""
    from ssmlab.store import environment_fingerprint

    environment = environment or environment_fingerprint()
    ids = []
    for m in measurements:
        run_id = store.start_run(suite="efficiency", model=m.mixer, task=f"length-{m.length}", seed=0,
                                 config={"efficiency": m.as_dict()}, environment=environment)
        numbers = {k: v for k, v in m.as_dict().items() if isinstance(v, (int, float)) and v is not None}
        store.finish_run(run_id, metrics=numbers, n_params=m.n_params, wall_time_s=m.forward_backward_ms / 1e3,
                         peak_memory_mb=m.peak_memory_mb)
        ids.append(run_id)
    return ids
