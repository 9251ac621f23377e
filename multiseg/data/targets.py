"""Targets derived from masks: boundary maps and image-level labels.

They are computed on batches after augmentation, so they always match the augmented mask.
"""

from __future__ import annotations

import numpy as np


def _window_extreme(mask: np.ndarray, radius: int, reduce) -> np.ndarray:
    """Max or min of ``mask`` (N, H, W) over a (2r+1) x (2r+1) window, edges replicated."""
    h, w = mask.shape[1:]
    out = np.pad(mask, ((0, 0), (radius, radius), (0, 0)), mode="edge")
    out = reduce.reduce([out[:, i : i + h] for i in range(2 * radius + 1)])
    out = np.pad(out, ((0, 0), (0, 0), (radius, radius)), mode="edge")
    return reduce.reduce([out[:, :, j : j + w] for j in range(2 * radius + 1)])


def boundary_map(mask: np.ndarray, *, width: int = 1, mode: str = "thick") -> np.ndarray:
    """Pixels within ``width`` of a change of label.

    Args:
        mask: (N, H, W) integer labels.
        width: half-thickness in pixels: a pixel is on the boundary when a pixel of another
            label lies within its (2*width+1)^2 window.
        mode: ``thick`` (both sides of the edge), ``inner`` (foreground side only) or
            ``outer`` (background side only).

    Returns:
        (N, H, W) uint8 map of 0 and 1.
    """
    changes = _window_extreme(mask, width, np.maximum) != _window_extreme(mask, width, np.minimum)
    if mode == "inner":
        changes &= mask > 0
    elif mode == "outer":
        changes &= mask == 0
    elif mode != "thick":
        raise ValueError(f"boundary mode must be thick, inner or outer, got '{mode}'")
    return changes.astype(np.uint8)


def dominant_label(mask: np.ndarray, *, classes: int) -> np.ndarray:
    """Image-level label: the foreground class covering the most pixels.

    For a multi-class mask (``classes`` > 1, background 0 included) the label is that class
    minus one, so labels run over foreground classes; an image without foreground gets 0. For a
    binary mask (``classes`` == 1) the label is 1 when any foreground is present.
    """
    flat = mask.reshape(mask.shape[0], -1)
    if classes == 1:
        return (flat.max(axis=1) > 0).astype(np.int32)
    counts = np.stack([(flat == c).sum(axis=1) for c in range(1, classes)], axis=1)
    return np.argmax(counts, axis=1).astype(np.int32)
