"""Sequence mixers, one file per family, all following :class:`ssmlab.mixers.base.Mixer`."""

from ssmlab.mixers.base import Mixer, is_causal, set_optim, ssm_parameter
from ssmlab.mixers.attention import Attention
from ssmlab.mixers.s4d import S4D
from ssmlab.mixers.mamba import Mamba
from ssmlab.mixers.mamba2 import Mamba2
from ssmlab.mixers.bidirectional import BiMamba, BiMamba2, Bidirectional
from ssmlab.mixers.lru import LRU
from ssmlab.mixers.s5 import S5
from ssmlab.mixers.s4 import S4
from ssmlab.mixers.dss import DSS
from ssmlab.mixers.lssl import LSSL
from ssmlab.mixers.gss import GSS
from ssmlab.mixers.h3 import H3
from ssmlab.mixers.hyena import Hyena
from ssmlab.mixers.tnn import TNN
from ssmlab.mixers.mega import Mega
from ssmlab.mixers.s4nd import S4ND
from ssmlab.mixers.liquid_s4 import LiquidS4
from ssmlab.mixers.linear_attention import LinearAttention
from ssmlab.mixers.retnet import RetNet
from ssmlab.mixers.rwkv import RWKV
from ssmlab.mixers.cross_scan import CrossScan
