"""Sequence mixers, one file per family, all following :class:`ssmlab.mixers.base.Mixer`.

Every module of this package is imported here, so a mixer file registers itself; each
registered mixer class is exported by its class name (``ssmlab.mixers.Mamba``).
"""

from ssmlab import registry
from ssmlab.mixers.base import Mixer, set_optim

_MIXER_CLASSES = registry.import_submodules(__name__)
globals().update(_MIXER_CLASSES)

__all__ = ["Mixer", "set_optim", *sorted(_MIXER_CLASSES)]
