"""Joint augmentation: one random transform applied to the image and every spatial target."""

from __future__ import annotations

import numpy as np


def augment_batch(rng: np.random.Generator, image: np.ndarray, masks: dict[str, np.ndarray],
                  *, flip: bool, rotate90: bool) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Flips and quarter turns per sample; ``image`` is (N, H, W, C), masks are (N, H, W)."""
    if not (flip or rotate90):
        return image, masks
    image = image.copy()
    masks = {k: v.copy() for k, v in masks.items()}
    for i in range(image.shape[0]):
        ops = []
        if flip:
            if rng.random() < 0.5:
                ops.append(lambda a: a[::-1])
            if rng.random() < 0.5:
                ops.append(lambda a: a[:, ::-1])
        if rotate90:
            turns = int(rng.integers(0, 4))
            if turns:
                ops.append(lambda a, t=turns: np.rot90(a, t, axes=(0, 1)))
        for op in ops:
            image[i] = op(image[i])
            for k in masks:
                masks[k][i] = op(masks[k][i])
    return image, masks
