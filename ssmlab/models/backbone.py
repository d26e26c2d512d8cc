"""The backbone shared by every model: a stack of pre-norm residual blocks.

Each block is ``x + mixer(norm(x))``, then optionally ``x + mlp(norm(x))``,
the layout used by Mamba (arXiv 2312.00752) and by pre-norm transformers.
The backbone steps one position at a time when all its mixers are causal.

Initialisation (one standard for every model, applied when the model is built;
it only rescales or redraws the linear and embedding weights named here, never
a mixer's own SSM parameters such as A, dt, B, C, D, their logs or its filters):

* residual-branch outputs: in every block, the last linear map before each
  residual addition is divided by ``sqrt(n_residuals * n_layers)``, with
  ``n_residuals`` = 2 when the block has an MLP and 1 without, as mamba_ssm's
  ``_init_weights(rescale_prenorm_residual=True, n_residuals_per_layer)``
  (arXiv 2312.00752 reference code) and GPT-2 (Radford et al. 2019) do, so the
  residual stream's variance does not grow with depth. The tensors are the
  ``weight`` and ``bias`` of every ``nn.Linear`` inside a mixer whose attribute
  name is in :data:`RESIDUAL_OUTPUTS` (``out_proj``: attention, mamba, mamba2,
  h3, hyena, retnet, gss, linear-attention, tnn, the bidirectional wrappers;
  ``output_linear``: s4, s4d, dss, lssl, liquid-s4, whose GLU output only has
  its value half scaled so that the gate is unchanged; ``output``: rwkv) and
  the MLP's ``fc_out``. Mixers without such a projection (lru, s5, mega, whose
  output is gated against its input) are left as they are. The weights keep
  the shape of their own init (PyTorch's default or the mixer's); only their
  scale changes.
* token embeddings (``encoder.embed.weight`` of the token-input heads, and so the
  tied LM head): N(0, 0.02), GPT-2's and mamba_ssm's ``initializer_range``
  (:func:`ssmlab.models.heads.init_embedding_`). An untied LM head and the other
  heads keep PyTorch's ``nn.Linear`` init, as mamba_ssm keeps its untied ``lm_head``;
  a linear input encoder, vision's patch embedding and RevIN are unchanged.

Loading a checkpoint replaces all of it: the init only decides where training starts.
"""

from __future__ import annotations

import inspect
import math

import torch
from torch import nn

from ssmlab import registry
from ssmlab.config import ConfigError, check_options, constructor_options
from ssmlab.layers import GatedMLP, RMSNorm
from ssmlab.mixers.base import Mixer


def create_mixer(name: str, d_model: int, **options) -> Mixer:
    """Build the registered mixer ``name`` with width ``d_model`` and its own ``options``; an
    option it does not take is a ``ConfigError`` that lists those it does (:func:`check_mixer_options`)."""
    check_mixer_options(name, options, types=False)
    return registry.get("mixer", name).obj(d_model, **options)


# Mixer options with one name across mixers since ssmlab 0.1 (old name -> new); the old names are
# an error that names the new one.
RENAMED_OPTIONS = {"head_dim": "headdim", "disc": "discretization", "postact": "activation"}


def check_mixer_options(name: str, options: dict, *, types: bool = True) -> None:
    """Check ``options`` against the constructor of mixer ``name`` before it is built: an unknown
    option is a ``ConfigError`` listing the valid ones, and with ``types`` an annotated one of the
    wrong type too (see :func:`ssmlab.config.check_options`).
    A mixer that wraps another (it takes ``mixer``: the bidirectional wrapper, cross-scan) passes
    the options it does not take to the wrapped mixer, and they are checked against that one's."""
    cls = registry.get("mixer", name).obj
    valid = constructor_options(cls)
    valid.pop("d_model", None)
    owner = f"mixer {name!r}"
    for old in options:
        if old not in valid and RENAMED_OPTIONS.get(old) in valid:
            raise ConfigError(f"{owner}: option {old} is now called {RENAMED_OPTIONS[old]}")
    if "mixer" not in valid:
        check_options(options, valid, owner, types=types)
        return
    check_options({k: v for k, v in options.items() if k in valid}, valid, owner, types=types)
    param = inspect.signature(cls).parameters.get("mixer")
    inner = options.get("mixer", param.default if param is not None else None)
    if isinstance(inner, str) and inner in registry.names("mixer"):
        check_mixer_options(inner, {k: v for k, v in options.items() if k not in valid}, types=types)


RESIDUAL_OUTPUTS = ("out_proj", "output_linear", "output")


@torch.no_grad()
def rescale_residual_outputs_(block: "Block", n_layers: int) -> None:
    """Divide the residual-branch output projections of ``block`` by ``sqrt(n_residuals * n_layers)``
    in place (see the module docstring for exactly which tensors)."""
    n_residuals = 2 if block.mlp is not None else 1
    scale = 1.0 / math.sqrt(n_residuals * n_layers)
    linears = [module for name, module in block.mixer.named_modules()
               if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in RESIDUAL_OUTPUTS]
    if block.mlp is not None:
        linears.append(block.mlp.fc_out)
    for parent in block.mixer.modules():
        # A GLU output (value, gate): only the value half is a residual output.
        glu = getattr(parent, "glu", False) is True and isinstance(getattr(parent, "output_linear", None), nn.Linear)
        if glu and parent.output_linear in linears:
            linears.remove(parent.output_linear)
            half = parent.output_linear.out_features // 2
            parent.output_linear.weight[:half] *= scale
            if parent.output_linear.bias is not None:
                parent.output_linear.bias[:half] *= scale
    for linear in linears:
        linear.weight *= scale
        if linear.bias is not None:
            linear.bias *= scale


