"""multiseg: multi-task segmentation training on Keras 3."""

import os as _os

# TensorFlow prints start-up notices on import; keep them unless the user chose a level.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
