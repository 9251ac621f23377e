"""Targets derived from masks: boundary maps and image-level labels.

They are computed on batches after augmentation, so they always match the augmented mask. A
"mask" here is (N, H, W) integers: class indices, or instance ids (0 background, each object
its own id), which makes boundaries instance-aware: two touching objects of the same class are
separated by their boundary, which a semantic mask cannot express.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# What a target may be derived from a mask as (a recipe's `derive:`), and the modes of each.
DERIVATIONS = ("boundary", "label")
BOUNDARY_MODES = ("thick", "inner", "outer", "touching")
LABEL_MODES = ("dominant", "presence", "count", "coverage")


def _window_extreme(mask: np.ndarray, radius: int, extreme) -> np.ndarray:
    """``np.maximum`` or ``np.minimum`` of ``mask`` (N, H, W) over a (2r+1) x (2r+1) window,
    edges replicated (scipy.ndimage's mode "nearest"). Separable, along the rows then the
    columns, in NumPy slices: ten times faster than scipy.ndimage's filters on a batch of
    uint8 masks (0.45 against 5 ms for 8x256x256, radius 1)."""
    out = mask
    for axis in (2, 1):
        length = mask.shape[axis]
        pad = [(0, 0)] * 3
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="edge")
        windows = []
        for offset in range(2 * radius + 1):
            index = [slice(None)] * 3
            index[axis] = slice(offset, offset + length)
            windows.append(padded[tuple(index)])
        out = windows[radius].copy()
        for offset, window in enumerate(windows):
            if offset != radius:
                extreme(out, window, out=out)
    return out


def boundary_map(mask: np.ndarray, *, width: int = 1, mode: str = "thick") -> np.ndarray:
    """Pixels within ``width`` of a change of label.

    Args:
        mask: (N, H, W) integer labels, or instance ids for instance-aware boundaries.
        width: half-thickness in pixels: a pixel is on the boundary when a pixel of another
            label lies within its (2*width+1)^2 window.
        mode: ``thick`` (both sides of the edge), ``inner`` (foreground side only),
            ``outer`` (background side only) or ``touching`` (foreground pixels next to
            *another foreground* label: the lines between touching objects or classes).

    Returns:
        (N, H, W) uint8 map of 0 and 1.

    Raises:
        ValueError: unknown mode.

    Example:
        >>> boundary_map(instance_ids, width=1, mode="inner")  # each object's own contour
    """
    if mode not in BOUNDARY_MODES:
        raise ValueError(f"boundary mode must be thick, inner, outer or touching, got '{mode}'")
    high = _window_extreme(mask, width, np.maximum)
    if mode == "touching":
        # Another foreground label nearby: a larger one (max) or a smaller non-zero one (min
        # over the window with background lifted above every label).
        lifted = mask.astype(np.int64)
        lifted[mask == 0] = int(mask.max(initial=0)) + 1
        low_fg = _window_extreme(lifted, width, np.minimum)
        return ((mask > 0) & ((high > mask) | (low_fg < mask))).astype(np.uint8)
    changes = high != _window_extreme(mask, width, np.minimum)
    if mode == "inner":
        changes &= mask > 0
    elif mode == "outer":
        changes &= mask == 0
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


def presence_labels(mask: np.ndarray, *, classes: int) -> np.ndarray:
    """Multi-label image target: which foreground classes appear at all.

    Returns (N, classes - 1) int32 multi-hot for a multi-class mask (channel k is class k + 1);
    for a binary mask (``classes`` == 1) the (N,) 0/1 label "any foreground", as
    ``dominant_label``.
    """
    flat = mask.reshape(mask.shape[0], -1)
    if classes == 1:
        return (flat.max(axis=1) > 0).astype(np.int32)
    return np.stack([(flat == c).any(axis=1) for c in range(1, classes)], axis=1).astype(np.int32)


def object_counts(instances: np.ndarray) -> np.ndarray:
    """Number of distinct objects (non-zero ids, partly visible ones included) per sample."""
    return np.array([np.unique(m[m > 0]).size for m in instances], np.int64)


def binned(values: np.ndarray, bins: Sequence[float]) -> np.ndarray:
    """Class k for ``bins[k-1] <= value < bins[k]``: ``len(bins) + 1`` classes."""
    return np.digitize(values, np.asarray(bins, np.float64), right=False).astype(np.int32)


def count_label(instances: np.ndarray, *, bins: Sequence[float]) -> np.ndarray:
    """Image label from the number of objects: e.g. bins [5, 15] gives 0 (< 5 objects),
    1 (5 to 14) and 2 (15 or more). Needs instance ids."""
    return binned(object_counts(instances), bins)


def coverage_label(mask: np.ndarray, *, bins: Sequence[float]) -> np.ndarray:
    """Image label from the foreground fraction: bins [0.1, 0.3] gives 0 (< 10 % of pixels),
    1 (10 % to 30 %) and 2 (30 % or more)."""
    fraction = (mask.reshape(mask.shape[0], -1) > 0).mean(axis=1)
    return binned(fraction, bins)


# ---------------------------------------------------------------------------------------------
# What a head's target is, from its description (a recipe's TargetSpec: ``source``, ``derive``,
# ``options``) and the source's targets (``TargetInfo``: ``kind``, ``classes``).


def target_classes(target: Any, source_targets: Mapping[str, Any]) -> int:
    """Number of classes the target carries (1 for binary maps)."""
    info = source_targets[target.source]
    if target.derive == "boundary":
        return 1
    if target.derive == "label":
        mode = target.options.get("mode", "dominant")
        if mode in ("count", "coverage"):
            return len(target.options["bins"]) + 1
        # dominant: the most frequent foreground class; presence: one 0/1 per foreground
        # class. A binary mask gives "has foreground or not" (2 classes) in both modes.
        foreground = info.classes - 1 if info.classes > 1 else 1
        return foreground if foreground > 1 else 2
    return info.classes


def is_multi_hot(target: Any, source_targets: Mapping[str, Any]) -> bool:
    """Whether the target holds one 0/1 per class: a presence label of a mask with two or more
    foreground classes (of one foreground class it is a plain 0/1 label)."""
    return (target.derive == "label" and target.options.get("mode") == "presence"
            and source_targets[target.source].classes > 2)


def target_kind(target: Any, source_targets: Mapping[str, Any]) -> str:
    """'mask' for per-pixel targets, 'label' for image-level ones."""
    if target.derive == "boundary":
        return "mask"
    if target.derive == "label":
        return "label"
    return source_targets[target.source].kind
