"""Per-class metrics from true positive, false positive and false negative counts."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from multiseg.metrics.base import ClassMetric, pixel_weights, safe_ratio
from multiseg.tensors import PACKAGE


class _ConfusionMetric(ClassMetric):
    """Accumulates per-class true positive, false positive and false negative counts."""

    def add_counts(self) -> None:
        # float32 counts: exact up to 2^24 per batch, relative rounding ~1e-7 beyond.
        self.tp = self.add_variable((self.classes,), "zeros", dtype="float32", name="tp")
        self.fp = self.add_variable((self.classes,), "zeros", dtype="float32", name="fp")
        self.fn = self.add_variable((self.classes,), "zeros", dtype="float32", name="fn")

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        g, h = self._hard(y_true, y_pred)
        w = pixel_weights(sample_weight, ops.shape(h)[:-1], len(h.shape) - 1)
        if w is not None:
            w = ops.expand_dims(w, -1)
            g_w, h_w = g * w, h * w
        else:
            g_w, h_w = g, h
        axes = tuple(range(len(h.shape) - 1))
        # FP = sum(h w) - TP and FN = sum(g w) - TP: one product over the batch, not three;
        # clipped at 0 against float rounding of weighted sums.
        tp = ops.sum(h_w * g, axis=axes)
        self.tp.assign_add(tp)
        self.fp.assign_add(ops.maximum(ops.sum(h_w, axis=axes) - tp, 0.0))
        self.fn.assign_add(ops.maximum(ops.sum(g_w, axis=axes) - tp, 0.0))

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
        name: Keras log name; default the metric's recipe name ("dice", "iou"...). dtype:
            as ``keras.metrics.Metric``.
"""


def _doc(cls: type) -> type:
    cls.__doc__ = (cls.__doc__ or "").replace("    {args}\n", _CLASS_ARGS_DOC.strip("\n") + "\n")
    return cls


@_doc
@keras.saving.register_keras_serializable(package=PACKAGE)
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

    default_name = "dice"

    def per_class(self) -> Any:
        return safe_ratio(2.0 * self.tp, 2.0 * self.tp + self.fp + self.fn, self._empty())


@_doc
@keras.saving.register_keras_serializable(package=PACKAGE)
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

    default_name = "iou"

    def per_class(self) -> Any:
        return safe_ratio(self.tp, self.tp + self.fp + self.fn, self._empty())


@_doc
@keras.saving.register_keras_serializable(package=PACKAGE)
class Precision(_ConfusionMetric):
    """Hard precision per class over the stream, then the (macro) mean.

    Formula::

        P_c = TP_c / (TP_c + FP_c)   (1 when the class is empty in both; 0 when nothing was
                                      predicted but the class is present)

    {args}
    Shape, Raises: as ``DiceScore``.

    Example:
        >>> Precision(1, from_logits=True)
    """

    default_name = "precision"

    def per_class(self) -> Any:
        return safe_ratio(self.tp, self.tp + self.fp, self._empty())


@_doc
@keras.saving.register_keras_serializable(package=PACKAGE)
class Recall(_ConfusionMetric):
    """Hard recall (sensitivity) per class over the stream, then the (macro) mean.

    Formula::

        R_c = TP_c / (TP_c + FN_c)   (1 when the class is empty in both; 0 when the class
                                      was predicted but never present)

    {args}
    Shape, Raises: as ``DiceScore``.

    Example:
        >>> Recall(4, from_logits=True)
    """

    default_name = "recall"

    def per_class(self) -> Any:
        return safe_ratio(self.tp, self.tp + self.fn, self._empty())

