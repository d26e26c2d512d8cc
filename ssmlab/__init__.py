"""ssmlab: state space sequence models in one PyTorch API, and a harness that compares them.

Public API (stable names)::

    ssmlab.create_mixer(name, d_model, **options) -> Mixer
    ssmlab.create_model(mixer, *, head="lm" | "classify", d_model, n_layers, **options)
    ssmlab.list_mixers(pattern="*"), ssmlab.list_tasks(pattern="*")
    ssmlab.load_pretrained(path) -> model, model.save_pretrained(path)
    ssmlab.ops  -- the operations (scans, kernels, HiPPO, ...)
"""

__version__ = "0.1.0"

from ssmlab import ops, registry
from ssmlab.mixers import Attention, Mixer
from ssmlab.layers.linear import quantize_int8
from ssmlab.models import create_mixer, create_model
from ssmlab.tasks import create_task


def load_pretrained(path, **options):
    """Load a model saved by ``model.save_pretrained`` (any mixer and head, ssmlab's format), or a
    Mamba / Mamba-2 language model from a Hugging Face or mamba_ssm checkpoint directory; see
    :func:`ssmlab.interop.load_pretrained` (``dtype=``, ``device=``)."""
    from ssmlab.interop import load_pretrained as _load

    return _load(path, **options)


def list_mixers(pattern: str = "*") -> list[str]:
    """Names of the registered mixers matching the glob ``pattern``."""
    return registry.names("mixer", pattern)


def list_tasks(pattern: str = "*") -> list[str]:
    """Names of the registered tasks matching the glob ``pattern``."""
    return registry.names("task", pattern)


__all__ = ["Attention", "Mixer", "create_mixer", "create_model", "create_task", "list_mixers", "list_tasks",
           "load_pretrained", "ops", "quantize_int8", "registry", "__version__"]
