"""Hard segmentation and classification metrics, streamed over batches.

Every metric turns ``y_pred`` into hard decisions (argmax over C > 1 channels; for one channel
or ``multilabel`` channels, probability > ``threshold``, default 0.5, where the probability of a
logit is its sigmoid) and accumulates counts (true positives, false positives, false negatives,
matched boundary pixels...) in metric variables across batches. ``result()`` computes the
ratios from the totals, so an epoch value is the value over the whole epoch, never a mean of
batch means.

Inputs follow ``multiseg.losses``: ``y_pred`` channels-last logits or probabilities as
``from_logits`` says, ``y_true`` integer labels (possibly as floats), one-hot, or a binary
mask; image-level outputs (N, C) with labels (N,) or (N, 1).

Conventions: ``classes`` is the number of output channels (1 = binary). Class means skip
channel 0 (background) by default when C > 1 (``include_background=False``); a binary head's
single channel is the foreground. A class absent from both target and prediction scores 1
(consistent with the losses: two empty masks agree perfectly); a ratio whose denominator is 0
while the class is present somewhere (precision when nothing was predicted) scores 0.
"""

from __future__ import annotations

import difflib
import inspect
import math
from collections.abc import Mapping
from typing import Any

import keras
from keras import ops

from multiseg.losses import (
    _channels,
    _check_bool,
    _check_number,
    _fail,
    _lookup,
    _signature_options,
    _targets,
)

_PACKAGE = "multiseg"
# Probability above which a one-channel or multilabel output counts as positive.
_DEFAULT_THRESHOLD = 0.5


def _check_int(owner: str, arg: str, value: Any, *, low: int,
               high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (
            high is not None and value >= high):
        rule = f"an integer >= {low}" + ("" if high is None else f" and < {high}")
        raise _fail(owner, arg, value, rule)
    return int(value)


def _pixel_weights(sample_weight: Any, grid_shape: tuple[Any, ...], rank: int) -> Any:
    """Sample weights broadcast to the pixel grid (y_pred without its channel axis), float32."""
    if sample_weight is None:
        return None
    w = ops.cast(ops.convert_to_tensor(sample_weight), "float32")
    if len(w.shape) == rank + 1 and w.shape[-1] == 1:
        w = ops.squeeze(w, -1)
    while len(w.shape) < rank:
        w = ops.expand_dims(w, -1)
    return ops.broadcast_to(w, grid_shape)


def _check_threshold(owner: str, threshold: Any) -> float | None:
    if threshold is None:
        return None
    value = _check_number(owner, "threshold", threshold)
    if not 0.0 < value < 1.0:
        raise _fail(owner, "threshold", threshold, "a probability in (0, 1) (a logit goes"
                    " through its sigmoid before the cut)")
    return value


def _hard(y_true: Any, y_pred: Any, *, from_logits: bool, threshold: float | None,
          multilabel: bool, owner: str) -> tuple[Any, Any]:
    """Hard one-hot (or binary) target and prediction, float32, shaped like ``y_pred``.

    One channel or multilabel: positive where the probability exceeds ``threshold`` (None:
    0.5); for logits that is ``sigmoid(z) > t``, computed as ``z > log(t / (1 - t))``, the
    same decision without sigmoid rounding to 1 for large z.
    """
    g = _targets(y_true, y_pred, multilabel=multilabel, owner=owner)
    y_pred = ops.cast(y_pred, "float32")
    channels = y_pred.shape[-1]
    if channels == 1 or multilabel:
        cut = _DEFAULT_THRESHOLD if threshold is None else threshold
        if from_logits:
            cut = math.log(cut / (1.0 - cut))
        return ops.cast(g > 0.5, "float32"), ops.cast(y_pred > cut, "float32")
    hard_g = ops.one_hot(ops.argmax(g, axis=-1), channels, dtype="float32")
    return hard_g, ops.one_hot(ops.argmax(y_pred, axis=-1), channels, dtype="float32")


def _safe_ratio(num: Any, den: Any, empty: Any) -> Any:
    """num / den; 1 where the class is empty in target and prediction; 0 where den is 0."""
    # Metric variables are not arrays on JAX: convert before *_like ops.
    num, den = ops.convert_to_tensor(num), ops.convert_to_tensor(den)
    zero = den == 0
    safe = ops.where(zero, ops.ones_like(den), den)
    value = ops.where(zero, ops.zeros_like(den), num / safe)
    return ops.where(empty, ops.ones_like(den), value)


class _ClassMetric(keras.metrics.Metric):
    """Base of the per-class metrics: options, input checks, class selection and config."""

    def __init__(self, classes: int, *, from_logits: bool, include_background: bool,
                 class_id: int | None, threshold: float | None, multilabel: bool,
                 name: str, dtype: Any) -> None:
        super().__init__(name=name, dtype=dtype)
        owner = type(self).__name__
        self.classes = _check_int(owner, "classes", classes, low=1)
        self.from_logits = _check_bool(owner, "from_logits", from_logits)
        self.include_background = _check_bool(owner, "include_background", include_background)
        self.class_id = (None if class_id is None
                         else _check_int(owner, "class_id", class_id, low=0, high=self.classes))
        self.threshold = _check_threshold(owner, threshold)
        self.multilabel = _check_bool(owner, "multilabel", multilabel)

    def _check_pred(self, y_pred: Any) -> None:
        channels = _channels(y_pred, self.name)
        if channels != self.classes:
            raise ValueError(f"{self.name}: the metric was built for classes={self.classes}"
                             f" but y_pred has {channels} channels (shape"
                             f" {tuple(y_pred.shape)}).")

    def _hard(self, y_true: Any, y_pred: Any) -> tuple[Any, Any]:
        self._check_pred(y_pred)
        return _hard(y_true, y_pred, from_logits=self.from_logits, threshold=self.threshold,
                     multilabel=self.multilabel, owner=self.name)

    def _select(self, per_class: Any) -> Any:
        """The value of ``class_id``, or the mean over the included classes."""
        if self.class_id is not None:
            return per_class[self.class_id]
        if self.classes > 1 and not self.multilabel and not self.include_background:
            return ops.mean(per_class[1:])
        return ops.mean(per_class)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "classes": self.classes,
                "from_logits": self.from_logits, "include_background": self.include_background,
                "class_id": self.class_id, "threshold": self.threshold,
                "multilabel": self.multilabel}


