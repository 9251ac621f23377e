"""The network: shared U-Net trunk (unet), head kinds (heads), recipe to model (build)."""

from multiseg.models.build import build_model, compile_model, layer_owner, parameter_counts

__all__ = ["build_model", "compile_model", "layer_owner", "parameter_counts"]
