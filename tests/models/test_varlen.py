"""Right-padded batches through whole models: each row behaves as its unpadded sequence."""

from __future__ import annotations

import torch

from ssmlab.models import create_model
from tests.utils import assert_close


def test_language_model_padded_batch_matches_each_row():
    torch.manual_seed(0)
    model = create_model(["mamba", "attention", "mamba2"], head="lm", d_model=16, n_layers=3, vocab_size=32,
                         mixer_options={"attention": {"n_heads": 2}, "mamba2": {"headdim": 8, "chunk_size": 4}},
                         dtype=torch.float64).eval()
    ids = torch.randint(0, 32, (3, 10))
    lengths = torch.tensor([10, 6, 3])
    with torch.no_grad():
        logits, states = model(ids, return_state=True, lengths=lengths)
        # One more token for every row, from the padded batch's states.
        nxt = torch.randint(0, 32, (3,))
        step_logits, _ = model.step(nxt, states)
        for b, n in enumerate(lengths.tolist()):
            row_logits, row_states = model(ids[b:b + 1, :n], return_state=True)
            assert_close(logits[b, :n], row_logits[0], atol=1e-9, rtol=1e-9, name=f"row {b} logits")
            row_step, _ = model.step(nxt[b:b + 1], row_states)
            assert_close(step_logits[b], row_step[0], atol=1e-9, rtol=1e-9, name=f"row {b} next-token logits")


def test_classifier_with_bidirectional_mixer_ignores_padding():
    torch.manual_seed(0)
    model = create_model("bi-mamba", head="classify", d_model=16, n_layers=2, n_classes=3, vocab_size=20,
                         dtype=torch.float64).eval()
    ids = torch.randint(0, 20, (2, 12))
    lengths = torch.tensor([12, 5])
    with torch.no_grad():
        logits = model(ids, lengths=lengths)
        alone = model(ids[1:, :5])
        padded_other = ids.clone()
        padded_other[1, 5:] = (padded_other[1, 5:] + 1) % 20  # different padding, same logits
        assert_close(logits[1], alone[0], atol=1e-9, rtol=1e-9, name="row 1 vs its unpadded sequence")
        assert_close(model(padded_other, lengths=lengths)[1], logits[1], atol=1e-9, rtol=1e-9,
                     name="other padding")


def test_backbone_dropout_acts_in_training_only():
    torch.manual_seed(0)
    model = create_model("s4d", head="lm", d_model=16, n_layers=2, vocab_size=32, dropout=0.5)
    ids = torch.randint(0, 32, (2, 10))
    model.train()
    assert not torch.equal(model(ids), model(ids))  # a fresh mask each call
    model.eval()
    assert torch.equal(model(ids), model(ids))