class _ConfusionMetric(_ClassMetric):
    """Accumulates per-class true positive, false positive and false negative counts."""

    def __init__(self, classes: int, *, from_logits: bool, include_background: bool,
                 class_id: int | None, threshold: float | None, multilabel: bool,
                 name: str, dtype: Any) -> None:
        super().__init__(classes, from_logits=from_logits,
                         include_background=include_background, class_id=class_id,
                         threshold=threshold, multilabel=multilabel, name=name, dtype=dtype)
        # float32 counts: exact up to 2^24 per batch, relative rounding ~1e-7 beyond.
        self.tp = self.add_variable((self.classes,), "zeros", dtype="float32", name="tp")
        self.fp = self.add_variable((self.classes,), "zeros", dtype="float32", name="fp")
        self.fn = self.add_variable((self.classes,), "zeros", dtype="float32", name="fn")

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        g, h = self._hard(y_true, y_pred)
        w = _pixel_weights(sample_weight, ops.shape(h)[:-1], len(h.shape) - 1)
        if w is not None:
            w = ops.expand_dims(w, -1)
            g_w, h_w = g * w, h * w
        else:
            g_w, h_w = g, h
        axes = tuple(range(len(h.shape) - 1))
        self.tp.assign_add(ops.sum(h_w * g, axis=axes))
        self.fp.assign_add(ops.sum(h_w * (1.0 - g), axis=axes))
        self.fn.assign_add(ops.sum((1.0 - h) * g_w, axis=axes))

    def _empty(self) -> Any:
        return (self.tp + self.fp + self.fn) == 0

    def per_class(self) -> Any:
        """The metric's value for every channel, shape (classes,)."""
        raise NotImplementedError

    def result(self) -> Any:
        return self._select(self.per_class())


