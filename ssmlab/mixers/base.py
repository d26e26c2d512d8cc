"""The mixer contract that every sequence mixer in ssmlab follows.

A mixer maps ``(B, L, D) -> (B, L, D)``. Causal mixers also run one position
at a time with a recurrent state, which is how generation, streaming and
truncated backpropagation work::

    y = mixer(x)                                      # (B, L, D)
    y1, s = mixer(x[:, :a], return_state=True)
    y2 = mixer(x[:, a:], s)                           # == y[:, a:]
    s = mixer.init_state(B); y_t, s = mixer.step(x[:, t], s)   # == y[:, t]

A batch of right-padded sequences of different lengths is passed with
``lengths`` (B,): the padded positions do not change the state, so row ``b`` of
``mixer(x, return_state=True, lengths=n)`` has the output and final state of
``mixer(x[b:b+1, :n[b]], return_state=True)``; outputs at padded positions are 0.

A state is a ``dict`` of tensors whose first dimension is the batch. The
conformance suite in ``tests/mixers/test_conformance.py`` checks every
registered mixer against this contract.

A subclass implements ``_forward``, ``_step`` and ``_init_state``; the base class
validates inputs and states, defaults a state's device to the mixer's, and gives a
non-causal instance one error for every use of a state. :class:`StepFromForward` is
``step`` for a mixer whose state is a cache of what it has seen (attention's KV cache,
an input history); :class:`LengthsInForward` is the padded-batch path of a mixer whose
``_forward`` masks padded positions itself.

Parameters that need their own optimiser treatment (no weight decay, a lower
learning rate for A and dt, as in S4 and Mamba) carry an ``_optim`` dict, set
with :func:`set_optim`; the trainer reads it and has no per-model cases.

Precision-sensitive SSM parameters (A, dt, D and their logs, and the complex
eigenvalues of the S4 family) are declared with :func:`ssm_parameter`: they are
float32 (complex64) when the mixer is built in bfloat16 or float16, keep float64
when it is built in float64, and stay float32 after ``mixer.to(torch.bfloat16)``,
``.half()`` or ``.bfloat16()`` of the mixer or of any model holding it, as in
mamba_ssm (arXiv 2312.00752), whose ``A_log`` and ``D`` stay float32. A forward
over bfloat16 activations computes the recurrence in float32 and returns
activations in the input's dtype.
"""

from __future__ import annotations

import itertools
import warnings
from typing import Any

import torch
from torch import nn

State = dict[str, torch.Tensor]

LOW_PRECISION = (torch.bfloat16, torch.float16, torch.complex32)


def set_optim(param: nn.Parameter, *, weight_decay: float | None = None, lr: float | None = None,
              keep_float32: bool = False) -> nn.Parameter:
    """Mark ``param`` for special optimiser treatment: its own ``weight_decay`` and/or absolute ``lr``.

    ``keep_float32`` also marks it precision-sensitive: a cast of its module to a low-precision
    dtype leaves it in float32 (complex64); see :func:`ssm_parameter`.
    """
    hints = {}
    if weight_decay is not None:
        hints["weight_decay"] = weight_decay
    if lr is not None:
        hints["lr"] = lr
    param._optim = hints
    if keep_float32:
        param._keep_float32 = True
    return param


def ssm_dtype(dtype: torch.dtype | None) -> torch.dtype | None:
    """The dtype of an SSM parameter in a mixer built with factory ``dtype``: float32 for a
    low-precision float (bfloat16, float16), else ``dtype`` (None stays None)."""
    return torch.float32 if dtype in LOW_PRECISION else dtype


def _high_precision(dtype: torch.dtype) -> torch.dtype:
    if dtype in LOW_PRECISION:
        return torch.complex64 if dtype.is_complex else torch.float32
    return dtype


