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


def check_variable_lengths(mixer, length=9, lengths=(9, 4, 1, 7, 0)):
    """A right-padded batch with ``lengths``, continuing from a non-zero state: each row's
    outputs and final state equal those of its unpadded sequence, padded outputs are 0,
    and the merged state carries on (a further forward) as each row's own state does.
    The padding holds random values, so a mixer that lets it in fails."""
    batch = len(lengths)
    x, prefix, more = inputs(batch, length, mixer.d_model), inputs(batch, 3, mixer.d_model, seed=2), \
        inputs(batch, 4, mixer.d_model, seed=3)
    n = torch.tensor(lengths)
    name = mixer.registry_name
    growing = getattr(mixer, "_state_growing_dims", {})
    with torch.no_grad():
        _, s0 = mixer(prefix, return_state=True)
        y, s = mixer(x, s0, return_state=True, lengths=n)
        y_more = mixer(more, s)
        for b, k in enumerate(lengths):
            row_state = {key: v[b:b + 1] for key, v in s0.items()}
            if k:
                y_b, row_state = mixer(x[b:b + 1, :k], row_state, return_state=True)
                assert_close(y[b, :k], y_b[0], atol=TOL, rtol=TOL, name=f"{name}: row {b} outputs, length {k}")
            assert bool((y[b, k:] == 0).all()), f"{name}: row {b}: outputs at padded positions are not 0"
            for key, value in row_state.items():
                if key not in growing:
                    assert_close(s[key][b], value[0], atol=TOL, rtol=TOL,
                                 name=f"{name}: row {b} final state[{key!r}], length {k}")
            assert_close(y_more[b], mixer(more[b:b + 1], row_state)[0], atol=TOL, rtol=TOL,
                         name=f"{name}: row {b} continued from the padded batch's state, length {k}")
