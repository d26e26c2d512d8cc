import pytest
import torch

import ssmlab
from tests.utils import assert_close


def test_is_forward_plus_reversed_backward():
    torch.manual_seed(0)
    bi = ssmlab.create_mixer("bi-mamba", 16, d_state=4, dtype=torch.float64)
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    want = bi.forward_mixer(x) + bi.backward_mixer(x.flip(1)).flip(1)
    assert_close(bi(x), want, atol=1e-12, name="bidirectional output")
    # The last output depends on the first input and the first output on the last input.
    x2 = x.clone()
    x2[:, -1] += 1
    assert (bi(x2)[:, 0] - bi(x)[:, 0]).abs().max() > 1e-6


def test_no_state_and_clear_errors():
    bi = ssmlab.create_mixer("bidirectional", 16, mixer="attention", combine="mean")
    with pytest.raises(RuntimeError, match="bidirectional"):
        bi(torch.randn(1, 3, 16), return_state=True)
    with pytest.raises(ValueError, match="must be causal"):
        ssmlab.create_mixer("bidirectional", 16, mixer="bi-mamba")
    with pytest.raises(ValueError, match="combine"):
        ssmlab.create_mixer("bidirectional", 16, mixer="mamba", combine="max")
    model = ssmlab.create_model("bi-mamba", d_model=16, n_layers=1, vocab_size=7)
    with pytest.raises(ValueError, match="causal"):
        model.generate(torch.zeros(1, 2, dtype=torch.long), 2)
