import pytest
import torch

from ssmlab import ops
from ssmlab.ops import linear_attention, linear_attention_step
from ssmlab.ops.linear_attention import linear_attention_op
from tests.utils import LENGTHS, assert_close

# Every fast backend, with the chunk sizes of the chunkwise one: one position, a size dividing no
# tested L, the default (64: the boundaries at L = 63, 64, 65).
FAST = [("quadratic", 64)] + [("torch", c) for c in (1, 7, 64)]
GRADS = ["q", "k", "v", "log_decay", "initial_state"]


def _inputs(length, batch=2, heads=3, key_dim=4, value_dim=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    q, k, v = r(batch, length, heads, key_dim), r(batch, length, heads, key_dim), r(batch, length, heads, value_dim)
    log_decay = torch.log(torch.tensor([0.5, 0.9, 0.999], dtype=torch.float64)[:heads])
    return q, k, v, log_decay, r(batch, heads, key_dim, value_dim)


def _stepped(q, k, v, log_decay, state):
    ys = []
    for t in range(q.shape[1]):
        y, state = linear_attention_step(q[:, t], k[:, t], v[:, t], state, log_decay=log_decay)
        ys.append(y)
    return torch.stack(ys, 1), state


def test_backends():
    assert {"reference", "torch", "quadratic"} <= set(linear_attention_op.available_backends("cpu"))
    # The highest priority among the backends priority may choose on the CPU (triton is chosen on CUDA only).
    priorities = {name: b.priority for name, b in linear_attention_op.backends.items()
                  if b.auto_devices is None or "cpu" in b.auto_devices}
    assert priorities["torch"] == max(priorities.values())
    assert ops.linear_attention is linear_attention and ops.linear_attention_step is linear_attention_step


def test_reference_is_the_explicit_sum():
    """``y_t = sum_{s <= t} gamma^(t - s) (q_t . k_s) v_s + gamma^(t + 1) q_t S0`` (arXiv 2307.08621, eq. 5)."""
    q, k, v, log_decay, s0 = _inputs(6, batch=1, heads=2)
    y, state = linear_attention(q, k, v, log_decay=log_decay, initial_state=s0, return_final_state=True,
                                backend="reference")
    gamma = torch.exp(log_decay)
    for t in range(6):
        want = sum(gamma[:, None] ** (t - s) * (q[0, t] * k[0, s]).sum(-1, keepdim=True) * v[0, s]
                   for s in range(t + 1))
        want = want + gamma[:, None] ** (t + 1) * torch.einsum("hk,hkv->hv", q[0, t], s0[0])
        assert_close(y[0, t], want, atol=1e-12, name=f"y[{t}]")
    want_state = sum(gamma[:, None, None] ** (5 - s) * k[0, s, :, :, None] * v[0, s, :, None, :] for s in range(6))
    assert_close(state[0], want_state + gamma[:, None, None] ** 6 * s0[0], atol=1e-12, name="final state")


@pytest.mark.parametrize("backend, chunk_size", FAST)
@pytest.mark.parametrize("decay", [False, True])
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("length", LENGTHS)
def test_fast_matches_reference(backend, chunk_size, decay, with_state, length):
    q, k, v, log_decay, s0 = _inputs(length, batch=1, heads=2, key_dim=2, value_dim=3, seed=length)
    kwargs = {"log_decay": log_decay if decay else None, "initial_state": s0 if with_state else None,
              "return_final_state": True}
    want = linear_attention(q, k, v, **kwargs, backend="reference")
    got = linear_attention(q, k, v, **kwargs, chunk_size=chunk_size, backend=backend)
    # Without decay the sums grow like L: compare relative to their scale.
    scale = want[0].abs().max().item()
    assert_close(got[0], want[0], atol=1e-12 * scale, rtol=1e-10, name=f"{backend}/{chunk_size} y")
    assert_close(got[1], want[1], atol=1e-12 * scale, rtol=1e-10, name=f"{backend}/{chunk_size} final state")


@pytest.mark.parametrize("backend", ["reference", "quadratic", "torch"])
@pytest.mark.parametrize("length", [1, 2, 65])
def test_step_and_split_forward_match_forward(backend, length):
    q, k, v, log_decay, s0 = _inputs(length)
    want, want_state = linear_attention(q, k, v, log_decay=log_decay, initial_state=s0, return_final_state=True,
                                        chunk_size=16, backend=backend)
    y, state = _stepped(q, k, v, log_decay, s0)
    assert_close(y, want, atol=1e-11, rtol=1e-11, name="step vs forward: y")
    assert_close(state, want_state, atol=1e-11, rtol=1e-11, name="step vs forward: state")
    a = length // 2
    run = lambda sl, s: linear_attention(q[:, sl], k[:, sl], v[:, sl], log_decay=log_decay,  # noqa: E731
                                         initial_state=s, return_final_state=True, chunk_size=16, backend=backend)
    y1, s1 = run(slice(0, a), s0) if a else (y[:, :0], s0)
    y2, s2 = run(slice(a, None), s1)
    assert_close(torch.cat([y1, y2], 1), want, atol=1e-11, rtol=1e-11, name="split forward: y")
    assert_close(s2, want_state, atol=1e-11, rtol=1e-11, name="split forward: state")


def test_normaliser_is_a_column_of_ones():
    """Katharopoulos' normaliser ``phi(q_t) . z_t`` is the op's output for values that are all ones."""
    q, k, v, log_decay, _ = _inputs(9)
    q, k = q.exp(), k.exp()
    ones = torch.ones_like(v[..., :1])
    y, state = linear_attention(q, k, torch.cat([v, ones], -1), log_decay=log_decay, return_final_state=True)
    gamma = torch.exp(log_decay)
    z = torch.zeros_like(k[:, 0])
    for t in range(9):
        z = gamma[:, None] * z + k[:, t]
        assert_close(y[:, t, :, -1], (q[:, t] * z).sum(-1), atol=1e-12, rtol=1e-12, name=f"normaliser at {t}")
    assert_close(state[..., -1], z, atol=1e-12, rtol=1e-12, name="z, the last state column")
    assert_close(y[..., :-1], linear_attention(q, k, v, log_decay=log_decay), atol=1e-12, rtol=1e-12,
                 name="other columns")


@pytest.mark.parametrize("backend, chunk_size", FAST)
@pytest.mark.parametrize("decay", [False, True])
@pytest.mark.parametrize("length", [1, 2, 65])
def test_gradients_match_reference(backend, chunk_size, decay, length):
    q, k, v, log_decay, s0 = _inputs(length, batch=1, heads=2, key_dim=2, value_dim=3)
    grads = {}
    for name in ("reference", backend):
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v, log_decay, s0)]
        y, state = linear_attention(*leaves[:3], log_decay=leaves[3] if decay else None, initial_state=leaves[4],
                                    return_final_state=True, chunk_size=chunk_size, backend=name)
        (y.sin().sum() + state.square().sum()).backward()
        grads[name] = [t.grad for t in leaves]
    for label, got, want in zip(GRADS, grads[backend], grads["reference"]):
        if not decay and label == "log_decay":
            assert got is None and want is None
            continue
        assert torch.isfinite(got).all(), label
        scale = want.abs().max().item()
        assert_close(got, want, atol=1e-11 * scale, rtol=1e-10, name=f"{backend}/{chunk_size} grad {label}")


