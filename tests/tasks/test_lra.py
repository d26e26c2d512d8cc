import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ssmlab.tasks import create_task
from ssmlab.tasks.lra import (LISTOPS_VOCAB, PATHFINDER_STYLES, _listops_kept, listops_detokenize,
                              listops_evaluate, listops_tokenize)

HAND_CASES = [
    ("7", 7),
    ("[MAX 2 9 [MIN 4 7 ] 0 ]", 9),
    ("[MIN 3 [MAX 1 8 ] [SM 9 9 ] ]", 3),
    ("[SM 5 6 7 ]", 8),
    ("[MED 1 5 3 ]", 3),
    # An even count takes the mean of the two middle values, truncated, as LRA's int(np.median(...)).
    ("[MED 1 2 3 4 ]", 2),
    ("[MED 9 8 ]", 8),
    ("[SM [MED 4 [MIN 9 6 ] 1 ] [MAX 0 0 ] 7 ]", 1),
    ("[MAX [MIN [SM 9 9 9 ] 5 ] [MED 0 0 1 ] ]", 5),
]


@pytest.mark.parametrize("expression, value", HAND_CASES)
def test_listops_evaluator_hand_cases(expression, value):
    assert listops_evaluate(expression) == value
    ids = listops_tokenize(expression)
    assert listops_evaluate(ids + [0, 0]) == value
    assert listops_detokenize(torch.tensor(ids + [0])) == expression


@pytest.mark.parametrize("expression", ["", "[MAX 1", "1 2", "]", "[MAX ]", "[SM 1 2 ] ]", "[AVG 1 2 ]"])
def test_listops_evaluator_rejects_malformed(expression):
    with pytest.raises(ValueError, match="ListOps"):
        listops_evaluate(expression)


def _python_value(expression):
    # An independent evaluator: turn the expression into nested Python calls.
    ops = {"[MAX": "max([", "[MIN": "min([", "[MED": "med([", "[SM": "sm(["}
    code = " ".join(ops.get(t, "]), " if t == "]" else t + ",") for t in expression.split())
    return eval(code.rstrip(", "), {"med": lambda a: int(np.median(a)), "sm": lambda a: sum(a) % 10,
                                    "max": max, "min": min})


def _nesting_and_arity(ids):
    depth, deepest, counts, arities = 0, 0, [], []
    for t in ids:
        name = LISTOPS_VOCAB[t]
        if name.startswith("["):
            if counts:
                counts[-1] += 1
            depth += 1
            deepest = max(deepest, depth)
            counts.append(0)
        elif name == "]":
            depth -= 1
            arities.append(counts.pop())
        elif counts:
            counts[-1] += 1
    return deepest, arities


def test_listops_structure_and_labels():
    task = create_task("listops", max_depth=5, max_args=4, min_length=10, max_length=60, n_train=64, seed=1)
    s = task.split("train")
    assert s.inputs.shape == (64, 60) and s.targets.shape == (64,) and s.lengths.shape == (64,)
    assert task.model_options() == {"vocab_size": 16, "n_classes": 10} and task.head == "classify"
    assert ((s.lengths > 10) & (s.lengths < 60)).all()
    assert ((s.inputs >= 0) & (s.inputs < len(LISTOPS_VOCAB))).all()
    for x, y, n in zip(s.inputs, s.targets, s.lengths):
        ids = x[:n].tolist()
        assert 0 not in ids and (x[n:] == 0).all()
        text = listops_detokenize(ids)
        assert y.item() == listops_evaluate(ids) == _python_value(text)
        deepest, arities = _nesting_and_arity(ids)
        # The root has depth 1 and operators only sit above max_depth, as in LRA's generator.
        assert 1 <= deepest <= 4 and all(2 <= a <= 4 for a in arities)


def test_listops_default_lengths():
    s = create_task("listops", n_train=8, n_val=4, n_test=4).split("val")
    assert s.inputs.shape == (4, 2000) and ((s.lengths > 500) & (s.lengths < 2000)).all()
    for x, y, n in zip(s.inputs, s.targets, s.lengths):
        assert y.item() == _python_value(listops_detokenize(x[:n]))


