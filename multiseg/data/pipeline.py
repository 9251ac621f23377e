"""Batches: sample sets -> augmented batches with every head's target, and the input pipeline.

A batch is a pure function of (seed, epoch, batch index): the order of an epoch comes from
``default_rng([seed, 1, epoch])`` and a batch's crops and augmentation from
``default_rng([seed, 2, epoch, index])``. So batches can be made in any order, in parallel, and
a resumed run sees exactly the batches of an uninterrupted one.

``Batches`` holds a set's batches: ``len()`` steps, ``batches[i]`` for the current epoch,
``batch(epoch, i)`` for any. ``fit`` never receives it: it consumes ``Batches.dataset(start,
stop)``, the batches of global steps ``start..stop``: on the TensorFlow backend a ``tf.data``
pipeline (parallel map over steps, cache for fixed validation batches, prefetch); elsewhere, or
without TensorFlow, batches made ahead by a thread pool. Both give identical arrays.
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass, field

import numpy as np

from multiseg.data.augment import augment_batch, is_active
from multiseg.data.patches import RandomCrops, Stacked
from multiseg.data.targets import (
    boundary_map,
    count_label,
    coverage_label,
    dominant_label,
    presence_labels,
)

PIPELINES = ("auto", "tf.data", "threads")


def default_workers() -> int:
    """Threads that make batches in the TensorFlow-free pipeline: half the cores this process
    may use (the others run the framework), 2 to 8. A GPU steps faster than one thread makes
    large batches: a 512x512 batch of 8, flipped and turned, takes about 16 ms on one core."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 2
    return max(2, min(8, cores // 2))


@dataclass(frozen=True)
class HeadTarget:
    """How one head's target is made from a batch of source arrays."""

    head: str
    source: str  # key in the source's arrays ("mask", "instances", "label")
    derive: str | None  # None | "boundary" | "label"
    options: dict = field(default_factory=dict)
    source_classes: int = 1  # classes of the source array (1 for binary masks and instances)

    def make(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        base = arrays[self.source]
        if self.derive == "boundary":
            out = boundary_map(base, width=self.options["width"], mode=self.options["mode"])
        elif self.derive == "label":
            mode = self.options.get("mode", "dominant")
            if mode == "presence":
                out = presence_labels(base, classes=self.source_classes)
            elif mode == "count":
                out = count_label(base, bins=self.options["bins"])
            elif mode == "coverage":
                out = coverage_label(base, bins=self.options["bins"])
            else:
                out = dominant_label(base, classes=self.source_classes)
        else:
            out = base
        # Per-pixel targets get a channel axis to match the head's (N, H, W, C) output.
        return out[..., None].astype(np.float32) if out.ndim == 3 else out.astype(np.int32)


class Batches:
    """Batches of ``(image, {head: target})`` drawn from a sample set.

    Args:
        samples: a sample set (``multiseg.data.patches``), or a dict of stacked arrays.
        head_targets: one ``HeadTarget`` per head.
        batch_size: samples per batch (the last batch of an unshuffled set may be smaller).
        shuffle: a new order every epoch (training) or the set's own order (validation).
        augment: augmentation options (``multiseg.data.augment.OPTIONS``) or None.
        seed: the recipe's seed.
        steps: batches per epoch; default: one pass over ``count`` samples.
        count: samples per epoch; default: the set's natural size. Larger values repeat
            samples (with new crops and augmentation), smaller ones take a new subset each
            epoch.
        workers: threads of the TensorFlow-free pipeline; default ``default_workers()``.
    """

    def __init__(self, samples, head_targets: list[HeadTarget], *, batch_size: int,
                 shuffle: bool, augment: dict | None, seed: int, steps: int | None = None,
                 count: int | None = None, workers: int | None = None):
        if isinstance(samples, dict):
            samples = Stacked(samples)
        self.samples = samples
        self.head_targets = head_targets
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = augment if augment and is_active(augment) else None
        self.seed = seed
        self.size = len(samples)
        self.count = count or self.size
        self.steps = steps or math.ceil(self.count / batch_size)
        self.workers = workers or default_workers()
        self._orders: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()
        self.set_epoch(0)

    @property
    def varies(self) -> bool:
        """Whether batches change from epoch to epoch (order, crops or augmentation)."""
        return self.shuffle or self.augment is not None or isinstance(self.samples, RandomCrops)

    @property
    def full(self) -> bool:
        """Whether every batch has ``batch_size`` samples (a shuffled epoch covers its steps
        in full; an unshuffled one may end with a short batch)."""
        return self.shuffle or self.steps * self.batch_size <= self.count

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self, epoch: int) -> np.ndarray:
        """Sample indices of an epoch, ``steps * batch_size`` long (or ``count`` unshuffled)."""
        with self._lock:
            if epoch in self._orders:
                return self._orders[epoch]
        if self.shuffle:
            # Enough shuffled passes to cover every step of the epoch.
            passes = math.ceil(self.steps * self.batch_size / self.size)
            rng = np.random.default_rng([self.seed, 1, epoch])
            order = np.concatenate([rng.permutation(self.size) for _ in range(passes)])
            if self.count < self.size:
                order = order[: self.count]  # a new subset each epoch
                order = np.resize(order, self.steps * self.batch_size)
        else:
            order = np.resize(np.arange(self.size), max(self.count, 1))
        with self._lock:
            if len(self._orders) > 4:
                self._orders.pop(min(self._orders))
            self._orders[epoch] = order
        return order

    def __len__(self) -> int:
        return self.steps

    def batch_arrays(self, index: int, epoch: int | None = None) -> dict[str, np.ndarray]:
        """The source arrays of one batch, augmented: image and masks stay aligned."""
        epoch = self.epoch if epoch is None else epoch
        picked = self.order(epoch)[index * self.batch_size : (index + 1) * self.batch_size]
        if len(picked) == 0:
            raise IndexError(f"batch {index} is past the end ({self.steps} batches)")
        rng = np.random.default_rng([self.seed, 2, epoch, index])
        batch = self.samples.take(picked, rng)
        if self.augment:
            masks = {k: v for k, v in batch.items() if k != "image" and v.ndim == 3}
            batch["image"], masks = augment_batch(rng, batch["image"], masks, **self.augment)
            batch.update(masks)
        return batch

    def batch(self, epoch: int, index: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Batch ``index`` of ``epoch``: ``(images, {head: target})``; thread-safe."""
        arrays = self.batch_arrays(index, epoch)
        return arrays["image"], {t.head: t.make(arrays) for t in self.head_targets}

    def __getitem__(self, index: int):
        if not 0 <= index < self.steps:
            raise IndexError(f"batch {index} out of range for {self.steps} batches")
        return self.batch(self.epoch, index)

    def on_epoch_end(self) -> None:
        self.set_epoch(self.epoch + 1)

    # -- what fit consumes -------------------------------------------------------------------

    def global_batch(self, step: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Global step ``g`` is batch ``g % steps`` of epoch ``g // steps``."""
        epoch, index = divmod(int(step), self.steps)
        return self.batch(epoch, index)

    def dataset(self, start: int = 0, stop: int | None = None, *, pipeline: str = "auto"):
        """The batches of global steps ``start..stop`` (default: one epoch) for ``fit``.

        Args:
            start, stop: global steps; batch ``g`` is batch ``g % len(self)`` of epoch
                ``g // len(self)``, whatever order or look-ahead the consumer uses.
            pipeline: ``tf.data`` (parallel map, cache when batches never change, prefetch),
                ``threads`` (a thread pool, needs no TensorFlow: ``stream_steps`` for batches
                that vary, a ``StepRange`` for fixed ones) or ``auto``: tf.data on the
                TensorFlow backend, threads otherwise.
        """
        stop = self.steps if stop is None else stop
        if pipeline not in PIPELINES:
            raise ValueError(f"pipeline must be one of {', '.join(PIPELINES)}, got '{pipeline}'")
        # The feeds need Keras (and TensorFlow for tf.data): imported when batches are fed,
        # so that reading a recipe and its data stays free of them.
        import keras

        from multiseg.data.feeds import StepRange, stream_steps, tf_dataset

        if pipeline == "auto":
            pipeline = "tf.data" if keras.backend.backend() == "tensorflow" else "threads"
        if pipeline == "threads":
            if self.varies:
                return stream_steps(self, start, stop, workers=self.workers)
            return StepRange(self, start, stop, workers=self.workers)
        return tf_dataset(self, start, stop)
