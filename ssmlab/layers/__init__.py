"""The parts that mixers and models share: norms, the gated MLP, rotary embeddings, image scan
orders, the short causal convolution with its state, the diagonal SSM block and S4's DPLR layer."""

from ssmlab.layers.conv import ShortConvolution, causal_conv
from ssmlab.layers.diagonal_ssm import DiagonalSSM
from ssmlab.layers.mlp import GatedMLP, GELUGLUOutput
from ssmlab.layers.norm import GatedRMSNorm, RMSNorm
from ssmlab.layers.rotary import RotaryEmbedding, apply_rotary
from ssmlab.layers.scan import SCAN_ORDERS, inverse_permutation, scan_order
