"""multiseg: multi-task segmentation training on Keras 3."""

__version__ = "0.1.0"
