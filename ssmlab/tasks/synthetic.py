"""Synthetic probes of memory and recall: MQAR, selective copying, copying and induction heads."""

from __future__ import annotations

import torch

from ssmlab.registry import register
from ssmlab.tasks.base import IGNORE_INDEX, Split, Task


@register("task", "mqar", description="Multi-query associative recall (Zoology)", paper="2312.04927",
          source="generated", metric="accuracy", size="2048/256/256", seq_len="64 (option)")
class MQAR(Task):
    """Multi-query associative recall, as specified by Zoology (arXiv 2312.04927).

    A sequence starts with ``num_kv_pairs`` key-value pairs ``k1 v1 k2 v2 ...``.
    As in Zoology's ``multiquery_ar`` (HazyResearch/zoology @ d88d6f5,
    ``zoology/data/multiquery_ar.py``), keys come from ``[1, vocab_size // 2)`` (token 0
    is never a key) and values from ``[vocab_size // 2, vocab_size)``, both drawn
    without replacement, so that within a sequence no key and no value repeats. In
    the rest of the sequence each key appears once more as a query, at an even offset
    ``2 g`` after the context, the gaps ``g`` drawn without replacement with weights
    ``power_a * (g + 1) ** (power_a - 1)`` (a power law); the target at a query position
    is the value paired with that key. Other positions hold tokens drawn uniformly
    from the whole vocabulary (``random_non_queries``; else 0) and take no loss.
    Accuracy counts query positions only.

    Defaults: vocab_size=128, seq_len=64, num_kv_pairs=8, power_a=0.01.

    Recall capacity is swept with ``num_kv_pairs`` (how many associations must be
    held at once, at most ``vocab_size // 2 - 1``) and ``vocab_size`` (how many distinct
    keys and values there are), with ``seq_len >= 4 * num_kv_pairs``; Zoology's
    figures vary exactly these, e.g. ``create_task("mqar", num_kv_pairs=64,
    vocab_size=8192, seq_len=512)``.
    """

    head = "lm"
    # A uniform guess over the vocab_size / 2 values.
    chance = property(lambda self: 2 / self.vocab_size)

    def __init__(self, *, vocab_size: int = 128, seq_len: int = 64, num_kv_pairs: int = 8, power_a: float = 0.01,
                 random_non_queries: bool = True, **kwargs):
        super().__init__(**kwargs)
        if vocab_size < 4 or vocab_size % 2:
            raise ValueError(f"mqar: vocab_size must be an even number >= 4, got {vocab_size}")
        if num_kv_pairs < 1 or num_kv_pairs > vocab_size // 2 - 1:
            raise ValueError(f"mqar: num_kv_pairs must be in [1, {vocab_size // 2 - 1}] (keys are drawn from "
                             f"[1, vocab_size // 2)), got {num_kv_pairs}")
        if seq_len < 4 * num_kv_pairs:
            raise ValueError(f"mqar: seq_len must be at least 4 * num_kv_pairs = {4 * num_kv_pairs}, got {seq_len}")
        self.vocab_size, self.seq_len, self.num_kv_pairs = vocab_size, seq_len, num_kv_pairs
        self.power_a, self.random_non_queries = power_a, random_non_queries

    def model_options(self) -> dict:
        return {"vocab_size": self.vocab_size}

    def _generate(self, split, n, generator):
        half = self.vocab_size // 2
        pairs, context = self.num_kv_pairs, 2 * self.num_kv_pairs
        # Distinct keys in [1, half) and distinct values in [half, vocab_size), per sequence.
        keys = 1 + torch.rand(n, half - 1, generator=generator).argsort(dim=1)[:, :pairs]  # (n, pairs)
        values = half + torch.rand(n, self.vocab_size - half, generator=generator).argsort(dim=1)[:, :pairs]

        # Query slots: even offsets after the context, chosen with power-law weights by gap.
        slots = (self.seq_len - context) // 2
        gaps = torch.arange(1, slots + 1, dtype=torch.float64)
        weights = self.power_a * gaps ** (self.power_a - 1)
        chosen = torch.multinomial(weights.expand(n, slots), pairs, replacement=False, generator=generator)
        positions = context + 2 * chosen  # (n, pairs)

        if self.random_non_queries:
            inputs = torch.randint(0, self.vocab_size, (n, self.seq_len), generator=generator)
        else:
            inputs = torch.zeros(n, self.seq_len, dtype=torch.long)
        inputs[:, 0:context:2] = keys
        inputs[:, 1:context:2] = values
        targets = torch.full((n, self.seq_len), IGNORE_INDEX, dtype=torch.long)
        rows = torch.arange(n)[:, None]
        inputs[rows, positions] = keys
        targets[rows, positions] = values
        return Split(inputs, targets)


@register("task", "selective-copying", description="Selective copying (Mamba)", paper="2312.00752",
          source="generated", metric="accuracy", size="2048/256/256", seq_len="72 (option)")
