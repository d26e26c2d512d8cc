import importlib

import pytest
import torch
import torch.nn.functional as F

from ssmlab.ops import gated_delta_rule, gated_delta_rule_step
from ssmlab.ops.gated_delta_rule import gated_delta_rule_op
from tests.utils import LENGTHS, assert_backend_grads_match, assert_close

BACKENDS = [name for name in gated_delta_rule_op.backends if name != "triton"]  # triton: its own test file


def _inputs(length, batch=2, heads=2, key_dim=3, value_dim=4, seed=0):
    """q, k (unit-length k, as the mixers give), v, beta in (0, 1), log_alpha < 0 and an initial state, in float64."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    q, k, v = r(batch, length, heads, key_dim), F.normalize(r(batch, length, heads, key_dim), dim=-1), \
        r(batch, length, heads, value_dim)
    beta, log_alpha = torch.sigmoid(r(batch, length, heads)), F.logsigmoid(r(batch, length, heads) + 2)
    return q, k, v, beta, log_alpha, r(batch, heads, key_dim, value_dim)


@pytest.mark.parametrize("chunk_size", [1, 7, 64, "L"])
@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("length", LENGTHS)
def test_torch_matches_reference(length, gated, chunk_size):
    small = dict(batch=1, heads=1, key_dim=2, value_dim=2) if length == 1000 else {}
    q, k, v, beta, log_alpha, h0 = _inputs(length, **small)
    chunk_size = length if chunk_size == "L" else chunk_size
    kwargs = dict(log_alpha=log_alpha if gated else None, initial_state=h0, return_final_state=True)
    want = gated_delta_rule(q, k, v, beta, **kwargs, backend="reference")
    got = gated_delta_rule(q, k, v, beta, **kwargs, chunk_size=chunk_size, backend="torch")
    assert_close(got[0], want[0], atol=1e-12, rtol=1e-10, name=f"o (chunk {chunk_size})")
    assert_close(got[1], want[1], atol=1e-12, rtol=1e-10, name=f"final state (chunk {chunk_size})")


@pytest.mark.parametrize("gated", [False, True])
def test_without_initial_state(gated):
    q, k, v, beta, log_alpha, _ = _inputs(65)
    kwargs = dict(log_alpha=log_alpha if gated else None, return_final_state=True)
    want = gated_delta_rule(q, k, v, beta, **kwargs, backend="reference")
    got = gated_delta_rule(q, k, v, beta, **kwargs, chunk_size=16, backend="torch")
    assert_close(got[0], want[0], atol=1e-12, name="o")
    assert_close(got[1], want[1], atol=1e-12, name="final state")


def test_chunk_groups(monkeypatch):
    """Chunks taken a few at a time (groups of 3 chunks, the last of 1) give the same outputs and gradients."""
    backend_module = importlib.import_module("ssmlab.ops.gated_delta_rule.torch")
    q, k, v, beta, log_alpha, h0 = _inputs(200)
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v, beta, log_alpha, h0)]
    results = {}
    for name, group_elements in (("one group", None), ("groups of 3", 3 * 2 * 2 * 16 * 16)):
        if group_elements is not None:
            monkeypatch.setattr(backend_module, "GROUP_ELEMENTS", group_elements)
            assert len(backend_module.chunk_groups(13, 2 * 2 * 16 * 16)) == 5
        o, state = gated_delta_rule(*leaves[:4], log_alpha=leaves[4], initial_state=leaves[5], chunk_size=16,
                                    return_final_state=True, backend="torch")
        grads = torch.autograd.grad(o.sin().sum() + state.square().sum(), leaves)
        results[name] = [o, state, *grads]
    for label, got, want in zip(["o", "state", "q", "k", "v", "beta", "log_alpha", "h0"], results["groups of 3"],
                                results["one group"]):
        assert_close(got, want, atol=1e-12, rtol=1e-10, name=label)
    want = gated_delta_rule(q, k, v, beta, log_alpha=log_alpha, initial_state=h0, backend="reference")
    assert_close(results["groups of 3"][0], want, atol=1e-12, name="o against the reference")


@pytest.mark.parametrize("initial_state", [False, True])
@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("length", [1, 2, 65])
def test_gradients_match_reference(length, gated, initial_state):
    q, k, v, beta, log_alpha, h0 = _inputs(length)
    leaves = {"q": q, "k": k, "v": v, "beta": beta}
    if gated:
        leaves["log_alpha"] = log_alpha
    if initial_state:
        leaves["initial_state"] = h0

    def run(backend, q, k, v, beta, log_alpha=None, initial_state=None):
        return gated_delta_rule(q, k, v, beta, log_alpha=log_alpha, initial_state=initial_state, chunk_size=16,
                                return_final_state=True, backend=backend)

    assert_backend_grads_match(run, leaves)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck(backend):
    q, k, v, beta, log_alpha, h0 = (t.requires_grad_(True) for t in _inputs(5, batch=1, key_dim=2, value_dim=2))

    def fn(q, k, v, beta, log_alpha, h0):
        return gated_delta_rule(q, k, v, beta, log_alpha=log_alpha, initial_state=h0, chunk_size=2,
                                return_final_state=True, backend=backend)

    assert torch.autograd.gradcheck(fn, (q, k, v, beta, log_alpha, h0))


@pytest.mark.parametrize("backend", BACKENDS)
def test_writing_orthonormal_keys_retrieves_the_values(backend):
    """alpha = 1, beta = 1: each write replaces what its key held, so with orthonormal keys S^T k_i = v_i exactly,
    whatever the memory held before; a key written twice retrieves its last value."""
    g = torch.Generator().manual_seed(1)
    key_dim, value_dim = 6, 3
    keys = torch.linalg.qr(torch.randn(2, key_dim, key_dim, generator=g, dtype=torch.float64))[0]  # (H, K, K)
    keys = keys.transpose(-1, -2)  # rows orthonormal
    order = [0, 1, 2, 3, 4, 5, 2]  # key 2 is written a second time, with a new value
    k = keys[:, order].transpose(0, 1)[None]  # (1, 7, H, K)
    v = torch.randn(1, len(order), 2, value_dim, generator=g, dtype=torch.float64)
    h0 = torch.randn(1, 2, key_dim, value_dim, generator=g, dtype=torch.float64)
    _, state = gated_delta_rule(k, k, v, torch.ones(1, len(order), 2, dtype=torch.float64), initial_state=h0,
                                chunk_size=3, return_final_state=True, backend=backend)
    retrieved = torch.einsum("hik,bhkv->bihv", keys, state)  # (1, K, H, V): S^T k_i for each key i
    want = v[:, :6].clone()
    want[:, 2] = v[:, 6]
    assert_close(retrieved, want, atol=1e-12, name="S^T k_i")


@pytest.mark.parametrize("backend", BACKENDS)
def test_split_sequence_passes_state(backend):
    q, k, v, beta, log_alpha, h0 = _inputs(50)
    whole = gated_delta_rule(q, k, v, beta, log_alpha=log_alpha, initial_state=h0, chunk_size=8, backend=backend)
    first, state = gated_delta_rule(q[:, :23], k[:, :23], v[:, :23], beta[:, :23], log_alpha=log_alpha[:, :23],
                                    initial_state=h0, chunk_size=8, return_final_state=True, backend=backend)
    second = gated_delta_rule(q[:, 23:], k[:, 23:], v[:, 23:], beta[:, 23:], log_alpha=log_alpha[:, 23:],
                              initial_state=state, chunk_size=8, backend=backend)
    assert_close(torch.cat([first, second], 1), whole, atol=1e-12, name="two pieces vs one")


@pytest.mark.parametrize("gated", [False, True])
def test_step_matches_forward(gated):
    q, k, v, beta, log_alpha, h0 = _inputs(11)
    log_alpha = log_alpha if gated else None
    want, want_state = gated_delta_rule(q, k, v, beta, log_alpha=log_alpha, initial_state=h0, chunk_size=4,
                                        return_final_state=True)
    state = h0
    for t in range(11):
        o, state = gated_delta_rule_step(q[:, t], k[:, t], v[:, t], beta[:, t], state,
                                         log_alpha=None if log_alpha is None else log_alpha[:, t])
        assert_close(o, want[:, t], atol=1e-12, name=f"step {t}")
    assert_close(state, want_state, atol=1e-12, name="state after steps")


def test_scale():
    """The default scale is K^-0.5 (flash-linear-attention's); any other multiplies o."""
    q, k, v, beta, log_alpha, h0 = _inputs(9, key_dim=4)
    unscaled = gated_delta_rule(q, k, v, beta, log_alpha=log_alpha, initial_state=h0, scale=1.0)
    assert_close(gated_delta_rule(q, k, v, beta, log_alpha=log_alpha, initial_state=h0), unscaled / 2, atol=1e-12,
                 name="default scale")
    assert_close(gated_delta_rule(q, k, v, beta, log_alpha=log_alpha, initial_state=h0, scale=3.0, backend="reference"),
                 unscaled * 3, atol=1e-12, name="scale 3")


def test_strong_decay_stays_finite_in_float32():
    """log_alpha = -30 per position: exp(-G) would overflow float32 within a chunk; the chunked form never forms it."""
    q, k, v, beta, _, h0 = (t.float() for t in _inputs(130))
    log_alpha = torch.full_like(beta, -30.0)
    log_alpha[:, ::7] = 0.0
    want = gated_delta_rule(*(t.double() for t in (q, k, v, beta)), log_alpha=log_alpha.double(),
                            initial_state=h0.double(), backend="reference")
    got = gated_delta_rule(q, k, v, beta, log_alpha=log_alpha, initial_state=h0, backend="torch")
    assert got.dtype == torch.float32
    assert_close(got.double(), want, atol=1e-5, name="float32, strong decay")


def test_float32_long_sequence():
    q, k, v, beta, log_alpha, h0 = _inputs(1000, batch=1, heads=1, key_dim=4, value_dim=4)
    want = gated_delta_rule(q, k, v, beta, log_alpha=log_alpha, initial_state=h0, backend="reference")
    got = gated_delta_rule(*(t.float() for t in (q, k, v, beta)), log_alpha=log_alpha.float(),
                           initial_state=h0.float(), backend="torch")
    assert_close(got.double(), want, atol=1e-4 * want.abs().max().item(), name="float32 L=1000")


def test_bad_inputs():
    q, k, v, beta, log_alpha, h0 = _inputs(8)
    with pytest.raises(ValueError, match=r"k must have shape \(2, 8, 2, 3\)"):
        gated_delta_rule(q, k[..., :2], v, beta)
    with pytest.raises(ValueError, match=r"q must have shape \(B, L, H, K\)"):
        gated_delta_rule(q[0], k, v, beta)
    with pytest.raises(ValueError, match=r"beta must have shape \(2, 8, 2\)"):
        gated_delta_rule(q, k, v, beta[:, :5])
    with pytest.raises(ValueError, match=r"log_alpha must have shape \(2, 8, 2\)"):
        gated_delta_rule(q, k, v, beta, log_alpha=log_alpha[..., None])
    with pytest.raises(ValueError, match=r"initial_state must have shape \(2, 2, 3, 4\)"):
        gated_delta_rule(q, k, v, beta, initial_state=h0.transpose(-1, -2))
    with pytest.raises(ValueError, match="real"):
        gated_delta_rule(q, k, v.to(torch.complex128), beta)
    with pytest.raises(ValueError, match="chunk_size"):
        gated_delta_rule(q, k, v, beta, chunk_size=0)
    with pytest.raises(ValueError, match="scale"):
        gated_delta_rule(q, k, v, beta, scale="none")
    with pytest.raises(ValueError, match="at least one position"):
        gated_delta_rule(q[:, :0], k[:, :0], v[:, :0], beta[:, :0])
    with pytest.raises(ValueError, match=r"state must have shape \(2, 2, 3, 4\)"):
        gated_delta_rule_step(q[:, 0], k[:, 0], v[:, 0], beta[:, 0], h0[..., :2])


@pytest.mark.parametrize("backend", BACKENDS)
def test_mixed_precision(backend):
    """bfloat16 inputs: computed in float32, o in bfloat16, the state in float32."""
    q, k, v, beta, log_alpha, _ = (t.bfloat16() for t in _inputs(40))
    o, state = gated_delta_rule(q, k, v, beta, log_alpha=log_alpha.float(), chunk_size=16, return_final_state=True,
                                backend=backend)
    assert o.dtype == torch.bfloat16 and state.dtype == torch.float32
    want = gated_delta_rule(*(t.double() for t in (q, k, v, beta)), log_alpha=log_alpha.double(), backend="reference")
    assert_close(o.double(), want, atol=2e-2 * want.abs().max().item(), name="bfloat16 o")
    o_t, _ = gated_delta_rule_step(q[:, 0], k[:, 0], v[:, 0], beta[:, 0], torch.zeros_like(state))
    assert o_t.dtype == torch.bfloat16
