"""Starting Keras quietly: its backend's start-up notices kept out of a command's output.

TensorFlow writes several lines from native code while it is imported and when it first looks
for devices ("Could not find cuda drivers", "failed call to cuInit", oneDNN and CPU-feature
notices). ``TF_CPP_MIN_LOG_LEVEL`` does not silence the ones logged before absl starts, so the
commands import Keras with the process's standard error (file descriptor 2) redirected, then
write back every line that is not one of these known notices: real errors still show.
``--verbose`` lets everything through.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator

import multiseg

# Lines the backends print on every start on a machine without a GPU (or without CUDA
# libraries), which say nothing about the run.
STARTUP_NOTICES = tuple(re.compile(pattern) for pattern in (
    r"^WARNING: All log messages before absl::InitializeLog\(\) is called",
    r"cudart_stub\.cc.*Could not find cuda drivers",
    r"failed call to cuInit",
    r"oneDNN custom operations are on",
    r"cpu_feature_guard\.cc",
    r"^To enable the following instructions: .*rebuild TensorFlow",
    r"This TensorFlow binary is optimized to use available CPU instructions",
    r"Unable to register cu(DNN|FFT|BLAS) factory",
    r"computation placer already registered",
    r"TF-TRT Warning: Could not find TensorRT",
    r"An NVIDIA GPU may be present on this machine, but a CUDA-enabled jaxlib is not",
))


def is_startup_notice(line: str) -> bool:
    return any(pattern.search(line) for pattern in STARTUP_NOTICES)


def import_keras(*, verbose: bool = False):
    """Imports Keras and starts its backend's devices; unless ``verbose``, the backend's
    start-up notices are dropped from standard error (everything else is written back).

    Returns:
        The ``keras`` module.
    """
    if "keras" in sys.modules:
        import keras

        return keras
    if verbose:
        if multiseg.TF_LOG_LEVEL_IS_OURS:  # the user did not choose one: show everything
            os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
        import keras

        _start_devices(keras)
        return keras
    with _filtered_stderr():
        import keras

        _start_devices(keras)
    return keras


def _start_devices(keras) -> None:
    """Looks for devices now, while notices are filtered, not at the first training step."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        tf.config.list_logical_devices()
    elif backend == "jax":
        import jax

        jax.devices()


@contextlib.contextmanager
def _filtered_stderr() -> Iterator[None]:
    """Standard error (the file descriptor, which native code writes to) goes to a temporary
    file; when the block ends, its lines but the start-up notices are written back."""
    try:
        original = os.dup(2)
    except OSError:  # no usable descriptor 2 (an embedding host): nothing to filter
        yield
        return
    with tempfile.TemporaryFile(mode="w+b") as captured:
        sys.stderr.flush()
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(original, 2)
            os.close(original)
            captured.seek(0)
            text = captured.read().decode("utf-8", errors="replace")
            kept = [line for line in text.splitlines(keepends=True)
                    if not is_startup_notice(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()