class SelectiveCopying(Task):
    """Selective copying, as in Mamba (arXiv 2312.00752, section 4.1.1).

    ``num_tokens`` data tokens are scattered at random positions (in order) in a
    region of ``seq_len`` positions otherwise filled with the noise token 0.
    Then ``num_tokens`` marker tokens (1) follow, and at those positions the
    model must output the data tokens in their original order. Data tokens lie
    in ``[2, vocab_size)``. The total input length is ``seq_len + num_tokens``.

    Defaults: vocab_size=16, seq_len=64, num_tokens=8.
    """

    head = "lm"
    # A uniform guess over the vocab_size - 2 data tokens.
    chance = property(lambda self: 1 / (self.vocab_size - 2))
    # Table 1 of the paper, at its own length and budget (figures as quoted in issue 12 and in a secondary summary).
    published = {name: (value, f"Mamba, arXiv 2312.00752, Table 1 ({layer})") for name, value, layer in (
        ("mamba", 0.998, "Mamba block, S6 layer"), ("s4", 0.183, "S4 layer, no gate"),
        ("h3", 0.570, "H3 block, S4 layer"), ("hyena", 0.301, "Hyena block, Hyena layer"))}

    def __init__(self, *, vocab_size: int = 16, seq_len: int = 64, num_tokens: int = 8, **kwargs):
        super().__init__(**kwargs)
        if vocab_size < 3:
            raise ValueError(f"selective-copying: vocab_size must be at least 3, got {vocab_size}")
        if not 1 <= num_tokens <= seq_len:
            raise ValueError(f"selective-copying: num_tokens must be in [1, seq_len={seq_len}], got {num_tokens}")
        self.vocab_size, self.region_len, self.num_tokens = vocab_size, seq_len, num_tokens
        self.seq_len = seq_len + num_tokens

    def model_options(self) -> dict:
        return {"vocab_size": self.vocab_size}

    def _generate(self, split, n, generator):
        k, region = self.num_tokens, self.region_len
        data = torch.randint(2, self.vocab_size, (n, k), generator=generator)
        positions = torch.rand(n, region, generator=generator).argsort(dim=1)[:, :k].sort(dim=1).values
        inputs = torch.zeros(n, self.seq_len, dtype=torch.long)
        inputs[torch.arange(n)[:, None], positions] = data
        inputs[:, region:] = 1
        targets = torch.full((n, self.seq_len), IGNORE_INDEX, dtype=torch.long)
        targets[:, region:] = data
        return Split(inputs, targets)


@register("task", "copying", description="Copying after a delay (uRNN)", paper="1511.06464",
          source="generated", metric="accuracy", size="2048/256/256", seq_len="121 (option)")
class Copying(Task):
    """The copying memory task of Arjovsky et al. (arXiv 1511.06464), after Hochreiter & Schmidhuber.

    A string of ``num_tokens`` data tokens drawn uniformly from ``[1, vocab_size - 1)``
    is followed by ``delay`` blank tokens (0), one delimiter (``vocab_size - 1``), and
    ``num_tokens`` more blanks. At those last ``num_tokens`` positions the model must
    output the string; no loss is taken elsewhere (the paper also scores the blanks,
    which only adds a constant to the loss). The length is
    ``seq_len = 2 * num_tokens + delay + 1``; the paper's ``T`` is ``delay + 1``.

    Defaults: vocab_size=10 (8 data symbols, blank, delimiter, as in the paper),
    num_tokens=10, delay=100.
    """

    head = "lm"

    def __init__(self, *, vocab_size: int = 10, num_tokens: int = 10, delay: int = 100, **kwargs):
        super().__init__(**kwargs)
        if vocab_size < 3:
            raise ValueError(f"copying: vocab_size must be at least 3 (blank, delimiter, one symbol), got {vocab_size}")
        if num_tokens < 1:
            raise ValueError(f"copying: num_tokens must be at least 1, got {num_tokens}")
        if delay < 0:
            raise ValueError(f"copying: delay must be non-negative, got {delay}")
        self.vocab_size, self.num_tokens, self.delay = vocab_size, num_tokens, delay
        self.seq_len = 2 * num_tokens + delay + 1

    def model_options(self) -> dict:
        return {"vocab_size": self.vocab_size}

    def _generate(self, split, n, generator):
        k = self.num_tokens
        data = torch.randint(1, self.vocab_size - 1, (n, k), generator=generator)
        inputs = torch.zeros(n, self.seq_len, dtype=torch.long)
        inputs[:, :k] = data
        inputs[:, k + self.delay] = self.vocab_size - 1
        targets = torch.full((n, self.seq_len), IGNORE_INDEX, dtype=torch.long)
        targets[:, -k:] = data
        return Split(inputs, targets)


@register("task", "induction-heads", description="Induction head: recall the token after the trigger (H3)",
          paper="2212.14052", source="generated", metric="accuracy", size="2048/256/256", seq_len="30 (option)")
class InductionHeads(Task):
    """The induction head probe used by H3 (arXiv 2212.14052, section 3.1).

    A sequence of ``seq_len`` tokens drawn uniformly from ``[1, vocab_size)`` holds
    the trigger token 0 once, at a random position ``p <= seq_len - 3``; the token at
    ``p + 1`` is the answer. The last position holds the trigger again, and there the
    model must output the answer; it is the only position with a loss. Since 0 occurs
    nowhere else, the answer is determined.

    Defaults: vocab_size=20, seq_len=30 (H3's setting).
    """

    head = "lm"

    def __init__(self, *, vocab_size: int = 20, seq_len: int = 30, **kwargs):
        super().__init__(**kwargs)
        if vocab_size < 2:
            raise ValueError(f"induction-heads: vocab_size must be at least 2 (trigger and one token), "
                             f"got {vocab_size}")
        if seq_len < 3:
            raise ValueError(f"induction-heads: seq_len must be at least 3 (trigger, answer, trigger), got {seq_len}")
        self.vocab_size, self.seq_len = vocab_size, seq_len

    def model_options(self) -> dict:
        return {"vocab_size": self.vocab_size}

    def _generate(self, split, n, generator):
        inputs = torch.randint(1, self.vocab_size, (n, self.seq_len), generator=generator)
        trigger_at = torch.randint(0, self.seq_len - 2, (n,), generator=generator)
        rows = torch.arange(n)
        inputs[rows, trigger_at] = 0
        inputs[:, -1] = 0
        targets = torch.full((n, self.seq_len), IGNORE_INDEX, dtype=torch.long)
        targets[:, -1] = inputs[rows, trigger_at + 1]
        return Split(inputs, targets)
