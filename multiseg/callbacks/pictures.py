"""Pictures for TensorBoard: images, targets and predictions as RGB tiles."""

from __future__ import annotations

import numpy as np

from multiseg.colours import CLASS_COLOURS

_PALETTE = CLASS_COLOURS.astype(np.float32) / 255


def to_rgb(image: np.ndarray) -> np.ndarray:
    image = np.clip(np.asarray(image, np.float32), 0, 1)
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    return image[..., :3]


def colour_target(target: np.ndarray, channels: int) -> np.ndarray:
    labels = target[..., 0].astype(int)
    if channels == 1:
        return np.repeat(labels[..., None].astype(np.float32), 3, axis=-1)
    return _PALETTE[labels % len(_PALETTE)]


def colour_prediction(logits: np.ndarray) -> np.ndarray:
    """Class colours for a multi-class map, grey levels of the probability for one channel."""
    if logits.shape[-1] == 1:
        # float32 and clipped: a mixed_float16 model's logits of -12 overflow exp in float16.
        prob = 1 / (1 + np.exp(-np.clip(logits[..., 0].astype(np.float32), -60.0, 60.0)))
        return np.repeat(prob[..., None], 3, axis=-1)
    classes = np.argmax(logits, axis=-1)
    return _PALETTE[classes % len(_PALETTE)]
