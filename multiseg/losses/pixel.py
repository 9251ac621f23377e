"""Pixel losses: one value per pixel (focal, crossentropy, weighted crossentropy)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras

from multiseg.losses.base import SegmentationLoss
from multiseg.losses.checks import check_alpha, check_weights
from multiseg.losses.functional import crossentropy, focal, weighted_crossentropy
from multiseg.tensors import PACKAGE, check_number, fail


@keras.saving.register_keras_serializable(package=PACKAGE)
class Focal(SegmentationLoss):
    """Focal loss: crossentropy scaled down on well-classified pixels, binary or multi-class.

    Formula, per pixel (p the probability of the channel, g the target)::

        binary (one channel, or each channel with multilabel=True):
            FL = -[a * g * (1 - p)^gamma * log(p) + (1 - a) * (1 - g) * p^gamma * log(1 - p)]
            a = alpha (weight of positives), or the two terms weigh 1 when alpha is None
            multilabel: the mean over channels
        multi-class (softmax):
            FL = -sum_c a_c * g_c * (1 - p_c)^gamma * log(p_c),  a_c = alpha[c] or 1

    ``call`` returns one value per pixel; Keras then takes the mean over pixels and samples.
    Conventions: Lin's binary alpha (positives alpha, negatives 1 - alpha); a multi-class head
    needs a list of per-class weights (Keras applies a scalar alpha to every class, MONAI gives
    class 0 ``1 - alpha``; a scalar is refused here as ambiguous). The multi-class sum over
    classes is not divided by C (MONAI's mean is). gamma = 0 and alpha None is crossentropy.

    Args:
        from_logits: ``y_pred`` are logits (log-sigmoid/log-softmax, stable). Default False.
        gamma: focusing exponent, >= 0. Default 2.0.
        alpha: None (default, no balancing); a number in [0, 1] for binary or multilabel
            heads; a list of C non-negative weights for multi-class (or multilabel) heads.
        multilabel: C > 1 channels are independent sigmoid outputs. Default False.
        name, reduction, dtype: as ``keras.losses.Loss``.

    Shape:
        y_pred (N, ..., C); y_true labels or one-hot as ``Dice``. ``call`` returns (N, ...).

    Raises:
        ValueError: an invalid argument, a scalar alpha on a multi-class head, a list alpha on
            a binary head, or ``y_true`` incompatible with ``y_pred``.

    Example:
        >>> Focal(gamma=2.0, alpha=0.25, from_logits=True)(mask, logits)

    Reference:
        Lin et al., "Focal loss for dense object detection", ICCV 2017.
    """

    _per_pixel = True

    def __init__(self, *, from_logits: bool = False, gamma: float = 2.0,
                 alpha: float | Sequence[float] | None = None, multilabel: bool = False,
                 name: str | None = "focal", reduction: str | None = "sum_over_batch_size",
                 dtype: Any = None) -> None:
        super().__init__(from_logits=from_logits, multilabel=multilabel, name=name,
                         reduction=reduction, dtype=dtype)
        owner = type(self).__name__
        self.gamma = check_number(owner, "gamma", gamma, low=0.0)
        self.alpha = check_alpha(owner, alpha)

    def _options(self) -> dict[str, Any]:
        return {"gamma": self.gamma, "alpha": self.alpha}

    def call(self, y_true: Any, y_pred: Any) -> Any:
        return focal(y_true, y_pred, from_logits=self.from_logits, multilabel=self.multilabel,
                     **self._options())


@keras.saving.register_keras_serializable(package=PACKAGE)
class Crossentropy(SegmentationLoss):
    """Binary (one channel) or categorical (C > 1 channels) crossentropy per pixel.

    Formula, per pixel, with smoothed targets g'::

        binary / multilabel:  g' = g * (1 - ls) + ls / 2
                              CE = -[g' log p + (1 - g') log(1 - p)]  (mean over channels)
        multi-class:          g' = g * (1 - ls) + ls / C
                              CE = -sum_c g'_c log p_c
        class weights:        CE * w[true class]   (binary: w = [background, foreground];
                              multilabel: CE_c * w_c per channel)

    Keras then takes the plain mean over pixels and samples (PyTorch's weighted mean divides
    by the sum of the weights instead; here the weights scale the loss, like Keras's
    ``class_weight``). Logits go through log-sigmoid/log-softmax (stable); probabilities are
    clipped to [1e-7, 1 - 1e-7] before the log, as in Keras.

    Args:
        from_logits: ``y_pred`` are logits. Default False.
        label_smoothing: in [0, 1). Default 0.
        class_weights: None (default), or non-negative weights: [background, foreground] for a
            binary head, one per channel otherwise.
        multilabel: C > 1 channels are independent sigmoid outputs. Default False.
        name, reduction, dtype: as ``keras.losses.Loss``.

    Shape:
        y_pred (N, ..., C) or image-level (N, C); y_true labels (N, ...), (N, ..., 1) or
        one-hot (N, ..., C). ``call`` returns (N, ...).

    Raises:
        ValueError: an invalid argument, or ``y_true`` incompatible with ``y_pred``.

    Example:
        >>> Crossentropy(from_logits=True, label_smoothing=0.1)(labels, logits)

    Reference:
        Szegedy et al., "Rethinking the Inception architecture" (label smoothing), CVPR 2016.
    """

    _per_pixel = True

    def __init__(self, *, from_logits: bool = False, label_smoothing: float = 0.0,
                 class_weights: Sequence[float] | None = None, multilabel: bool = False,
                 name: str | None = "crossentropy",
                 reduction: str | None = "sum_over_batch_size", dtype: Any = None) -> None:
        super().__init__(from_logits=from_logits, multilabel=multilabel, name=name,
                         reduction=reduction, dtype=dtype)
        owner = type(self).__name__
        self.label_smoothing = check_number(owner, "label_smoothing", label_smoothing,
                                             low=0.0, high=1.0, high_open=True)
        self.class_weights = check_weights(owner, "class_weights", class_weights)

    def _options(self) -> dict[str, Any]:
        return {"label_smoothing": self.label_smoothing, "class_weights": self.class_weights}

    def call(self, y_true: Any, y_pred: Any) -> Any:
        return crossentropy(y_true, y_pred, from_logits=self.from_logits,
                            multilabel=self.multilabel, **self._options())


@keras.saving.register_keras_serializable(package=PACKAGE)
class WeightedCrossentropy(SegmentationLoss):
    """Binary crossentropy with up-weighted positives, for thin structures such as boundaries.

    Boundaries cover a few percent of the pixels, so plain crossentropy is minimised by
    predicting "no boundary" almost everywhere. This loss uses HED's class balancing (Xie & Tu
    2015): positives and negatives each contribute half of the loss of an image, whatever their
    pixel counts. It was chosen over a distance-weighted BCE because it needs nothing beyond
    the mask (no distance transform in the data pipeline), has no tuning knob by default, is
    defined for empty masks, and works unchanged on every backend. Formula, per pixel::

        "balanced":  f = fraction of positive pixels of the target, per sample and channel
                     w_pos = 0.5 / f,  w_neg = 0.5 / (1 - f)   (weights average to 1)
        float:       w_pos = pos_weight,  w_neg = 1   (TensorFlow's weighted_cross_entropy)
        WCE = -[w_pos * g * log(p) + w_neg * (1 - g) * log(1 - p)]   (mean over channels)

    An image without positives has only negatives, weighted 0.5 (no division by zero: f is
    clipped at 1e-7).

    Args:
        from_logits: ``y_pred`` are logits. Default False.
        pos_weight: "balanced" (default) or a positive number.
        multilabel: required for C > 1 channels (each a binary target). Default False.
        name, reduction, dtype: as ``keras.losses.Loss``.

    Shape:
        y_pred (N, ..., 1) (or (N, ..., C) with multilabel); y_true the same or without the
        last axis for one channel. ``call`` returns (N, ...).

    Raises:
        ValueError: an invalid argument, a multi-class y_pred without ``multilabel``, or
            ``y_true`` incompatible with ``y_pred``.

    Example:
        >>> WeightedCrossentropy(from_logits=True)(boundary_mask, logits)

    Reference:
        Xie & Tu, "Holistically-nested edge detection", ICCV 2015.
    """

    _per_pixel = True

    def __init__(self, *, from_logits: bool = False, pos_weight: float | str = "balanced",
                 multilabel: bool = False, name: str | None = "weighted_crossentropy",
                 reduction: str | None = "sum_over_batch_size", dtype: Any = None) -> None:
        super().__init__(from_logits=from_logits, multilabel=multilabel, name=name,
                         reduction=reduction, dtype=dtype)
        owner = type(self).__name__
        if isinstance(pos_weight, str):
            if pos_weight != "balanced":
                raise fail(owner, "pos_weight", pos_weight, "'balanced' or a positive number")
            self.pos_weight: float | str = pos_weight
        else:
            self.pos_weight = check_number(owner, "pos_weight", pos_weight, low=0.0,
                                            low_open=True)

    def _options(self) -> dict[str, Any]:
        return {"pos_weight": self.pos_weight}

    def call(self, y_true: Any, y_pred: Any) -> Any:
        return weighted_crossentropy(y_true, y_pred, from_logits=self.from_logits,
                                     multilabel=self.multilabel, **self._options())