def ssm_parameter(value: torch.Tensor, dtype: torch.dtype | None = None, *, lr: float | None = None,
                  weight_decay: float | None = 0.0) -> nn.Parameter:
    """A precision-sensitive SSM parameter (A, dt, D, their logs) in one line.

    ``value`` is cast to the factory ``dtype`` (``value``'s own dtype when None), except that a
    low-precision ``dtype`` (bfloat16, float16) gives float32; a complex ``value`` takes the complex
    dtype of that precision (complex64, or complex128 for float64). The parameter gets
    ``weight_decay`` (0.0; None leaves it to the trainer) and its own ``lr`` (None: the trainer's),
    and stays float32 when a module holding it is cast to bfloat16 or float16 (:meth:`Mixer._apply`).
    """
    param = nn.Parameter(ssm_buffer(value, dtype))
    return set_optim(param, weight_decay=weight_decay, lr=lr, keep_float32=True)


def ssm_buffer(value: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A fixed precision-sensitive tensor (a HiPPO matrix) for ``register_buffer``: cast and kept
    at float32 like :func:`ssm_parameter`, without optimiser hints."""
    target = ssm_dtype(dtype) or value.dtype
    if value.is_complex() and not target.is_complex:
        target = complex_dtype(target)
    buffer = value.to(_high_precision(target))
    buffer._keep_float32 = True
    return buffer


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 when it is bfloat16 or float16 (complex64 for complex32); unchanged otherwise.
    The dtype a recurrence is computed in, as in the ops and mamba_ssm's kernels."""
    return x.to(_high_precision(x.dtype))


def complex_dtype(dtype: torch.dtype) -> torch.dtype:
    """The complex dtype of a state kept as complex numbers for real ``dtype``: complex128 for
    float64, complex64 otherwise (float32, and bfloat16 or float16, whose recurrence runs in float32)."""
    return torch.complex128 if dtype == torch.float64 else torch.complex64


def matrix_memory(batch_size: int, heads: int, key_dim: int, value_dim: int, *, device, dtype) -> torch.Tensor:
    """The empty (B, H, K, V) memory of a linear-attention-like recurrence, at least float32 (the
    state of the ``linear_attention``, ``gated_delta_rule`` and ``gla`` ops)."""
    return torch.zeros(batch_size, heads, key_dim, value_dim, device=device,
                       dtype=torch.promote_types(dtype, torch.float32))


def padding_mask(lengths: torch.Tensor, length: int) -> torch.Tensor:
    """(B, L) boolean: True at the real positions ``t < lengths[b]`` of a right-padded batch."""
    return torch.arange(length, device=lengths.device) < lengths[:, None]


def merge_states(parts, batch_size: int, growing: dict[str, tuple[int, ...]]) -> State:
    """Assemble a batch state from ``(rows, state of those rows)`` parts.

    Growing dimensions (a cache of past positions) of different sizes are
    right-aligned: each part is padded with zeros in front to the largest size.
    """
    first = parts[0][1]
    out = {}
    for key, ref in first.items():
        dims = growing.get(key, ())
        shape = list(ref.shape)
        shape[0] = batch_size
        for d in dims:
            shape[d] = max(p[1][key].shape[d] for p in parts)
        merged = ref.new_zeros(shape)
        for rows, sub in parts:
            value = sub[key]
            index = [rows] + [slice(None)] * (value.dim() - 1)
            for d in dims:
                index[d] = slice(shape[d] - value.shape[d], shape[d])
            merged[tuple(index)] = value
        out[key] = merged
    return out


def is_causal(cls: type["Mixer"], d_model: int = 64, **options) -> bool:
    """Whether the mixer ``cls(d_model, **options)`` is causal, for code that decides before it
    builds a model (which tasks a model may run): read from an instance built on the meta device
    (no memory, no data). A class whose ``causal`` is False has no causal instance, so it is not
    built (it may need options such as ``image_shape``)."""
    if not cls.causal:
        return False
    return bool(cls(d_model, **options, device="meta").causal)


class Mixer(nn.Module):
    """Base class of all sequence mixers: ``(B, L, D) -> (B, L, D)``.

    Subclasses set ``causal`` and implement ``_forward``, ``_init_state`` and
    ``_step``; the public ``forward``, ``step`` and ``init_state`` validate their
    inputs here so that every mixer rejects bad input the same way.

    ``super().__init__(d_model, device=device, dtype=dtype)`` keeps the constructor's
    factory arguments in ``self.factory`` (``{"device": ..., "dtype": ...}``, the dtype
    resolved to the default dtype when None) for building parameters and submodules.

    Direction is a property of the instance: ``mixer.causal`` is the one source.
    The class attribute is its default; a mixer with a ``bidirectional`` option passes it
    to ``super().__init__``, which makes that instance not causal (``mixer.bidirectional``
    is ``not mixer.causal``). Code that has no instance yet asks :func:`is_causal`.
    A mixer that is not causal has no state: ``step``, ``init_state``, ``return_state``
    and a ``state`` argument raise one error that names it, here, for every mixer.
    """

    causal: bool = True
    registry_name: str = "mixer"

    def __init__(self, d_model: int, *, bidirectional: bool = False, device=None, dtype: torch.dtype | None = None):
        super().__init__()
        if not isinstance(d_model, int) or d_model < 1:
            raise ValueError(f"d_model must be a positive int, got {d_model!r}")
        self.d_model = d_model
        if bidirectional:
            self.causal = False
        self.bidirectional = not self.causal
        self.factory = {"device": device, "dtype": dtype or torch.get_default_dtype()}

    def forward(self, x: torch.Tensor, state: State | None = None, *, return_state: bool = False,
                lengths: torch.Tensor | None = None):
        """Mix ``x`` (B, L, D) along L, optionally continuing from ``state``.

        ``lengths`` (B,), integers in [0, L], marks ``x`` as right-padded: row ``b``
        holds ``lengths[b]`` positions and the rest is padding, which changes
        neither the state nor the outputs of the real positions; padded outputs are 0.

        Returns ``y`` (B, L, D), or ``(y, state)`` when ``return_state``.
        """
        self._check_input(x, ndim=3)
        if not self.causal and (state is not None or return_state):
            raise self._stateless_error()
        if state is not None:
            self._check_state(state, x.shape[0])
        if lengths is None:
            y, new_state = self._forward(x, state, return_state)
        else:
            lengths = self._check_lengths(lengths, x)
            y, new_state = self._forward_varlen(x, state, return_state, lengths)
            y = y.masked_fill(~padding_mask(lengths, x.shape[1])[..., None], 0.0)
        return (y, new_state) if return_state else y

    def step(self, x_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """One position: ``x_t`` (B, D) and the state -> ``y_t`` (B, D) and the new state."""
        if not self.causal:
            raise self._stateless_error()
        self._check_input(x_t, ndim=2)
        self._check_state(state, x_t.shape[0])
        return self._step(x_t, state)

    def init_state(self, batch_size: int, *, device=None, dtype=None) -> State:
        """The state before the first position (zeros, or an empty cache), on ``device`` (default:
        the mixer's). ``dtype`` is the dtype of the activations it will meet; each mixer documents
        its default and which of its tensors are kept wider (float32 or complex)."""
        if not self.causal:
            raise self._stateless_error()
        return self._init_state(batch_size, device=self._device() if device is None else device, dtype=dtype)

    def _init_state(self, batch_size: int, *, device, dtype) -> State:
        raise NotImplementedError(f"{type(self).__name__} must implement _init_state")

    def _forward(self, x: torch.Tensor, state: State | None, return_state: bool):
        raise NotImplementedError(f"{type(self).__name__} must implement _forward")

    def _step(self, x_t: torch.Tensor, state: State):
        raise RuntimeError(f"mixer {self.registry_name!r} has no recurrent form and cannot step")

    def _stateless_error(self) -> RuntimeError:
        return RuntimeError(f"mixer {self.registry_name!r} is bidirectional (not causal: each output depends on "
                            f"the positions after it), so it has no state: it cannot step, return a state or "
                            f"continue from one")

    def _device(self) -> torch.device:
        """The device of the mixer's parameters (or buffers; cpu without either)."""
        for tensor in itertools.chain(self.parameters(), self.buffers()):
            return tensor.device
        return torch.device("cpu")

    def accepts_lengths(self) -> bool:
        """Whether ``forward`` takes ``lengths``: every causal mixer, and bidirectional ones that mask."""
        return self.causal or type(self)._forward_varlen is not Mixer._forward_varlen

    def _forward_varlen(self, x: torch.Tensor, state: State | None, return_state: bool, lengths: torch.Tensor):
        """Right-padded batch; ``lengths`` (B,) is validated. Subclasses override this with a masked pass.

        The default serves any causal mixer: the outputs come from one pass over the
        padded batch (right padding comes after the real positions, so causality keeps it
        out of them), and the final state from one pass per distinct length over the
        rows of that length, cut to it. Dimensions in ``_state_growing_dims`` (a cache
        of past positions) are right-aligned and padded with zeros in front, which
        mixers whose cache holds inputs to a causal convolution read as no input;
        attention-like mixers keep a ``valid`` mask in their state instead.
        """
        y, _ = self._forward(x, state, False)
        if not return_state:
            return y, None
        if state is None:
            state = self.init_state(x.shape[0], device=x.device, dtype=x.dtype)
        parts = {}
        for n in lengths.unique().tolist():
            rows = (lengths == n).nonzero().squeeze(1)
            sub = {k: v[rows] for k, v in state.items()}
            parts[n] = (rows, sub if n == 0 else self._forward(x[rows, :n], sub, True)[1])
        return y, merge_states([p for p in parts.values()], x.shape[0], getattr(self, "_state_growing_dims", {}))

    def _check_lengths(self, lengths: Any, x: torch.Tensor) -> torch.Tensor:
        batch, length = x.shape[:2]
        if not self.accepts_lengths():
            raise ValueError(f"{self.registry_name}: lengths (padded batches) are not supported by this "
                             f"bidirectional mixer")
        if not isinstance(lengths, torch.Tensor) or lengths.shape != (batch,) or lengths.is_floating_point() \
                or lengths.is_complex():
            raise ValueError(f"{self.registry_name}: lengths must be an integer tensor of shape ({batch},), got "
                             f"{getattr(lengths, 'shape', type(lengths).__name__)}")
        if bool((lengths < 0).any()) or bool((lengths > length).any()):
            raise ValueError(f"{self.registry_name}: lengths must lie in [0, L={length}], got {lengths.tolist()}")
        return lengths.to(device=x.device, dtype=torch.long)

    def _check_input(self, x: Any, ndim: int) -> None:
        expected = "(B, L, D)" if ndim == 3 else "(B, D)"
        expected = expected.replace("D)", f"D={self.d_model})")
        name = "x" if ndim == 3 else "x_t"
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{self.registry_name}: {name} must be a tensor of shape {expected}, got {type(x).__name__}")
        if x.dim() != ndim:
            raise ValueError(f"{self.registry_name}: {name} must have shape {expected}, got {tuple(x.shape)}")
        if x.shape[-1] != self.d_model:
            raise ValueError(f"{self.registry_name}: {name} must have shape {expected}, got {tuple(x.shape)} "
                             f"(feature size {x.shape[-1]} != d_model {self.d_model})")
        if not x.is_floating_point():
            raise ValueError(f"{self.registry_name}: {name} must be floating point of shape {expected}, "
                             f"got dtype {x.dtype}")
        if ndim == 3 and x.shape[1] == 0:
            raise ValueError(f"{self.registry_name}: {name} must have at least one position, got {tuple(x.shape)}")

    def _check_state(self, state: Any, batch_size: int) -> None:
        """Compare ``state`` with ``init_state(batch_size)``: same keys, same shapes.

        Dimensions listed in ``_state_growing_dims`` (e.g. the length of a KV
        cache) may differ.
        """
        if not isinstance(state, dict):
            raise ValueError(f"{self.registry_name}: state must be a dict from init_state(), got {type(state).__name__}")
        ref = self._state_shapes(batch_size)
        if state.keys() != ref.keys():
            raise ValueError(f"{self.registry_name}: state keys {sorted(state)} != expected {sorted(ref)}")
        growing = getattr(self, "_state_growing_dims", {})
        for key, want in ref.items():
            got = state[key]
            if not isinstance(got, torch.Tensor) or got.dim() != len(want):
                raise ValueError(f"{self.registry_name}: state[{key!r}] must have shape {want}, "
                                 f"got {getattr(got, 'shape', type(got).__name__)}")
            for i, (a, b) in enumerate(zip(got.shape, want)):
                if a != b and i not in growing.get(key, ()):
                    raise ValueError(f"{self.registry_name}: state[{key!r}] must have shape {want} "
                                     f"for batch size {batch_size}, got {tuple(got.shape)}")

    def _state_shapes(self, batch_size: int) -> dict[str, tuple]:
        """The shape of each tensor of ``init_state(batch_size)``, worked out once per batch size (on the meta
        device) and kept, since ``step`` checks the state at every position."""
        shapes = self.__dict__.setdefault("_state_shapes_by_batch", {})
        if batch_size not in shapes:
            shapes[batch_size] = {key: tuple(t.shape) for key, t in
                                  self.init_state(batch_size, device="meta").items()}
        return shapes[batch_size]

    def _apply(self, fn, recurse=True):
        """``Module._apply`` (behind ``.to``, ``.half``, ``.bfloat16``, ``.cuda`` ...) that leaves the
        parameters and buffers marked ``keep_float32`` (see :func:`ssm_parameter`, :func:`ssm_buffer`),
        and their gradients, at float32 or complex64 where ``fn`` would make them low precision;
        other casts apply as usual."""
        kept = {}
        for t in [*self.parameters(), *self.buffers()]:
            if getattr(t, "_keep_float32", False):
                kept[id(t)] = t
                if t.grad is not None:
                    kept[id(t.grad)] = t.grad
        if not kept:
            return super()._apply(fn, recurse)

        def guarded(t):
            if kept.get(id(t)) is not t:
                return fn(t)
            with warnings.catch_warnings():
                # A complex parameter is cast to real by ``.to(bfloat16)``; it is kept complex below.
                warnings.simplefilter("ignore", UserWarning)
                out = fn(t)
            if out.dtype in LOW_PRECISION:
                out = t.to(device=out.device, dtype=torch.complex64 if t.is_complex() else torch.float32)
            if out is not t and not isinstance(out, nn.Parameter):
                out._keep_float32 = True  # a buffer's new tensor keeps the mark
            return out

        return super()._apply(guarded, recurse)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, causal={self.causal}"


class StepFromForward:
    """Mixin for a mixer whose state is a cache of what it has seen (a KV cache, an input history):
    ``step`` is ``forward`` over one position, continuing from the state and returning the next."""

    def _step(self, x_t: torch.Tensor, state: State):
        y, new_state = self._forward(x_t[:, None], state, True)
        return y[:, 0], new_state


class LengthsInForward:
    """Mixin for a mixer whose ``_forward(x, state, return_state, lengths=None)`` handles a right-padded
    batch itself in one pass (Mamba's zero step at padded positions leaves the state unchanged)."""

    def _forward_varlen(self, x: torch.Tensor, state: State | None, return_state: bool, lengths: torch.Tensor):
        return self._forward(x, state, return_state, lengths)
