"""Sequence mixers, one file per family, all following :class:`ssmlab.mixers.base.Mixer`.

Every module of this package is imported here, so a mixer file registers itself; each
registered mixer class is exported by its class name (``ssmlab.mixers.Mamba``).
"""

from ssmlab import registry
from ssmlab.mixers.base import Mixer, is_causal, set_optim, ssm_parameter

_MIXER_CLASSES = registry.import_submodules(__name__)
globals().update(_MIXER_CLASSES)

__all__ = ["Mixer", "is_causal", "set_optim", "ssm_parameter", *sorted(_MIXER_CLASSES)]
