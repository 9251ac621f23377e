"""Class colours: the one palette of the pictures multiseg draws (TensorBoard previews) and
writes (``multiseg.predict``'s label images). Keras-free."""

from __future__ import annotations

import numpy as np

# Background black, then distinct colours; more classes repeat them.
CLASS_COLOURS = np.array([[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25],
                          [0, 130, 200], [245, 130, 48], [145, 30, 180], [70, 240, 240],
                          [240, 50, 230], [210, 245, 60]], dtype=np.uint8)
# A one-channel map (binary mask, boundary): off black, on white.
BINARY_COLOURS = np.array([[0, 0, 0], [255, 255, 255]], dtype=np.uint8)


def class_colours(classes: int) -> np.ndarray:
    """(classes, 3) uint8 colours of classes 0..classes-1 (a binary map's two: black, white)."""
    if classes <= 2 and classes != 2:
        return BINARY_COLOURS
    return CLASS_COLOURS[np.arange(classes) % len(CLASS_COLOURS)]


def palette_image(labels: np.ndarray, colours: np.ndarray):
    """A palette ("P" mode) PIL image: the pixels keep the class index, a viewer shows the
    class colours. ``labels`` (H, W) integers below ``len(colours)`` <= 256."""
    from PIL import Image

    if len(colours) > 256:
        raise ValueError(f"a palette PNG holds at most 256 colours, got {len(colours)}")
    image = Image.fromarray(labels.astype(np.uint8))
    image.putpalette(np.asarray(colours, np.uint8).ravel().tolist())  # "L" becomes "P"
    return image
