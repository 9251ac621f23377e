"""Accuracy of hard decisions, and top-k accuracy."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from multiseg import tensors
from multiseg.metrics.base import check_classes, check_int, check_threshold, hard, pixel_weights
from multiseg.tensors import PACKAGE, check_bool, fail


@keras.saving.register_keras_serializable(package=PACKAGE)
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
        self.classes = check_int(owner, "classes", classes, low=1)
        self.from_logits = check_bool(owner, "from_logits", from_logits)
        self.threshold = check_threshold(owner, threshold)
        self.multilabel = check_bool(owner, "multilabel", multilabel)
        self.correct = self.add_variable((), "zeros", dtype="float32", name="correct")
        self.total = self.add_variable((), "zeros", dtype="float32", name="total")

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        check_classes(self, y_pred)
        g, h = hard(y_true, y_pred, from_logits=self.from_logits, threshold=self.threshold,
                     multilabel=self.multilabel, owner=self.name)
        if self.classes == 1 or self.multilabel:
            right = ops.cast(ops.equal(g, h), "float32")          # every channel
        else:
            right = ops.sum(g * h, axis=-1, keepdims=True)        # one decision per pixel
        w = pixel_weights(sample_weight, ops.shape(h)[:-1], len(h.shape) - 1)
        w = ops.ones_like(right) if w is None else ops.expand_dims(w, -1) * ops.ones_like(right)
        self.correct.assign_add(ops.sum(right * w))
        self.total.assign_add(ops.sum(w))

    def result(self) -> Any:
        return ops.divide_no_nan(self.correct, self.total)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "classes": self.classes,
                "from_logits": self.from_logits, "threshold": self.threshold,
                "multilabel": self.multilabel}



@keras.saving.register_keras_serializable(package=PACKAGE)
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
        self.classes = check_int(owner, "classes", classes, low=2)
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < self.classes:
            raise fail(owner, "k", k, f"an integer in [1, {self.classes}) for classes="
                        f"{self.classes} (k >= classes always scores 1)")
        self.k = k
        self.from_logits = check_bool(owner, "from_logits", from_logits)
        self.correct = self.add_variable((), "zeros", dtype="float32", name="correct")
        self.total = self.add_variable((), "zeros", dtype="float32", name="total")

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        check_classes(self, y_pred)
        g = tensors.targets(y_true, y_pred, multilabel=False, owner=self.name)
        g = ops.one_hot(ops.argmax(g, axis=-1), self.classes, dtype="float32")
        scores = ops.cast(y_pred, "float32")
        true_score = ops.sum(scores * g, axis=-1, keepdims=True)
        higher = ops.sum(ops.cast(scores > true_score, "float32"), axis=-1)
        right = ops.cast(higher < self.k, "float32")
        w = pixel_weights(sample_weight, ops.shape(right), len(right.shape))
        w = ops.ones_like(right) if w is None else w
        self.correct.assign_add(ops.sum(right * w))
        self.total.assign_add(ops.sum(w))

    def result(self) -> Any:
        return ops.divide_no_nan(self.correct, self.total)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "classes": self.classes, "k": self.k,
                "from_logits": self.from_logits}