def test_listops_length_bounds_are_excluded():
    # LRA's listops.py keeps a tree when `length > min_length and length < max_length`.
    assert [n for n in range(495, 2005) if _listops_kept(n, 500, 2000)] == list(range(501, 2000))
    # Small trees hit both bounds often: none of exactly 7 or 12 tokens may be kept.
    task = create_task("listops", max_depth=3, max_args=3, min_length=7, max_length=12, n_train=300, seed=2)
    lengths = task._generate("train", 300, torch.Generator().manual_seed(0)).lengths
    print("lengths kept:", sorted(set(lengths.tolist())))
    assert ((lengths > 7) & (lengths < 12)).all() and len(set(lengths.tolist())) >= 3


def test_listops_bad_options():
    with pytest.raises(ValueError, match="max_depth"):
        create_task("listops", max_depth=1)
    with pytest.raises(ValueError, match="max_args"):
        create_task("listops", max_args=1)
    with pytest.raises(ValueError, match="min_length < max_length - 1"):
        create_task("listops", min_length=300, max_length=200)
    with pytest.raises(ValueError, match="min_length < max_length - 1"):
        create_task("listops", min_length=300, max_length=301)
    with pytest.raises(ValueError, match="no tree is longer"):
        create_task("listops", max_depth=2, max_args=3, min_length=10, max_length=20)
    # The longest tree with max_depth=2, max_args=3 has 5 tokens: min_length=5 leaves none.
    with pytest.raises(ValueError, match="no tree is longer"):
        create_task("listops", max_depth=2, max_args=3, min_length=5, max_length=20)


def _connected(images, markers, bridge):
    """Flood fill over lit pixels, jumping gaps of up to ``bridge`` pixels (Chebyshev): (N,) bool."""
    lit = (images > 0).float()[:, None]  # (N, 1, R, R)
    n = lit.shape[0]
    reach = torch.zeros_like(lit)
    reach[torch.arange(n), 0, markers[:, 0, 0], markers[:, 0, 1]] = 1
    while True:
        grown = F.max_pool2d(reach, 2 * bridge + 1, stride=1, padding=bridge) * lit
        if torch.equal(grown, reach):
            break
        reach = grown
    return reach[torch.arange(n), 0, markers[:, 1, 0], markers[:, 1, 1]] > 0


@pytest.mark.parametrize("resolution, n", [(32, 48), (64, 24), (128, 12)])
def test_pathfinder_labels_mean_connected(resolution, n):
    task = create_task("pathfinder", resolution=resolution, seed=2)
    drawn = task.render(n, torch.Generator().manual_seed(0))
    assert drawn.images.shape == (n, resolution, resolution) and drawn.images.dtype == torch.uint8
    assert drawn.labels.sum() == n // 2
    assert (drawn.images[torch.arange(n)[:, None], drawn.markers[..., 0], drawn.markers[..., 1]] == 255).all()
    connected = _connected(drawn.images, drawn.markers, PATHFINDER_STYLES[resolution].bridge)
    assert torch.equal(connected, drawn.labels.bool())


def test_pathfinder_split_structure():
    task = create_task("pathfinder", n_train=40, n_test=8)
    s = task.split("train")
    assert task.seq_len == 1024 and s.inputs.shape == (40, 1024) and s.inputs.dtype == torch.long
    assert s.targets.sum() == 20 and set(s.inputs.unique().tolist()) <= {0, 255}
    assert task.model_options() == {"vocab_size": 256, "n_classes": 2} and task.head == "classify"
    # The split is the rendered images, flattened row by row.
    drawn = task.render(40, torch.Generator().manual_seed(1))
    assert torch.equal(s.inputs, drawn.images.flatten(1).long()) and torch.equal(s.targets, drawn.labels)


def test_path_x_is_pathfinder_128():
    task = create_task("path-x", n_train=4, n_test=4)
    assert task.resolution == 128 and task.seq_len == 128 * 128
    assert task.split("test").inputs.shape == (4, 16384)


def test_pathfinder_bad_options():
    with pytest.raises(ValueError, match="resolution must be one of"):
        create_task("pathfinder", resolution=48)
    with pytest.raises(ValueError, match="path-x: the resolution is 128"):
        create_task("path-x", resolution=64)
    with pytest.raises(ValueError, match="path_dashes"):
        create_task("pathfinder", path_dashes=1)
    with pytest.raises(ValueError, match="n_distractors"):
        create_task("pathfinder", n_distractors=-1)


def test_pathfinder_without_distractors():
    drawn = create_task("pathfinder", n_distractors=0).render(8, torch.Generator().manual_seed(0))
    assert drawn.images.shape == (8, 32, 32)
