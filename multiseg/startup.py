"""Starting Keras: quietly, with JAX's compilation cache, and without TensorFlow where it is
not the backend (``compile_cache``, ``tensorflow_left_out``, ``set_random_seed`` below).

TensorFlow writes several lines from native code while it is imported and when it first looks
for devices ("Could not find cuda drivers", "failed call to cuInit", oneDNN and CPU-feature
notices). ``TF_CPP_MIN_LOG_LEVEL`` does not silence the ones logged before absl starts, so the
commands import Keras with the process's standard error (file descriptor 2) redirected, then
write back every line that is not one of these known notices: real errors still show.
``--verbose`` lets everything through.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import socket
import sys
import tempfile
from collections.abc import Iterator, Mapping

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
    compile_cache()
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


# ---------------------------------------------------------------------------------------------
# JAX's persistent compilation cache.

COMPILE_CACHE_ENV = "MULTISEG_COMPILE_CACHE"
_OFF = frozenset({"off", "0", "false", "no", "none"})
# The default cache's size limit: past it JAX drops the least recently used programs (its
# eviction needs the filelock package; without it the cache is not limited).
COMPILE_CACHE_LIMIT_BYTES = 4 * 2**30
_chosen: dict[str, str | None] = {}


def default_cache_dir(environ: Mapping[str, str] = os.environ) -> str:
    """``$XDG_CACHE_HOME/multiseg/jax/<host>`` (``~/.cache`` without it). One folder per host:
    a home folder shared by several machines would otherwise share native CPU programs
    compiled for another processor."""
    root = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "multiseg", "jax", socket.gethostname() or "host")


def compile_cache(*, backend: str | None = None, platform: str | None = None,
                  environ: Mapping[str, str] = os.environ) -> str | None:
    """Turns on JAX's persistent compilation cache, so that a run started again (a resumed
    run, the next recipe, ``evaluate``) loads the programs an earlier one compiled instead of
    compiling them: the model's initializers, the training and test steps. Returns the cache
    folder, or None where there is none; decided once per process.

    ``MULTISEG_COMPILE_CACHE``: unset or ``auto``, a cache under :func:`default_cache_dir` on a
    GPU or TPU and none on a CPU (JAX is not the CPU training path, and on some processors
    JAX rejects its own cached CPU programs, logging an error for each); a folder, that
    folder on any device; ``off``, none. A folder already given to JAX
    (``JAX_COMPILATION_CACHE_DIR``) is kept as it is. Other backends: nothing to do.

    The cache is trusted code: keep it in a folder only you can write to (JAX's warning).
    """
    backend = backend or _backend()
    if backend != "jax":
        return None
    if "choice" in _chosen:
        return _chosen["choice"]
    import jax

    own = jax.config.jax_compilation_cache_dir
    if own:
        _chosen["choice"] = own
        return own
    setting = environ.get(COMPILE_CACHE_ENV, "").strip()
    if setting.lower() in _OFF:
        path = None
    elif setting and setting.lower() != "auto":
        path = os.path.abspath(os.path.expanduser(setting))
    elif (platform or jax.default_backend()) in ("gpu", "cuda", "rocm", "tpu"):
        path = default_cache_dir(environ)
    else:
        path = None
    if path is not None:
        try:
            os.makedirs(path, mode=0o700, exist_ok=True)
        except OSError as exc:
            print(f"multiseg: no compilation cache: cannot create {path} ({exc.strerror});"
                  f" set {COMPILE_CACHE_ENV} to another folder, or to off", file=sys.stderr)
            path = None
    if path is not None:
        jax.config.update("jax_compilation_cache_dir", path)
        # Every program, however quick to compile: the model's initializers are many small
        # ones, which on JAX take most of a model's first build.
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        if importlib.util.find_spec("filelock") is not None:
            jax.config.update("jax_compilation_cache_max_size", COMPILE_CACHE_LIMIT_BYTES)
    _chosen["choice"] = path
    return path


def _backend() -> str | None:
    if "keras" not in sys.modules:
        return None
    import keras

    return keras.backend.backend()


# ---------------------------------------------------------------------------------------------
# Seeding.


@contextlib.contextmanager
def tensorflow_left_out() -> Iterator[None]:
    """While the block runs, Keras takes TensorFlow for not installed, on a backend other than
    TensorFlow where nothing has imported it yet.

    Keras imports TensorFlow wherever it is installed to seed it (``set_random_seed``) and to
    ask whether an object being saved is one of its types (``model.save``), whatever the
    backend: on JAX or PyTorch that costs 1 to 3 s, about 430 MB and TensorFlow's start-up
    notices, for a TensorFlow that nothing then uses (multiseg feeds those backends without
    ``tf.data``). Elsewhere, or with another Keras, the block runs as it is.
    """
    import keras
    from keras.src.utils import module_utils

    lazy = getattr(module_utils, "tensorflow", None)
    if (keras.backend.backend() == "tensorflow" or "tensorflow" in sys.modules
            or not isinstance(lazy, module_utils.LazyModule) or lazy.module is not None
            or not hasattr(lazy, "_available")):
        yield
        return
    answer = lazy._available
    lazy._available = False
    try:
        yield
    finally:
        lazy._available = answer


def set_random_seed(seed: int) -> None:
    """``keras.utils.set_random_seed(seed)``: Python, NumPy, Keras's global seed (PyTorch's on
    the torch backend), and TensorFlow's only where it is the backend or already imported."""
    import keras

    with tensorflow_left_out():
        keras.utils.set_random_seed(seed)
