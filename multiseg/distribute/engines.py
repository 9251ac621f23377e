"""Starting ``train.distribute``'s engine for a training run (``multiseg.trainer.train``).

The strategy or distribution is entered around the whole run, so that the model, its
optimizer and metrics are made under it and ``fit`` splits each batch. Under several processes
every process trains; only the chief (``is_chief``) writes the run directory: the others write
their checkpoints and logs into a scratch directory deleted at the end, since saving weights
may need every worker (``worker_run``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile

import keras

from multiseg.distribute.choices import DISTRIBUTIONS, backend_problem
from multiseg.errors import UserError


class DistributionError(ValueError, UserError):
    """The recipe cannot train under its distribution here (the backend, the replica count);
    names the field, as a recipe error does (the recipe reader is above this package)."""

    def __init__(self, path: str, message: str):
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}")

_strategies: dict = {}


def tf_strategy(name: str):
    """The process's one strategy of this kind: a collective strategy configures TensorFlow's
    collectives, which it can do once per process and before any operation runs."""
    import tensorflow as tf

    if name not in _strategies:
        try:
            _strategies[name] = (tf.distribute.MirroredStrategy() if name == "mirrored"
                                 else tf.distribute.MultiWorkerMirroredStrategy())
        except RuntimeError as exc:  # "Collective ops must be configured at program startup"
            raise DistributionError("train.distribute", f"{name} must join its workers before"
                                    f" TensorFlow runs any operation ({exc}): train with"
                                    " python -m multiseg.train, or call"
                                    " multiseg.distribute.engines.start_processes"
                                    f"('{name}') before reading the recipe") from None
    return _strategies[name]


def start_processes(name: str) -> None:
    """Joins the run's other processes, which must happen before the backend runs any
    operation: the ``multi_worker`` strategy (its cluster from ``TF_CONFIG``), or, for
    ``data_parallel`` with Keras's ``KERAS_DISTRIBUTION_*`` variables set,
    ``keras.distribution.initialize`` (``jax.distributed.initialize``). Nothing otherwise."""
    if name == "multi_worker":
        tf_strategy(name)
    elif name == "data_parallel" and os.environ.get("KERAS_DISTRIBUTION_NUM_PROCESSES"):
        import jax

        if not jax.distributed.is_initialized():
            keras.distribution.initialize()


@contextlib.contextmanager
def distribution_scope(name: str):
    """The run inside ``train.distribute``'s engine: the TensorFlow strategy's scope, or the
    JAX distribution set for Keras. Yields the number of replicas (1 for ``none``).

    Raises:
        DistributionError: ``train.distribute`` names an engine of another backend.
    """
    if name == "none":
        yield 1
        return
    problem = backend_problem(name, keras.backend.backend())
    if problem:
        raise DistributionError("train.distribute", problem)
    if name == "data_parallel":
        start_processes(name)
        import jax

        with keras.distribution.DataParallel(devices=jax.devices()).scope():
            yield len(jax.devices())
        return
    strategy = tf_strategy(name)
    with strategy.scope():
        yield strategy.num_replicas_in_sync


def check_replicas(recipe, replicas: int) -> None:
    """Refuses a global batch that does not split evenly: Keras's per-replica means then
    weigh the replicas' samples unequally, and JAX cannot shard it.

    Raises:
        DistributionError: naming ``train.batch_size``.
    """
    size = recipe.train.batch_size
    if size % replicas:
        lower, upper = size // replicas * replicas, -(-size // replicas) * replicas
        offer = " or ".join(str(n) for n in (lower, upper) if n)
        raise DistributionError("train.batch_size", f"{size} does not split across the {replicas}"
                          f" replicas of train.distribute: {recipe.train.distribute} (the batch"
                          f" size is the global batch); use a multiple of {replicas}, such as"
                          f" {offer}")


def replica_count() -> int:
    """Replicas of the engine in force (1 without one): the devices of the JAX distribution,
    or the TensorFlow strategy's replicas."""
    if keras.backend.backend() == "jax":
        distribution = keras.distribution.distribution()
        return 1 if distribution is None else int(distribution.device_mesh.devices.size)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.distribute.get_strategy().num_replicas_in_sync
    return 1


