import math

import pytest

from ssmlab.bench import crossover, measure, scaling_exponent, summarise
from ssmlab.bench.efficiency import Measurement


def test_scaling_exponent_recovers_power_laws():
    lengths = [128, 256, 512, 1024]
    assert scaling_exponent(lengths, [3e-4 * n ** 2 for n in lengths]) == pytest.approx(2.0)
    assert scaling_exponent(lengths, [5e-2 * n for n in lengths]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="two or more"):
        scaling_exponent([128], [1.0])


def test_crossover_interpolates_on_log_log_scale():
    lengths = [100, 1000, 10000]
    attention = [n ** 2 / 1e4 for n in lengths]  # 1, 100, 10000
    ssm = [n / 10 for n in lengths]  # 10, 100, 1000: equal at 1000
    assert crossover(lengths, ssm, attention) == pytest.approx(1000)
    # Slower everywhere, or only faster in the middle: no crossover.
    assert crossover(lengths, [2 * a for a in attention], attention) is None
    assert crossover(lengths, [2, 50, 20000], attention) is None
    # Faster everywhere: the first length.
    assert crossover(lengths, [a / 2 for a in attention], attention) == 100
    # Between 100 and 1000: t/r goes 10 -> 0.1, so log crosses zero half way (L = 316).
    assert crossover([100, 1000], [10, 10], [1, 100]) == pytest.approx(math.sqrt(1e5))


def test_measure_and_summarise_tiny_mixers():
    ms = measure("attention", [8, 16], d_model=8, batch_size=2, repeats=1) + \
        measure("s4d", [8, 16], d_model=8, batch_size=2, repeats=1, mixer_options={"d_state": 4})
    assert [(m.mixer, m.length) for m in ms] == [("attention", 8), ("attention", 16), ("s4d", 8), ("s4d", 16)]
    for m in ms:
        assert m.forward_ms > 0 and m.forward_backward_ms > 0 and m.tokens_per_s > 0
        assert m.peak_memory_mb is not None and m.peak_memory_mb > 0
        assert m.n_params > 0
    rows = {r["mixer"]: r for r in summarise(ms)}
    assert rows["attention"]["forward_ms_crossover"] is None
    assert rows["s4d"]["lengths"] == [8, 16] and rows["s4d"]["forward_ms_exponent"] is not None


def test_summary_of_synthetic_measurements():
    def m(name, n, t):
        return Measurement(name, n, 1, 8, t, 2 * t, n / t, None, 1)

    ms = [m("attention", n, n ** 2 / 1e4) for n in (100, 1000, 10000)] + [m("ssm", n, n / 10) for n in (100, 1000, 10000)]
    rows = {r["mixer"]: r for r in summarise(ms)}
    assert rows["ssm"]["forward_ms_exponent"] == pytest.approx(1.0)
    assert rows["attention"]["forward_backward_ms_exponent"] == pytest.approx(2.0)
    assert rows["ssm"]["forward_ms_crossover"] == pytest.approx(1000)
