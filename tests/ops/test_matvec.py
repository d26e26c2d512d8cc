"""``ops.matvec``: y = x W^T + b for a few rows; every backend against ``F.linear``, gradients, bad inputs."""

import pytest
import torch
import torch.nn.functional as F

from ssmlab.ops import matvec
from ssmlab.ops.matvec import matvec_op
from tests.utils import assert_close

BACKENDS = matvec_op.available_backends("cpu")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rows, outputs, inner", [(1, 1, 1), (1, 130, 7), (3, 64, 33), (5, 257, 96)])
@pytest.mark.parametrize("bias", [False, True])
def test_matches_linear(backend, rows, outputs, inner, bias):
    g = torch.Generator().manual_seed(rows * outputs + inner)
    x, w = torch.randn(rows, inner, generator=g, dtype=torch.float64), torch.randn(outputs, inner, generator=g,
                                                                                   dtype=torch.float64)
    b = torch.randn(outputs, generator=g, dtype=torch.float64) if bias else None
    assert_close(matvec(x, w, b, backend=backend), F.linear(x, w, b), atol=1e-12, name=f"y ({backend})")
    y32 = matvec(x.float(), w.float(), None if b is None else b.float(), backend=backend)
    assert y32.dtype == torch.float32
    assert_close(y32, F.linear(x, w, b), atol=1e-4, rtol=1e-5, name=f"float32 y ({backend})")


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients(backend):
    g = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True) for s in ((2, 9), (70, 9), (70,)))
    assert torch.autograd.gradcheck(lambda *a: matvec(*a, backend=backend), (x, w, b))


@pytest.mark.parametrize("x, w, b, message", [
    (torch.randn(2, 3), torch.randn(4, 5), None, "weight"),
    (torch.randn(3), torch.randn(4, 3), None, "x"),
    (torch.randn(2, 3), torch.randn(4, 3), torch.randn(3), "bias"),
    (torch.randn(2, 3), torch.randn(4, 3).double(), None, "one dtype"),
])
def test_bad_inputs_are_one_line_errors(x, w, b, message):
    with pytest.raises(ValueError, match=message) as info:
        matvec(x, w, b)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("threads", [1, 2])
def test_serial_and_parallel_builds_match_linear(threads):
    """The numba backend runs its serial build with one torch thread and its parallel build with two."""
    pytest.importorskip("numba")
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(threads)
        x, w, b = (torch.randn(*s, generator=g, dtype=torch.float64) for s in ((3, 50), (1000, 50), (1000,)))
        assert_close(matvec(x, w, b, backend="numba"), F.linear(x, w, b), atol=1e-12, name=f"{threads} threads")
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bias", [False, True])
def test_int8_weight_with_a_scale_per_row(backend, bias):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 40, generator=g)
    q = torch.randint(-127, 128, (130, 40), generator=g, dtype=torch.int8)
    scale, b = torch.rand(130, generator=g) * 0.01, torch.randn(130, generator=g) if bias else None
    want = F.linear(x.double(), q.double() * scale.double()[:, None], None if b is None else b.double())
    got = matvec(x, q, b, scale=scale, backend=backend)
    assert got.dtype == torch.float32
    assert_close(got, want, atol=1e-5, rtol=1e-5, name=f"int8 matvec ({backend})")
    xd = x.double().requires_grad_()
    (grad,) = torch.autograd.grad(matvec(xd, q, None, scale=scale.double(), backend=backend).sum(), xd)
    assert_close(grad, (q.double() * scale.double()[:, None]).sum(0).expand(3, -1), atol=1e-12, name="grad of x")


def test_int8_weight_needs_its_scale():
    with pytest.raises(ValueError, match="weight must be a floating point tensor") as info:
        matvec(torch.randn(1, 4), torch.zeros(3, 4, dtype=torch.int8))
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="needs an int8 weight"):
        matvec(torch.randn(1, 4), torch.randn(3, 4), scale=torch.ones(3))
