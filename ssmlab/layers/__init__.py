"""Building blocks shared by models: norms and the gated MLP."""

from ssmlab.layers.mlp import GatedMLP, GELUGLUOutput
from ssmlab.layers.norm import GatedRMSNorm, RMSNorm
from ssmlab.layers.rotary import RotaryEmbedding, apply_rotary
