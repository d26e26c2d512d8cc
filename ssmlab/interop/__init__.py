"""Loading and exporting published checkpoints: Hugging Face transformers and mamba_ssm formats."""

from ssmlab.interop.checkpoints import CheckpointError, load_pretrained, save_pretrained
