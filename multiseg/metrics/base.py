"""What the metrics share: hard decisions, pixel weights, safe ratios, the per-class base."""

from __future__ import annotations

import math
from typing import Any

import keras
from keras import ops

from multiseg import tensors
from multiseg.tensors import check_bool, check_number, fail

# Probability above which a one-channel or multilabel output counts as positive.
_DEFAULT_THRESHOLD = 0.5
# Channels up to which argmax_one_hot compares channel by channel.
_CHAIN_CHANNELS = 8


def check_int(owner: str, arg: str, value: Any, *, low: int, high: int | None = None) -> int:
    """``value`` if it is an integer >= ``low`` (and < ``high``); else a ValueError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (
            high is not None and value >= high):
        rule = f"an integer >= {low}" + ("" if high is None else f" and < {high}")
        raise fail(owner, arg, value, rule)
    return int(value)


def pixel_weights(sample_weight: Any, grid_shape: tuple[Any, ...], rank: int) -> Any:
    """Sample weights broadcast to the pixel grid (y_pred without its channel axis), float32."""
    if sample_weight is None:
        return None
    w = ops.cast(ops.convert_to_tensor(sample_weight), "float32")
    if len(w.shape) == rank + 1 and w.shape[-1] == 1:
        w = ops.squeeze(w, -1)
    while len(w.shape) < rank:
        w = ops.expand_dims(w, -1)
    return ops.broadcast_to(w, grid_shape)


def check_threshold(owner: str, threshold: Any) -> float | None:
    """None, or a probability in (0, 1): the cut of a one-channel or multilabel output."""
    if threshold is None:
        return None
    value = check_number(owner, "threshold", threshold)
    if not 0.0 < value < 1.0:
        raise fail(owner, "threshold", threshold, "a probability in (0, 1) (a logit goes"
                   " through its sigmoid before the cut)")
    return value


def hard(y_true: Any, y_pred: Any, *, from_logits: bool, threshold: float | None,
         multilabel: bool, owner: str) -> tuple[Any, Any]:
    """Hard one-hot (or binary) target and prediction, float32, shaped like ``y_pred``.

    One channel or multilabel: positive where the probability exceeds ``threshold`` (None:
    0.5); for logits that is ``sigmoid(z) > t``, computed as ``z > log(t / (1 - t))``, the
    same decision without sigmoid rounding to 1 for large z.
    """
    g = tensors.targets(y_true, y_pred, multilabel=multilabel, owner=owner)
    y_pred = ops.cast(y_pred, "float32")
    channels = y_pred.shape[-1]
    if channels == 1 or multilabel:
        cut = _DEFAULT_THRESHOLD if threshold is None else threshold
        if from_logits:
            cut = math.log(cut / (1.0 - cut))
        return ops.cast(g > 0.5, "float32"), ops.cast(y_pred > cut, "float32")
    # Integer labels arrive one-hot already; a one-hot target may be soft (label smoothing).
    labels = len(y_true.shape) < len(y_pred.shape) or y_true.shape[-1] == 1
    return (g if labels else argmax_one_hot(g)), argmax_one_hot(y_pred)


def argmax_one_hot(x: Any) -> Any:
    """``one_hot(argmax(x, -1))``, float32: the first of the largest channels. Up to
    ``_CHAIN_CHANNELS`` channels it is a chain of comparisons, which TensorFlow runs twice as
    fast as its ArgMax over a short last axis on a CPU (a 16x64x64x4 batch: 0.8 ms against
    1.6 ms); XLA fuses either."""
    channels = x.shape[-1]
    if channels > _CHAIN_CHANNELS:
        return ops.one_hot(ops.argmax(x, axis=-1), channels, dtype="float32")
    best = x[..., 0]
    index = ops.zeros_like(best, dtype="int32")
    for c in range(1, channels):
        better = x[..., c] > best
        best = ops.where(better, x[..., c], best)
        index = ops.where(better, c, index)
    return ops.one_hot(index, channels, dtype="float32")


def safe_ratio(num: Any, den: Any, empty: Any) -> Any:
    """num / den; 1 where the class is empty in target and prediction; 0 where den is 0."""
    # Metric variables are not arrays on JAX: convert before *_like ops.
    num, den = ops.convert_to_tensor(num), ops.convert_to_tensor(den)
    zero = den == 0
    safe = ops.where(zero, ops.ones_like(den), den)
    value = ops.where(zero, ops.zeros_like(den), num / safe)
    return ops.where(empty, ops.ones_like(den), value)


class ClassMetric(keras.metrics.Metric):
    """Base of the per-class metrics: options, input checks, class selection and config.

    A subclass sets ``default_name`` (its log name when ``name`` is None) and creates its
    count variables in ``add_counts``, so that the per-class options are declared once, here.
    """

    default_name = ""

    def __init__(self, classes: int, *, from_logits: bool = False,
                 include_background: bool = False, class_id: int | None = None,
                 threshold: float | None = None, multilabel: bool = False,
                 name: str | None = None, dtype: Any = None) -> None:
        super().__init__(name=name or self.default_name, dtype=dtype)
        owner = type(self).__name__
        self.classes = check_int(owner, "classes", classes, low=1)
        self.from_logits = check_bool(owner, "from_logits", from_logits)
        self.include_background = check_bool(owner, "include_background", include_background)
        self.class_id = (None if class_id is None
                         else check_int(owner, "class_id", class_id, low=0, high=self.classes))
        self.threshold = check_threshold(owner, threshold)
        self.multilabel = check_bool(owner, "multilabel", multilabel)
        self.add_counts()

    def add_counts(self) -> None:
        """Creates the metric's count variables (after the options are set)."""

    def _hard(self, y_true: Any, y_pred: Any) -> tuple[Any, Any]:
        check_classes(self, y_pred)
        return hard(y_true, y_pred, from_logits=self.from_logits, threshold=self.threshold,
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


def check_classes(metric: Any, y_pred: Any) -> None:
    """A ValueError unless ``y_pred`` has the ``metric.classes`` channels it was built for."""
    channels = tensors.channels(y_pred, metric.name)
    if channels != metric.classes:
        raise ValueError(f"{metric.name}: the metric was built for classes={metric.classes}"
                         f" but y_pred has {channels} channels (shape {tuple(y_pred.shape)}).")
