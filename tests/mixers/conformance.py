"""The checks of the mixer contract, as plain functions so that a test can also show
that a deliberately broken mixer fails them."""

from __future__ import annotations

import torch

from tests.utils import assert_close

D_MODEL = 16
TOL = 1e-9  # float64 comparisons between forms of the same computation


def make(cls, options, dtype=torch.float64, d_model=D_MODEL):
    torch.manual_seed(0)
    return cls(d_model, **options, dtype=dtype)


def inputs(batch, length, d_model=D_MODEL, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, length, d_model, generator=g, dtype=torch.float64).to(dtype)


def check_step_matches_forward(mixer, length=9, batch=2):
    x = inputs(batch, length, mixer.d_model)
    with torch.no_grad():
        y = mixer(x)
        state = mixer.init_state(batch, dtype=x.dtype)
        outs = []
        for t in range(length):
            y_t, state = mixer.step(x[:, t], state)
            outs.append(y_t)
        _, final = mixer(x, return_state=True)
    assert_close(torch.stack(outs, 1), y, atol=TOL, rtol=TOL, name=f"{mixer.registry_name}: step vs forward")
    for key in final:
        assert_close(state[key], final[key], atol=TOL, rtol=TOL,
                     name=f"{mixer.registry_name}: state[{key!r}] after steps vs forward")


def check_split_forward(mixer, length=11, split=4, batch=2):
    x = inputs(batch, length, mixer.d_model)
    with torch.no_grad():
        y = mixer(x)
        y1, state = mixer(x[:, :split], return_state=True)
        y2, state2 = mixer(x[:, split:], state, return_state=True)
        _, full_state = mixer(x, return_state=True)
    assert_close(torch.cat([y1, y2], 1), y, atol=TOL, rtol=TOL,
                 name=f"{mixer.registry_name}: forward in two pieces vs one")
    for key in full_state:
        assert_close(state2[key], full_state[key], atol=TOL, rtol=TOL,
                     name=f"{mixer.registry_name}: final state[{key!r}] in two pieces vs one")


def check_causal(mixer, length=10, t=6):
    x = inputs(1, length, mixer.d_model)
    x2 = x.clone()
    x2[:, t] += 1.0
    with torch.no_grad():
        y, y2 = mixer(x), mixer(x2)
    assert_close(y2[:, :t], y[:, :t], atol=TOL, rtol=0, name=f"{mixer.registry_name}: outputs before a change")
    assert (y2[:, t:] - y[:, t:]).abs().max() > 1e-8, "perturbing the input changed no later output"
