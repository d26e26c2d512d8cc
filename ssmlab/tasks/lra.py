"""Long Range Arena (arXiv 2011.04006): ListOps and Pathfinder / Path-X, generated locally.

Both data sets are generated here rather than downloaded, with generators that
follow LRA's specification, and are cached on disk (``ssmlab.tasks.cache``)
because full-size generation takes minutes.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ssmlab.registry import register
from ssmlab.tasks.base import Split, Task

# ListOps vocabulary: padding first so that pad id 0 is also the embedding of "nothing".
LISTOPS_VOCAB = ("<pad>", "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "[MAX", "[MIN", "[MED", "[SM", "]")
LISTOPS_PAD = 0
_LISTOPS_IDS = {token: i for i, token in enumerate(LISTOPS_VOCAB)}
_DIGIT_0 = _LISTOPS_IDS["0"]
_OPERATOR_IDS = tuple(_LISTOPS_IDS[op] for op in ("[MAX", "[MIN", "[MED", "[SM"))
_CLOSE = _LISTOPS_IDS["]"]
# LRA's generator makes a node an operator with probability 0.25 (a digit otherwise) below the depth limit.
_OPERATOR_PROB = 0.25


def listops_tokenize(expression: str) -> list[int]:
    """Token ids of a whitespace-separated expression such as ``"[MAX 2 [MIN 4 7 ] 0 ]"``."""
    try:
        return [_LISTOPS_IDS[token] for token in expression.split()]
    except KeyError as exc:
        raise ValueError(f"unknown ListOps token {exc.args[0]!r}; tokens are {' '.join(LISTOPS_VOCAB[1:])}") from None


def listops_detokenize(ids: Sequence[int] | torch.Tensor) -> str:
    """The expression of token ids, padding dropped."""
    return " ".join(LISTOPS_VOCAB[int(i)] for i in ids if int(i) != LISTOPS_PAD)


def _apply(op: int, args: list[int]) -> int:
    if op == _OPERATOR_IDS[0]:
        return max(args)
    if op == _OPERATOR_IDS[1]:
        return min(args)
    if op == _OPERATOR_IDS[2]:
        # LRA takes int(np.median(args)): the mean of the two middle values, truncated, for an even count.
        ordered = sorted(args)
        return (ordered[(len(ordered) - 1) // 2] + ordered[len(ordered) // 2]) // 2
    return sum(args) % 10


def listops_evaluate(expression: str | Sequence[int] | torch.Tensor) -> int:
    """The value (0-9) of a ListOps expression, given as text or token ids (padding ignored).

    Operators: ``[MAX``, ``[MIN``, ``[MED`` (median, truncated to an integer as in LRA)
    and ``[SM`` (sum modulo 10); each is closed by ``]``. Raises ``ValueError`` on a
    malformed expression.
    """
    ids = listops_tokenize(expression) if isinstance(expression, str) else [int(i) for i in expression]
    frames: list[tuple[int, list[int]]] = []
    result = None
    for token in ids:
        if token == LISTOPS_PAD:
            continue
        if token in _OPERATOR_IDS:
            frames.append((token, []))
            continue
        if _DIGIT_0 <= token < _DIGIT_0 + 10:
            value = token - _DIGIT_0
        elif token == _CLOSE:
            if not frames:
                raise ValueError("malformed ListOps expression: ']' without an operator")
            op, args = frames.pop()
            if not args:
                raise ValueError(f"malformed ListOps expression: {LISTOPS_VOCAB[op]} has no arguments")
            value = _apply(op, args)
        else:
            raise ValueError(f"unknown ListOps token id {token}")
        if frames:
            frames[-1][1].append(value)
        elif result is None:
            result = value
        else:
            raise ValueError("malformed ListOps expression: more than one top-level value")
    if frames or result is None:
        raise ValueError("malformed ListOps expression: unclosed operator or empty expression")
    return result


class _TooLong(Exception):
    pass


def _listops_kept(length: int, min_length: int, max_length: int) -> bool:
    """Whether LRA keeps a tree of ``length`` tokens: ``min_length < length < max_length``, both
    bounds excluded, as ``lra_benchmarks/data/listops.py`` filters them."""
    return min_length < length < max_length


def _random_listops(rng: random.Random, max_depth: int, max_args: int, max_length: int) -> list[int]:
    """Token ids of one random tree, drawn as LRA's generator draws them (root at depth 1).

    Raises ``_TooLong`` as soon as the tree reaches ``max_length`` tokens: the tree
    would be rejected anyway (the bound is excluded), and stopping early does not
    change the distribution of the accepted ones.
    """
    tokens: list[int] = []

    def grow(depth: int) -> None:
        if depth < max_depth and rng.random() < _OPERATOR_PROB:
            tokens.append(_OPERATOR_IDS[rng.randrange(4)])
            for _ in range(rng.randint(2, max_args)):
                grow(depth + 1)
            tokens.append(_CLOSE)
        else:
            tokens.append(_DIGIT_0 + rng.randrange(10))
        if len(tokens) >= max_length:
            raise _TooLong

    grow(1)
    return tokens


def _listops_max_tokens(max_depth: int, max_args: int) -> int:
    # The longest tree: every node above the depth limit an operator with max_args arguments.
    length = 1
    for _ in range(max_depth - 1):
        length = 2 + max_args * length
    return length


@register("task", "listops", description="ListOps: evaluate nested list operations (LRA)", paper="2011.04006",
          source="generated", metric="accuracy", size="96k/2k/2k", seq_len="500-2000")
class ListOps(Task):
    """ListOps as specified by Long Range Arena (arXiv 2011.04006), after Nangia & Bowman (arXiv 1804.06028).

    An input is a nested expression such as ``[MAX 4 3 [MIN 2 3 ] 1 0 [MED 1 5 8 9 2 ] ]``
    over the operators MAX, MIN, MED (median) and SM (sum modulo 10) and the digits
    0-9; the label is its value (10 classes). Trees are drawn as LRA draws them: a
    node at depth below ``max_depth`` (the root has depth 1) is an operator with
    probability 0.25 and 2 to ``max_args`` arguments, otherwise a digit; a tree is kept
    only if its token count lies strictly between ``min_length`` and ``max_length``
    (LRA's ``length > min_length and length < max_length``). The 16
    tokens are ``LISTOPS_VOCAB`` (padding, the digits, the four operators, ``]``);
    inputs are right-padded with id 0 to ``max_length`` and ``Split.lengths`` holds
    each expression's length. The label is computed by ``listops_evaluate``.

    Defaults: max_depth=10, max_args=10, min_length=500, max_length=2000, and LRA's
    split sizes n_train=96000, n_val=2000, n_test=2000 (about two minutes to generate;
    cached on disk). Options of every task: seed, n_train, n_val, n_test.
    """

    head = "classify"
    cached = True
    # 2: both length bounds excluded, as LRA (version 1 kept trees of exactly min_length and max_length).
    data_version = 2

    def __init__(self, *, max_depth: int = 10, max_args: int = 10, min_length: int = 500, max_length: int = 2000,
                 n_train: int = 96000, n_val: int = 2000, n_test: int = 2000, **kwargs):
        super().__init__(n_train=n_train, n_val=n_val, n_test=n_test, **kwargs)
        if max_depth < 2:
            raise ValueError(f"listops: max_depth must be at least 2 (the root is at depth 1), got {max_depth}")
        if max_args < 2:
            raise ValueError(f"listops: max_args must be at least 2, got {max_args}")
        if not 0 <= min_length < max_length - 1:
            raise ValueError(f"listops: need 0 <= min_length < max_length - 1 (both bounds are excluded), got "
                             f"min_length={min_length}, max_length={max_length}")
        longest = _listops_max_tokens(max_depth, max_args)
        if min_length >= longest:
            raise ValueError(f"listops: no tree is longer than min_length={min_length} with max_depth={max_depth} "
                             f"and max_args={max_args} (the longest has {longest} tokens)")
        self.max_depth, self.max_args = max_depth, max_args
        self.min_length, self.max_length = min_length, max_length
        self.seq_len = max_length

    def model_options(self) -> dict:
        return {"vocab_size": len(LISTOPS_VOCAB), "n_classes": 10}

    def _generate(self, split, n, generator):
        # Python's generator draws the scalar decisions of the recursion far faster than torch's.
        rng = random.Random(int(torch.randint(0, 2**62, (1,), generator=generator)))
        inputs = torch.full((n, self.max_length), LISTOPS_PAD, dtype=torch.long)
        targets = torch.empty(n, dtype=torch.long)
        lengths = torch.empty(n, dtype=torch.long)
        # Generous: acceptance is about 8% at the defaults; a window no tree hits must not loop forever.
        budget = 1000 * n + 100_000
        count = 0
        for _ in range(budget):
            try:
                tokens = _random_listops(rng, self.max_depth, self.max_args, self.max_length)
            except _TooLong:
                continue
            if not _listops_kept(len(tokens), self.min_length, self.max_length):
                continue
            inputs[count, :len(tokens)] = torch.tensor(tokens)
            targets[count] = listops_evaluate(tokens)
            lengths[count] = len(tokens)
            count += 1
            if count == n:
                return Split(inputs, targets, lengths)
        raise RuntimeError(f"listops: only {count} of {n} trees strictly between {self.min_length} and "
                           f"{self.max_length} tokens after {budget} draws; widen the length window or raise "
                           f"max_depth / max_args")


@dataclass(frozen=True)
class PathfinderStyle:
    """Geometry of Pathfinder images, in pixels.

    Every path is a random walk of dashes: each dash is ``dash_length`` long and
    followed by a gap of ``gap_length``, and the heading turns by an angle drawn
    uniformly from ``[-max_turn, max_turn]`` degrees after each dash, which gives
    smooth curves. Strokes are ``thickness`` pixels wide; paths that reach the border
    are reflected back into the image. The two marker dots are discs of radius
    ``marker_radius`` on path ends. ``bridge`` is the largest Chebyshev distance
    between consecutive lit pixels of one path (``gap_length + 1``, rounding included):
    two paths count as touching when any of their pixels are this close, and the two
    paths that can carry markers are never connected through touching paths.
    """

    dash_length: float
    gap_length: float
    thickness: int
    marker_radius: int
    max_turn: float = 30.0

    @property
    def bridge(self) -> int:
        return math.ceil(self.gap_length) + 1


# Scaled with the resolution so that the images look alike at every size; 128 is LRA's Path-X.
PATHFINDER_STYLES = {
    32: PathfinderStyle(dash_length=2.0, gap_length=1.0, thickness=1, marker_radius=1),
    64: PathfinderStyle(dash_length=4.0, gap_length=2.0, thickness=1, marker_radius=2),
    128: PathfinderStyle(dash_length=8.0, gap_length=4.0, thickness=2, marker_radius=3),
}


@dataclass
class PathfinderImages:
    """What ``render_pathfinder`` draws: ``images`` (N, R, R) uint8, ``labels`` (N,) with 1
    where the dots lie on one path, ``markers`` (N, 2, 2) the dots' (row, column) centres."""

    images: torch.Tensor
    labels: torch.Tensor
    markers: torch.Tensor
    style: PathfinderStyle


def _reflect(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    # A triangle wave: continuous, so a path that leaves the image folds back in without a jump.
    width = high - low
    t = torch.remainder(x - low, 2 * width)
    return low + torch.where(t > width, 2 * width - t, t)


def _walk_points(n: int, n_paths: int, n_dashes: int, resolution: int, style: PathfinderStyle,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample points on the dashes of ``n * n_paths`` random walks, and each walk's two ends.

    Returns points (n, n_paths, n_dashes * m, 2) and ends (n, n_paths, 2, 2), float, in pixels.
    """
    step = style.dash_length + style.gap_length
    margin = style.marker_radius
    low, high = float(margin), float(resolution - 1 - margin)
    start = low + (high - low) * torch.rand(n, n_paths, 1, 2, generator=generator, dtype=torch.float64)
    heading0 = 2 * math.pi * torch.rand(n, n_paths, 1, generator=generator, dtype=torch.float64)
    turns = math.radians(style.max_turn) * (2 * torch.rand(n, n_paths, n_dashes - 1, generator=generator,
                                                           dtype=torch.float64) - 1)
    heading = heading0 + torch.cat([torch.zeros_like(heading0), turns.cumsum(-1)], -1)  # (n, P, K)
    direction = torch.stack([torch.sin(heading), torch.cos(heading)], -1)  # (n, P, K, 2) as (row, col)
    # Dash k starts where the previous dash and its gap end.
    offsets = torch.cat([torch.zeros_like(direction[:, :, :1]), step * direction[:, :, :-1]], 2).cumsum(2)
    dash_starts = start + offsets  # (n, P, K, 2)
    # Half-pixel spacing along a dash leaves no hole after rounding.
    m = math.ceil(2 * style.dash_length) + 1
    t = torch.linspace(0, style.dash_length, m, dtype=torch.float64)
    points = dash_starts[:, :, :, None, :] + t[:, None] * direction[:, :, :, None, :]  # (n, P, K, m, 2)
    ends = torch.stack([points[:, :, 0, 0], points[:, :, -1, -1]], 2)  # (n, P, 2, 2)
    points = _reflect(points.flatten(2, 3), low, high)
    return points, _reflect(ends, low, high)


def _rasterise(points: torch.Tensor, resolution: int, thickness: int) -> torch.Tensor:
    """Boolean masks (..., R, R) with the pixels under ``points`` (..., M, 2) lit, strokes ``thickness`` wide."""
    lead, count = points.shape[:-2], points.shape[-2]
    flat = points.reshape(-1, count, 2).round().long().clamp(0, resolution - 1)
    index = flat[..., 0] * resolution + flat[..., 1]  # (B, M)
    masks = torch.zeros(flat.shape[0], resolution * resolution, dtype=torch.bool)
    masks.scatter_(1, index, True)
    masks = masks.view(-1, 1, resolution, resolution)
    if thickness > 1:
        masks = _dilate(masks, thickness - 1, 0)
    return masks.view(*lead, resolution, resolution)


def _discs(centres: torch.Tensor, resolution: int, radius: int) -> torch.Tensor:
    """Boolean masks (..., R, R) of filled discs of ``radius`` around ``centres`` (..., 2)."""
    grid = torch.arange(resolution, dtype=torch.float64)
    centre = centres.round()
    rows = (grid - centre[..., 0, None]) ** 2  # (..., R)
    cols = (grid - centre[..., 1, None]) ** 2
    # r^2 + r rather than r^2: at radius 1 a 3x3 block, which reads as a dot rather than a plus sign.
    return rows[..., :, None] + cols[..., None, :] <= radius**2 + radius


def _window_any(masks: torch.Tensor, before: int, after: int, dim: int) -> torch.Tensor:
    """Along ``dim``: True where any of ``masks[i - before : i + after + 1]`` is (a 1-D dilation)."""
    # Shifted ORs of boolean tensors: windows here are a few pixels, and CPU max-pooling with
    # stride 1 is many times slower.
    x = masks.movedim(dim, -1)
    out = x.clone()
    for shift in range(1, before + 1):
        out[..., shift:] |= x[..., :-shift]
    for shift in range(1, after + 1):
        out[..., :-shift] |= x[..., shift:]
    return out.movedim(-1, dim)


def _dilate(masks: torch.Tensor, before: int, after: int) -> torch.Tensor:
    """Grow masks (..., R, R) by a square window: rows ``before`` up and ``after`` down, columns likewise."""
    return _window_any(_window_any(masks, before, after, -1), before, after, -2)


def _marked_paths_apart(masks: torch.Tensor, radius: int) -> torch.Tensor:
    """(n,) True where paths 0 and 1 are not connected through a chain of touching paths.

    ``masks`` (n, P, R, R); paths touch when a pixel of one lies within Chebyshev
    distance ``radius`` of a pixel of the other.
    """
    n, n_paths = masks.shape[:2]
    grown = _dilate(masks, radius, radius).flatten(2).float()
    touch = torch.einsum("npx,nqx->npq", grown, masks.flatten(2).float()) > 0  # (n, P, P)
    touch = touch | touch.transpose(1, 2) | torch.eye(n_paths, dtype=torch.bool)
    reach = touch[:, 0]  # (n, P): paths connected to path 0
    for _ in range(n_paths):
        reach = torch.einsum("np,npq->nq", reach.float(), touch.float()) > 0
    return ~reach[:, 1]


def render_pathfinder(n: int, resolution: int, generator: torch.Generator, *, path_dashes: int,
                      n_distractors: int, distractor_dashes: int, style: PathfinderStyle | None = None,
                      ) -> PathfinderImages:
    """Draw ``n`` Pathfinder images (Linsley et al., arXiv 1805.08315), half of each label.

    Every image has two paths of ``path_dashes`` dashes that may carry the markers,
    and ``n_distractors`` paths of ``distractor_dashes`` dashes. With label 1 both
    dots sit on the two ends of the first path; with label 0 one sits on an end of
    each of the two paths. Candidate images in which the two paths are connected
    through touching paths (see ``PathfinderStyle``) are redrawn, whatever their
    label, so that the label is exactly "the dots are connected" and the two
    classes differ only in where the dots are. Lit pixels are 255, background 0.
    """
    style = style or PATHFINDER_STYLES[resolution]
    labels = (torch.arange(n) % 2)[torch.randperm(n, generator=generator)]
    kept_lit, kept_ends = [], []
    have, drawn = 0, 0
    # Bounds the working memory of one batch of candidates to a few hundred MB.
    most = max(16, 2**25 // ((2 + n_distractors) * resolution**2))
    while have < n:
        # Aim for all the missing images in one batch, from the acceptance rate so far (1 in 4 to 1 in 8 is usual).
        rate = max((have + 1) / (drawn + 4), 0.02)
        batch = min(most, max(16, math.ceil(1.2 * (n - have) / rate)))
        drawn += batch
        main, ends = _walk_points(batch, 2, path_dashes, resolution, style, generator)
        distractors, _ = _walk_points(batch, n_distractors, distractor_dashes, resolution, style, generator)
        strokes = torch.cat([_rasterise(main, resolution, style.thickness),
                             _rasterise(distractors, resolution, style.thickness)], 1)  # (batch, P, R, R)
        # Both ends of both paths count as dotted, so that whether a candidate is kept does not depend on its label.
        masks = strokes.clone()
        masks[:, :2] |= _discs(ends, resolution, style.marker_radius).any(2)
        ok = _marked_paths_apart(masks, style.bridge)
        kept_lit.append(strokes[ok].any(1))
        kept_ends.append(ends[ok])
        have += int(ok.sum())
    ends = torch.cat(kept_ends)[:n]  # (n, 2 paths, 2 ends, 2)
    second = torch.where(labels.bool()[:, None], ends[:, 0, 1], ends[:, 1, 0])  # (n, 2)
    markers = torch.stack([ends[:, 0, 0], second], 1)  # (n, 2, 2)
    lit = torch.cat(kept_lit)[:n] | _discs(markers, resolution, style.marker_radius).any(1)
    images = torch.where(lit, 255, 0).to(torch.uint8)
    return PathfinderImages(images, labels, markers.round().long(), style)


@register("task", "pathfinder", description="Pathfinder: are the two dots connected? (LRA)", paper="2011.04006",
          source="generated", metric="accuracy", size="160k/20k/20k", seq_len="1024/4096/16384")
class Pathfinder(Task):
    """Pathfinder as in Long Range Arena (arXiv 2011.04006), after Linsley et al. (arXiv 1805.08315).

    A grey-scale image of ``resolution`` x ``resolution`` pixels shows dashed curves
    and two dots; the label is 1 when one curve joins the dots and 0 when they lie on
    two different curves (see ``render_pathfinder``; labels are balanced). The image
    is flattened row by row into a sequence of ``resolution**2`` tokens, the pixel
    values quantised to 256 levels (vocabulary 256: here 0 background, 255 ink).

    Generator options: ``path_dashes`` (10) dashes on each of the two curves that can
    carry the dots, ``n_distractors`` (4) further curves of ``distractor_dashes`` (5)
    dashes. Dash and gap lengths, stroke width and dot size scale with the resolution;
    the turn per dash (at most 30 degrees) does not (``PATHFINDER_STYLES``).

    Defaults: resolution=32 (LRA also uses 64, and 128 is Path-X), LRA's split sizes
    n_train=160000, n_val=20000, n_test=20000 (cached on disk; inputs are int64, so
    Path-X at full size needs about 26 GB of memory).
    """

    head = "classify"
    cached = True

    def __init__(self, *, resolution: int = 32, path_dashes: int = 10, n_distractors: int = 4,
                 distractor_dashes: int = 5, n_train: int = 160000, n_val: int = 20000, n_test: int = 20000,
                 **kwargs):
        super().__init__(n_train=n_train, n_val=n_val, n_test=n_test, **kwargs)
        if resolution not in PATHFINDER_STYLES:
            raise ValueError(f"{self.registry_name}: resolution must be one of {sorted(PATHFINDER_STYLES)}, "
                             f"got {resolution}")
        if path_dashes < 2 or distractor_dashes < 2:
            raise ValueError(f"{self.registry_name}: path_dashes and distractor_dashes must be at least 2, got "
                             f"{path_dashes} and {distractor_dashes}")
        if n_distractors < 0:
            raise ValueError(f"{self.registry_name}: n_distractors must be non-negative, got {n_distractors}")
        self.resolution, self.path_dashes = resolution, path_dashes
        self.n_distractors, self.distractor_dashes = n_distractors, distractor_dashes
        self.seq_len = resolution * resolution

    def model_options(self) -> dict:
        return {"vocab_size": 256, "n_classes": 2}

    def render(self, n: int, generator: torch.Generator) -> PathfinderImages:
        """``n`` images with this task's options (what a split is made of), with the dots' positions."""
        return render_pathfinder(n, self.resolution, generator, path_dashes=self.path_dashes,
                                 n_distractors=self.n_distractors, distractor_dashes=self.distractor_dashes)

    def _generate(self, split, n, generator):
        # Rendered in chunks so that a full-size split never holds all its candidate masks at once.
        chunk = max(64, 2**24 // self.seq_len)
        parts = [self.render(min(chunk, n - start), generator) for start in range(0, n, chunk)]
        images = torch.cat([p.images for p in parts]).flatten(1).long()  # (N, R * R)
        return Split(images, torch.cat([p.labels for p in parts]))


@register("task", "path-x", description="Path-X: Pathfinder at 128x128 (LRA)", paper="2011.04006",
          source="generated", metric="accuracy", size="160k/20k/20k", seq_len="16384")
class PathX(Pathfinder):
    """Path-X of Long Range Arena (arXiv 2011.04006): ``pathfinder`` at resolution 128 (16384 tokens)."""

    def __init__(self, *, resolution: int = 128, **kwargs):
        if resolution != 128:
            raise ValueError(f"path-x: the resolution is 128, got {resolution}; use 'pathfinder' for 32 or 64")
        super().__init__(resolution=128, **kwargs)
