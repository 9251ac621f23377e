"""What sources hand over: target descriptions, decoded items, and the two splits."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class TargetInfo:
    kind: str  # "mask" (per pixel), "label" (per image) or "instances" (object ids per pixel)
    classes: int  # 1 for a binary mask
    names: tuple[str, ...] = ()  # class names, for logs and summaries


@dataclass
class Item:
    """One decoded image with its masks and labels, at the size of its file."""

    name: str  # the image file ("images/a.png", "set.npz:images[3]"), for messages
    image: np.ndarray  # (H, W, C) float32
    masks: dict[str, np.ndarray]  # "mask": (H, W) class indices; "instances": (H, W) ids
    labels: dict[str, int] = field(default_factory=dict)  # image-level labels
    notes: list[str] = field(default_factory=list)  # conversions done while reading it

    @property
    def size(self) -> tuple[int, int]:
        return int(self.image.shape[0]), int(self.image.shape[1])


@dataclass
class Loaded:
    """A file source's data after its validation pass."""

    train: list[Item]
    val: list[Item]
    # split: tiles -- this fraction of every image's tile cells is held out for validation;
    # train and val then list the same items.
    holdout: float = 0.0
    where: str = ""  # the folder or file the data came from
    notes: list[str] = field(default_factory=list)  # normalisations and conversions done
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason) skipped


def hw(size: tuple[int, int]) -> str:
    """A size as messages and the data report write it: ``64 x 48 (height x width)``."""
    return f"{size[0]} x {size[1]} (height x width)"
