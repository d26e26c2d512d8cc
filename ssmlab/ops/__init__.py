"""Pure functions (no parameters, no nn.Module) that every model stands on.

Each op has one ``(B, L, ...)`` layout, takes ``initial_state=None`` and
``return_final_state=False``, has a plain reference implementation that is the
specification, and fast backends chosen as described in :mod:`ssmlab.ops._dispatch`.
"""

from ssmlab.ops._dispatch import BackendUnavailableError, Op
from ssmlab.ops.causal_conv import causal_conv, causal_conv_step
from ssmlab.ops.fftconv import fft_conv
from ssmlab.ops.gated_delta_rule import gated_delta_rule, gated_delta_rule_step
from ssmlab.ops.gla import gla, gla_step
from ssmlab.ops.linear_attention import linear_attention, linear_attention_step
from ssmlab.ops.mamba_step import mamba_step
from ssmlab.ops.matvec import matvec
from ssmlab.ops.mlstm import mlstm, mlstm_step
from ssmlab.ops.mamba3 import Mamba3State, mamba3, mamba3_step
from ssmlab.ops.rwkv7 import rwkv7, rwkv7_step
from ssmlab.ops.scan import linear_scan
from ssmlab.ops.selective_scan import selective_scan, selective_scan_step
from ssmlab.ops.ssd import ssd, ssd_step
from ssmlab.ops.wkv import wkv, wkv_step
from ssmlab.ops.discretize import (discretize_dense, discretize_diag, discretize_dplr, dplr_dense,
                                   init_log_dt)
from ssmlab.ops.hippo import MEASURES, dplr, hippo, hippo_legs, nplr, s4d_legs
from ssmlab.ops.kernels import dplr_c_tilde, ssm_kernel_dense, ssm_kernel_diag, ssm_kernel_dplr
