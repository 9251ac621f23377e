"""Feeding batches to ``fit``: the global steps ``start..stop`` of a ``Batches`` as a thread
fed generator, a Keras ``PyDataset`` or a ``tf.data`` pipeline (see ``Batches.dataset``).

The one part of ``multiseg.data`` that needs Keras: the rest reads and checks data without it.
``batches`` below is a ``multiseg.data.pipeline.Batches`` (not imported: it imports this).
"""

from __future__ import annotations

import collections
from concurrent.futures import ThreadPoolExecutor

import keras


def stream_steps(batches, start: int, stop: int, *, workers: int = 2):
    """Yields the batches of global steps ``start..stop`` in order, each made exactly once,
    ``workers`` threads working a few steps ahead.

    A generator, not a ``PyDataset``, for training sets: Keras restarts a PyDataset's worker
    queue at item 0 every epoch (and after the first-batch look of JAX's ``fit``), which would
    replay epoch 0's batches in every later epoch of a multi-epoch range. ``fit`` keeps one
    generator going across epochs, and replays the batches it looked at first.
    """
    ahead = max(2, 2 * workers)
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

    def __init__(self, batches, start: int, stop: int, *, workers: int = 2):
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


def tf_dataset(batches, start: int, stop: int):
    """Global steps ``start..stop`` as a ``tf.data`` pipeline: a parallel map over steps,
    cached when the batches never change, prefetched."""
    import tensorflow as tf

    heads = [t.head for t in batches.head_targets]
    image, targets = batches.batch(0, 0)
    specs = [tf.TensorSpec((None, *image.shape[1:]), tf.as_dtype(image.dtype))]
    specs += [tf.TensorSpec((None, *targets[h].shape[1:]), tf.as_dtype(targets[h].dtype))
              for h in heads]

    def make(step):
        image, targets = batches.global_batch(int(step))
        return [image] + [targets[h] for h in heads]

    def load(step):
        arrays = tf.numpy_function(make, [step], [s.dtype for s in specs], stateful=False)
        arrays = [tf.ensure_shape(a, s.shape) for a, s in zip(arrays, specs, strict=True)]
        return arrays[0], dict(zip(heads, arrays[1:], strict=True))

    ds = tf.data.Dataset.range(start, stop)
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if not batches.varies:
        ds = ds.cache()  # fixed batches (validation): made once, replayed every epoch
    return ds.prefetch(tf.data.AUTOTUNE)
