"""Building blocks shared by models: norms, the gated MLP, rotary embeddings and image scan orders."""

from ssmlab.layers.mlp import GatedMLP, GELUGLUOutput
from ssmlab.layers.norm import GatedRMSNorm, RMSNorm
from ssmlab.layers.rotary import RotaryEmbedding, apply_rotary
from ssmlab.layers.scan import SCAN_ORDERS, inverse_permutation, scan_order
