"""Models: the backbone with an input encoder and a task head.

* ``lm``: token embedding -> backbone -> tied or separate vocabulary projection; logits (B, L, V).
* ``classify``: token embedding or linear input projection -> backbone -> pooling -> logits (B, C).
* ``forecast``: past values (B, L, F) -> RevIN -> linear projection -> backbone -> last position ->
  linear map to the next ``horizon`` values (B, H, F).
* ``retrieval``: two documents (B, 2, L) through one shared encoder, ``[u, v, u*v, u-v]`` -> MLP -> (B, C).
* ``vision``: images (B, H, W, C) -> patch embedding -> scan order -> backbone -> pooling -> (B, C);
  see :mod:`ssmlab.models.vision`.

Each head says how it is trained and scored, for the trainer: ``count(targets)`` (how many
targets the loss averages over), ``loss(outputs, targets)`` (that mean, in float32) and
``metrics(outputs, targets)`` (each metric's sum over the batch; divided by the count over a
split), and ``takes_lengths`` (whether the trainer passes a padded batch's ``lengths``).
:func:`head_loss` gives the three of a head by its registered name.

Every model starts from one initialisation: token embeddings, and so a tied LM head, are drawn
from N(0, 0.02) (:func:`init_embedding_`); an untied LM head and the other heads keep PyTorch's
``nn.Linear`` init, as in mamba_ssm; the backbone scales its residual-branch outputs with depth
(see :mod:`ssmlab.models.backbone`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssmlab.layers.linear import project
from ssmlab.models.backbone import Backbone
from ssmlab import registry
from ssmlab.registry import register


EMBEDDING_STD = 0.02


@torch.no_grad()
def init_embedding_(weight: torch.Tensor) -> torch.Tensor:
    """Draw a token embedding (V, D) or a vocabulary projection from N(0, 0.02) in place.

    The ``initializer_range`` of GPT-2 and of mamba_ssm's ``_init_weights`` (arXiv 2312.00752
    reference code). PyTorch's default N(0, 1) embedding, tied to the output, gives initial logits
    of standard deviation about sqrt(D) and an initial loss far above ln V; with 0.02 the first
    logits are near zero and the initial loss of an LM is close to ln V.
    """
    return nn.init.normal_(weight, mean=0.0, std=EMBEDDING_STD)


class _Encoder(nn.Module):
    """Token ids (B, L) through an embedding, or features (B, L, F) through a linear map."""

    def __init__(self, d_model: int, vocab_size: int | None, input_dim: int | None, device=None, dtype=None):
        super().__init__()
        if (vocab_size is None) == (input_dim is None):
            raise ValueError("give exactly one of vocab_size (token inputs) or input_dim (feature inputs)")
        self.vocab_size, self.input_dim = vocab_size, input_dim
        if vocab_size is not None:
            self.embed = nn.Embedding(vocab_size, d_model, device=device, dtype=dtype)
            init_embedding_(self.embed.weight)
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


class PretrainedMixin:
    """``save_pretrained`` for every head; the format is :mod:`ssmlab.interop.pretrained`'s."""

    def save_pretrained(self, path, *, format: str = "auto", task=None):
        """Write this model to the directory ``path``; ``ssmlab.load_pretrained(path)`` reads it back.

        ``format``: ``"auto"`` (default: the transformers format for a pure Mamba or Mamba-2
        language model without MLP blocks, ssmlab's format otherwise), ``"hf"`` or
        ``"ssmlab"``. ``task`` (a Task or a task name) records the task and, for a language
        model, its tokeniser. See :func:`ssmlab.interop.save_pretrained`.
        """
        from ssmlab.interop import save_pretrained

        return save_pretrained(self, path, format=format, task=task)


class _EveryTarget:
    """A loss averaged over every target; the trainer gives a padded batch's lengths."""

    takes_lengths = True

    @staticmethod
    def count(targets: torch.Tensor) -> int:
        return targets.numel()


