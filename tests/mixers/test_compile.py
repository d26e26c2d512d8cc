"""Every registered mixer compiles with ``torch.compile(fullgraph=True)`` (forward and step) and
exports with ``torch.export.export`` (forward), with the outputs of eager mode.

Each mixer is built with its first test variant (tests/mixers/variants.py), at ``D_MODEL = 16``,
batch 2 and 8 positions (or its image's positions), in float32.

The compile checks use ``backend="eager"``: TorchDynamo captures the whole function as one graph
(``fullgraph=True`` fails on any graph break) and runs it without Inductor's code generation, whose
compile time would take minutes for the registry on 2 CPU cores. ``torch.export`` traces the
forward down to ATen operators and runs the exported program. Marked ``compile``
(``pytest -m compile`` runs only these, ``-m "not compile"`` leaves them out).
"""

from __future__ import annotations

import pytest
import torch

import ssmlab
from ssmlab import registry
from tests.mixers.variants import first_variant, sequence_length
from tests.utils import assert_close

pytestmark = pytest.mark.compile

D_MODEL, BATCH, LENGTH = 16, 2, 8
ATOL = 1e-5
NAMES = [entry.name for entry in registry.entries("mixer")]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def build(name):
    torch.manual_seed(0)
    options = first_variant(name)
    mixer = ssmlab.create_mixer(name, D_MODEL, **options).eval()
    x = torch.randn(BATCH, sequence_length(options, LENGTH), D_MODEL)
    return mixer, x


def assert_states_close(actual, expected, name):
    assert set(actual) == set(expected), f"{name}: state keys {sorted(actual)} != {sorted(expected)}"
    for key in expected:
        assert_close(actual[key], expected[key], atol=ATOL, name=f"{name} state[{key!r}]")


@pytest.mark.parametrize("name", NAMES)
def test_compiled_forward_matches_eager(name):
    """The whole forward is one graph; a causal mixer's is a forward split in two with the state
    carried, so the graph also covers the paths with a state in and a state out."""
    mixer, x = build(name)

    def run(x):
        if not mixer.causal:
            return mixer(x), {}
        a = x.shape[1] // 2
        y1, state = mixer(x[:, :a], return_state=True)
        y2, state = mixer(x[:, a:], state, return_state=True)
        return torch.cat([y1, y2], dim=1), state

    with torch.no_grad():
        y, state = run(x)
        y_c, state_c = torch.compile(run, fullgraph=True, backend="eager")(x)
    assert_close(y_c, y, atol=ATOL, name=f"{name} compiled forward")
    assert_states_close(state_c, state, f"{name} compiled forward")


@pytest.mark.parametrize("name", NAMES)
def test_compiled_step_matches_eager(name):
    """Two steps from ``init_state``: the second from a state the first has changed (a cache that
    has grown recompiles, each time as one graph)."""
    mixer, x = build(name)
    if not mixer.causal:
        pytest.skip(f"{name} is not causal: it has no step")
    step = torch.compile(mixer.step, fullgraph=True, backend="eager")
    state = state_c = mixer.init_state(BATCH)
    with torch.no_grad():
        for t in range(2):
            y_t, state = mixer.step(x[:, t], state)
            y_c, state_c = step(x[:, t], state_c)
            assert_close(y_c, y_t, atol=ATOL, name=f"{name} compiled step {t}")
            assert_states_close(state_c, state, f"{name} compiled step {t}")


@pytest.mark.parametrize("name", NAMES)
def test_export_matches_eager(name):
    mixer, x = build(name)
    program = torch.export.export(mixer, (x,))
    with torch.no_grad():
        assert_close(program.module()(x), mixer(x), atol=ATOL, name=f"{name} exported forward")
