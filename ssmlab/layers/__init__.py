"""Building blocks shared by models: norms and the gated MLP."""

from ssmlab.layers.mlp import GatedMLP
from ssmlab.layers.norm import GatedRMSNorm, RMSNorm
