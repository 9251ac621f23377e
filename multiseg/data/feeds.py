"""Feeding batches to ``fit``: the global steps ``start..stop`` of a ``Batches`` as a thread
fed generator, a Keras ``PyDataset`` or a ``tf.data`` pipeline (see ``Batches.dataset``).

The one part of ``multiseg.data`` that needs Keras: the rest reads and checks data without it.
``batches`` below is a ``multiseg.data.pipeline.Batches`` (not imported: it imports this).
"""

from __future__ import annotations

import collections
from concurrent.futures import ThreadPoolExecutor

import keras
import numpy as np


def stream_steps(batches, start: int, stop: int, *, workers: int):
    """Yields the batches of global steps ``start..stop`` in order, each made exactly once,
    ``workers`` threads working a few steps ahead.

    A generator, not a ``PyDataset``, for training sets: Keras restarts a PyDataset's worker
    queue at item 0 every epoch (and after the first-batch look of JAX's ``fit``), which would
    replay epoch 0's batches in every later epoch of a multi-epoch range. ``fit`` keeps one
    generator going across epochs, and replays the batches it looked at first.
    """
    ahead = workers + 2  # every thread busy, two made steps waiting
    with ThreadPoolExecutor(workers, thread_name_prefix="multiseg-batches") as pool:
        pending: collections.deque = collections.deque()
        step = start
        try:
            while pending or step < stop:
                while step < stop and len(pending) < ahead:
                    pending.append(pool.submit(batches.global_batch, step))
                    step += 1
                yield pending.popleft().result()
        finally:  # fit stopped early (Ctrl-C, a non-finite loss): drop the work ahead
            for future in pending:
                future.cancel()


class StepRange(keras.utils.PyDataset):
    """Global steps ``start..stop`` of a ``Batches`` whose batches never change (validation),
    made by ``workers`` threads; Keras replays them from the first at every pass."""

    def __init__(self, batches, start: int, stop: int, *, workers: int):
        super().__init__(workers=workers, use_multiprocessing=False,
                         max_queue_size=max(4, 2 * workers))
        self.batches = batches
        self.start = start
        self.stop = stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, index: int):
        if not 0 <= index < len(self):
            raise IndexError(f"step {index} out of range for {len(self)} steps")
        return self.batches.global_batch(self.start + index)


# A tf.data pipeline makes this many bytes of batches per call into Python (at most
# CHUNK_STEPS steps): each call wakes a thread and takes the interpreter, which on a few cores
# delays the step running beside it; one call per step cost about 3% of a 64x64 step on 2.
CHUNK_BYTES = 16 * 2**20
CHUNK_STEPS = 8


def chunk_steps(image, targets) -> int:
    """Steps per call into Python, for batches like ``image``, ``targets``."""
    size = image.nbytes + sum(t.nbytes for t in targets.values())
    return max(1, min(CHUNK_STEPS, CHUNK_BYTES // max(size, 1)))


def tf_dataset(batches, start: int, stop: int):
    """Global steps ``start..stop`` as a ``tf.data`` pipeline: a parallel map over chunks of
    steps (a few made per call into Python), split into steps, cached when the batches never
    change, prefetched."""
    import tensorflow as tf

    heads = [t.head for t in batches.head_targets]
    image, targets = batches.batch(0, 0)
    # Steps are stacked: one per call where a batch may be short (an unshuffled set's last).
    chunk = chunk_steps(image, targets) if batches.full else 1
    # (steps of the chunk, batch, ...): the last chunk and the last batch may be shorter.
    specs = [tf.TensorSpec((None, None, *image.shape[1:]), tf.as_dtype(image.dtype))]
    specs += [tf.TensorSpec((None, None, *targets[h].shape[1:]), tf.as_dtype(targets[h].dtype))
              for h in heads]

    def make(first):
        made = [batches.global_batch(step) for step in range(int(first),
                                                              min(int(first) + chunk, stop))]
        return ([np.stack([image for image, _ in made])]
                + [np.stack([targets[h] for _, targets in made]) for h in heads])

    def load(first):
        arrays = tf.numpy_function(make, [first], [s.dtype for s in specs], stateful=False)
        arrays = [tf.ensure_shape(a, s.shape) for a, s in zip(arrays, specs, strict=True)]
        return arrays[0], dict(zip(heads, arrays[1:], strict=True))

    ds = tf.data.Dataset.range(start, stop, chunk)
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).unbatch()
    # Unbatching hides the length, and Keras's evaluate then misreads the losses of a
    # dataset whose length is unknown (a one-batch validation set's loss came out halved).
    ds = ds.apply(tf.data.experimental.assert_cardinality(stop - start))
    if not batches.varies:
        ds = ds.cache()  # fixed batches (validation): made once, replayed every epoch
    return ds.prefetch(tf.data.AUTOTUNE)
