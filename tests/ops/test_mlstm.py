import importlib

import pytest
import torch

from ssmlab.ops import mlstm, mlstm_step
from ssmlab.ops.mlstm import mlstm_op
from tests.utils import LENGTHS, assert_backend_grads_match, assert_close

BACKENDS = list(mlstm_op.backends)


def _inputs(length, batch=2, heads=2, key_dim=3, value_dim=4, seed=0):
    """q, k, v, input gate pre-activations i of spread 3 (the stabiliser matters), forget gate pre-activations
    f around 2, and an initial state (C, n, m), in float64."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    q, k, v = r(batch, length, heads, key_dim), r(batch, length, heads, key_dim), r(batch, length, heads, value_dim)
    i, f = 3 * r(batch, length, heads), r(batch, length, heads) + 2
    state = (r(batch, heads, key_dim, value_dim), r(batch, heads, key_dim), r(batch, heads))
    return q, k, v, i, f, state


def _assert_states_close(got, want, name, **tol):
    for label, a, b in zip(("C", "n", "m"), got, want):
        assert_close(a, b, name=f"{name} {label}", **tol)


@pytest.mark.parametrize("chunk_size", [1, 7, 64, "L"])
@pytest.mark.parametrize("initial_state", [False, True])
@pytest.mark.parametrize("length", LENGTHS)
def test_torch_matches_reference(length, initial_state, chunk_size):
    small = dict(batch=1, heads=1, key_dim=2, value_dim=2) if length == 1000 else {}
    q, k, v, i, f, h0 = _inputs(length, **small)
    chunk_size = length if chunk_size == "L" else chunk_size
    kwargs = dict(initial_state=h0 if initial_state else None, return_final_state=True)
    want = mlstm(q, k, v, i, f, **kwargs, backend="reference")
    got = mlstm(q, k, v, i, f, **kwargs, chunk_size=chunk_size, backend="torch")
    assert_close(got[0], want[0], atol=1e-12, rtol=1e-10, name=f"h (chunk {chunk_size})")
    _assert_states_close(got[1], want[1], f"final state (chunk {chunk_size})", atol=1e-12, rtol=1e-10)


def test_chunk_groups(monkeypatch):
    """Chunks taken a few at a time (groups of 3 chunks, the last of 1) give the same outputs, state and gradients."""
    backend_module = importlib.import_module("ssmlab.ops.mlstm.torch")
    q, k, v, i, f, h0 = _inputs(200)
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v, i, f, *h0)]
    results = {}
    for name, group_elements in (("one group", None), ("groups of 3", 3 * 2 * 2 * 16 * 16)):
        if group_elements is not None:
            monkeypatch.setattr(backend_module, "GROUP_ELEMENTS", group_elements)
            assert len(backend_module.chunk_groups(13, 2 * 2 * 16 * 16)) == 5
        o, state = mlstm(*leaves[:5], initial_state=tuple(leaves[5:]), chunk_size=16, return_final_state=True,
                         backend="torch")
        grads = torch.autograd.grad(o.sin().sum() + sum(s.square().sum() for s in state), leaves)
        results[name] = [o, *state, *grads]
    for label, got, want in zip(["h", "C", "n", "m", "q", "k", "v", "i", "f", "C0", "n0", "m0"],
                                results["groups of 3"], results["one group"]):
        assert_close(got, want, atol=1e-12, rtol=1e-10, name=label)


@pytest.mark.parametrize("initial_state", [False, True])
@pytest.mark.parametrize("length", LENGTHS)
def test_parallel_matches_reference(length, initial_state):
    small = dict(batch=1, heads=1, key_dim=2, value_dim=2) if length == 1000 else {}
    q, k, v, i, f, h0 = _inputs(length, **small)
    kwargs = dict(initial_state=h0 if initial_state else None, return_final_state=True)
    want = mlstm(q, k, v, i, f, **kwargs, backend="reference")
    got = mlstm(q, k, v, i, f, **kwargs, backend="parallel")
    assert_close(got[0], want[0], atol=1e-12, rtol=1e-10, name="h (parallel)")
    _assert_states_close(got[1], want[1], "final state (parallel)", atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("backend", ["torch", "parallel"])
@pytest.mark.parametrize("initial_state", [False, True])
@pytest.mark.parametrize("length", [1, 2, 65])
def test_gradients_match_reference(length, initial_state, backend):
    q, k, v, i, f, h0 = _inputs(length)
    leaves = {"q": q, "k": k, "v": v, "i": i, "f": f}
    if initial_state:
        leaves.update(C0=h0[0], n0=h0[1], m0=h0[2])

    def run(name, q, k, v, i, f, C0=None, n0=None, m0=None):
        o, (memory, normalizer, stabilizer) = mlstm(
            q, k, v, i, f, initial_state=None if C0 is None else (C0, n0, m0), chunk_size=16,
            return_final_state=True, backend="reference" if name == "reference" else backend)
        # The de-stabilised memory and normaliser, C exp(m) and n exp(m), and m itself.
        scale = torch.exp(stabilizer)
        state = torch.cat([(memory * scale[..., None, None]).flatten(2), (normalizer * scale[..., None]),
                           stabilizer[..., None]], dim=-1)
        return o, state

    assert_backend_grads_match(run, leaves, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck(backend):
    q, k, v, i, f, h0 = _inputs(5, batch=1, key_dim=2, value_dim=2)
    leaves = tuple(t.requires_grad_(True) for t in (q, k, v, i, f, *h0))

    def fn(q, k, v, i, f, C0, n0, m0):
        o, state = mlstm(q, k, v, i, f, initial_state=(C0, n0, m0), chunk_size=2, return_final_state=True,
                         backend=backend)
        return o, *state

    assert torch.autograd.gradcheck(fn, leaves)


@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_the_unstabilised_equations(backend):
    """With eps = 0 the paper's unstabilised mLSTM (arXiv 2405.04517 section 2.3): C~_t = f_t C~ + i_t k v^T,
    n~_t = f_t n~ + i_t k, h = C~^T q / max(|n~ . q|, 1) with f = sigmoid, i = exp, q scaled by K^-0.5."""
    q, k, v, i, f, _ = _inputs(20)
    memory, normalizer = torch.zeros(2, 2, 3, 4, dtype=torch.float64), torch.zeros(2, 2, 3, dtype=torch.float64)
    want = []
    for t in range(20):
        forget, write = torch.sigmoid(f[:, t])[..., None], torch.exp(i[:, t])[..., None]
        memory = forget[..., None] * memory + write[..., None] * k[:, t, :, :, None] * v[:, t, :, None, :]
        normalizer = forget * normalizer + write * k[:, t]
        query = q[:, t] / 3 ** 0.5
        denominator = torch.maximum((normalizer * query).sum(-1).abs(), torch.ones(2, 2, dtype=torch.float64))
        want.append(torch.einsum("bhk,bhkv->bhv", query, memory) / denominator[..., None])
    got, (C, n, m) = mlstm(q, k, v, i, f, eps=0.0, chunk_size=8, return_final_state=True, backend=backend)
    assert_close(got, torch.stack(want, 1), atol=1e-12, rtol=1e-10, name="h vs the unstabilised equations")
    assert_close(C * torch.exp(m)[..., None, None], memory, atol=1e-12, rtol=1e-10, name="C exp(m)")
    assert_close(n * torch.exp(m)[..., None], normalizer, atol=1e-12, rtol=1e-10, name="n exp(m)")


@pytest.mark.parametrize("backend", BACKENDS)
def test_split_sequence_passes_state(backend):
    q, k, v, i, f, h0 = _inputs(50)
    whole = mlstm(q, k, v, i, f, initial_state=h0, chunk_size=8, backend=backend)
    first, state = mlstm(q[:, :23], k[:, :23], v[:, :23], i[:, :23], f[:, :23], initial_state=h0, chunk_size=8,
                         return_final_state=True, backend=backend)
    second = mlstm(q[:, 23:], k[:, 23:], v[:, 23:], i[:, 23:], f[:, 23:], initial_state=state, chunk_size=8,
                   backend=backend)
    assert_close(torch.cat([first, second], 1), whole, atol=1e-12, rtol=1e-10, name="two pieces vs one")


@pytest.mark.parametrize("initial_state", [False, True])
def test_step_matches_forward(initial_state):
    q, k, v, i, f, h0 = _inputs(11)
    want, want_state = mlstm(q, k, v, i, f, initial_state=h0 if initial_state else None, chunk_size=4,
                             return_final_state=True)
    state = h0 if initial_state else (torch.zeros_like(h0[0]), torch.zeros_like(h0[1]),
                                      torch.full_like(h0[2], float("-inf")))
    for t in range(11):
        o, state = mlstm_step(q[:, t], k[:, t], v[:, t], i[:, t], f[:, t], state)
        assert_close(o, want[:, t], atol=1e-12, rtol=1e-10, name=f"step {t}")
    _assert_states_close(state, want_state, "state after steps", atol=1e-12, rtol=1e-10)


def test_scale_and_eps():
    """The default scale is K^-0.5, and eps enters h (the default is 1e-6, not 0)."""
    q, k, v, i, f, h0 = _inputs(9, key_dim=4)
    assert_close(mlstm(q, k, v, i, f, initial_state=h0), mlstm(q, k, v, i, f, initial_state=h0, scale=0.5),
                 atol=1e-12, name="default scale")
    default = mlstm(q, k, v, i, f, initial_state=h0, backend="reference")
    no_eps = mlstm(q, k, v, i, f, initial_state=h0, eps=0.0, backend="reference")
    assert (default - no_eps).abs().max() > 0


def test_strong_gates_stay_finite_in_float32():
    """Input gates up to exp(80) and forget gates down to sigmoid(-40) overflow float32 unstabilised; the
    stabilised chunked form stays within 1e-4 of the float64 reference."""
    q, k, v, i, f, _ = (t if isinstance(t, tuple) else t.float() for t in _inputs(130))
    i = i.clone()
    i[:, ::5] = 80.0
    f = f.clone()
    f[:, ::7] = -40.0
    want = mlstm(*(t.double() for t in (q, k, v, i, f)), backend="reference")
    got = mlstm(q, k, v, i, f, backend="torch", chunk_size=16)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    assert_close(got.double(), want, atol=1e-4 * want.abs().max().item(), name="float32, strong gates")


def test_bad_inputs():
    q, k, v, i, f, h0 = _inputs(8)
    with pytest.raises(ValueError, match=r"k must have shape \(2, 8, 2, 3\)"):
        mlstm(q, k[..., :2], v, i, f)
    with pytest.raises(ValueError, match=r"q must have shape \(B, L, H, K\)"):
        mlstm(q[0], k, v, i, f)
    with pytest.raises(ValueError, match=r"i must have shape \(2, 8, 2\)"):
        mlstm(q, k, v, i[:, :5], f)
    with pytest.raises(ValueError, match=r"f must have shape \(2, 8, 2\)"):
        mlstm(q, k, v, i, f[..., None])
    with pytest.raises(ValueError, match=r"initial_state must have shape \(2, 2, 3, 4\)"):
        mlstm(q, k, v, i, f, initial_state=(h0[0].transpose(-1, -2), h0[1], h0[2]))
    with pytest.raises(ValueError, match=r"initial_state n must have shape \(2, 2, 3\)"):
        mlstm(q, k, v, i, f, initial_state=(h0[0], h0[1][..., :2], h0[2]))
    with pytest.raises(ValueError, match=r"initial_state m must have shape \(2, 2\)"):
        mlstm(q, k, v, i, f, initial_state=(h0[0], h0[1], h0[2][..., None]))
    with pytest.raises(ValueError, match=r"initial_state must be a tuple \(C, n, m\)"):
        mlstm(q, k, v, i, f, initial_state=h0[0])
    with pytest.raises(ValueError, match="real"):
        mlstm(q, k, v.to(torch.complex128), i, f)
    with pytest.raises(ValueError, match="chunk_size"):
        mlstm(q, k, v, i, f, chunk_size=0)
    with pytest.raises(ValueError, match="scale"):
        mlstm(q, k, v, i, f, scale="none")
    with pytest.raises(ValueError, match="eps"):
        mlstm(q, k, v, i, f, eps=-1.0)
    with pytest.raises(ValueError, match="at least one position"):
        mlstm(q[:, :0], k[:, :0], v[:, :0], i[:, :0], f[:, :0])
    with pytest.raises(ValueError, match=r"state must have shape \(2, 2, 3, 4\)"):
        mlstm_step(q[:, 0], k[:, 0], v[:, 0], i[:, 0], f[:, 0], (h0[0][..., :2], h0[1], h0[2]))
    with pytest.raises(ValueError, match=r"state must be a tuple \(C, n, m\)"):
        mlstm_step(q[:, 0], k[:, 0], v[:, 0], i[:, 0], f[:, 0], h0[:2])


@pytest.mark.parametrize("backend", BACKENDS)
def test_mixed_precision(backend):
    """bfloat16 inputs: computed in float32, h in bfloat16, the state in float32."""
    q, k, v, i, f = (t.bfloat16() for t in _inputs(40)[:5])
    o, state = mlstm(q, k, v, i, f, chunk_size=16, return_final_state=True, backend=backend)
    assert o.dtype == torch.bfloat16 and all(s.dtype == torch.float32 for s in state)
    want = mlstm(*(t.double() for t in (q, k, v, i, f)), backend="reference")
    assert_close(o.double(), want, atol=2e-2 * want.abs().max().item(), name="bfloat16 h")
    o_t, _ = mlstm_step(q[:, 0], k[:, 0], v[:, 0], i[:, 0], f[:, 0], state)
    assert o_t.dtype == torch.bfloat16
