"""Boundary F1 (BF score) with a pixel tolerance."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from multiseg.metrics.base import ClassMetric, check_int, pixel_weights, safe_ratio
from multiseg.tensors import PACKAGE, check_bool


def _boundary(mask: Any) -> Any:
    """Inner boundary: mask pixels with a mask-free pixel in their 3^d neighbourhood.

    Pixels beyond the image edge do not count as outside (``same`` max pooling ignores
    padding), so the image border is not an object boundary.
    """
    eroded = 1.0 - ops.max_pool(1.0 - mask, 3, strides=1, padding="same")
    return mask * (1.0 - eroded)


def _dilate(mask: Any, tolerance: int) -> Any:
    if tolerance == 0:
        return mask
    return ops.max_pool(mask, 2 * tolerance + 1, strides=1, padding="same")


@keras.saving.register_keras_serializable(package=PACKAGE)
class BoundaryF1(ClassMetric):
    """Boundary F1 score (BF score) with a pixel tolerance, per class, then the mean.

    Formula, per class, with B_p and B_g the inner boundaries of the hard prediction and the
    target (mask pixels with a background pixel among their 8 neighbours in 2D), or the hard
    maps themselves with ``outlines=True``, and dilate_t a (2t+1)^d square dilation (Chebyshev
    distance <= t), counted over the stream::

        P_c  = |B_p & dilate_t(B_g)| / |B_p|     R_c = |B_g & dilate_t(B_p)| / |B_g|
        BF_c = 2 P_c R_c / (P_c + R_c)   (1 when both have no boundary, 0 when one has none)

    On a boundary head the target is already an outline map. Extracting boundaries again
    would give a filled blob the same boundary as the outline it should have drawn (a filled
    square scores 1 against its own outline), so such a head compares the maps themselves:
    every predicted pixel farther than ``tolerance`` from the target outline is a false
    positive.

    Args:
        classes: output channels of the head (1 = binary). Required.
        tolerance: distance in pixels within which boundary pixels match, >= 0. Default 2.
        outlines: ``y_true`` and ``y_pred`` are outline maps already (a boundary head):
            compare them as they are instead of extracting boundaries. Decided by the head,
            like ``from_logits``; not a recipe option. Default False.
        from_logits, include_background, class_id, threshold, multilabel, name, dtype: as
            ``DiceScore``.

    Shape:
        y_pred (N, ..., classes) with 1 to 3 spatial axes; y_true as ``DiceScore``.

    Raises:
        ValueError: as ``DiceScore``, and y_pred without spatial axes.

    Example:
        >>> BoundaryF1(1, tolerance=2, from_logits=True)

    Reference:
        Csurka et al., "What is a good evaluation measure for semantic segmentation?",
        BMVC 2013.
    """

    def __init__(self, classes: int, *, tolerance: int = 2, outlines: bool = False,
                 from_logits: bool = False, include_background: bool = False,
                 class_id: int | None = None, threshold: float | None = None,
                 multilabel: bool = False, name: str = "boundary_f1", dtype: Any = None) -> None:
        super().__init__(classes, from_logits=from_logits,
                         include_background=include_background, class_id=class_id,
                         threshold=threshold, multilabel=multilabel, name=name, dtype=dtype)
        self.tolerance = check_int(type(self).__name__, "tolerance", tolerance, low=0)
        self.outlines = check_bool(type(self).__name__, "outlines", outlines)
        shape = (self.classes,)
        self.matched_pred = self.add_variable(shape, "zeros", dtype="float32",
                                              name="matched_pred")
        self.total_pred = self.add_variable(shape, "zeros", dtype="float32", name="total_pred")
        self.matched_true = self.add_variable(shape, "zeros", dtype="float32",
                                              name="matched_true")
        self.total_true = self.add_variable(shape, "zeros", dtype="float32", name="total_true")

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        if not 3 <= len(y_pred.shape) <= 5:
            raise ValueError(f"{self.name}: boundary F1 needs 1 to 3 spatial axes, y_pred"
                             f" (N, ..., C); got shape {tuple(y_pred.shape)}.")
        g, h = self._hard(y_true, y_pred)
        b_g, b_h = (g, h) if self.outlines else (_boundary(g), _boundary(h))
        w = pixel_weights(sample_weight, ops.shape(h)[:-1], len(h.shape) - 1)
        w = 1.0 if w is None else ops.expand_dims(w, -1)
        axes = tuple(range(len(h.shape) - 1))
        self.matched_pred.assign_add(ops.sum(w * b_h * _dilate(b_g, self.tolerance), axis=axes))
        self.total_pred.assign_add(ops.sum(w * b_h, axis=axes))
        self.matched_true.assign_add(ops.sum(w * b_g * _dilate(b_h, self.tolerance), axis=axes))
        self.total_true.assign_add(ops.sum(w * b_g, axis=axes))

    def per_class(self) -> Any:
        """BF score of every channel, shape (classes,)."""
        empty = (self.total_pred + self.total_true) == 0
        precision = safe_ratio(self.matched_pred, self.total_pred, empty)
        recall = safe_ratio(self.matched_true, self.total_true, empty)
        return safe_ratio(2.0 * precision * recall, precision + recall, empty)

    def result(self) -> Any:
        return self._select(self.per_class())

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "tolerance": self.tolerance, "outlines": self.outlines}
