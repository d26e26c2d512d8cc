"""The forecasting and retrieval heads, RevIN, and head_loss."""

from __future__ import annotations

import math

import pytest
import torch

import ssmlab
from ssmlab.models import create_model
from ssmlab.models.heads import RevIN, head_loss
from tests.utils import assert_close

TINY = {"d_model": 16, "n_layers": 1, "mixer_options": {"d_state": 4}}


def test_new_heads_are_registered():
    assert {"forecast", "retrieval", "vision"} <= set(ssmlab.registry.names("model"))


def fit(model, batches, steps, lr=1e-2):
    """Adam on ``batches(step) -> (inputs, lengths, targets, head)``; the losses of every step."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for step in range(steps):
        inputs, lengths, targets, head = batches(step)
        loss, _, _ = head_loss(head, model(inputs, lengths), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


# Forecasting ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("features, revin", [(1, True), (3, True), (2, False)])
def test_forecast_shape(features, revin):
    model = create_model("mamba", head="forecast", input_dim=features, horizon=5, revin=revin, **TINY)
    y = model(torch.randn(4, 12, features))
    assert y.shape == (4, 5, features)
    assert torch.isfinite(y).all()


def test_revin_is_invertible():
    torch.manual_seed(0)
    revin = RevIN(3, dtype=torch.float64)
    with torch.no_grad():
        revin.weight.copy_(torch.tensor([0.5, 2.0, -1.5]))
        revin.bias.copy_(torch.tensor([0.1, -0.3, 2.0]))
    x = 5 * torch.randn(4, 10, 3, dtype=torch.float64) + 7
    y, stats = revin.normalize(x)
    assert_close(revin.denormalize(y, stats), x, atol=1e-12, rtol=1e-12, name="denormalize(normalize(x))")
    plain, _ = RevIN(3, affine=False, dtype=torch.float64).normalize(x)
    assert_close(plain.mean(1), torch.zeros(4, 3, dtype=torch.float64), atol=1e-12, name="normalised mean")
    assert_close(plain.std(1, unbiased=False), torch.ones(4, 3, dtype=torch.float64), atol=1e-6, name="normalised std")


def test_revin_statistics_ignore_padding():
    revin = RevIN(2, dtype=torch.float64)
    x = torch.randn(2, 8, 2, dtype=torch.float64)
    lengths = torch.tensor([8, 5])
    y, (mean, std) = revin.normalize(x, lengths)
    y_row, (mean_row, std_row) = revin.normalize(x[1:, :5])
    assert_close(y[1, :5], y_row[0], atol=1e-12, name="row 1 normalised")
    assert_close(mean[1], mean_row[0], atol=1e-12, name="row 1 mean")
    assert_close(std[1], std_row[0], atol=1e-12, name="row 1 std")
    assert bool((y[1, 5:] == 0).all())


def test_forecaster_with_revin_follows_the_level_and_scale_of_the_series():
    torch.manual_seed(0)
    model = create_model("mamba", head="forecast", input_dim=2, horizon=4, revin_eps=1e-12, dtype=torch.float64,
                         **TINY)
    x = torch.randn(3, 10, 2, dtype=torch.float64)
    with torch.no_grad():
        assert_close(model(3.0 * x + 10.0), 3.0 * model(x) + 10.0, atol=1e-8, rtol=1e-8,
                     name="forecast of a shifted, scaled series")


def test_forecaster_ignores_padding():
    torch.manual_seed(0)
    model = create_model("mamba", head="forecast", input_dim=2, horizon=3, dtype=torch.float64, **TINY).eval()
    x = torch.randn(3, 10, 2, dtype=torch.float64)
    lengths = torch.tensor([10, 6, 2])
    other = x.clone()
    other[1, 6:] = torch.randn(4, 2, dtype=torch.float64)
    other[2, 2:] = 100.0
    with torch.no_grad():
        y = model(x, lengths)
        assert_close(model(other, lengths), y, atol=1e-10, rtol=1e-10, name="other padding")
        for b, n in enumerate(lengths.tolist()):
            assert_close(y[b], model(x[b:b + 1, :n])[0], atol=1e-10, rtol=1e-10, name=f"row {b} vs unpadded")


def test_forecaster_learns_a_sine_wave():
    torch.manual_seed(0)
    model = create_model("mamba", head="forecast", input_dim=1, horizon=4, d_model=16, n_layers=1,
                         mixer_options={"d_state": 4})
    t = torch.arange(24 + 4, dtype=torch.float32)

    def batches(step):
        g = torch.Generator().manual_seed(step)
        phase = 2 * math.pi * torch.rand(16, 1, generator=g)
        # Each window at its own level and scale, which RevIN takes out.
        level, scale = torch.randn(16, 1, generator=g), 0.5 + torch.rand(16, 1, generator=g)
        series = (level + scale * torch.sin(2 * math.pi * t / 8 + phase))[..., None]  # (16, 28, 1)
        return series[:, :24], None, series[:, 24:], "forecast"

    losses = fit(model, batches, 30)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.3 * first, f"forecast loss went from {first:.4f} to {last:.4f}"


# Retrieval -----------------------------------------------------------------------------------------


def test_retrieval_shape_and_shared_tower():
    model = create_model("mamba", head="retrieval", vocab_size=12, **TINY)
    ids = torch.randint(0, 12, (3, 2, 9))
    assert model(ids).shape == (3, 2)
    assert model(ids, torch.tensor([[9, 4], [1, 9], [5, 5]])).shape == (3, 2)
    with torch.no_grad():
        u, v = model.encode(ids[:, 0]), model.encode(ids[:, 1])
        expected = model.head(torch.cat([u, v, u * v, u - v], -1))
    assert_close(model(ids), expected, atol=1e-6, name="two towers, one encoder")


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_retrieval_ignores_padding(pooling):
    torch.manual_seed(0)
    model = create_model("mamba", head="retrieval", vocab_size=12, pooling=pooling, dtype=torch.float64,
                         **TINY).eval()
    ids = torch.randint(1, 12, (2, 2, 10))
    lengths = torch.tensor([[10, 4], [7, 1]])
    other = ids.clone()
    other[0, 1, 4:] = 0
    other[1, 0, 7:] = (other[1, 0, 7:] + 3) % 12
    other[1, 1, 1:] = 5
    with torch.no_grad():
        logits = model(ids, lengths)
        assert_close(model(other, lengths), logits, atol=1e-10, rtol=1e-10, name="other padding")
        for b in range(2):
            n, m = lengths[b].tolist()
            u, v = model.encode(ids[b:b + 1, 0, :n]), model.encode(ids[b:b + 1, 1, :m])
            alone = model.head(torch.cat([u, v, u * v, u - v], -1))
            assert_close(logits[b], alone[0], atol=1e-10, rtol=1e-10, name=f"pair {b} vs its unpadded documents")


def test_retrieval_learns_identical_versus_different_documents():
    torch.manual_seed(0)
    model = create_model("mamba", head="retrieval", vocab_size=8, **TINY)

    def batches(step):
        g = torch.Generator().manual_seed(step)
        first = torch.randint(0, 8, (32, 12), generator=g)
        same = torch.rand(32, generator=g) < 0.5
        second = torch.where(same[:, None], first, torch.randint(0, 8, (32, 12), generator=g))
        return torch.stack([first, second], 1), None, same.long(), "retrieval"

    losses = fit(model, batches, 40)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.5 * first, f"retrieval loss went from {first:.3f} to {last:.3f}"


# Errors and head_loss -----------------------------------------------------------------------------


@pytest.mark.parametrize("head, options, option", [
    ("forecast", {"input_dim": 0, "horizon": 3}, "input_dim"),
    ("forecast", {"input_dim": 2, "horizon": 0}, "horizon"),
    ("retrieval", {"vocab_size": 8, "pooling": "max"}, "pooling"),
    ("retrieval", {"vocab_size": 8, "head_hidden": 0}, "head_hidden"),
])
def test_bad_options_name_the_option(head, options, option):
    with pytest.raises(ValueError, match=option):
        create_model("mamba", head=head, **TINY, **options)


def test_bad_inputs_are_clear_errors():
    forecaster = create_model("mamba", head="forecast", input_dim=2, horizon=3, **TINY)
    with pytest.raises(ValueError, match="F=2"):
        forecaster(torch.randn(2, 5, 3))
    with pytest.raises(ValueError, match="lengths"):
        forecaster(torch.randn(2, 5, 2), torch.tensor([5, 6]))
    retrieval = create_model("mamba", head="retrieval", vocab_size=8, **TINY)
    with pytest.raises(ValueError, match="B, 2, L"):
        retrieval(torch.randint(0, 8, (2, 5)))
    with pytest.raises(ValueError, match="lengths"):
        retrieval(torch.randint(0, 8, (2, 2, 5)), torch.tensor([5, 5]))
    with pytest.raises(ValueError, match="lengths"):
        retrieval(torch.randint(0, 8, (2, 2, 5)), torch.tensor([[5, 0], [1, 1]]))


def test_head_loss():
    outputs, targets = torch.tensor([[[1.0], [2.0]]]), torch.tensor([[[0.0], [4.0]]])
    loss, sums, count = head_loss("forecast", outputs, targets)
    assert loss.item() == pytest.approx(2.5) and int(count) == 2
    assert sums["mse"].item() == pytest.approx(5.0) and sums["mae"].item() == pytest.approx(3.0)
    logits, labels = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]]), torch.tensor([0, 1, 1])
    for head in ("classify", "retrieval", "vision"):
        loss, sums, count = head_loss(head, logits, labels)
        assert_close(loss, torch.nn.functional.cross_entropy(logits, labels), atol=1e-7, name=head)
        assert int(sums["accuracy"]) == 2 and int(count) == 3
    lm_logits, lm_targets = torch.randn(2, 3, 5), torch.tensor([[1, -100, 2], [-100, -100, 4]])
    loss, sums, count = head_loss("lm", lm_logits, lm_targets)
    assert int(count) == 3
    with pytest.raises(ValueError, match="unknown head"):
        head_loss("regress", logits, labels)
    with pytest.raises(ValueError, match="same shape"):
        head_loss("forecast", outputs, targets[:, :1])


def test_each_head_carries_its_loss_and_metrics():
    logits, labels = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]]), torch.tensor([0, 1, 1])
    for head, options in (("classify", {"n_classes": 2, "vocab_size": 4}), ("retrieval", {"vocab_size": 4})):
        model = create_model("mamba", head=head, **TINY, **options)
        assert model.takes_lengths and model.count(labels) == 3
        assert_close(model.loss(logits, labels), torch.nn.functional.cross_entropy(logits, labels), atol=1e-7)
        assert int(model.metrics(logits, labels)["accuracy"]) == 2
    lm = create_model("mamba", head="lm", vocab_size=5, **TINY)
    targets = torch.tensor([[1, -100, 2]])
    assert not lm.takes_lengths and lm.count(targets) == 2
    forecaster = create_model("mamba", head="forecast", input_dim=1, horizon=2, **TINY)
    outputs, series = torch.tensor([[[1.0], [2.0]]]), torch.tensor([[[0.0], [4.0]]])
    assert forecaster.loss(outputs, series).item() == pytest.approx(2.5)
    assert forecaster.metrics(outputs, series)["mae"].item() == pytest.approx(3.0)
