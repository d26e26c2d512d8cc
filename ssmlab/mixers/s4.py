"""S4: the structured state space sequence model (Gu, Goel, Re; arXiv 2111.00396).

Each channel is a SISO SSM whose state matrix is diagonal plus low rank,
``A = diag(Lambda) - P P^*``, initialised from HiPPO-LegS (arXiv 2008.07669) in
its NPLR form. As in the S4 code, only one eigenvalue of each conjugate pair is
stored (N/2 of them, with the matching entries of P, B and C); the system is the
full one over the conjugate spectrum, ``Lambda_f = [Lambda, conj(Lambda)]``,
``P_f = [P, conj(P)]``, which is unitarily similar to HiPPO-LegS at initialisation.
Its rank-one term couples the two halves, so the kernel is not twice the real part
of the half system's (that shortcut holds only for diagonal systems such as S4D).
Forward computes the length-L kernel with the Cauchy kernel and the Woodbury
identity at the roots of unity (bilinear discretisation) and applies it with an FFT;
step runs the discretised recurrence of the full system on the stored half state.
"""

from __future__ import annotations

from ssmlab.layers.dplr_ssm import DPLRMixer
from ssmlab.registry import register


@register("mixer", "s4", description="S4: DPLR SSM, HiPPO-LegS init, Cauchy kernel, FFT conv",
          paper="2111.00396")
class S4(DPLRMixer):
    """The S4 layer (arXiv 2111.00396) with the output stage of the S4 code.

    Args:
        d_model: channels H.
        d_state: state size N, kept as N/2 conjugate pairs (64).
        n_ssm: number of distinct (Lambda, P, B) triples shared by the channels; ``None`` gives
            every channel its own (the S4 code's default).
        rank: rank of the low-rank term P (1, as for HiPPO-LegS; extra rows start at zero).
        dt_min, dt_max: the per-channel step is initialised log-uniform in [0.001, 0.1].
        lr: learning rate for Lambda, P, B and dt (0.001, as in the S4 code; ``None`` uses the
            trainer's); they get no weight decay.
        dropout: dropout after the activation (0.0).
        bidirectional: a second C gives a kernel over the following positions (default False;
            the layer is then not causal).

    The system is the full one over the conjugate spectrum (see the module docstring), as in
    the official code's ``SSMKernelDPLR`` (github.com/state-spaces/s4). Conventions kept
    differently on purpose:

    * C is learnt in its plain form (not S4's C~): the kernel of any length L converts it to
      ``C~ = (I - A_bar^L)^T C`` on the fly, so one layer serves every sequence length and its
      recurrent step is exact;
    * B is HiPPO-LegS's B in the eigenbasis, exactly; the official code clips its imaginary
      part to [-2, 2] (``B_clip=2.0``), which changes B from N = 4 on;
    * the stored half is the eigenvalues with positive imaginary part (the official code keeps
      their conjugates, with ``A_imag`` stored as a positive number and negated); the full
      systems are the same.

    Output: ``GLU(W GELU(K * u + D u))``.

    State: ``{"ssm": (B, H, N/2)}`` complex, the kept half of the full state ``[h, conj(h)]``.
    """
