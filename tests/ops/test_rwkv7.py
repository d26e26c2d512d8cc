import importlib

import pytest
import torch
import torch.nn.functional as F

from ssmlab.ops import gated_delta_rule, gla, rwkv7, rwkv7_step
from ssmlab.ops.rwkv7 import rwkv7_op
from tests.utils import LENGTHS, assert_backend_grads_match, assert_close

BACKENDS = list(rwkv7_op.backends)
NAMES = ["r", "k", "v", "log_decay", "a", "b", "initial_state"]


def _inputs(length, batch=2, heads=2, key_dim=3, value_dim=4, seed=0):
    """r, k, v, log decays in (-exp(-1/2), 0), a = -kappa_hat, b = kappa_hat * iclr (as the RWKV-7 layer gives)
    and an initial state, in float64."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    shape = (batch, length, heads, key_dim)
    kappa, iclr = F.normalize(r(*shape), dim=-1), torch.sigmoid(r(*shape))
    log_decay = -0.6065306597126334 * torch.sigmoid(r(*shape))
    return r(*shape), r(*shape), r(batch, length, heads, value_dim), log_decay, -kappa, kappa * iclr, \
        r(batch, heads, key_dim, value_dim)


@pytest.mark.parametrize("chunk_size", [1, 7, 64, "L"])
@pytest.mark.parametrize("length", LENGTHS)
def test_torch_matches_reference(length, chunk_size):
    small = dict(batch=1, heads=1, key_dim=2, value_dim=2) if length == 1000 else {}
    *x, h0 = _inputs(length, **small)
    chunk_size = length if chunk_size == "L" else chunk_size
    want = rwkv7(*x, initial_state=h0, return_final_state=True, backend="reference")
    got = rwkv7(*x, initial_state=h0, return_final_state=True, chunk_size=chunk_size, backend="torch")
    assert_close(got[0], want[0], atol=1e-12, rtol=1e-10, name=f"o (chunk {chunk_size})")
    assert_close(got[1], want[1], atol=1e-12, rtol=1e-10, name=f"final state (chunk {chunk_size})")


def test_without_initial_state():
    *x, _ = _inputs(65)
    want = rwkv7(*x, return_final_state=True, backend="reference")
    got = rwkv7(*x, chunk_size=16, return_final_state=True, backend="torch")
    assert_close(got[0], want[0], atol=1e-12, name="o")
    assert_close(got[1], want[1], atol=1e-12, name="final state")


def test_chunk_groups(monkeypatch):
    """Chunks taken a few at a time (groups of 3 chunks, the last of 1) give the same outputs and gradients."""
    backend_module = importlib.import_module("ssmlab.ops.rwkv7.torch")
    leaves = [t.clone().requires_grad_(True) for t in _inputs(200)]
    results = {}
    for name, group_elements in (("one group", None), ("groups of 3", 3 * 4 * 2 * 2 * 16 * 16)):
        if group_elements is not None:
            monkeypatch.setattr(backend_module, "GROUP_ELEMENTS", group_elements)
            assert len(backend_module.chunk_groups(13, 4 * 2 * 2 * 16 * 16)) == 5
        o, state = rwkv7(*leaves[:6], initial_state=leaves[6], chunk_size=16, return_final_state=True,
                         backend="torch")
        grads = torch.autograd.grad(o.sin().sum() + state.square().sum(), leaves)
        results[name] = [o, state, *grads]
    for label, got, want in zip(["o", "state", *NAMES], results["groups of 3"], results["one group"]):
        assert_close(got, want, atol=1e-12, rtol=1e-10, name=label)


@pytest.mark.parametrize("initial_state", [False, True])
@pytest.mark.parametrize("length", [1, 2, 65])
def test_gradients_match_reference(length, initial_state):
    x = _inputs(length)
    leaves = dict(zip(NAMES, x)) if initial_state else dict(zip(NAMES[:6], x))

    def run(backend, r, k, v, log_decay, a, b, initial_state=None):
        return rwkv7(r, k, v, log_decay, a, b, initial_state=initial_state, chunk_size=16, return_final_state=True,
                     backend=backend)

    assert_backend_grads_match(run, leaves)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck(backend):
    x = tuple(t.requires_grad_(True) for t in _inputs(5, batch=1, key_dim=2, value_dim=2))

    def fn(*x):
        return rwkv7(*x[:6], initial_state=x[6], chunk_size=2, return_final_state=True, backend=backend)

    assert torch.autograd.gradcheck(fn, x)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gated_delta_rule_is_a_special_case(backend):
    """a = -k, b = alpha beta k, v -> beta v and one decay alpha for every key: the gated delta rule
    ``S = alpha (I - beta k k^T) S + beta k v^T`` (arXiv 2412.06464), with scale 1."""
    q, k, v, _, _, _, h0 = _inputs(37)
    k = F.normalize(k, dim=-1)
    g = torch.Generator().manual_seed(3)
    beta = torch.rand(k.shape[:3], generator=g, dtype=torch.float64)
    log_alpha = -torch.rand(k.shape[:3], generator=g, dtype=torch.float64)
    alpha = log_alpha.exp()[..., None]
    want, want_state = gated_delta_rule(q, k, v, beta, log_alpha=log_alpha, initial_state=h0, scale=1.0,
                                        return_final_state=True, backend="reference")
    got, state = rwkv7(q, k, beta[..., None] * v, log_alpha[..., None].expand_as(k), -k, alpha * beta[..., None] * k,
                       initial_state=h0, chunk_size=8, return_final_state=True, backend=backend)
    assert_close(got, want, atol=1e-12, name="o")
    assert_close(state, want_state, atol=1e-12, name="state")


@pytest.mark.parametrize("backend", BACKENDS)
def test_gla_is_the_case_without_correction(backend):
    """a = b = 0: gated linear attention ``S = diag(w) S + k v^T`` (arXiv 2312.06635), with scale 1."""
    r, k, v, log_decay, a, _, h0 = _inputs(37)
    want = gla(r, k, v, log_decay, initial_state=h0, scale=1.0, backend="reference")
    got = rwkv7(r, k, v, log_decay, torch.zeros_like(a), torch.zeros_like(a), initial_state=h0, chunk_size=8,
                backend=backend)
    assert_close(got, want, atol=1e-12, name="o")


def test_one_position_by_hand():
    """S_1 = (diag(w) + b a^T) S_0 + k v^T, o = S_1^T r, with (V, K) official layout transposed."""
    r, k, v, log_decay, a, b, h0 = _inputs(1, batch=1, heads=1)
    r, k, v, w, a, b, s0 = r[0, 0, 0], k[0, 0, 0], v[0, 0, 0], log_decay[0, 0, 0].exp(), a[0, 0, 0], b[0, 0, 0], \
        h0[0, 0]
    official = s0.T @ (torch.diag(w) + a[:, None] * b[None, :]) + v[:, None] * k[None, :]  # (V, K)
    for backend in BACKENDS:
        o, state = rwkv7(*(t[None, None, None] for t in (r, k, v, w.log(), a, b)), initial_state=h0,
                         return_final_state=True, backend=backend)
        assert_close(state[0, 0], official.T, atol=1e-13, name=f"{backend} state")
        assert_close(o[0, 0, 0], official @ r, atol=1e-13, name=f"{backend} o")


@pytest.mark.parametrize("backend", BACKENDS)
def test_split_sequence_passes_state(backend):
    *x, h0 = _inputs(50)
    whole = rwkv7(*x, initial_state=h0, chunk_size=8, backend=backend)
    first, state = rwkv7(*(t[:, :23] for t in x), initial_state=h0, chunk_size=8, return_final_state=True,
                         backend=backend)
    second = rwkv7(*(t[:, 23:] for t in x), initial_state=state, chunk_size=8, backend=backend)
    assert_close(torch.cat([first, second], 1), whole, atol=1e-12, name="two pieces vs one")


def test_step_matches_forward():
    *x, h0 = _inputs(11)
    want, want_state = rwkv7(*x, initial_state=h0, chunk_size=4, return_final_state=True, scale=0.5)
    state = h0
    for t in range(11):
        o, state = rwkv7_step(*(u[:, t] for u in x), state, scale=0.5)
        assert_close(o, want[:, t], atol=1e-12, name=f"step {t}")
    assert_close(state, want_state, atol=1e-12, name="state after steps")


def test_scale():
    *x, h0 = _inputs(9)
    unscaled = rwkv7(*x, initial_state=h0)
    assert_close(rwkv7(*x, initial_state=h0, scale=3.0), 3 * unscaled, atol=1e-12, name="scale 3")
    assert_close(rwkv7(*x, initial_state=h0, scale=1.0, backend="reference"), unscaled, atol=1e-12,
                 name="default scale 1")


def test_strong_decay_stays_finite_in_float32():
    """log_decay = -30 per position on most keys: exp(-G) would overflow float32 within a chunk; the chunked form
    never forms it. The gradients stay finite too."""
    r, k, v, _, a, b, h0 = (t.float() for t in _inputs(130))
    log_decay = torch.full_like(r, -30.0)
    log_decay[:, ::7] = 0.0
    log_decay[..., 0] = -0.01
    want = rwkv7(*(t.double() for t in (r, k, v, log_decay, a, b)), initial_state=h0.double(), backend="reference")
    leaves = [t.clone().requires_grad_(True) for t in (r, k, v, log_decay, a, b, h0)]
    got = rwkv7(*leaves[:6], initial_state=leaves[6], backend="torch")
    assert got.dtype == torch.float32
    assert_close(got.double(), want, atol=1e-4, name="float32, strong decay")
    got.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in leaves)


def test_float32_long_sequence():
    *x, h0 = _inputs(1000, batch=1, heads=1, key_dim=4, value_dim=4)
    want = rwkv7(*x, initial_state=h0, backend="reference")
    got = rwkv7(*(t.float() for t in x), initial_state=h0.float(), backend="torch")
    assert_close(got.double(), want, atol=1e-4 * want.abs().max().item(), name="float32 L=1000")


def test_bad_inputs():
    r, k, v, log_decay, a, b, h0 = _inputs(8)
    with pytest.raises(ValueError, match=r"k must have shape \(2, 8, 2, 3\)"):
        rwkv7(r, k[..., :2], v, log_decay, a, b)
    with pytest.raises(ValueError, match=r"r must have shape \(B, L, H, K\)"):
        rwkv7(r[0], k, v, log_decay, a, b)
    with pytest.raises(ValueError, match=r"log_decay must have shape \(2, 8, 2, 3\)"):
        rwkv7(r, k, v, log_decay[..., 0], a, b)
    with pytest.raises(ValueError, match=r"a must have shape \(2, 8, 2, 3\)"):
        rwkv7(r, k, v, log_decay, a[:, :5], b)
    with pytest.raises(ValueError, match=r"b must have shape \(2, 8, 2, 3\)"):
        rwkv7(r, k, v, log_decay, a, b[:, :, :1])
    with pytest.raises(ValueError, match=r"v must have shape \(2, 8, 2, V\)"):
        rwkv7(r, k, v[:, :7], log_decay, a, b)
    with pytest.raises(ValueError, match=r"initial_state must have shape \(2, 2, 3, 4\)"):
        rwkv7(r, k, v, log_decay, a, b, initial_state=h0.transpose(-1, -2))
    with pytest.raises(ValueError, match="real"):
        rwkv7(r, k, v, log_decay, a.to(torch.complex128), b)
    with pytest.raises(ValueError, match="chunk_size"):
        rwkv7(r, k, v, log_decay, a, b, chunk_size=0)
    with pytest.raises(ValueError, match="scale"):
        rwkv7(r, k, v, log_decay, a, b, scale=None)
    with pytest.raises(ValueError, match="at least one position"):
        rwkv7(*(t[:, :0] for t in (r, k, v, log_decay, a, b)))
    with pytest.raises(ValueError, match=r"state must have shape \(2, 2, 3, 4\)"):
        rwkv7_step(r[:, 0], k[:, 0], v[:, 0], log_decay[:, 0], a[:, 0], b[:, 0], h0[..., :2])
    with pytest.raises(ValueError, match=r"b must have shape \(2, 2, 3\)"):
        rwkv7_step(r[:, 0], k[:, 0], v[:, 0], log_decay[:, 0], a[:, 0], b[:, 0, :1], h0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_mixed_precision(backend):
    """bfloat16 inputs: computed in float32, o in bfloat16, the state in float32."""
    r, k, v, log_decay, a, b, _ = (t.bfloat16() for t in _inputs(40))
    o, state = rwkv7(r, k, v, log_decay.float(), a, b, chunk_size=16, return_final_state=True, backend=backend)
    assert o.dtype == torch.bfloat16 and state.dtype == torch.float32
    want = rwkv7(*(t.double() for t in (r, k, v, log_decay, a, b)), backend="reference")
    assert_close(o.double(), want, atol=2e-2 * want.abs().max().item(), name="bfloat16 o")
    o_t, _ = rwkv7_step(r[:, 0], k[:, 0], v[:, 0], log_decay[:, 0], a[:, 0], b[:, 0], torch.zeros_like(state))
    assert o_t.dtype == torch.bfloat16