@pytest.mark.parametrize("backend", ["quadratic", "torch"])
def test_gradcheck(backend):
    q, k, v, log_decay, s0 = (t.requires_grad_(True) for t in _inputs(5, batch=1, heads=2, key_dim=2, value_dim=2))
    fn = lambda *a: linear_attention(*a[:3], log_decay=a[3], initial_state=a[4],  # noqa: E731
                                     return_final_state=True, chunk_size=2, backend=backend)
    assert torch.autograd.gradcheck(fn, (q, k, v, log_decay, s0))


def test_float32_long_sequence():
    q, k, v, log_decay, s0 = _inputs(1000, batch=1, heads=3, key_dim=2, value_dim=2)
    want = linear_attention(q, k, v, log_decay=log_decay, initial_state=s0, backend="reference")
    for backend in ("quadratic", "torch"):
        got = linear_attention(*(t.float() for t in (q, k, v)), log_decay=log_decay.float(),
                               initial_state=s0.float(), backend=backend)
        assert got.dtype == torch.float32
        assert_close(got.double(), want, atol=1e-5 * want.abs().max().item(), name=f"{backend} float32 L=1000")


def test_bad_inputs():
    q, k, v, log_decay, s0 = _inputs(4)
    with pytest.raises(ValueError, match="k must have shape"):
        linear_attention(q, k[..., :3], v)
    with pytest.raises(ValueError, match="v must have shape"):
        linear_attention(q, k, v[:, :3])
    with pytest.raises(ValueError, match="log_decay must have shape"):
        linear_attention(q, k, v, log_decay=log_decay[:2])
    with pytest.raises(ValueError, match="initial_state must have shape"):
        linear_attention(q, k, v, initial_state=s0[..., :4])
    with pytest.raises(ValueError, match="chunk_size"):
        linear_attention(q, k, v, chunk_size=0)
    with pytest.raises(ValueError, match="L >= 1"):
        linear_attention(q[:, :0], k[:, :0], v[:, :0])
    with pytest.raises(ValueError, match="state must have shape"):
        linear_attention_step(q[:, 0], k[:, 0], v[:, 0], s0[:1])
