"""Starting ``train.distribute``'s engine for a training run (``multiseg.trainer.train``).

The strategy or distribution is entered around the whole run, so that the model, its
optimizer and metrics are made under it and ``fit`` splits each batch. Under several processes
every process trains; only the chief (``is_chief``) writes the run directory: the others write
their checkpoints and logs into a scratch directory deleted at the end, since saving weights
may need every worker (``worker_run``). JAX's processes join before JAX starts
(``start_processes``), check that they see the same run directory (``worker_run``)
and each feed ``fit`` their own rows of every global batch (``process_feed``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile

import keras
import numpy as np

from multiseg.distribute.choices import DISTRIBUTIONS, backend_problem, joins_processes
from multiseg.errors import UserError
from multiseg.startup import tensorflow_left_out


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
    operation or, on JAX, looks for its devices (``jax.devices()``; ``python -m
    multiseg.train`` calls this before it starts the backend): the ``multi_worker`` strategy,
    or, for ``data_parallel`` with Keras's ``KERAS_DISTRIBUTION_*`` variables set,
    ``keras.distribution.initialize`` (``jax.distributed.initialize``). Nothing otherwise, nor
    on another backend (the recipe check refuses the choice there).

    Raises:
        DistributionError: naming ``train.distribute``, when JAX has already started.
    """
    if not joins_processes(name):
        return
    if name == "multi_worker":
        tf_strategy(name)
        return
    if keras.backend.backend() != "jax":
        return
    import jax

    if jax.distributed.is_initialized():
        return
    try:
        # Keras seeds every process's generators there, TensorFlow's too where it is installed:
        # on JAX that imported it (1 to 3 s, about 430 MB a process) for nothing to use.
        with tensorflow_left_out():
            keras.distribution.initialize()
    except RuntimeError as exc:  # "must be called before any JAX calls that might initialise"
        raise DistributionError("train.distribute", f"data_parallel over"
                                f" {os.environ['KERAS_DISTRIBUTION_NUM_PROCESSES']} processes"
                                " must join them before JAX looks for its devices or runs any"
                                f" operation ({exc}): train with python -m multiseg.train, or"
                                " call multiseg.distribute.engines.start_processes"
                                "('data_parallel') right after importing Keras") from None


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

        # Each process feeds its own rows of every global batch (process_feed): Keras's own
        # sharding takes tf.data pipelines only.
        distribution = keras.distribution.DataParallel(devices=jax.devices(),
                                                       auto_shard_dataset=False)
        with distribution.scope():
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


def predict_batch(model: keras.Model, batch):
    """``predict_on_batch``, compiled; under a TensorFlow strategy with several replicas,
    which would hand the whole batch to each of them and stack their outputs, a direct call
    (on one device, with the whole batch)."""
    strategy = getattr(model, "distribute_strategy", None)
    if strategy is not None and strategy.num_replicas_in_sync > 1:
        return keras.tree.map_structure(np.asarray, model(batch))
    return model.predict_on_batch(batch)


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


def process_rows(distribution, size: int) -> slice:
    """The rows of a global batch of ``size`` samples that this process feeds under a JAX
    ``distribution``: those its own devices hold (``jax.make_array_from_process_local_data``,
    which Keras's JAX trainer applies to every batch, makes the global batch from each
    process's rows). All rows with one process."""
    import jax

    if distribution is None or jax.process_count() == 1:
        return slice(0, size)
    sharding = distribution.get_data_layout((size,)).backend_layout
    spans = sorted({index[0].indices(size)[:2]
                    for index in sharding.addressable_devices_indices_map((size,)).values()})
    start, stop = spans[0][0], spans[-1][1]
    if sum(b - a for a, b in spans) != stop - start:
        # A mesh that interleaves the processes' devices; DataParallel over jax.devices()
        # lists each process's devices together.
        raise DistributionError("train.distribute", f"the devices of process"
                                f" {jax.process_index()} hold rows {spans} of a batch of"
                                f" {size}, not one block")
    return slice(start, stop)


def _rows(batch, rows: slice):
    images, targets = batch
    return images[rows], {head: target[rows] for head, target in targets.items()}


class _ProcessShare(keras.utils.PyDataset):
    """A ``PyDataset`` of global batches (``multiseg.data.feeds.StepRange``) as this
    process's rows of each."""

    def __init__(self, feed, distribution):
        super().__init__(workers=feed.workers, use_multiprocessing=False,
                         max_queue_size=feed.max_queue_size)
        self.feed = feed
        self.distribution = distribution

    def __len__(self) -> int:
        return len(self.feed)

    def __getitem__(self, index: int):
        batch = self.feed[index]
        return _rows(batch, process_rows(self.distribution, len(batch[0])))


def process_feed(feed):
    """``feed`` (``Batches.dataset``: global batches, as a ``PyDataset`` or a generator) as
    what this process gives ``fit``: under JAX's ``data_parallel`` over several processes,
    its rows of each global batch; otherwise ``feed`` itself. Every process makes the whole
    batch and keeps its rows, so that crops and augmentation drawn over the batch are those
    of one device; ``train.batch_size`` stays the global batch."""
    distribution = (keras.distribution.distribution() if keras.backend.backend() == "jax"
                    else None)
    if distribution is None or not is_multi_process():
        return feed
    # Captured here: Keras's current distribution is per thread, and PyDataset workers are
    # other threads.
    if isinstance(feed, keras.utils.PyDataset):
        return _ProcessShare(feed, distribution)
    return (_rows(batch, process_rows(distribution, len(batch[0]))) for batch in feed)


def is_multi_process() -> bool:
    """Whether JAX runs over several processes (``jax.distributed``)."""
    if "jax" not in sys.modules or keras.backend.backend() != "jax":
        return False
    import jax

    return jax.process_count() > 1


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
    if is_multi_process():
        # Every process reads the run directory once all have arrived here: a chief still
        # writing a previous run's files (a script that trains twice) has finished them.
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("multiseg: run start")
        if not fresh:
            _check_same_run(recipe.output)
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


def _check_same_run(run_dir: str) -> None:
    """Refuses JAX processes that see different things in the run directory: each resumes
    from what it sees itself, and replicas that start from different weights, or train other
    epochs, would diverge or wait for each other forever. Compared before anything is read or
    built (the saved recipe's metrics are Keras variables, made by every process together).
    A collective: every process calls it.

    Raises:
        DistributionError: naming ``output``, when the processes disagree.
    """
    import jax
    from jax.experimental import multihost_utils

    from multiseg.runs import latest_checkpoint

    found = latest_checkpoint(os.path.join(run_dir, "checkpoints"))
    mine = [os.path.isfile(os.path.join(run_dir, "recipe.yaml")),
            os.path.isfile(os.path.join(run_dir, "metrics.json")),
            *(found[:2] if found else (-1, -1))]
    views = np.asarray(multihost_utils.process_allgather(np.array(mine, np.int32)))
    views = views.reshape(jax.process_count(), len(mine))
    if (views == views[0]).all():
        return

    def seen(view) -> str:
        if not view[0]:
            return "no run"
        held = ("no checkpoint" if view[2] < 0
                else f"the checkpoint of epoch {view[2]}, step {view[3]}")
        return held + (" and metrics.json" if view[1] else "")

    listed = "; ".join(f"process {i}: {seen(view)}" for i, view in enumerate(views))
    raise DistributionError("output", f"the processes of train.distribute: data_parallel see"
                            f" different things in {run_dir} ({listed}); every process"
                            " resumes from it itself, so it must be the same folder for all (one"
                            " path on a filesystem that every machine reads)")


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
