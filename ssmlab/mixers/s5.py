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

from ssmlab.mixers.base import Mixer, State, ssm_dtype, ssm_parameter
from ssmlab.ops import discretize_diag, dplr, init_log_dt, linear_scan
from ssmlab.registry import register


ACTIVATIONS = (None, "gelu", "half_glu1", "half_glu2", "full_glu")


def hippo_n_blocks(d_state: int, blocks: int, device=None):
    """Eigenvalues (P/2,) and eigenvectors (P, P/2) of J = ``blocks`` HiPPO-N blocks of size P/J,
    kept one of each conjugate pair (block-diagonal V)."""
    size = d_state // blocks
    Lambda, _, _, V = dplr("legs", size, conj_sym=True)
    eig = Lambda.repeat(blocks)
    full_v = torch.block_diag(*[V] * blocks)  # (P, P/2)
    return eig.to(device), full_v.to(device)


@register("mixer", "s5", description="S5: MIMO diagonal SSM, HiPPO-N init, parallel scan", paper="2208.04933",
          variants=[{}, {"d_state": 8, "blocks": 2, "discretization": "bilinear", "activation": "full_glu"},
                    {"d_state": 8, "bidirectional": True}, {"d_state": 8, "activation": None}])
class S5(Mixer):
    """The S5 layer (arXiv 2208.04933).

    Args:
        d_model: channels H.
        d_state: state size P (default 64), stored as P/2 conjugate pairs.
        blocks: J, the number of HiPPO-N blocks on the diagonal of the initial A (default 1).
        discretization: ``"zoh"`` (default) or ``"bilinear"``.
        dt_min, dt_max: the per-state step is initialised log-uniform in [0.001, 0.1].
        bidirectional: add a backward scan with its own C (default False; not causal then).
        lr: learning rate for Lambda and the step, which get no weight decay (default None).
        backend: ``linear_scan`` backend.
        activation: the output stage after the SSM, as the official S5 layer's options:
            ``"half_glu1"`` (default: ``g = GELU(y); g * sigmoid(W g + b)``), ``"half_glu2"``
            (``y * sigmoid(W GELU(y) + b)``), ``"full_glu"`` (``GELU(y)`` through two projections,
            one gating the other), ``"gelu"``, or ``None`` (the SSM output itself).
        dropout: dropout after the output stage (0.0).

    B is LeCun-normal (std 1/sqrt(H)) in the original basis, then ``B~ = V^{-1} B``; C is
    drawn directly in the eigenbasis with real and imaginary parts of std 1/sqrt(P); D is
    standard normal.

    State: ``{"h": (B, P/2)}`` complex.
    """

    causal = True

    def __init__(self, d_model: int, d_state: int = 64, *, blocks: int = 1, discretization: str = "zoh",
                 dt_min: float = 0.001, dt_max: float = 0.1, bidirectional: bool = False, lr: float | None = None,
                 backend: str | None = None, activation: str | None = "half_glu1", dropout: float = 0.0,
                 device=None, dtype=None):
        super().__init__(d_model)
        if activation not in ACTIVATIONS:
            raise ValueError(f"s5: activation must be one of {ACTIVATIONS}, got {activation!r}")
        if blocks < 1 or d_state % (2 * blocks):
            raise ValueError(f"s5: d_state={d_state} must be a multiple of 2 * blocks={2 * blocks}")
        if discretization not in ("zoh", "bilinear"):
            raise ValueError(f"s5: discretization must be 'zoh' or 'bilinear', got {discretization!r}")
        dtype = dtype or torch.get_default_dtype()
        self.d_state, self.discretization, self.backend = d_state, discretization, backend
        self.bidirectional = bidirectional
        self.causal = not bidirectional
        half = d_state // 2
        eig, V = hippo_n_blocks(d_state, blocks, device)
        self.Lambda_re = ssm_parameter(eig.real, dtype, lr=lr)
        self.Lambda_im = ssm_parameter(eig.imag, dtype, lr=lr)
        b = torch.randn(d_state, d_model, device=device, dtype=torch.float64) / math.sqrt(d_model)
        b_tilde = V.conj().T @ b.to(V.dtype)  # (P/2, H)
        self.B = nn.Parameter(torch.view_as_real(b_tilde).to(dtype))
        n_c = 2 if bidirectional else 1
        c = torch.randn(n_c, d_model, half, 2, device=device, dtype=torch.float64) / math.sqrt(d_state)
        self.C = nn.Parameter(c.to(dtype))
        self.D = ssm_parameter(torch.randn(d_model, device=device, dtype=torch.float64), dtype, weight_decay=None)
        self.log_step = ssm_parameter(init_log_dt(half, dt_min, dt_max, device=device, dtype=ssm_dtype(dtype)), dtype,
                                      lr=lr)
        self.activation = activation
        factory = {"device": device, "dtype": dtype}
        self.gate = nn.Linear(d_model, d_model, **factory) if activation and "glu" in activation else None
        self.value = nn.Linear(d_model, d_model, **factory) if activation == "full_glu" else None
        self.drop = nn.Dropout(dropout)

    def _output(self, y):
        """The output stage after the SSM (positionwise)."""
        if self.activation is None:
            return self.drop(y)
        g = torch.nn.functional.gelu(y)
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
        if return_state and self.bidirectional:
            raise RuntimeError(f"mixer {self.registry_name!r} with bidirectional=True has no state to return")
        return self._output(y), ({"h": h[:, -1]} if return_state else None)

    def _step(self, x_t, state):
        if self.bidirectional:
            raise RuntimeError(f"mixer {self.registry_name!r} with bidirectional=True cannot step")
        a_bar, b_bar, c = self._discrete()
        h = a_bar * state["h"] + x_t.to(b_bar.dtype) @ b_bar.T
        return self._output((2 * (h @ c[0].T).real.to(x_t.dtype) + self.D * x_t).to(x_t.dtype)), {"h": h}

    def init_state(self, batch_size, *, device=None, dtype=None) -> State:
        device = device if device is not None else self.D.device
        dtype = dtype or self.D.dtype
        cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
        return {"h": torch.zeros(batch_size, self.d_state // 2, device=device, dtype=cdtype)}
