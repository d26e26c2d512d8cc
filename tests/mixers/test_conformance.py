"""The mixer contract of DESIGN.md, checked for every registered mixer and each of its
test variants (``VARIANTS`` in tests/mixers/variants.py)."""

from __future__ import annotations

import pytest
import torch

from ssmlab import registry
from ssmlab.mixers.base import Mixer
from tests.mixers.conformance import (D_MODEL, TOL, check_causal, check_split_forward,
                                      check_step_matches_forward, check_variable_lengths, inputs, make)
from tests.mixers.variants import VARIANTS, sequence_length
from tests.utils import assert_close


def _cases():
    # A mixer missing from VARIANTS has no case here; test_variants.py fails for it, saying where to add them.
    cases = []
    for entry in registry.entries("mixer"):
        for i, options in enumerate(VARIANTS.get(entry.name, [])):
            label = entry.name if i == 0 and not options else f"{entry.name}-{'-'.join(f'{k}={v}' for k, v in options.items())}"
            cases.append(pytest.param(entry.obj, options, id=label))
    return cases


CASES = _cases()


def causal_only(cls, options):
    """Skip the causal checks for bidirectional mixers (a class, or an option like ``bidirectional=True``)."""
    if not make(cls, options).causal:
        pytest.skip("bidirectional mixer: no causal contract")


@pytest.mark.parametrize("cls, options", CASES)
@pytest.mark.parametrize("length", [1, 2, 7, 12, 16])
def test_output_shape_and_dtype(cls, options, length):
    if sequence_length(options, length) != length:
        pytest.skip(f"{cls.registry_name} takes sequences of length {sequence_length(options, length)} only")
    for dtype in (torch.float32, torch.float64):
        mixer = make(cls, options, dtype)
        y = mixer(inputs(3, length, dtype=dtype))
        assert y.shape == (3, length, D_MODEL)
        assert y.dtype == dtype
        assert torch.isfinite(y).all()


@pytest.mark.parametrize("cls, options", CASES)
def test_constructor_places_parameters(cls, options):
    mixer = make(cls, options, torch.float64)
    assert isinstance(mixer, Mixer)
    for name, p in mixer.named_parameters():
        assert p.device.type == "cpu", name
        assert p.dtype in (torch.float64, torch.complex128), f"{name} has dtype {p.dtype} under dtype=float64"


@pytest.mark.parametrize("cls, options", CASES)
def test_causality(cls, options):
    causal_only(cls, options)
    check_causal(make(cls, options))


@pytest.mark.parametrize("cls, options", CASES)
def test_step_matches_forward(cls, options):
    causal_only(cls, options)
    check_step_matches_forward(make(cls, options))


@pytest.mark.parametrize("cls, options", CASES)
def test_forward_in_pieces_matches_forward(cls, options):
    causal_only(cls, options)
    check_split_forward(make(cls, options))


@pytest.mark.parametrize("cls, options", CASES)
def test_variable_length_batch(cls, options):
    causal_only(cls, options)
    check_variable_lengths(make(cls, options))


@pytest.mark.parametrize("cls, options", CASES)
def test_lengths_on_bidirectional_mixers(cls, options):
    """A bidirectional mixer that accepts lengths gives each row its unpadded outputs; others refuse them."""
    mixer = make(cls, options)
    if mixer.causal:
        pytest.skip("causal mixers: test_variable_length_batch")
    length = sequence_length(options, 9)
    x, n = inputs(3, length), torch.tensor([length, length - 3, 1])
    if not mixer.accepts_lengths():
        with pytest.raises(ValueError, match="lengths"):
            mixer(x, lengths=n)
        return
    with torch.no_grad():
        y = mixer(x, lengths=n)
        for b, k in enumerate(n.tolist()):
            assert_close(y[b, :k], mixer(x[b:b + 1, :k])[0], atol=TOL, rtol=TOL, name=f"row {b}, length {k}")
            assert bool((y[b, k:] == 0).all())


@pytest.mark.parametrize("cls, options", CASES)
def test_gradients_finite_for_every_parameter(cls, options):
    mixer = make(cls, options, torch.float64)
    x = inputs(2, sequence_length(options, 13)).requires_grad_(True)
    mixer(x).square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for name, p in mixer.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"{name} received no gradient"
            assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"


@pytest.mark.parametrize("cls, options", CASES)
def test_batch_rows_independent(cls, options):
    mixer = make(cls, options)
    x = inputs(4, sequence_length(options, 9))
    with torch.no_grad():
        assert_close(mixer(x[2:3]), mixer(x)[2:3], atol=TOL, rtol=TOL, name="batch of 1 vs row of batch of 4")


@pytest.mark.parametrize("cls, options", CASES)
def test_bad_input_is_a_clear_error(cls, options):
    mixer = make(cls, options)
    expected = f"D={D_MODEL}"
    with pytest.raises(ValueError, match=expected):
        mixer(torch.randn(5, D_MODEL, dtype=torch.float64))  # rank 2
    with pytest.raises(ValueError, match=expected):
        mixer(torch.randn(2, 5, D_MODEL + 1, dtype=torch.float64))  # wrong feature size
    with pytest.raises(ValueError, match=expected):
        mixer(torch.ones(2, 5, D_MODEL, dtype=torch.long))  # integer dtype
    with pytest.raises(ValueError, match=expected):
        mixer(torch.randn(1, 2, 5, D_MODEL, dtype=torch.float64))  # rank 4


@pytest.mark.parametrize("cls, options", CASES)
def test_mismatched_state_is_a_clear_error(cls, options):
    causal_only(cls, options)
    mixer = make(cls, options)
    wrong = mixer.init_state(3, dtype=torch.float64)
    with pytest.raises(ValueError, match="shape"):
        mixer(inputs(2, 4), wrong)
    with pytest.raises(ValueError, match="shape"):
        mixer.step(inputs(2, 1)[:, 0], wrong)
    with pytest.raises(ValueError, match="state"):
        mixer(inputs(2, 4), {"nonsense": torch.zeros(2)})


@pytest.mark.parametrize("cls, options", CASES)
def test_step_errors_clearly_without_recurrent_form(cls, options):
    if make(cls, options).causal:
        pytest.skip("causal mixers step; covered by test_step_matches_forward")
    mixer = make(cls, options)
    with pytest.raises((RuntimeError, ValueError), match=cls.registry_name):
        mixer.step(inputs(2, 1)[:, 0], mixer.init_state(2, dtype=torch.float64))


@pytest.mark.parametrize("cls, options", CASES)
def test_bidirectional_mixer_has_no_state(cls, options):
    """A mixer that is not causal (a class, or built with ``bidirectional=True``) has no state: every
    use of one (init_state, step, return_state, a state passed in) is the same error, naming it."""
    mixer = make(cls, options)
    if mixer.causal:
        pytest.skip("causal mixers have a state; covered by test_step_matches_forward")
    x = inputs(2, sequence_length(options, 4))
    uses = {"init_state": lambda: mixer.init_state(2), "step": lambda: mixer.step(x[:, 0], {}),
            "return_state": lambda: mixer(x, return_state=True), "state": lambda: mixer(x, {})}
    messages = set()
    for use, call in uses.items():
        with pytest.raises(RuntimeError, match=f"{cls.registry_name}.*bidirectional") as info:
            call()
        messages.add(str(info.value))
    assert len(messages) == 1, f"{cls.registry_name}: different errors for the uses of a state: {messages}"


def test_every_registered_mixer_is_covered():
    assert {c.values[0].registry_name for c in CASES} == set(registry.names("mixer"))
    assert {"attention"} <= set(registry.names("mixer"))
