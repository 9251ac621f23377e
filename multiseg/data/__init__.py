"""Data: a source's samples, each head's target (given or derived), augmentation, batches."""

from __future__ import annotations

import math
from dataclasses import dataclass

import keras
import numpy as np

from multiseg.data.augment import augment_batch
from multiseg.data.sources import TargetInfo, generate, source_targets
from multiseg.data.targets import boundary_map, dominant_label


@dataclass(frozen=True)
class HeadTarget:
    """How one head's target is made from a sample."""

    head: str
    source: str  # key in the source's arrays
    derive: str | None  # None | "boundary" | "label"
    options: dict
    source_classes: int  # classes of the source array (1 for binary masks)

    def make(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        base = arrays[self.source]
        if self.derive == "boundary":
            out = boundary_map(base, width=self.options["width"], mode=self.options["mode"])
        elif self.derive == "label":
            out = dominant_label(base, classes=self.source_classes)
        else:
            out = base
        # Per-pixel targets get a channel axis to match the head's (N, H, W, C) output.
        return out[..., None].astype(np.float32) if out.ndim == 3 else out.astype(np.int32)


class Batches(keras.utils.PyDataset):
    """Batches of ``(image, {head: target})`` drawn from in-memory arrays.

    Order and augmentation depend only on (seed, epoch, batch index), so a resumed run sees the
    same batches as an uninterrupted one.
    """

    def __init__(self, arrays: dict[str, np.ndarray], head_targets: list[HeadTarget], *,
                 batch_size: int, shuffle: bool, augment: dict | None, seed: int,
                 steps: int | None = None):
        super().__init__()
        self.arrays = arrays
        self.head_targets = head_targets
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = augment
        self.seed = seed
        self.count = len(arrays["image"])
        self.steps = steps or math.ceil(self.count / batch_size)
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if self.shuffle:
            # Enough shuffled passes to cover every step of the epoch.
            passes = math.ceil(self.steps * self.batch_size / self.count)
            rng = np.random.default_rng([self.seed, 1, epoch])
            self.order = np.concatenate([rng.permutation(self.count) for _ in range(passes)])
        else:
            self.order = np.arange(self.count)

    def __len__(self) -> int:
        return self.steps

    def batch_arrays(self, index: int) -> dict[str, np.ndarray]:
        """The source arrays of one batch, augmented: image and masks stay aligned."""
        picked = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        batch = {k: v[picked] for k, v in self.arrays.items()}
        if self.augment:
            rng = np.random.default_rng([self.seed, 2, self.epoch, index])
            masks = {k: v for k, v in batch.items() if k != "image" and v.ndim == 3}
            batch["image"], masks = augment_batch(rng, batch["image"], masks, **self.augment)
            batch.update(masks)
        return batch

    def __getitem__(self, index: int):
        batch = self.batch_arrays(index)
        return batch["image"], {t.head: t.make(batch) for t in self.head_targets}

    def on_epoch_end(self) -> None:
        self.set_epoch(self.epoch + 1)


@dataclass
class Data:
    train: Batches
    val: Batches
    targets: dict[str, TargetInfo]  # what the source provides
    channels: int


def head_targets(recipe) -> list[HeadTarget]:
    infos = source_targets(recipe.data.source.kind, recipe.data.source.options)
    return [HeadTarget(head=name, source=h.target.source, derive=h.target.derive,
                       options=dict(h.target.options), source_classes=infos[h.target.source].classes)
            for name, h in recipe.heads.items()]


def build_data(recipe) -> Data:
    """Generates the recipe's train and validation sets and wraps them in batch sequences."""
    spec = recipe.data
    kind, options = spec.source.kind, dict(spec.source.options)
    train = generate(kind, options, count=spec.train, size=spec.image_size, seed=recipe.seed,
                     split="train")
    val = generate(kind, options, count=spec.val, size=spec.image_size, seed=recipe.seed,
                   split="val")
    targets = head_targets(recipe)
    augment = {"flip": spec.augment.flip, "rotate90": spec.augment.rotate90}
    batch_size = recipe.train.batch_size
    return Data(
        train=Batches(train, targets, batch_size=batch_size, shuffle=True, augment=augment,
                      seed=recipe.seed, steps=recipe.train.steps_per_epoch),
        val=Batches(val, targets, batch_size=batch_size, shuffle=False, augment=None,
                    seed=recipe.seed),
        targets=source_targets(kind, options),
        channels=int(train["image"].shape[-1]),
    )
