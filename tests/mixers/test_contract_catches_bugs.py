"""The conformance checks must fail on mixers that break the contract: a test that cannot fail is a defect."""

import pytest

from ssmlab.mixers.attention import Attention
from tests.mixers.conformance import check_causal, check_split_forward, check_step_matches_forward, make


class StepForgetsCache(Attention):
    """Broken on purpose: step ignores the cache it was given."""

    def _step(self, x_t, state):
        return super()._step(x_t, self.init_state(x_t.shape[0], dtype=x_t.dtype))


class ForwardIgnoresState(Attention):
    """Broken on purpose: forward drops the incoming state."""

    def _forward(self, x, state, return_state):
        return super()._forward(x, None, return_state)


class PeeksAhead(Attention):
    """Broken on purpose: non-causal attention that still claims to be causal."""

    def _forward(self, x, state, return_state):
        y, s = super()._forward(x, state, return_state)
        return y + x.flip(1).cumsum(1).flip(1) * 1e-3, s


def test_broken_step_is_caught():
    with pytest.raises(AssertionError, match="step vs forward"):
        check_step_matches_forward(make(StepForgetsCache, {}))


def test_ignored_state_is_caught():
    with pytest.raises(AssertionError, match="two pieces"):
        check_split_forward(make(ForwardIgnoresState, {}))


def test_acausal_mixer_is_caught():
    with pytest.raises(AssertionError, match="before a change"):
        check_causal(make(PeeksAhead, {}))
