import math

import pytest
import torch
import torch.nn.functional as F

from ssmlab.ops import Mamba3State, mamba3, mamba3_step
from tests.utils import LENGTHS, assert_backend_grads_match, assert_close

BACKENDS = ["reference", "torch"]
# (rank or None for SISO, rotary layout)
MODES = [(None, "interleaved"), (2, "halves")]
NAMES = ("x", "dt", "log_alpha", "B", "C", "trap", "theta")
_REFERENCE = {}  # the reference loop's result per (length, rank, rotary), shared by the chunk sizes


def _inputs(length, rank=None, batch=2, heads=4, groups=2, head_dim=3, state_dim=6, pairs=2, seed=0):
    """Float64 inputs as the mixer gives them (dt > 0, log_alpha < 0, trap in (0, 1)) and an initial state."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    ranked = (rank,) if rank else ()
    dt = F.softplus(r(batch, length, heads))
    inputs = dict(x=r(batch, length, *ranked, heads, head_dim), dt=dt,
                  log_alpha=-dt * torch.rand(batch, length, heads, generator=g, dtype=torch.float64),
                  B=r(batch, length, *ranked, groups, state_dim), C=r(batch, length, *ranked, groups, state_dim),
                  trap=torch.sigmoid(r(batch, length, heads)), theta=r(batch, length, heads, pairs))
    rank = rank or 1
    state = Mamba3State(torch.rand(batch, heads, pairs, generator=g, dtype=torch.float64) * 2 * math.pi,
                        r(batch, heads, head_dim, state_dim), r(batch, rank, heads, state_dim),
                        r(batch, rank, heads, head_dim))
    return inputs, state


def _assert_states_close(got, want, atol=1e-12, rtol=1e-10, name="state"):
    for field, a, b in zip(Mamba3State._fields, got, want):
        assert_close(a, b, atol=atol, rtol=rtol, name=f"{name}.{field}")


@pytest.mark.parametrize("chunk_size", [1, 7, 64, "L"])
@pytest.mark.parametrize("rank,rotary", MODES)
@pytest.mark.parametrize("length", LENGTHS)
def test_torch_matches_reference(length, rank, rotary, chunk_size):
    small = dict(batch=1, heads=2, groups=1, head_dim=2, state_dim=4, pairs=1) if length == 1000 else {}
    inputs, h0 = _inputs(length, rank, **small)
    chunk_size = length if chunk_size == "L" else chunk_size
    kwargs = dict(rotary=rotary, initial_state=h0, return_final_state=True)
    key = (length, rank, rotary)
    if key not in _REFERENCE:
        _REFERENCE[key] = mamba3(**inputs, **kwargs, backend="reference")
    want = _REFERENCE[key]
    got = mamba3(**inputs, **kwargs, chunk_size=chunk_size, backend="torch")
    assert_close(got[0], want[0], atol=1e-12, rtol=1e-10, name=f"y (chunk {chunk_size})")
    _assert_states_close(got[1], want[1], name=f"final state (chunk {chunk_size})")


@pytest.mark.parametrize("rank,rotary", MODES)
def test_without_initial_state(rank, rotary):
    inputs, _ = _inputs(65, rank)
    want = mamba3(**inputs, rotary=rotary, return_final_state=True, backend="reference")
    got = mamba3(**inputs, rotary=rotary, return_final_state=True, chunk_size=16, backend="torch")
    assert_close(got[0], want[0], atol=1e-12, name="y")
    _assert_states_close(got[1], want[1])


@pytest.mark.parametrize("initial_state", [False, True])
@pytest.mark.parametrize("rank,rotary", MODES)
@pytest.mark.parametrize("length", [1, 2, 65])
def test_gradients_match_reference(length, rank, rotary, initial_state):
    inputs, h0 = _inputs(length, rank)
    leaves = dict(inputs)
    if initial_state:
        leaves.update({f"h0_{k}": v for k, v in zip(Mamba3State._fields, h0)})

    def run(backend, **t):
        state = Mamba3State(*(t.pop(f"h0_{k}") for k in Mamba3State._fields)) if initial_state else None
        y, s = mamba3(**t, rotary=rotary, initial_state=state, chunk_size=16, return_final_state=True,
                      backend=backend)
        # angle enters through sin so that its wrapping to [0, 2 pi) does not matter
        return y, torch.cat([s.ssm.flatten(1), s.prev_B.flatten(1), s.prev_x.flatten(1), s.angle.sin().flatten(1)], 1)

    assert_backend_grads_match(run, leaves)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck(backend):
    inputs, h0 = _inputs(3, 2, batch=1, heads=1, groups=1, head_dim=2, state_dim=4, pairs=1)
    leaves = [t.requires_grad_(True) for t in (*inputs.values(), h0.ssm, h0.prev_B, h0.prev_x)]

    def fn(x, dt, log_alpha, B, C, trap, theta, ssm, prev_B, prev_x):
        y, s = mamba3(x, dt, log_alpha, B, C, trap, theta=theta, rotary="halves", chunk_size=2,
                      initial_state=Mamba3State(h0.angle, ssm, prev_B, prev_x), return_final_state=True,
                      backend=backend)
        return y, s.ssm, s.prev_B

    assert torch.autograd.gradcheck(fn, leaves)


@pytest.mark.parametrize("rank,rotary", MODES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_split_sequence_passes_state(backend, rank, rotary):
    inputs, h0 = _inputs(50, rank)
    whole = mamba3(**inputs, rotary=rotary, initial_state=h0, chunk_size=8, backend=backend)
    first, state = mamba3(**{k: v[:, :23] for k, v in inputs.items()}, rotary=rotary, initial_state=h0,
                          chunk_size=8, return_final_state=True, backend=backend)
    second = mamba3(**{k: v[:, 23:] for k, v in inputs.items()}, rotary=rotary, initial_state=state, chunk_size=8,
                    backend=backend)
    assert_close(torch.cat([first, second], 1), whole, atol=1e-12, name="two pieces vs one")


@pytest.mark.parametrize("rank,rotary", MODES)
def test_step_matches_forward(rank, rotary):
    inputs, h0 = _inputs(11, rank)
    want, want_state = mamba3(**inputs, rotary=rotary, initial_state=h0, chunk_size=4, return_final_state=True)
    state = h0
    for t in range(11):
        y, state = mamba3_step(*(inputs[k][:, t] for k in NAMES[:6]), state, theta=inputs["theta"][:, t],
                               rotary=rotary)
        assert_close(y, want[:, t], atol=1e-12, name=f"step {t}")
    _assert_states_close(state, want_state, name="state after steps")


def test_three_term_update_by_hand():
    """One head, N = 2 rotated by phi, two positions: h_2 = alpha_2 gamma_1 x_1 B_1^T
    + beta_2 x_1 B_1^T + gamma_2 x_2 B_2^T with B_t rotated by the cumulative angle, y = h C."""
    d = torch.float64
    x = torch.tensor([[[[1.0]], [[2.0]]]], dtype=d)  # (1, 2, 1, 1)
    B = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]], dtype=d)
    C = torch.tensor([[[[1.0, 0.0]], [[1.0, 0.0]]]], dtype=d)
    dt = torch.tensor([[[0.5], [0.25]]], dtype=d)
    log_alpha = torch.tensor([[[-0.1], [-0.2]]], dtype=d)
    trap = torch.tensor([[[0.3], [0.6]]], dtype=d)
    theta = torch.tensor([[[[0.4]], [[0.3]]]], dtype=d)
    rot = lambda phi, v: torch.tensor([v[0] * math.cos(phi) - v[1] * math.sin(phi),  # noqa: E731
                                       v[0] * math.sin(phi) + v[1] * math.cos(phi)], dtype=d)
    b1, b2 = rot(0.4, [1.0, 0.0]), rot(0.7, [0.0, 1.0])
    c2 = rot(0.7, [1.0, 0.0])
    a2 = math.exp(-0.2)
    h2 = a2 * 0.3 * 0.5 * 1.0 * b1 + (1 - 0.6) * 0.25 * a2 * 1.0 * b1 + 0.6 * 0.25 * 2.0 * b2
    for backend in BACKENDS:
        y = mamba3(x, dt, log_alpha, B, C, trap, theta=theta, backend=backend)
        assert_close(y[0, 1, 0, 0], h2 @ c2, atol=1e-14, name=f"y_2 ({backend})")


def test_siso_is_rank_one_mimo():
    inputs, h0 = _inputs(20)
    ranked = dict(inputs, x=inputs["x"][:, :, None], B=inputs["B"][:, :, None], C=inputs["C"][:, :, None])
    siso, s1 = mamba3(**inputs, initial_state=h0, return_final_state=True)
    mimo, s2 = mamba3(**ranked, initial_state=h0, return_final_state=True)
    assert_close(siso, mimo[:, :, 0], atol=0, name="SISO vs rank 1")
    _assert_states_close(s1, s2, atol=0, rtol=0)


def test_float32_long_sequence():
    inputs, h0 = _inputs(1000, 2, batch=1, heads=2, groups=1, head_dim=4, state_dim=4, pairs=1)
    want = mamba3(**inputs, rotary="halves", initial_state=h0, backend="reference")
    got = mamba3(**{k: v.float() for k, v in inputs.items()}, rotary="halves",
                 initial_state=Mamba3State(*(t.float() for t in h0)), backend="torch")
    assert got.dtype == torch.float32
    assert_close(got.double(), want, atol=1e-4 * want.abs().max().item(), name="float32 L=1000")


@pytest.mark.parametrize("backend", BACKENDS)
def test_mixed_precision(backend):
    """bfloat16 inputs: computed in float32, y in bfloat16, the state in float32."""
    inputs, _ = _inputs(40, 2)
    low = {k: v.bfloat16() for k, v in inputs.items()}
    y, state = mamba3(**low, chunk_size=16, return_final_state=True, backend=backend)
    assert y.dtype == torch.bfloat16 and all(t.dtype == torch.float32 for t in state)
    want = mamba3(**{k: v.double() for k, v in low.items()}, backend="reference")
    assert_close(y.double(), want, atol=2e-2 * want.abs().max().item(), name="bfloat16 y")
    y_t, _ = mamba3_step(*(low[k][:, 0] for k in NAMES[:6]), state, theta=low["theta"][:, 0])
    assert y_t.dtype == torch.bfloat16


def test_bad_inputs():
    inputs, h0 = _inputs(8)
    bad = lambda **kw: mamba3(**dict(inputs, **kw))  # noqa: E731
    with pytest.raises(ValueError, match=r"B must have shape \(2, 8, 1, G, N\)"):
        bad(B=inputs["B"][:, :5])
    with pytest.raises(ValueError, match=r"C must have shape \(2, 8, 1, 2, 6\)"):
        bad(C=inputs["C"][..., :4])
    with pytest.raises(ValueError, match=r"dt must have shape \(2, 8, 4\)"):
        bad(dt=inputs["dt"][..., None])
    with pytest.raises(ValueError, match=r"trap must have shape \(2, 8, 4\)"):
        bad(trap=inputs["trap"][:, :3])
    with pytest.raises(ValueError, match=r"log_alpha must have shape \(2, 8, 4\)"):
        bad(log_alpha=inputs["log_alpha"][..., :2])
    with pytest.raises(ValueError, match="divisible by the groups"):
        bad(B=inputs["B"][..., :1, :].expand(-1, -1, 3, -1), C=inputs["C"][..., :1, :].expand(-1, -1, 3, -1))
    with pytest.raises(ValueError, match=r"S <= N // 2"):
        bad(theta=torch.zeros(2, 8, 4, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="rotary must be one of"):
        bad(rotary="pairs")
    with pytest.raises(ValueError, match=r"x must have shape \(B, L, R, H, P\)"):
        bad(x=inputs["x"][0, 0])
    with pytest.raises(ValueError, match="real"):
        bad(x=inputs["x"].to(torch.complex128))
    with pytest.raises(ValueError, match="chunk_size"):
        bad(chunk_size=0)
    with pytest.raises(ValueError, match="at least one position"):
        mamba3(**{k: v[:, :0] for k, v in inputs.items()})
    with pytest.raises(ValueError, match="initial_state must be a Mamba3State"):
        bad(initial_state=h0.ssm)
    with pytest.raises(ValueError, match=r"initial_state.prev_x must have shape \(2, 1, 4, 3\)"):
        bad(initial_state=h0._replace(prev_x=h0.prev_x[..., :2]))
    with pytest.raises(ValueError, match=r"state.ssm must have shape \(2, 4, 3, 6\)"):
        mamba3_step(*(inputs[k][:, 0] for k in NAMES[:6]), h0._replace(ssm=h0.ssm[..., :2]),
                    theta=inputs["theta"][:, 0])