def check_batches(recipe, data) -> None:
    """Refuses, under JAX's ``data_parallel``, a last validation batch that does not split
    across the devices (JAX shards every batch evenly; TensorFlow's strategies split an
    uneven one, and Keras weighs each replica's part by its samples).

    Raises:
        DistributionError: naming ``data.val``.
    """
    replicas = replica_count()
    if recipe.train.distribute != "data_parallel" or replicas == 1:
        return
    last = data.val.count % data.val.batch_size
    if last % replicas:
        size = data.val.batch_size
        fits = sorted({data.val.count - last, data.val.count - last + size})
        raise DistributionError("data.val", f"{data.val.count} validation samples leave a last"
                                f" batch of {last}, which does not split across the {replicas}"
                                f" devices of train.distribute: data_parallel; use a number of"
                                f" samples whose remainder after batches of {size} is a"
                                f" multiple of {replicas}, such as"
                                f" {' or '.join(str(n) for n in fits if n)}")


def is_chief() -> bool:
    """Whether this process writes the run directory: the only process, or the chief
    (TensorFlow: task 0 of ``chief`` or, in a cluster without one, of ``worker``; JAX:
    process 0)."""
    strategy = _strategies.get("multi_worker")
    if strategy is not None:
        resolver = strategy.cluster_resolver
        if resolver.task_type is None:
            return True
        chief = "chief" if "chief" in resolver.cluster_spec().as_dict() else "worker"
        return resolver.task_type == chief and resolver.task_id == 0
    if "jax" in sys.modules and keras.backend.backend() == "jax":
        import jax

        return jax.process_index() == 0
    return True


# What another worker needs from the run directory to resume as the chief does.
_RESUME_FILES = ("recipe.yaml", "checkpoints", "metrics.json", "model.keras")


@contextlib.contextmanager
def worker_run(recipe, *, fresh: bool):
    """Yields ``(recipe, fresh)`` for this process: unchanged for the chief; for another
    worker, the recipe writing into a scratch copy of the run's resume files (none with
    ``fresh``: the chief empties the run), deleted at the end. The copy is taken before the
    first step, which no worker finishes alone, so the chief cannot have moved on."""
    if is_chief():
        yield recipe, fresh
        return
    import dataclasses

    scratch = tempfile.mkdtemp(prefix="multiseg-worker-")
    try:
        for name in () if fresh else _RESUME_FILES:
            source = os.path.join(recipe.output, name)
            if os.path.isdir(source):
                shutil.copytree(source, os.path.join(scratch, name))
            elif os.path.isfile(source):
                shutil.copy2(source, os.path.join(scratch, name))
        yield dataclasses.replace(recipe, output=scratch), False
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


class SynchronizedBatchNorm(keras.callbacks.Callback):
    """Batch normalisation with the global batch's statistics while ``fit`` trains under a
    TensorFlow strategy (Keras's ``synchronized``: an all-reduce of each layer's sums), then
    back to the plain layer, whose saved config loads on every backend."""

    def _set(self, synchronized: bool) -> None:
        for layer in self.model._flatten_layers():
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.synchronized = synchronized

    def on_train_begin(self, logs=None):
        self._set(True)

    def on_train_end(self, logs=None):
        self._set(False)


def distribution_callbacks(recipe, replicas: int, verbose) -> list:
    """What training needs under the distribution, and the start-up line saying it."""
    name = recipe.train.distribute
    if name == "none":
        return []
    if verbose and is_chief():
        print(f"distribution: {name} ({DISTRIBUTIONS[name].engine}), {replicas} replicas of"
              f" {recipe.train.batch_size // replicas} samples (global batch"
              f" {recipe.train.batch_size})", flush=True)
    return [SynchronizedBatchNorm()] if DISTRIBUTIONS[name].tensorflow_strategy else []