_CLASS_ARGS_DOC = """
    Args:
        classes: output channels of the head (1 = binary). Required.
        from_logits: ``y_pred`` are logits: one-channel and multilabel outputs go through a
            sigmoid before the threshold (argmax is the same on logits and probabilities).
            Default False.
        include_background: include channel 0 in the class mean of a softmax head with
            classes > 1 (binary and multilabel heads have no background channel). Default
            False.
        class_id: report this channel only instead of the mean. Default None.
        threshold: probability in (0, 1) above which a one-channel or multilabel output is
            positive (``sigmoid(y_pred) > threshold`` for logits). Default None: 0.5.
        multilabel: C > 1 channels are independent binary outputs. Default False.
        name: Keras log name. dtype: as ``keras.metrics.Metric``.
"""


def _doc(cls: type) -> type:
    cls.__doc__ = (cls.__doc__ or "").replace("    {args}\n", _CLASS_ARGS_DOC.strip("\n") + "\n")
    return cls


@_doc
@keras.saving.register_keras_serializable(package=_PACKAGE)
class DiceScore(_ConfusionMetric):
    """Hard Dice (F1) per class over everything seen since the last reset, then the mean.

    Formula, with TP, FP, FN counted over all pixels of all batches::

        Dice_c = 2 TP_c / (2 TP_c + FP_c + FN_c)     (1 when the class is empty in both)
        result = mean over included classes, or Dice_{class_id}

    {args}
    Shape:
        y_pred (N, ..., classes); y_true labels (N, ...), (N, ..., 1) or one-hot.

    Raises:
        ValueError: an invalid argument; y_pred channels != classes; incompatible y_true.

    Example:
        >>> metric = DiceScore(4, from_logits=True); metric.update_state(labels, logits)

    Reference:
        Dice, "Measures of the amount of ecologic association between species", 1945.
    """

    def __init__(self, classes: int, *, from_logits: bool = False,
                 include_background: bool = False, class_id: int | None = None,
                 threshold: float | None = None, multilabel: bool = False,
                 name: str = "dice", dtype: Any = None) -> None:
        super().__init__(classes, from_logits=from_logits,
                         include_background=include_background, class_id=class_id,
                         threshold=threshold, multilabel=multilabel, name=name, dtype=dtype)

    def per_class(self) -> Any:
        return _safe_ratio(2.0 * self.tp, 2.0 * self.tp + self.fp + self.fn, self._empty())


@_doc
@keras.saving.register_keras_serializable(package=_PACKAGE)
class IoUScore(_ConfusionMetric):
    """Hard intersection over union (Jaccard) per class over the stream, then the mean.

    Formula::

        IoU_c  = TP_c / (TP_c + FP_c + FN_c)     (1 when the class is empty in both)
        result = mean over included classes, or IoU_{class_id}

    Unlike ``keras.metrics.MeanIoU``, an empty class scores 1 instead of leaving the mean.

    {args}
    Shape:
        As ``DiceScore``.

    Raises:
        ValueError: as ``DiceScore``.

    Example:
        >>> IoUScore(4, from_logits=True, class_id=2)

    Reference:
        Jaccard, "The distribution of the flora in the alpine zone", 1912.
    """

    def __init__(self, classes: int, *, from_logits: bool = False,
                 include_background: bool = False, class_id: int | None = None,
                 threshold: float | None = None, multilabel: bool = False,
                 name: str = "iou", dtype: Any = None) -> None:
        super().__init__(classes, from_logits=from_logits,
                         include_background=include_background, class_id=class_id,
                         threshold=threshold, multilabel=multilabel, name=name, dtype=dtype)

    def per_class(self) -> Any:
        return _safe_ratio(self.tp, self.tp + self.fp + self.fn, self._empty())


@_doc
@keras.saving.register_keras_serializable(package=_PACKAGE)
class Precision(_ConfusionMetric):
    """Hard precision per class over the stream, then the (macro) mean.

    Formula::

        P_c = TP_c / (TP_c + FP_c)   (1 when the class is empty in both; 0 when nothing was
                                      predicted but the class is present)

    {args}
    Shape:
        As ``DiceScore``.

    Raises:
        ValueError: as ``DiceScore``.

    Example:
        >>> Precision(1, from_logits=True)
    """

    def __init__(self, classes: int, *, from_logits: bool = False,
                 include_background: bool = False, class_id: int | None = None,
                 threshold: float | None = None, multilabel: bool = False,
                 name: str = "precision", dtype: Any = None) -> None:
        super().__init__(classes, from_logits=from_logits,
                         include_background=include_background, class_id=class_id,
                         threshold=threshold, multilabel=multilabel, name=name, dtype=dtype)

    def per_class(self) -> Any:
        return _safe_ratio(self.tp, self.tp + self.fp, self._empty())


