"""S5: the simplified state space layer (Smith, Warrington, Linderman; arXiv 2208.04933).

One multi-input multi-output SSM for all H channels, with a diagonal state
matrix of P states obtained by diagonalising the normal part of HiPPO-LegS
("HiPPO-N"), in J blocks, kept as P/2 conjugate pairs. The discretised
recurrence runs as a parallel (chunked associative) scan::

    h_t = A_bar h_{t-1} + B_bar u_t        (P/2,) complex
    y_t = 2 Re(C h_t) + D u_t              (H,)

With ``bidirectional=True`` a second scan runs over the reversed sequence with
its own C, as in the paper's bidirectional variant; the layer is then not causal.
The official layer follows the SSM with an output stage, by default its
``half_glu1``: ``g = GELU(y); out = g * sigmoid(W g + b)``, then dropout.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ssmlab.mixers.base import Mixer, State, complex_dtype, ssm_dtype, ssm_parameter
from ssmlab.ops import discretize_diag, dplr, init_log_dt, linear_scan
from ssmlab.registry import register


ACTIVATIONS = (None, "gelu", "half_glu1", "half_glu2", "full_glu")
C_INITS = ("trunc_standard_normal", "lecun_normal", "complex_normal")

# The standard deviation of a standard normal truncated to [-2, 2]: jax's truncated LeCun normal
# divides by it so that the truncated draw has exactly the requested standard deviation.
_TRUNCATED_STD = math.sqrt(1 - 4 * math.exp(-2) / math.sqrt(2 * math.pi) / math.erf(math.sqrt(2)))


def lecun_normal(*shape: int, fan_in: int, device=None) -> torch.Tensor:
    """LeCun normal as ``jax.nn.initializers.lecun_normal`` draws it: a normal truncated at two
    standard deviations, scaled so that its standard deviation is exactly ``1/sqrt(fan_in)``
    (LeCun et al. 1998; float64, shape ``shape``)."""
    std = 1 / math.sqrt(fan_in) / _TRUNCATED_STD
    out = torch.empty(*shape, device=device, dtype=torch.float64)
    return torch.nn.init.trunc_normal_(out, std=std, a=-2 * std, b=2 * std)


def hippo_n_blocks(d_state: int, blocks: int, device=None):
    """Eigenvalues (P/2,) and eigenvectors (P, P/2) of J = ``blocks`` HiPPO-N blocks of size P/J,
    kept one of each conjugate pair (block-diagonal V).

    As the official code keeps them: the eigenvalues with negative imaginary part, most negative
    first (the conjugates of ``dplr("legs", P/J, conj_sym=True)``, in the same order).
    """
    size = d_state // blocks
    Lambda, _, _, V = dplr("legs", size, conj_sym=True)
    eig = Lambda.conj().repeat(blocks)
    full_v = torch.block_diag(*[V.conj()] * blocks)  # (P, P/2)
    return eig.to(device), full_v.to(device)


@register("mixer", "s5", description="S5: MIMO diagonal SSM, HiPPO-N init, parallel scan", paper="2208.04933")
class S5(Mixer):
    """The S5 layer (arXiv 2208.04933).

    Args:
        d_model: channels H.
        d_state: state size P (default 64), stored as P/2 conjugate pairs.
        blocks: J, the number of HiPPO-N blocks on the diagonal of the initial A (default 8, the
            official ``run_train.py`` default); ``d_state`` must be a multiple of ``2 * blocks``.
        discretization: ``"zoh"`` (default) or ``"bilinear"``.
        dt_min, dt_max: the per-state step is initialised log-uniform in [0.001, 0.1].
        c_init: how C is drawn, as the official ``C_init`` option: ``"trunc_standard_normal"``
            (default, the official default: each entry's real and imaginary parts LeCun normal with
            fan-in P, then ``C~ = C V``), ``"lecun_normal"`` (LeCun normal over the (H, P, 2) array,
            whose fan-in is P*H, then ``C~ = C V``) or ``"complex_normal"`` (``C~`` drawn directly in
            the eigenbasis, real and imaginary parts normal with std ``sqrt(1/2)``).
        bidirectional: add a backward scan with its own C (default False; not causal then).
        lr: learning rate for Lambda and the step, which get no weight decay (default None).
        backend: ``linear_scan`` backend.
        activation: the output stage after the SSM, as the official S5 layer's options:
            ``"half_glu1"`` (default: ``g = GELU(y); g * sigmoid(W g + b)``), ``"half_glu2"``
            (``y * sigmoid(W GELU(y) + b)``), ``"full_glu"`` (``GELU(y)`` through two projections,
            one gating the other), ``"gelu"``, or ``None`` (the SSM output itself).
        dropout: dropout after the output stage (0.0).

    Initialisation follows the official code (lindermanlab/S5 @ 3c18fdb, ``s5/ssm.py``,
    ``s5/ssm_init.py``): B (P, H) is LeCun normal, a normal truncated at two standard deviations
    with std ``1/sqrt(P)`` (its fan-in is P), in the original basis, then ``B~ = V^{-1} B``; C as
    ``c_init`` says; D is standard normal; the output stage's projections have LeCun-normal
    weights (fan-in H) and zero biases, as flax's ``Dense``, and its GELU is the tanh
    approximation, flax's default.

    State: ``{"h": (B, P/2)}`` complex.
    """

    causal = True

    def __init__(self, d_model: int, d_state: int = 64, *, blocks: int = 8, discretization: str = "zoh",
                 dt_min: float = 0.001, dt_max: float = 0.1, c_init: str = "trunc_standard_normal",
                 bidirectional: bool = False, lr: float | None = None,
                 backend: str | None = None, activation: str | None = "half_glu1", dropout: float = 0.0,
                 device=None, dtype=None):
        super().__init__(d_model, bidirectional=bidirectional, device=device, dtype=dtype)
        if activation not in ACTIVATIONS:
            raise ValueError(f"s5: activation must be one of {ACTIVATIONS}, got {activation!r}")
        if blocks < 1 or d_state % (2 * blocks):
            raise ValueError(f"s5: d_state={d_state} must be a multiple of 2 * blocks={2 * blocks} "
                             f"(blocks defaults to 8, the official default)")
        if c_init not in C_INITS:
            raise ValueError(f"s5: c_init must be one of {C_INITS}, got {c_init!r}")
        if discretization not in ("zoh", "bilinear"):
            raise ValueError(f"s5: discretization must be 'zoh' or 'bilinear', got {discretization!r}")
        dtype = self.factory["dtype"]
        self.d_state, self.discretization, self.backend = d_state, discretization, backend
        half = d_state // 2
        eig, V = hippo_n_blocks(d_state, blocks, device)
        self.Lambda_re = ssm_parameter(eig.real, dtype, lr=lr)
        self.Lambda_im = ssm_parameter(eig.imag, dtype, lr=lr)
        b = lecun_normal(d_state, d_model, fan_in=d_state, device=device)  # (P, H)
        b_tilde = V.conj().T @ b.to(V.dtype)  # (P/2, H)
        self.B = nn.Parameter(torch.view_as_real(b_tilde).to(dtype))
        n_c = 2 if bidirectional else 1
        if c_init == "complex_normal":
            c_tilde = torch.randn(n_c, d_model, half, 2, device=device, dtype=torch.float64) * math.sqrt(0.5)
        else:
            fan_in = d_state if c_init == "trunc_standard_normal" else d_state * d_model
            c = torch.view_as_complex(lecun_normal(n_c, d_model, d_state, 2, fan_in=fan_in, device=device))
            c_tilde = torch.view_as_real(c @ V)  # (n, H, P/2, 2)
        self.C = nn.Parameter(c_tilde.to(dtype))
        self.D = ssm_parameter(torch.randn(d_model, device=device, dtype=torch.float64), dtype, weight_decay=None)
        self.log_step = ssm_parameter(init_log_dt(half, dt_min, dt_max, device=device, dtype=ssm_dtype(dtype)), dtype,
                                      lr=lr)
        self.activation = activation
        self.gate = nn.Linear(d_model, d_model, **self.factory) if activation and "glu" in activation else None
        self.value = nn.Linear(d_model, d_model, **self.factory) if activation == "full_glu" else None
        for linear in (self.gate, self.value):
            if linear is not None:
                with torch.no_grad():
                    linear.weight.copy_(lecun_normal(d_model, d_model, fan_in=d_model, device=device))
                    linear.bias.zero_()
        self.drop = nn.Dropout(dropout)

    def _output(self, y):
        """The output stage after the SSM (positionwise)."""
        if self.activation is None:
            return self.drop(y)
        g = torch.nn.functional.gelu(y, approximate="tanh")
        if self.activation == "half_glu1":
            g = g * torch.sigmoid(self.gate(g))
        elif self.activation == "half_glu2":
            g = y * torch.sigmoid(self.gate(g))
        elif self.activation == "full_glu":
            g = self.value(g) * torch.sigmoid(self.gate(g))
        return self.drop(g)

    def _discrete(self):
        """A_bar (P/2,), B_bar (P/2, H) and C (n, H, P/2), complex."""
        lam = torch.complex(self.Lambda_re, self.Lambda_im)
        b = torch.view_as_complex(self.B.to(self.Lambda_re.dtype).contiguous())
        a_bar, b_bar = discretize_diag(lam, b.T, torch.exp(self.log_step), self.discretization)
        return a_bar, b_bar.T, torch.view_as_complex(self.C.to(self.Lambda_re.dtype).contiguous())

    def _scan(self, x, a_bar, b_bar, h0):
        bu = torch.einsum("blh,nh->bln", x.to(b_bar.dtype), b_bar)  # (B, L, P/2)
        return linear_scan(a_bar.expand_as(bu), bu, initial_state=h0, backend=self.backend)

    def _forward(self, x, state, return_state):
        a_bar, b_bar, c = self._discrete()
        h = self._scan(x, a_bar, b_bar, None if state is None else state["h"])
        y = 2 * torch.einsum("hn,bln->blh", c[0], h).real
        if self.bidirectional:
            h_back = self._scan(x.flip(1), a_bar, b_bar, None).flip(1)
            y = y + 2 * torch.einsum("hn,bln->blh", c[1], h_back).real
        y = (y.to(x.dtype) + self.D * x).to(x.dtype)
        return self._output(y), ({"h": h[:, -1]} if return_state else None)

    def _step(self, x_t, state):
        a_bar, b_bar, c = self._discrete()
        h = a_bar * state["h"] + x_t.to(b_bar.dtype) @ b_bar.T
        return self._output((2 * (h @ c[0].T).real.to(x_t.dtype) + self.D * x_t).to(x_t.dtype)), {"h": h}

    def _init_state(self, batch_size, *, device, dtype) -> State:
        return {"h": torch.zeros(batch_size, self.d_state // 2, device=device,
                                 dtype=complex_dtype(dtype or self.D.dtype))}