class ClassifierObjective(_EveryTarget):
    """Cross-entropy over class logits (B, C) against class indices (B,); the metric is ``accuracy``."""

    @staticmethod
    def loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs.float(), targets)

    @staticmethod
    def metrics(outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"accuracy": (outputs.argmax(-1) == targets).sum()}


@register("model", "lm", description="Causal language model: embedding, backbone, vocabulary head")
class LanguageModel(PretrainedMixin, nn.Module):
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

    # Next-token cross-entropy over the positions whose target is not ``ignore_index`` (padding);
    # logits (B, L, V), targets (B, L); the metric is token ``accuracy``. Padding is in the targets,
    # so the trainer gives no lengths.
    takes_lengths = False

    @staticmethod
    def count(targets: torch.Tensor, *, ignore_index: int = -100) -> int:
        return int((targets != ignore_index).sum())

    @staticmethod
    def loss(outputs: torch.Tensor, targets: torch.Tensor, *, ignore_index: int = -100) -> torch.Tensor:
        return F.cross_entropy(outputs.flatten(0, 1).float(), targets.flatten(), ignore_index=ignore_index)

    @staticmethod
    def metrics(outputs: torch.Tensor, targets: torch.Tensor, *, ignore_index: int = -100) -> dict:
        return {"accuracy": ((outputs.argmax(-1) == targets) & (targets != ignore_index)).sum()}

    def forward(self, input_ids, states=None, *, return_state=False, lengths=None):
        """Logits (B, L, V). With ``lengths`` (B,) the batch is right-padded: each row's logits
        and final states are those of its first ``lengths[b]`` tokens."""
        h, states = self.backbone(self.encoder(input_ids), states, return_state, lengths)
        logits = self.lm_head(h)
        return (logits, states) if return_state else logits

    def init_state(self, batch_size, *, device=None, dtype=None):
        return self.backbone.init_state(batch_size, device=device, dtype=dtype)

    def step(self, token_ids, states):
        """One token per sequence: ids (B,) -> logits (B, V) and the new states."""
        h, states = self.backbone.step(self.encoder(token_ids), states)
        return project(self.lm_head, h), states

    def prefill(self, input_ids: torch.Tensor):
        """Consume a prompt (B, L) in one parallel forward: the logits (B, V) of its last position and the
        states after it, ready for :meth:`step`. Only the last position goes through the LM head."""
        h, states = self.backbone(self.encoder(input_ids), None, True)
        return project(self.lm_head, h[:, -1]), states

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, *, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Continue ``input_ids`` (B, L) by ``max_new_tokens`` tokens; returns (B, L + max_new_tokens).

        The prompt is consumed in one parallel forward (prefill), then each new token
        costs one recurrent ``step`` (a KV cache for attention). ``temperature=0`` is
        greedy decoding; otherwise tokens are sampled from the softmax at that
        temperature, restricted to the ``top_k`` most likely tokens and to the smallest
        set whose probability reaches ``top_p`` (nucleus sampling, arXiv 1904.09751).
        :meth:`generate_tokens` yields the same tokens one at a time, as they are made.
        """
        tokens = list(self.generate_tokens(input_ids, max_new_tokens, temperature=temperature, top_k=top_k,
                                           top_p=top_p, generator=generator))
        return torch.cat([input_ids] + [t[:, None] for t in tokens], dim=1)

    @torch.no_grad()
    def generate_tokens(self, input_ids: torch.Tensor, max_new_tokens: int, *, temperature: float = 1.0,
                        top_k: int | None = None, top_p: float | None = None,
                        generator: torch.Generator | None = None):
        """Iterator over the ``max_new_tokens`` continuation tokens of ``input_ids`` (B, L), each (B,),
        yielded as soon as it is sampled (for streaming); the arguments are those of :meth:`generate`."""
        if not self.backbone.causal:
            raise ValueError("generate needs a causal model; this one has a bidirectional mixer")
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be non-negative, got {max_new_tokens}")
        if temperature < 0 or (top_p is not None and not 0 < top_p <= 1) or (top_k is not None and top_k < 1):
            raise ValueError(f"need temperature >= 0, 0 < top_p <= 1, top_k >= 1; got {temperature}, {top_p}, {top_k}")
        was_training = self.training
        self.eval()
        try:
            logits, states = self.prefill(input_ids)
            for i in range(max_new_tokens):
                token = sample_token(logits, temperature, top_k, top_p, generator)
                yield token
                if i + 1 < max_new_tokens:
                    logits, states = self.step(token, states)
        finally:
            self.train(was_training)


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
class SequenceClassifier(ClassifierObjective, PretrainedMixin, nn.Module):
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
        if lengths is not None:
            lengths = _check_lengths(lengths, (batch,), length, inputs.device)
        h, _ = self.backbone(self.encoder(inputs), lengths=lengths)  # (B, L, D)
        return self.head(_pool(h, lengths, self.pooling))


def _check_lengths(lengths: torch.Tensor, shape: tuple[int, ...], length: int, device) -> torch.Tensor:
    """``lengths`` of a right-padded batch, of ``shape``, with values in [1, ``length``], as a long tensor."""
    if not isinstance(lengths, torch.Tensor) or tuple(lengths.shape) != shape or lengths.is_floating_point() \
            or bool((lengths < 1).any()) or bool((lengths > length).any()):
        raise ValueError(f"lengths must be an integer tensor of shape {shape} with values in [1, {length}], got "
                         f"{lengths.tolist() if isinstance(lengths, torch.Tensor) else type(lengths).__name__}")
    return lengths.to(device=device, dtype=torch.long)


def _pool(h: torch.Tensor, lengths: torch.Tensor | None, pooling: str) -> torch.Tensor:
    """(B, L, D) -> (B, D): the ``"mean"`` over the first ``lengths[b]`` positions, or the ``"last"`` of them."""
    batch, length = h.shape[:2]
    if lengths is None:
        return h[:, -1] if pooling == "last" else h.mean(1)
    if pooling == "last":
        return h[torch.arange(batch, device=h.device), lengths - 1]
    mask = (torch.arange(length, device=h.device)[None] < lengths[:, None]).to(h.dtype)  # (B, L)
    return (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)


class RevIN(nn.Module):
    """Reversible instance normalisation (Kim et al., arXiv 2109.12398).

    Each series of a batch (each row and feature) is normalised by its own mean and
    standard deviation over time, and optionally given a learned per-feature affine map,
    before the model; the model's prediction is mapped back with the same statistics.
    This removes the shift in level and scale between the windows of a non-stationary
    series, which is why it is standard in time-series forecasting.

    ``normalize(x)`` returns the normalised input and the statistics; ``denormalize(y, stats)``
    inverts it exactly: ``denormalize(normalize(x)[0], normalize(x)[1]) == x``.

    Args:
        n_features: number of features F.
        eps: added to the variance (default 1e-5).
        affine: learn a per-feature scale (initialised to 1) and shift (to 0) (default True).
    """

    def __init__(self, n_features: int, *, eps: float = 1e-5, affine: bool = True, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.ones(n_features, **factory)) if affine else None
        self.bias = nn.Parameter(torch.zeros(n_features, **factory)) if affine else None

    def normalize(self, x: torch.Tensor, lengths: torch.Tensor | None = None):
        """``x`` (B, L, F) -> normalised ``x`` (B, L, F) and ``(mean, std)``, each (B, 1, F).

        With ``lengths`` (B,) only the first ``lengths[b]`` positions count, and the
        padding is set to 0.
        """
        if lengths is None:
            mean = x.mean(1, keepdim=True)
            var = (x - mean).square().mean(1, keepdim=True)
            mask = None
        else:
            mask = (torch.arange(x.shape[1], device=x.device)[None] < lengths[:, None]).to(x.dtype)[..., None]
            count = mask.sum(1, keepdim=True)  # (B, 1, 1)
            mean = (x * mask).sum(1, keepdim=True) / count
            var = ((x - mean).square() * mask).sum(1, keepdim=True) / count
        std = (var + self.eps).sqrt()
        y = (x - mean) / std
        if self.weight is not None:
            y = y * self.weight + self.bias
        if mask is not None:
            y = y * mask
        return y, (mean, std)

    def denormalize(self, y: torch.Tensor, stats: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """``y`` (B, H, F) in normalised units -> the original units of the series ``stats`` came from."""
        mean, std = stats
        if self.weight is not None:
            y = (y - self.bias) / self.weight
        return y * std + mean


@register("model", "forecast", description="Time-series forecaster: RevIN, backbone, last position -> horizon",
          paper="2109.12398")
class Forecaster(_EveryTarget, PretrainedMixin, nn.Module):
    """Multi-step forecasting: the past ``L`` values (B, L, F) -> the next ``horizon`` values (B, H, F).

    The series is normalised by RevIN (arXiv 2109.12398), projected to ``d_model``, run
    through the backbone, and the features at the last (real) position go through one
    linear layer to all ``horizon * F`` future values at once (direct multi-step
    forecasting, the usual head of SSM forecasters), which RevIN maps back to the
    series' own level and scale. The output is always (B, H, F), also for F = 1.

    Args:
        mixer, d_model, n_layers, mlp, mlp_hidden, mixer_options, norm_eps: see :class:`Backbone`.
        input_dim: number of features F of the series.
        horizon: number of future steps H.
        revin: use reversible instance normalisation (default True).
        revin_affine: RevIN's learned per-feature affine map (default True).
        revin_eps: RevIN's epsilon (default 1e-5).
    """

    def __init__(self, mixer: str, *, d_model: int, n_layers: int, input_dim: int, horizon: int, revin: bool = True,
                 revin_affine: bool = True, revin_eps: float = 1e-5, device=None, dtype=None, **backbone_options):
        super().__init__()
        if not isinstance(input_dim, int) or input_dim < 1:
            raise ValueError(f"input_dim must be a positive int, got {input_dim!r}")
        if not isinstance(horizon, int) or horizon < 1:
            raise ValueError(f"horizon must be a positive int, got {horizon!r}")
        self.input_dim, self.horizon = input_dim, horizon
        factory = {"device": device, "dtype": dtype}
        self.revin = RevIN(input_dim, eps=revin_eps, affine=revin_affine, **factory) if revin else None
        self.encoder = _Encoder(d_model, None, input_dim, device, dtype)
        self.backbone = Backbone(mixer, d_model, n_layers, device=device, dtype=dtype, **backbone_options)
        self.head = nn.Linear(d_model, horizon * input_dim, **factory)

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """``inputs`` (B, L, F) float, ``lengths`` (B,) for right-padded series -> predictions (B, H, F)."""
        if inputs.dim() != 3 or inputs.shape[-1] != self.input_dim or not inputs.is_floating_point():
            raise ValueError(f"forecast inputs must be floating point of shape (B, L, F={self.input_dim}), got "
                             f"{inputs.dtype} {tuple(inputs.shape)}")
        batch, length = inputs.shape[:2]
        if lengths is not None:
            lengths = _check_lengths(lengths, (batch,), length, inputs.device)
        x, stats = self.revin.normalize(inputs, lengths) if self.revin is not None else (inputs, None)
        h, _ = self.backbone(self.encoder(x), lengths=lengths)  # (B, L, D)
        y = self.head(_pool(h, lengths, "last")).view(batch, self.horizon, self.input_dim)
        return self.revin.denormalize(y, stats) if self.revin is not None else y

    # Mean squared error over every value of predictions and targets (B, H, F); the metrics are
    # ``mse`` and ``mae``.
    @staticmethod
    def loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return _forecast_error(outputs, targets).square().mean()

    @staticmethod
    def metrics(outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        error = _forecast_error(outputs, targets).detach()
        return {"mse": error.square().sum(), "mae": error.abs().sum()}


def _forecast_error(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    if outputs.shape != targets.shape:
        raise ValueError(f"forecast outputs {tuple(outputs.shape)} and targets {tuple(targets.shape)} must have "
                         f"the same shape (B, H, F)")
    return outputs.float() - targets.float()


@register("model", "retrieval", description="Two-tower document matching (LRA retrieval): shared encoder, "
          "[u, v, u*v, u-v], MLP", paper="2011.04006")
class RetrievalClassifier(ClassifierObjective, PretrainedMixin, nn.Module):
    """Whether two documents match, as in LRA's retrieval task (Tay et al., arXiv 2011.04006).

    One encoder (token embedding, backbone, pooling) is shared by the two towers: it
    turns each document into a vector, ``u`` and ``v`` (D,), and an MLP classifies
    ``[u, v, u * v, u - v]`` (4D,). Keeping the documents apart until the pooled
    vectors is what makes the task a test of compression into one vector.

    Args:
        mixer, d_model, n_layers, mlp, mlp_hidden, mixer_options, norm_eps: see :class:`Backbone`.
        vocab_size: number of tokens (LRA's byte-level documents: 257 with padding).
        n_classes: number of classes (default 2: match or not).
        pooling: ``"mean"`` over each document's real positions (default) or its ``"last"`` one.
        head_hidden: hidden width of the classifier MLP (default ``d_model``); LRA's MLP has
            one ReLU hidden layer.
    """

    def __init__(self, mixer: str, *, d_model: int, n_layers: int, vocab_size: int, n_classes: int = 2,
                 pooling: str = "mean", head_hidden: int | None = None, device=None, dtype=None, **backbone_options):
        super().__init__()
        if pooling not in ("mean", "last"):
            raise ValueError(f"pooling must be 'mean' or 'last', got {pooling!r}")
        if head_hidden is not None and (not isinstance(head_hidden, int) or head_hidden < 1):
            raise ValueError(f"head_hidden must be a positive int, got {head_hidden!r}")
        factory = {"device": device, "dtype": dtype}
        self.pooling = pooling
        self.encoder = _Encoder(d_model, vocab_size, None, device, dtype)
        self.backbone = Backbone(mixer, d_model, n_layers, device=device, dtype=dtype, **backbone_options)
        hidden = head_hidden or d_model
        self.head = nn.Sequential(nn.Linear(4 * d_model, hidden, **factory), nn.ReLU(),
                                  nn.Linear(hidden, n_classes, **factory))

    def encode(self, inputs: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """One tower: documents (N, L) token ids, ``lengths`` (N,) -> pooled vectors (N, D)."""
        h, _ = self.backbone(self.encoder(inputs), lengths=lengths)  # (N, L, D)
        return _pool(h, lengths, self.pooling)

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """``inputs`` (B, 2, L) token ids of the two documents, ``lengths`` (B, 2) -> logits (B, C).

        With ``lengths`` each document is right-padded to L; only its first
        ``lengths[b, i]`` tokens count (exactly so for mixers that accept lengths).
        """
        if inputs.dim() != 3 or inputs.shape[1] != 2:
            raise ValueError(f"retrieval inputs must be token ids of shape (B, 2, L), got {tuple(inputs.shape)}")
        batch, _, length = inputs.shape
        if lengths is not None:
            lengths = _check_lengths(lengths, (batch, 2), length, inputs.device).reshape(2 * batch)
        pooled = self.encode(inputs.reshape(2 * batch, length), lengths).view(batch, 2, -1)
        u, v = pooled[:, 0], pooled[:, 1]
        return self.head(torch.cat([u, v, u * v, u - v], dim=-1))


def head_loss(head: str, outputs: torch.Tensor, targets: torch.Tensor):
    """``(loss, sums, count)`` of the registered model head ``head``: its ``loss`` (the mean over
    the ``count`` counted targets, what to backpropagate), its ``metrics`` (each metric's sum, to
    be divided by the count summed over batches) and its ``count``, as a tensor."""
    if head not in registry.names("model"):
        raise ValueError(f"head_loss: unknown head {head!r}; expected one of {registry.names('model')}")
    cls = registry.get("model", head).obj
    return cls.loss(outputs, targets), cls.metrics(outputs, targets), torch.tensor(cls.count(targets))