class Block(nn.Module):
    """Pre-norm residual block: ``x + mixer(norm1(x))`` and optionally ``+ mlp(norm2(x))``."""

    def __init__(self, mixer: Mixer, d_model: int, *, mlp: bool, mlp_hidden: int | None, norm_eps: float,
                 dropout: float = 0.0, device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.dropout = nn.Dropout(dropout)
        self.norm1 = RMSNorm(d_model, norm_eps, **factory)
        self.mixer = mixer
        self.norm2 = RMSNorm(d_model, norm_eps, **factory) if mlp else None
        self.mlp = GatedMLP(d_model, mlp_hidden, **factory) if mlp else None

    def forward(self, x, state=None, return_state=False, lengths=None):
        options = {"lengths": lengths} if lengths is not None and self.mixer.accepts_lengths() else {}
        y, state = self.mixer(self.norm1(x), state, return_state=True, **options) if return_state else \
            (self.mixer(self.norm1(x), state, **options), None)
        x = x + self.dropout(y)
        if self.mlp is not None:
            x = x + self.dropout(self.mlp(self.norm2(x)))
        return x, state

    def step(self, x_t, state):
        y, state = self.mixer.step(self.norm1(x_t), state)
        x_t = x_t + self.dropout(y)
        if self.mlp is not None:
            x_t = x_t + self.dropout(self.mlp(self.norm2(x_t)))
        return x_t, state


def hybrid_pattern(n_layers: int, every: int, *, base: str = "mamba", other: str = "attention") -> list[str]:
    """Jamba-style layer pattern (arXiv 2403.19887): one ``other`` layer in each run of ``every``
    layers, in the middle of the run (Jamba: one attention layer per 8, at position 4)."""
    if every < 1:
        raise ValueError(f"every must be a positive int, got {every}")
    return [other if i % every == every // 2 else base for i in range(n_layers)]


class Backbone(nn.Module):
    """``n_layers`` blocks and a final norm: ``(B, L, D) -> (B, L, D)``.

    Args:
        mixer: a registered mixer name, or a list of names, one per layer, for a hybrid
            stack (see :func:`hybrid_pattern`).
        d_model: width D.
        n_layers: number of blocks.
        mlp: add a gated MLP after each mixer (default True).
        mlp_hidden: hidden width of the MLP (default 8/3 D).
        mixer_options: keyword options for every mixer; for a hybrid stack, a dict from
            mixer name to that mixer's options (names not given get none).
        norm_eps: RMSNorm epsilon (default 1e-5).
        dropout: dropout on the mixer's and the MLP's outputs before each residual addition
            (default 0.0), the residual dropout of the S4 and transformer blocks; mixers have
            their own ``dropout`` options where their official layers do.
    """

    def __init__(self, mixer: str | list[str], d_model: int, n_layers: int, *, mlp: bool = True,
                 mlp_hidden: int | None = None, mixer_options: dict | None = None, norm_eps: float = 1e-5,
                 dropout: float = 0.0, device=None, dtype=None):
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers must be at least 1, got {n_layers}")
        factory = {"device": device, "dtype": dtype}
        if isinstance(mixer, str):
            names, per_name = [mixer] * n_layers, {mixer: mixer_options or {}}
        else:
            names = list(mixer)
            if len(names) != n_layers:
                raise ValueError(f"a hybrid pattern needs one mixer per layer: {len(names)} names for "
                                 f"n_layers={n_layers}")
            per_name = dict(mixer_options or {})
            stray = set(per_name) - set(names)
            if stray:
                raise ValueError(f"mixer_options of a hybrid stack are keyed by mixer name; {sorted(stray)} "
                                 f"are not in the pattern {sorted(set(names))}")
        self.mixer_name = mixer if isinstance(mixer, str) else "+".join(dict.fromkeys(names))
        self.layers = nn.ModuleList(
            Block(create_mixer(name, d_model, **per_name.get(name, {}), **factory), d_model, mlp=mlp,
                  mlp_hidden=mlp_hidden, norm_eps=norm_eps, dropout=dropout, **factory)
            for name in names
        )
        for layer in self.layers:
            rescale_residual_outputs_(layer, n_layers)
        self.norm_f = RMSNorm(d_model, norm_eps, **factory)

    @property
    def causal(self) -> bool:
        return all(layer.mixer.causal for layer in self.layers)

    def forward(self, x, states=None, return_state=False, lengths=None):
        """``lengths`` (B,) marks ``x`` as right-padded (see :class:`~ssmlab.mixers.base.Mixer`); mixers
        that cannot keep padding out (bidirectional ones other than the wrapper) see it as input."""
        new_states = []
        for i, layer in enumerate(self.layers):
            x, s = layer(x, None if states is None else states[i], return_state, lengths)
            new_states.append(s)
        return self.norm_f(x), (new_states if return_state else None)

    def init_state(self, batch_size, *, device=None, dtype=None):
        return [layer.mixer.init_state(batch_size, device=device, dtype=dtype) for layer in self.layers]

    def step(self, x_t, states):
        new_states = []
        for layer, s in zip(self.layers, states):
            x_t, s = layer.step(x_t, s)
            new_states.append(s)
        return self.norm_f(x_t), new_states
