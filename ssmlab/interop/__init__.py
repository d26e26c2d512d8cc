"""Saving and loading models: ssmlab's own format for every model, and the Hugging Face / mamba_ssm Mamba formats."""

from ssmlab.interop.checkpoints import CheckpointError, hf_unsupported
from ssmlab.interop.pretrained import FORMATS, load_pretrained, save_pretrained

__all__ = ["FORMATS", "CheckpointError", "hf_unsupported", "load_pretrained", "save_pretrained"]
