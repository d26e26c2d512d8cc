"""``benchmarks/gpu.py`` runs end to end on its tiny size on the CPU, through Triton's interpreter."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.triton
def test_gpu_benchmark_smoke():
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("SSMLAB_BACKEND", None)
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--size", "tiny", "--device", "cpu"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    for case in ("selective_scan B=1 L=40", "causal_conv B=1 L=40"):
        rows = [line for line in lines if line.startswith(case)]
        assert [row.split()[5] for row in rows] == ["forward", "fwd+bwd"], done.stdout
        assert all(float(row.split()[6]) > 0 for row in rows), done.stdout  # a triton time was measured
    assert any(line.startswith("mamba2 stack") for line in lines), done.stdout