@_doc
@keras.saving.register_keras_serializable(package=_PACKAGE)
class Recall(_ConfusionMetric):
    """Hard recall (sensitivity) per class over the stream, then the (macro) mean.

    Formula::

        R_c = TP_c / (TP_c + FN_c)   (1 when the class is empty in both; 0 when the class
                                      was predicted but never present)

    {args}
    Shape:
        As ``DiceScore``.

    Raises:
        ValueError: as ``DiceScore``.

    Example:
        >>> Recall(4, from_logits=True)
    """

    def __init__(self, classes: int, *, from_logits: bool = False,
                 include_background: bool = False, class_id: int | None = None,
                 threshold: float | None = None, multilabel: bool = False,
                 name: str = "recall", dtype: Any = None) -> None:
        super().__init__(classes, from_logits=from_logits,
                         include_background=include_background, class_id=class_id,
                         threshold=threshold, multilabel=multilabel, name=name, dtype=dtype)

    def per_class(self) -> Any:
        return _safe_ratio(self.tp, self.tp + self.fn, self._empty())


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Accuracy(keras.metrics.Metric):
    """Fraction of correct hard decisions over the stream (pixels, or images for (N, C)).

    Formula::

        accuracy = sum(w * [argmax(y_pred) == label]) / sum(w)           (classes > 1)
                   sum(w * [(p > threshold) == y_true]) / sum(w)         (one channel, or
                   every channel of a multilabel head; p = sigmoid(y_pred) for logits)

    Args:
        classes: output channels (1 = binary). Required.
        from_logits: ``y_pred`` are logits (a sigmoid before the threshold). Default False.
        threshold: probability in (0, 1) above which a one-channel or multilabel output is
            positive. Default None: 0.5.
        multilabel: C > 1 independent binary channels. Default False.
        name: Default "accuracy". dtype: as ``keras.metrics.Metric``.

    Shape:
        y_pred (N, ..., classes); y_true labels, one-hot, or a binary mask.

    Raises:
        ValueError: an invalid argument; y_pred channels != classes; incompatible y_true.

    Example:
        >>> Accuracy(3, from_logits=True).update_state(labels, logits)   # labels (N,)
    """

    def __init__(self, classes: int, *, from_logits: bool = False,
                 threshold: float | None = None, multilabel: bool = False,
                 name: str = "accuracy", dtype: Any = None) -> None:
        super().__init__(name=name, dtype=dtype)
        owner = type(self).__name__
        self.classes = _check_int(owner, "classes", classes, low=1)
        self.from_logits = _check_bool(owner, "from_logits", from_logits)
        self.threshold = _check_threshold(owner, threshold)
        self.multilabel = _check_bool(owner, "multilabel", multilabel)
        self.correct = self.add_variable((), "zeros", dtype="float32", name="correct")
        self.total = self.add_variable((), "zeros", dtype="float32", name="total")

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        _check_classes(self, y_pred)
        g, h = _hard(y_true, y_pred, from_logits=self.from_logits, threshold=self.threshold,
                     multilabel=self.multilabel, owner=self.name)
        if self.classes == 1 or self.multilabel:
            right = ops.cast(ops.equal(g, h), "float32")          # every channel
        else:
            right = ops.sum(g * h, axis=-1, keepdims=True)        # one decision per pixel
        w = _pixel_weights(sample_weight, ops.shape(h)[:-1], len(h.shape) - 1)
        w = ops.ones_like(right) if w is None else ops.expand_dims(w, -1) * ops.ones_like(right)
        self.correct.assign_add(ops.sum(right * w))
        self.total.assign_add(ops.sum(w))

    def result(self) -> Any:
        return ops.divide_no_nan(self.correct, self.total)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "classes": self.classes,
                "from_logits": self.from_logits, "threshold": self.threshold,
                "multilabel": self.multilabel}


