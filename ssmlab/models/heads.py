"""Models: the backbone with an input encoder and a task head.

* ``lm``: token embedding -> backbone -> tied or separate vocabulary projection; logits (B, L, V).
* ``classify``: token embedding or linear input projection -> backbone -> pooling -> logits (B, C).
"""

from __future__ import annotations

import torch
from torch import nn

from ssmlab.models.backbone import Backbone
from ssmlab.registry import register


class _Encoder(nn.Module):
    """Token ids (B, L) through an embedding, or features (B, L, F) through a linear map."""

    def __init__(self, d_model: int, vocab_size: int | None, input_dim: int | None, device=None, dtype=None):
        super().__init__()
        if (vocab_size is None) == (input_dim is None):
            raise ValueError("give exactly one of vocab_size (token inputs) or input_dim (feature inputs)")
        self.vocab_size, self.input_dim = vocab_size, input_dim
        if vocab_size is not None:
            self.embed = nn.Embedding(vocab_size, d_model, device=device, dtype=dtype)
        else:
            self.embed = nn.Linear(input_dim, d_model, device=device, dtype=dtype)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.vocab_size is not None:
            if inputs.dtype not in (torch.int64, torch.int32) or inputs.dim() not in (1, 2):
                raise ValueError(f"token inputs must be integer ids of shape (B, L), got {inputs.dtype} "
                                 f"{tuple(inputs.shape)}")
            if inputs.numel() and (inputs.min() < 0 or inputs.max() >= self.vocab_size):
                raise ValueError(f"token ids must lie in [0, {self.vocab_size}), got range "
                                 f"[{int(inputs.min())}, {int(inputs.max())}]")
        elif inputs.dim() not in (2, 3) or inputs.shape[-1] != self.input_dim or not inputs.is_floating_point():
            raise ValueError(f"feature inputs must be floating point of shape (B, L, {self.input_dim}), "
                             f"got {inputs.dtype} {tuple(inputs.shape)}")
        return self.embed(inputs)


@register("model", "lm", description="Causal language model: embedding, backbone, vocabulary head")
class LanguageModel(nn.Module):
    """Token-level model: logits (B, L, V) for every position.

    Args:
        mixer, d_model, n_layers, mlp, mlp_hidden, mixer_options, norm_eps: see :class:`Backbone`.
        vocab_size: number of tokens V.
        tie_embeddings: share the input embedding and output projection (default True).
    """

    def __init__(self, mixer: str, *, d_model: int, n_layers: int, vocab_size: int, tie_embeddings: bool = True,
                 device=None, dtype=None, **backbone_options):
        super().__init__()
        self.encoder = _Encoder(d_model, vocab_size, None, device, dtype)
        self.backbone = Backbone(mixer, d_model, n_layers, device=device, dtype=dtype, **backbone_options)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False, device=device, dtype=dtype)
        if tie_embeddings:
            self.lm_head.weight = self.encoder.embed.weight

    def forward(self, input_ids, states=None, *, return_state=False, lengths=None):
        """Logits (B, L, V). With ``lengths`` (B,) the batch is right-padded: each row's logits
        and final states are those of its first ``lengths[b]`` tokens."""
        h, states = self.backbone(self.encoder(input_ids), states, return_state, lengths)
        logits = self.lm_head(h)
        return (logits, states) if return_state else logits

    def init_state(self, batch_size, *, device=None, dtype=None):
        return self.backbone.init_state(batch_size, device=device, dtype=dtype)

    def save_pretrained(self, path):
        """Write a Mamba or Mamba-2 LM in the Hugging Face transformers format (see :mod:`ssmlab.interop`)."""
        from ssmlab.interop import save_pretrained

        return save_pretrained(self, path)

    def step(self, token_ids, states):
        """One token per sequence: ids (B,) -> logits (B, V) and the new states."""
        h, states = self.backbone.step(self.encoder(token_ids), states)
        return self.lm_head(h), states

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, *, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Continue ``input_ids`` (B, L) by ``max_new_tokens`` tokens; returns (B, L + max_new_tokens).

        The prompt is consumed in one parallel forward (prefill), then each new token
        costs one recurrent ``step`` (a KV cache for attention). ``temperature=0`` is
        greedy decoding; otherwise tokens are sampled from the softmax at that
        temperature, restricted to the ``top_k`` most likely tokens and to the smallest
        set whose probability reaches ``top_p`` (nucleus sampling, arXiv 1904.09751).
        """
        if not self.backbone.causal:
            raise ValueError("generate needs a causal model; this one has a bidirectional mixer")
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be non-negative, got {max_new_tokens}")
        if temperature < 0 or (top_p is not None and not 0 < top_p <= 1) or (top_k is not None and top_k < 1):
            raise ValueError(f"need temperature >= 0, 0 < top_p <= 1, top_k >= 1; got {temperature}, {top_p}, {top_k}")
        was_training = self.training
        self.eval()
        logits, states = self(input_ids, return_state=True)
        logits = logits[:, -1]
        out = [input_ids]
        for i in range(max_new_tokens):
            token = sample_token(logits, temperature, top_k, top_p, generator)
            out.append(token[:, None])
            if i + 1 < max_new_tokens:
                logits, states = self.step(token, states)
        self.train(was_training)
        return torch.cat(out, dim=1)


def sample_token(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick one token per row of ``logits`` (B, V): greedy at temperature 0, else top-k / top-p sampling."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # Drop a token when the tokens ranked above it already reach top_p.
        drop = probs.cumsum(-1) - probs >= top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]


@register("model", "classify", description="Sequence classifier: encoder, backbone, pooling, linear head")
class SequenceClassifier(nn.Module):
    """Sequence-level model: logits (B, C).

    Args:
        vocab_size or input_dim: token inputs (B, L) or feature inputs (B, L, F).
        n_classes: number of classes C.
        pooling: ``"mean"`` over positions (default) or ``"last"`` position; with
            ``lengths`` (B,) given to forward, only the first ``lengths[b]`` positions count, and
            every mixer that can (all causal ones, the bidirectional wrapper) ignores the padding.
    """

    def __init__(self, mixer: str, *, d_model: int, n_layers: int, n_classes: int, vocab_size: int | None = None,
                 input_dim: int | None = None, pooling: str = "mean", device=None, dtype=None, **backbone_options):
        super().__init__()
        if pooling not in ("mean", "last"):
            raise ValueError(f"pooling must be 'mean' or 'last', got {pooling!r}")
        self.pooling = pooling
        self.encoder = _Encoder(d_model, vocab_size, input_dim, device, dtype)
        self.backbone = Backbone(mixer, d_model, n_layers, device=device, dtype=dtype, **backbone_options)
        self.head = nn.Linear(d_model, n_classes, device=device, dtype=dtype)

    def forward(self, inputs, lengths: torch.Tensor | None = None):
        batch, length = inputs.shape[:2]
        if lengths is None:
            h, _ = self.backbone(self.encoder(inputs))  # (B, L, D)
            lengths = torch.full((batch,), length, device=h.device)
        elif lengths.shape != (batch,) or bool((lengths < 1).any()) or bool((lengths > length).any()):
            raise ValueError(f"lengths must have shape ({batch},) with values in [1, {length}]")
        else:
            lengths = lengths.to(inputs.device)
            h, _ = self.backbone(self.encoder(inputs), lengths=lengths)  # (B, L, D)
        if self.pooling == "last":
            pooled = h[torch.arange(batch, device=h.device), lengths - 1]
        else:
            mask = (torch.arange(length, device=h.device)[None] < lengths[:, None]).to(h.dtype)  # (B, L)
            pooled = (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        return self.head(pooled)
