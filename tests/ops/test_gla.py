import importlib

import pytest
import torch
import torch.nn.functional as F

from ssmlab.ops import gla, gla_step
from ssmlab.ops.gla import gla_op
from tests.utils import LENGTHS, assert_backend_grads_match, assert_close

BACKENDS = [name for name in gla_op.backends if name != "triton"]  # triton: tests/ops/test_gla_triton.py


def _inputs(length, batch=2, heads=2, key_dim=3, value_dim=4, seed=0):
    """q, k, v, per-key log_decay < 0 (log-sigmoid, as GLA's gates) and an initial state, in float64."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    q, k, v = r(batch, length, heads, key_dim), r(batch, length, heads, key_dim), r(batch, length, heads, value_dim)
    log_decay = F.logsigmoid(2 * r(batch, length, heads, key_dim) + 2)
    return q, k, v, log_decay, r(batch, heads, key_dim, value_dim)


# Chunk sizes: one position, not a power of two (padded inside the chunk), the default, and L itself.
@pytest.mark.parametrize("chunk_size", [1, 7, 64, "L"])
@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("length", LENGTHS)
def test_torch_matches_reference(length, gated, chunk_size):
    small = dict(batch=1, heads=1, key_dim=2, value_dim=2) if length == 1000 else {}
    q, k, v, log_decay, h0 = _inputs(length, **small)
    log_decay = log_decay if gated else torch.zeros_like(log_decay)
    chunk_size = length if chunk_size == "L" else chunk_size
    want = gla(q, k, v, log_decay, initial_state=h0, return_final_state=True, backend="reference")
    got = gla(q, k, v, log_decay, initial_state=h0, return_final_state=True, chunk_size=chunk_size, backend="torch")
    assert_close(got[0], want[0], atol=1e-12, rtol=1e-10, name=f"o (chunk {chunk_size})")
    assert_close(got[1], want[1], atol=1e-12, rtol=1e-10, name=f"final state (chunk {chunk_size})")


def test_without_initial_state():
    q, k, v, log_decay, _ = _inputs(65)
    want = gla(q, k, v, log_decay, return_final_state=True, backend="reference")
    got = gla(q, k, v, log_decay, return_final_state=True, chunk_size=32, backend="torch")
    assert_close(got[0], want[0], atol=1e-12, name="o")
    assert_close(got[1], want[1], atol=1e-12, name="final state")


def test_equals_decayed_attention():
    """o_i = scale sum_{j<=i} sum_k q_ik k_jk exp(G_ik - G_jk) v_j, G the cumulative log-decay: the parallel form."""
    q, k, v, log_decay, _ = _inputs(40)
    cumulative = log_decay.cumsum(dim=1)  # (B, L, H, K)
    weights = torch.einsum("bihk,bjhk->bhij", q * cumulative.exp(), k * (-cumulative).exp())
    weights = weights.tril() * q.shape[-1] ** -0.5
    want = torch.einsum("bhij,bjhv->bihv", weights, v)
    for backend in BACKENDS:
        assert_close(gla(q, k, v, log_decay, chunk_size=32, backend=backend), want, atol=1e-10, name=backend)


def test_chunk_groups(monkeypatch):
    """Chunks taken a few at a time (groups of 3 chunks, the last of 1) give the same outputs and gradients."""
    backend_module = importlib.import_module("ssmlab.ops.gla.torch")
    leaves = [t.clone().requires_grad_(True) for t in _inputs(200)]
    results = {}
    for name, group_elements in (("one group", None), ("groups of 3", 3 * 2 * 2 * 16 * 16)):
        if group_elements is not None:
            monkeypatch.setattr(backend_module, "GROUP_ELEMENTS", group_elements)
            assert len(backend_module.chunk_groups(13, 2 * 2 * 16 * 16)) == 5
        o, state = gla(*leaves[:4], initial_state=leaves[4], chunk_size=16, return_final_state=True, backend="torch")
        grads = torch.autograd.grad(o.sin().sum() + state.square().sum(), leaves)
        results[name] = [o, state, *grads]
    for label, got, want in zip(["o", "state", "q", "k", "v", "log_decay", "h0"], results["groups of 3"],
                                results["one group"]):
        assert_close(got, want, atol=1e-12, rtol=1e-10, name=label)
    want = gla(*(t.detach() for t in leaves[:4]), initial_state=leaves[4].detach(), backend="reference")
    assert_close(results["groups of 3"][0], want, atol=1e-12, name="o against the reference")


@pytest.mark.parametrize("initial_state", [False, True])
@pytest.mark.parametrize("length", [1, 2, 65])
def test_gradients_match_reference(length, initial_state):
    q, k, v, log_decay, h0 = _inputs(length)
    leaves = {"q": q, "k": k, "v": v, "log_decay": log_decay}
    if initial_state:
        leaves["initial_state"] = h0

    def run(backend, q, k, v, log_decay, initial_state=None):
        return gla(q, k, v, log_decay, initial_state=initial_state, chunk_size=32, return_final_state=True,
                   backend=backend)

    assert_backend_grads_match(run, leaves)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck(backend):
    tensors = tuple(t.requires_grad_(True) for t in _inputs(5, batch=1, key_dim=2, value_dim=2))

    def fn(q, k, v, log_decay, h0):
        return gla(q, k, v, log_decay, initial_state=h0, chunk_size=2, return_final_state=True, backend=backend)

    assert torch.autograd.gradcheck(fn, tensors)


@pytest.mark.parametrize("backend", BACKENDS)
def test_split_sequence_passes_state(backend):
    q, k, v, log_decay, h0 = _inputs(50)
    whole = gla(q, k, v, log_decay, initial_state=h0, chunk_size=16, backend=backend)
    first, state = gla(q[:, :23], k[:, :23], v[:, :23], log_decay[:, :23], initial_state=h0, chunk_size=16,
                       return_final_state=True, backend=backend)
    second = gla(q[:, 23:], k[:, 23:], v[:, 23:], log_decay[:, 23:], initial_state=state, chunk_size=16,
                 backend=backend)
    assert_close(torch.cat([first, second], 1), whole, atol=1e-12, name="two pieces vs one")


def test_step_matches_forward():
    q, k, v, log_decay, h0 = _inputs(11)
    want, want_state = gla(q, k, v, log_decay, initial_state=h0, chunk_size=4, return_final_state=True)
    state = h0
    for t in range(11):
        o, state = gla_step(q[:, t], k[:, t], v[:, t], log_decay[:, t], state)
        assert_close(o, want[:, t], atol=1e-12, name=f"step {t}")
    assert_close(state, want_state, atol=1e-12, name="state after steps")


def test_scale():
    """The default scale is K^-0.5 (flash-linear-attention's); any other multiplies o."""
    q, k, v, log_decay, h0 = _inputs(9, key_dim=4)
    unscaled = gla(q, k, v, log_decay, initial_state=h0, scale=1.0)
    assert_close(gla(q, k, v, log_decay, initial_state=h0), unscaled / 2, atol=1e-12, name="default scale")
    assert_close(gla(q, k, v, log_decay, initial_state=h0, scale=3.0, backend="reference"), unscaled * 3, atol=1e-12,
                 name="scale 3")


def test_strong_decay_stays_finite_in_float32():
    """g = -30 on some keys: exp(-G) would overflow float32 within a chunk; the chunked form never forms it."""
    q, k, v, log_decay, h0 = (t.float() for t in _inputs(130))
    log_decay[..., 0] = -30.0
    log_decay[:, ::7, :, 0] = 0.0
    want = gla(*(t.double() for t in (q, k, v, log_decay)), initial_state=h0.double(), backend="reference")
    got = gla(q, k, v, log_decay, initial_state=h0, backend="torch")
    assert got.dtype == torch.float32
    assert_close(got.double(), want, atol=1e-4, name="float32, strong decay")


def test_float32_long_sequence():
    q, k, v, log_decay, h0 = _inputs(1000, batch=1, heads=1, key_dim=4, value_dim=4)
    want = gla(q, k, v, log_decay, initial_state=h0, backend="reference")
    got = gla(*(t.float() for t in (q, k, v, log_decay)), initial_state=h0.float(), backend="torch")
    assert_close(got.double(), want, atol=1e-4 * want.abs().max().item(), name="float32 L=1000")


def test_bad_inputs():
    q, k, v, log_decay, h0 = _inputs(8)
    with pytest.raises(ValueError, match=r"k must have shape \(2, 8, 2, 3\)"):
        gla(q, k[..., :2], v, log_decay)
    with pytest.raises(ValueError, match=r"q must have shape \(B, L, H, K\)"):
        gla(q[0], k, v, log_decay)
    with pytest.raises(ValueError, match=r"log_decay must have shape \(2, 8, 2, 3\)"):
        gla(q, k, v, log_decay[..., 0])
    with pytest.raises(ValueError, match=r"initial_state must have shape \(2, 2, 3, 4\)"):
        gla(q, k, v, log_decay, initial_state=h0.transpose(-1, -2))
    with pytest.raises(ValueError, match="real"):
        gla(q, k, v.to(torch.complex128), log_decay)
    with pytest.raises(ValueError, match="chunk_size"):
        gla(q, k, v, log_decay, chunk_size=2.0)
    with pytest.raises(ValueError, match="at least one position"):
        gla(q[:, :0], k[:, :0], v[:, :0], log_decay[:, :0])
    with pytest.raises(ValueError, match=r"state must have shape \(2, 2, 3, 4\)"):
        gla_step(q[:, 0], k[:, 0], v[:, 0], log_decay[:, 0], h0[..., :2])


@pytest.mark.parametrize("backend", BACKENDS)
def test_mixed_precision(backend):
    """bfloat16 inputs with a float32 log_decay: computed in float32, o in bfloat16, the state in float32."""
    q, k, v, log_decay, _ = _inputs(40)
    q, k, v = q.bfloat16(), k.bfloat16(), v.bfloat16()
    o, state = gla(q, k, v, log_decay.float(), chunk_size=16, return_final_state=True, backend=backend)
    assert o.dtype == torch.bfloat16 and state.dtype == torch.float32
    want = gla(q.double(), k.double(), v.double(), log_decay.float().double(), backend="reference")
    assert_close(o.double(), want, atol=2e-2 * want.abs().max().item(), name="bfloat16 o")
    o_t, _ = gla_step(q[:, 0], k[:, 0], v[:, 0], log_decay[:, 0].float(), torch.zeros_like(state))
    assert o_t.dtype == torch.bfloat16