def _check_classes(metric: Any, y_pred: Any) -> None:
    channels = _channels(y_pred, metric.name)
    if channels != metric.classes:
        raise ValueError(f"{metric.name}: the metric was built for classes={metric.classes}"
                         f" but y_pred has {channels} channels (shape {tuple(y_pred.shape)}).")


@keras.saving.register_keras_serializable(package=_PACKAGE)
class TopKAccuracy(keras.metrics.Metric):
    """Fraction of samples (or pixels) whose true class is among the k highest scores.

    Formula: correct when fewer than k classes score strictly higher than the true class
    (ties count in the model's favour), weighted by the sample weights, over the stream.

    Args:
        classes: output channels, > 1. Required.
        k: how many top classes count, 1 <= k < classes. Default 5.
        from_logits: accepted for a uniform interface; ranking is the same on logits and
            probabilities. Default False.
        name: Default "top_k_accuracy". dtype: as ``keras.metrics.Metric``.

    Shape:
        y_pred (N, ..., classes); y_true labels or one-hot.

    Raises:
        ValueError: classes < 2, k outside [1, classes), y_pred channels != classes.

    Example:
        >>> TopKAccuracy(10, k=3, from_logits=True)
    """

    def __init__(self, classes: int, *, k: int = 5, from_logits: bool = False,
                 name: str = "top_k_accuracy", dtype: Any = None) -> None:
        super().__init__(name=name, dtype=dtype)
        owner = type(self).__name__
        self.classes = _check_int(owner, "classes", classes, low=2)
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < self.classes:
            raise _fail(owner, "k", k, f"an integer in [1, {self.classes}) for classes="
                        f"{self.classes} (k >= classes always scores 1)")
        self.k = k
        self.from_logits = _check_bool(owner, "from_logits", from_logits)
        self.correct = self.add_variable((), "zeros", dtype="float32", name="correct")
        self.total = self.add_variable((), "zeros", dtype="float32", name="total")

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        _check_classes(self, y_pred)
        g = _targets(y_true, y_pred, multilabel=False, owner=self.name)
        g = ops.one_hot(ops.argmax(g, axis=-1), self.classes, dtype="float32")
        scores = ops.cast(y_pred, "float32")
        true_score = ops.sum(scores * g, axis=-1, keepdims=True)
        higher = ops.sum(ops.cast(scores > true_score, "float32"), axis=-1)
        right = ops.cast(higher < self.k, "float32")
        w = _pixel_weights(sample_weight, ops.shape(right), len(right.shape))
        w = ops.ones_like(right) if w is None else w
        self.correct.assign_add(ops.sum(right * w))
        self.total.assign_add(ops.sum(w))

    def result(self) -> Any:
        return ops.divide_no_nan(self.correct, self.total)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "classes": self.classes, "k": self.k,
                "from_logits": self.from_logits}


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


@keras.saving.register_keras_serializable(package=_PACKAGE)
class BoundaryF1(_ClassMetric):
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
        self.tolerance = _check_int(type(self).__name__, "tolerance", tolerance, low=0)
        self.outlines = _check_bool(type(self).__name__, "outlines", outlines)
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
        w = _pixel_weights(sample_weight, ops.shape(h)[:-1], len(h.shape) - 1)
        w = 1.0 if w is None else ops.expand_dims(w, -1)
        axes = tuple(range(len(h.shape) - 1))
        self.matched_pred.assign_add(ops.sum(w * b_h * _dilate(b_g, self.tolerance), axis=axes))
        self.total_pred.assign_add(ops.sum(w * b_h, axis=axes))
        self.matched_true.assign_add(ops.sum(w * b_g * _dilate(b_h, self.tolerance), axis=axes))
        self.total_true.assign_add(ops.sum(w * b_g, axis=axes))

    def per_class(self) -> Any:
        """BF score of every channel, shape (classes,)."""
        empty = (self.total_pred + self.total_true) == 0
        precision = _safe_ratio(self.matched_pred, self.total_pred, empty)
        recall = _safe_ratio(self.matched_true, self.total_true, empty)
        return _safe_ratio(2.0 * precision * recall, precision + recall, empty)

    def result(self) -> Any:
        return self._select(self.per_class())

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "tolerance": self.tolerance, "outlines": self.outlines}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class LossTerm(keras.metrics.Mean):
    """Running mean of one loss term, to log each term of a head's loss on its own.

    Formula: the mean over batches of ``loss(y_true, y_pred, sample_weight)`` (each batch's
    reduced loss counts once, as Keras logs its losses).

    Args:
        loss: the ``keras.losses.Loss`` to follow.
        name: log name, e.g. "dice" (Keras logs "<head>_dice").
        dtype: as ``keras.metrics.Metric``.

    Raises:
        ValueError: ``loss`` is not a ``keras.losses.Loss``.

    Example:
        >>> LossTerm(multiseg.losses.Dice(from_logits=True), name="loss_dice")
    """

    def __init__(self, loss: keras.losses.Loss, name: str, dtype: Any = None) -> None:
        if not isinstance(loss, keras.losses.Loss):
            raise _fail("LossTerm", "loss", loss, "a keras.losses.Loss")
        super().__init__(name=name, dtype=dtype)
        self.loss = loss

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        super().update_state(self.loss(y_true, y_pred, sample_weight))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "loss": keras.saving.serialize_keras_object(self.loss)}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> LossTerm:
        config = dict(config)
        loss = keras.saving.deserialize_keras_object(config.pop("loss"))
        return cls(loss, **config)


