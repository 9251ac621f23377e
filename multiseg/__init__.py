"""multiseg: multi-task segmentation training on Keras 3."""

import os as _os

# TensorFlow's C++ logging below warnings stays off unless the user chose a level
# (``--verbose`` on a command shows it all: ``multiseg.startup``).
TF_LOG_LEVEL_IS_OURS = "TF_CPP_MIN_LOG_LEVEL" not in _os.environ
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"


def load_model(path, *, compile: bool = True):
    """Loads a saved ``model.keras`` in Keras safe mode, with multiseg's custom objects known.

    Files saved with the old layer names (``trunk.enc0.conv0``) load with today's
    (``trunk-enc0-conv0``), on every backend: PyTorch refuses a ``.`` in a name.

    Plain ``keras.saving.load_model`` works too once ``multiseg.models``, ``multiseg.losses``
    and ``multiseg.metrics`` are imported: importing them registers their classes.
    """
    import keras

    import multiseg.losses  # noqa: F401  (registers the loss classes)
    import multiseg.metrics  # noqa: F401
    import multiseg.models.layers  # noqa: F401
    from multiseg.models.initial import values_from_the_file
    from multiseg.models.legacy import current_names

    with current_names(path) as path, values_from_the_file():
        if not (compile and _float16_layers(path)):
            return keras.saving.load_model(path, compile=compile, safe_mode=True)
        # The model object's own policy is not saved, only its layers': under the default
        # float32 one, compiling would drop the loss scaling that train.precision:
        # mixed_float16 trained with (and skip the saved optimizer's state).
        previous = keras.config.dtype_policy()
        keras.config.set_dtype_policy("mixed_float16")
        try:
            return keras.saving.load_model(path, compile=True, safe_mode=True)
        finally:
            keras.config.set_dtype_policy(previous)


def _float16_layers(path) -> bool:
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return "mixed_float16" in archive.read("config.json").decode("utf-8")
    except (OSError, KeyError, zipfile.BadZipFile):
        return False  # not a .keras archive: Keras's own error follows
