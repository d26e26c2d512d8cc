import pytest
import torch

import ssmlab
from ssmlab.models.heads import sample_token
from tests.mixers.variants import first_variant
from tests.utils import assert_close

CAUSAL_MIXERS = [n for n in ssmlab.list_mixers() if ssmlab.registry.get("mixer", n).obj.causal]


@pytest.mark.parametrize("mixer", CAUSAL_MIXERS)
def test_greedy_generation_matches_full_forward(mixer):
    torch.manual_seed(0)
    model = ssmlab.create_model(mixer, d_model=16, n_layers=2, vocab_size=13, dtype=torch.float64,
                                mixer_options=first_variant(mixer))
    prompt = torch.randint(0, 13, (2, 5))
    out = model.generate(prompt, 6, temperature=0)
    assert out.shape == (2, 11) and torch.equal(out[:, :5], prompt)
    seq = prompt
    with torch.no_grad():
        for _ in range(6):
            seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, seq)


def test_sampling_filters():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]]).repeat(2000, 1)
    g = torch.Generator().manual_seed(0)
    top2 = sample_token(logits, 1.0, 2, None, g)
    assert set(top2.tolist()) == {2, 3}
    probs = logits[0].softmax(-1)  # 0.032, 0.087, 0.237, 0.644
    nucleus = sample_token(logits, 1.0, None, 0.8, g)
    assert set(nucleus.tolist()) == {2, 3}
    assert set(sample_token(logits, 1.0, None, 0.5, g).tolist()) == {3}
    everything = sample_token(logits, 1.0, None, None, g)
    freq = torch.bincount(everything, minlength=4).double() / 2000
    assert (freq - probs).abs().max() < 0.05
    assert torch.equal(sample_token(logits[:3], 0, None, None), torch.tensor([3, 3, 3]))


def test_generate_rejects_bad_arguments():
    model = ssmlab.create_model("attention", d_model=16, n_layers=1, vocab_size=5)
    with pytest.raises(ValueError, match="top_p"):
        model.generate(torch.zeros(1, 2, dtype=torch.long), 3, top_p=0.0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate(torch.zeros(1, 2, dtype=torch.long), -1)


@pytest.mark.parametrize("mixer", ["mamba", "mamba2"])
def test_generation_through_the_fast_paths_matches_full_forward(monkeypatch, mixer):
    """At widths where ``project`` sends the LM head (and Mamba-2's input projection) to ``ops.matvec`` and
    Mamba's step runs as ``ops.mamba_step``, the logits of every generated position equal those of the full
    forward (float64), and the fast paths did run."""
    from ssmlab.ops.mamba_step import mamba_step_op
    from tests.layers.test_linear import _spy

    calls = _spy(monkeypatch)
    fused = []
    for name in mamba_step_op.available_backends("cpu"):
        fn = mamba_step_op.resolve(name)
        monkeypatch.setattr(mamba_step_op.backends[name], "fn", lambda *a, _fn=fn: fused.append(1) or _fn(*a))
    torch.manual_seed(0)
    vocab = 1100  # a 1100 x 256 head: above project()'s threshold
    model = ssmlab.create_model(mixer, d_model=256, n_layers=2, vocab_size=vocab, dtype=torch.float64).eval()
    prompt = torch.randint(0, vocab, (2, 7))
    with torch.no_grad():
        logits, states = model.prefill(prompt)
        assert_close(logits, model(prompt)[:, -1], atol=1e-10, name="logits after the prompt")
        tokens = prompt
        for _ in range(4):
            token = logits.argmax(-1)
            tokens = torch.cat([tokens, token[:, None]], dim=1)
            logits, states = model.step(token, states)
            assert_close(logits, model(tokens)[:, -1], atol=1e-10, name=f"logits after {tokens.shape[1]} tokens")
    if mixer == "mamba":  # the head after the prompt and at each step; each layer's step as one op
        assert (len(calls), len(fused)) == (1 + 4, 4 * 2)
    else:  # the head, and the input projection of each layer at each step
        assert (len(calls), len(fused)) == (1 + 4 * 3, 0)


def test_mamba_step_sees_a_changed_A_log():
    """The step keeps -exp(A_log) between tokens; an in-place change of A_log (an optimiser step, a loaded
    checkpoint) must reach the next step."""
    torch.manual_seed(0)
    mixer = ssmlab.create_mixer("mamba", 16, dtype=torch.float64)
    x = torch.randn(2, 16, dtype=torch.float64)
    state = {key: torch.randn_like(t) for key, t in mixer.init_state(2).items()}  # A acts on a nonzero state
    with torch.no_grad():
        mixer.step(x, state)
        mixer.A_log.mul_(0.5)
        mixer.A_log.add_(1.0)
        got, _ = mixer.step(x, state)
    with torch.enable_grad():
        want, _ = mixer.step(x, state)
    assert_close(got, want.detach(), atol=1e-12, name="step after A_log changed")
