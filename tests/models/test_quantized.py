"""Dynamic int8 quantisation of the linear layers (torch.ao.quantization.quantize_dynamic), as
benchmarks/cpu.py uses for generation: a quantised Mamba language model still generates step by step."""

import warnings

import torch

import ssmlab
from tests.utils import assert_close


def test_quantised_mamba_steps_close_to_its_forward():
    torch.manual_seed(0)
    model = ssmlab.create_model("mamba", d_model=16, n_layers=2, vocab_size=11, mlp=False).eval()
    # Every linear layer but dt_proj, whose weight the mixer multiplies by directly.
    names = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and not n.endswith("dt_proj")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantised = torch.ao.quantization.quantize_dynamic(
            model, {n: torch.ao.quantization.default_dynamic_qconfig for n in names}, dtype=torch.qint8)
    tokens = torch.randint(0, 11, (2, 7))
    with torch.no_grad():
        whole = quantised(tokens)
        states = quantised.init_state(2)
        steps = []
        for t in range(tokens.shape[1]):
            logits, states = quantised.step(tokens[:, t], states)
            steps.append(logits)
    # Activations are quantised per call, over (B, L, D) in the forward and (B, D) in a step: close, not equal.
    assert_close(torch.stack(steps, 1), whole, atol=0.05 * whole.abs().max().item(), name="quantised step vs forward")
