"""The network: shared U-Net trunk (unet), head kinds (heads), recipe to model (build)."""

from multiseg.models.build import build_model, compile_model, parameter_counts
from multiseg.models.naming import layer_owner

__all__ = ["build_model", "compile_model", "layer_owner", "parameter_counts"]
