"""Synthetic probes of memory and recall: MQAR and selective copying."""

from __future__ import annotations

import torch

from ssmlab.registry import register
from ssmlab.tasks.base import IGNORE_INDEX, Split, Task


@register("task", "mqar", description="Multi-query associative recall (Zoology)", paper="2312.04927",
          source="generated", metric="accuracy")
class MQAR(Task):
    """Multi-query associative recall, as specified by Zoology (arXiv 2312.04927).

    A sequence starts with ``num_kv_pairs`` key-value pairs ``k1 v1 k2 v2 ...``;
    keys come from the first half of the vocabulary and values from the second,
    and keys within a sequence are distinct. In the rest of the sequence each key
    appears once more as a query at a position whose distance from the context
    follows a power law with exponent ``power_a``; the target at a query position
    is the value paired with that key. Other positions hold random tokens
    (``random_non_queries``) and take no loss. Accuracy counts query positions only.

    Defaults: vocab_size=128, seq_len=64, num_kv_pairs=8, power_a=0.01.
    """

    head = "lm"

    def __init__(self, *, vocab_size: int = 128, seq_len: int = 64, num_kv_pairs: int = 8, power_a: float = 0.01,
                 random_non_queries: bool = True, **kwargs):
        super().__init__(**kwargs)
        if vocab_size < 4 or vocab_size % 2:
            raise ValueError(f"mqar: vocab_size must be an even number >= 4, got {vocab_size}")
        if num_kv_pairs < 1 or num_kv_pairs > vocab_size // 2:
            raise ValueError(f"mqar: num_kv_pairs must be in [1, {vocab_size // 2}], got {num_kv_pairs}")
        if seq_len < 4 * num_kv_pairs:
            raise ValueError(f"mqar: seq_len must be at least 4 * num_kv_pairs = {4 * num_kv_pairs}, got {seq_len}")
        self.vocab_size, self.seq_len, self.num_kv_pairs = vocab_size, seq_len, num_kv_pairs
        self.power_a, self.random_non_queries = power_a, random_non_queries

    def model_options(self) -> dict:
        return {"vocab_size": self.vocab_size}

    def _generate(self, split, n, generator):
        half = self.vocab_size // 2
        pairs, context = self.num_kv_pairs, 2 * self.num_kv_pairs
        keys = torch.rand(n, half, generator=generator).argsort(dim=1)[:, :pairs]  # distinct keys in [0, half)
        values = torch.randint(half, self.vocab_size, (n, pairs), generator=generator)

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
          source="generated", metric="accuracy")
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