METRICS: dict[str, type] = {
    "dice": DiceScore,
    "iou": IoUScore,
    "jaccard": IoUScore,
    "accuracy": Accuracy,
    "top_k_accuracy": TopKAccuracy,
    "precision": Precision,
    "recall": Recall,
    "boundary_f1": BoundaryF1,
}

# Constructor arguments that the head decides, never the recipe.
_HEAD_DECIDED = ("classes", "from_logits", "outlines")
# Constructor arguments that are not recipe options.
_NOT_OPTIONS = (*_HEAD_DECIDED, "name", "dtype")


def metric_options(name: str) -> dict[str, object]:
    """The options a recipe may give metric ``name``, with their defaults.

    Raises:
        ValueError: unknown metric name (with a suggestion).

    Example:
        >>> metric_options("boundary_f1")["tolerance"]
        2
    """
    return _signature_options(_lookup(name, METRICS, "metric"), _NOT_OPTIONS)


def build_metric(entry: Any, *, classes: int, from_logits: bool,
                 outlines: bool = False) -> keras.metrics.Metric:
    """Build a metric from a recipe entry for a head with ``classes`` output channels.

    Args:
        entry: a metric name (``"dice"``) or a mapping ``{"name": "dice", **options}``.
        classes: the head's output channels (1 = binary).
        from_logits: whether the head outputs logits.
        outlines: whether the head's target is an outline map (a boundary head); passed to
            the metrics that take it (``boundary_f1``). Default False.

    Returns:
        The metric, named after the entry ("dice"; "dice_class2" with ``class_id: 2``) so that
        Keras logs "<head>_dice".

    Raises:
        ValueError: unknown name (with a suggestion), unknown or invalid option, or an entry
            setting ``from_logits``/``classes``/``outlines`` (the head decides them).

    Example:
        >>> build_metric({"name": "iou", "class_id": 1}, classes=3, from_logits=True)
    """
    if isinstance(entry, str):
        entry = {"name": entry}
    if not isinstance(entry, Mapping) or "name" not in entry:
        raise ValueError(f"a metric entry is a name or a mapping {{name: ..., options...}};"
                         f" got {entry!r}. Expected names: {', '.join(METRICS)}.")
    options = dict(entry)
    name = options.pop("name")
    cls = _lookup(name, METRICS, "metric")
    allowed = metric_options(name)
    for key in options:
        if key in _HEAD_DECIDED:
            raise ValueError(f"metric '{name}': option '{key}' is decided by the head, not by"
                             " the entry; remove it.")
        if key not in allowed:
            close = difflib.get_close_matches(key, list(allowed), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ValueError(f"unknown option '{key}' of metric '{name}'{hint}. Options:"
                             f" {', '.join(allowed) or 'none'}.")
    label = name if options.get("class_id") is None else f"{name}_class{options['class_id']}"
    if "outlines" in inspect.signature(cls.__init__).parameters:
        options["outlines"] = outlines
    return cls(classes, from_logits=from_logits, name=label, **options)
