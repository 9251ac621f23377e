"""The losses as pure functions of ``(y_true, y_pred)``, and the tensor math they share.

Each function returns unreduced values: one per sample for region losses, ``(N,)``, one per
pixel for pixel losses, ``y_pred.shape[:-1]``. The ``Loss`` classes (``multiseg.losses.region``
and ``.pixel``) wrap them; tests use them as oracles. Conventions: ``multiseg.losses``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from keras import ops

from multiseg import tensors

# Probabilities are clipped to [_EPS, 1 - _EPS] before a log, as keras does.
_EPS = 1e-7


def _activate(y_pred: Any, *, from_logits: bool, multilabel: bool) -> Any:
    """Probabilities in float32: sigmoid for one channel or multilabel, softmax otherwise."""
    y_pred = ops.cast(y_pred, "float32")
    if not from_logits:
        return y_pred
    if y_pred.shape[-1] == 1 or multilabel:
        return ops.sigmoid(y_pred)
    return ops.softmax(y_pred, axis=-1)


def _log_probs(y_pred: Any, *, from_logits: bool, multilabel: bool) -> tuple[Any, Any]:
    """``(log p, log(1 - p))`` in float32, from logits stably or from clipped probabilities.

    For a softmax task the second item is None (multi-class losses only need log p).
    """
    y_pred = ops.cast(y_pred, "float32")
    sigmoid = y_pred.shape[-1] == 1 or multilabel
    if from_logits:
        if sigmoid:
            return ops.log_sigmoid(y_pred), ops.log_sigmoid(-y_pred)
        return ops.log_softmax(y_pred, axis=-1), None
    p = _clip(y_pred, _EPS, 1.0 - _EPS)
    return ops.log(p), (ops.log(1.0 - p) if sigmoid else None)


def _sum_axes(rank: int, per_sample: bool) -> tuple[int, ...]:
    spatial = tuple(range(1, rank - 1))
    return spatial if per_sample else (0,) + spatial


def _class_weights(channels: int, class_weights: tuple[float, ...] | None,
                   include_background: bool, owner: str) -> Any:
    """Weights over channels for the class mean; background (channel 0) zeroed when excluded."""
    if class_weights is None:
        weights = [1.0] * channels
    elif len(class_weights) != channels:
        raise ValueError(f"{owner}: class_weights has {len(class_weights)} entries but y_pred"
                         f" has {channels} channels; give one weight per channel.")
    else:
        weights = list(class_weights)
    if channels > 1 and not include_background:
        weights[0] = 0.0
    if not any(w > 0 for w in weights):
        raise ValueError(f"{owner}: every class weight is 0 (include_background="
                         f"{include_background}, class_weights={class_weights}).")
    return ops.convert_to_tensor(np.asarray(weights, dtype="float32"))


def _class_mean(values: Any, weights: Any, present: Any = None, *, fill: float) -> Any:
    """Weighted mean over the class axis.

    With ``present`` (booleans shaped like ``values``: the class occurs in the target), absent
    classes are left out of the mean; where no weighted class is present the result is
    ``fill`` (the value of a perfect prediction: the sample has nothing to segment).
    """
    if present is None:
        return ops.sum(values * weights, axis=-1) / ops.sum(weights)
    w = weights * ops.cast(present, "float32")
    total = ops.sum(w, axis=-1)
    some = total > 0
    mean = ops.sum(values * w, axis=-1) / ops.where(some, total, ops.ones_like(total))
    # `0 * sum`: a NaN from the model still reaches the loss of a sample with nothing present
    # (and `values * w` keeps a NaN of a left-out class: 0 * NaN is NaN).
    return ops.where(some, mean, fill + 0.0 * ops.sum(values * weights, axis=-1))


def _ratio(num: Any, den: Any) -> Any:
    # den == 0 only with zero smoothing on a class empty in target and prediction: define 1.
    # Test `den == 0`, not `den > 0`: a NaN from the model must reach the loss value.
    empty = den == 0
    safe = ops.where(empty, ops.ones_like(den), den)
    return ops.where(empty, ops.ones_like(den), num / safe)


def _per_sample(value: Any, y_pred: Any, per_sample: bool) -> Any:
    """(N,) per-sample values; a batch value is repeated N times (see module docstring)."""
    if per_sample:
        return value
    # zeros_like of an (N,) tensor: works with a symbolic batch size on every backend.
    batch = ops.zeros_like(ops.sum(ops.cast(y_pred, "float32"),
                                   axis=tuple(range(1, len(y_pred.shape)))))
    return value + batch


def _power(x: Any, gamma: float) -> Any:
    """``x ** gamma`` for x >= 0 with a finite gradient at x == 0 for every gamma >= 0."""
    if gamma == 1.0:
        return x
    if gamma == 0.0:
        return ops.ones_like(x)
    zero = x == 0  # not `x > 0`, which would turn a NaN into 0
    safe = ops.where(zero, ops.ones_like(x), x)
    return ops.where(zero, ops.zeros_like(x), ops.power(safe, gamma))


def _clip(x: Any, low: float, high: float) -> Any:
    """Clip that keeps NaN (``ops.clip``/``maximum`` may map NaN to a bound on TensorFlow),
    so that a non-finite model output shows in the loss instead of being hidden."""
    x = ops.where(x < low, low * ops.ones_like(x), x)
    return ops.where(x > high, high * ops.ones_like(x), x)


def _overlap(y_true: Any, y_pred: Any, *, jaccard: bool, owner: str, from_logits: bool,
             smooth_nr: float, smooth_dr: float, squared: bool, per_sample: bool,
             include_background: bool, class_weights: Sequence[float] | None,
             ignore_empty: bool, multilabel: bool) -> Any:
    """Dice (``jaccard=False``) or Jaccard loss per sample: the same sums, another ratio."""
    g = tensors.targets(y_true, y_pred, multilabel=multilabel, owner=owner)
    p = _activate(y_pred, from_logits=from_logits, multilabel=multilabel)
    weights = _class_weights(p.shape[-1], _tuple(class_weights),
                             include_background or multilabel, owner)
    axes = _sum_axes(len(p.shape), per_sample)
    inter = ops.sum(p * g, axis=axes)
    if squared:
        total = ops.sum(p * p, axis=axes) + ops.sum(g * g, axis=axes)
    else:
        total = ops.sum(p, axis=axes) + ops.sum(g, axis=axes)
    if jaccard:
        score = _ratio(inter + smooth_nr, total - inter + smooth_dr)
    else:
        score = _ratio(2.0 * inter + smooth_nr, total + smooth_dr)
    present = ops.sum(g, axis=axes) > 0 if ignore_empty else None
    return _per_sample(1.0 - _class_mean(score, weights, present, fill=1.0), y_pred, per_sample)


def dice(y_true: Any, y_pred: Any, *, from_logits: bool = False, smooth_nr: float = 1e-5,
         smooth_dr: float = 1e-5, squared: bool = False, per_sample: bool = True,
         include_background: bool = True, class_weights: Sequence[float] | None = None,
         ignore_empty: bool = True, multilabel: bool = False) -> Any:
    """Soft Dice loss per sample; see ``Dice`` for the formula and arguments. Returns (N,)."""
    return _overlap(y_true, y_pred, jaccard=False, owner="dice", from_logits=from_logits,
                    smooth_nr=smooth_nr, smooth_dr=smooth_dr, squared=squared,
                    per_sample=per_sample, include_background=include_background,
                    class_weights=class_weights, ignore_empty=ignore_empty,
                    multilabel=multilabel)


def jaccard(y_true: Any, y_pred: Any, *, from_logits: bool = False, smooth_nr: float = 1e-5,
            smooth_dr: float = 1e-5, squared: bool = False, per_sample: bool = True,
            include_background: bool = True, class_weights: Sequence[float] | None = None,
            ignore_empty: bool = True, multilabel: bool = False) -> Any:
    """Soft Jaccard (IoU) loss per sample; see ``Jaccard``. Returns (N,)."""
    return _overlap(y_true, y_pred, jaccard=True, owner="jaccard", from_logits=from_logits,
                    smooth_nr=smooth_nr, smooth_dr=smooth_dr, squared=squared,
                    per_sample=per_sample, include_background=include_background,
                    class_weights=class_weights, ignore_empty=ignore_empty,
                    multilabel=multilabel)


def generalized_dice(y_true: Any, y_pred: Any, *, from_logits: bool = False,
                     weight_type: str = "square", smooth_nr: float = 1e-5,
                     smooth_dr: float = 1e-5, per_sample: bool = True,
                     include_background: bool = True, multilabel: bool = False) -> Any:
    """Generalized Dice loss (Sudre 2017); see ``GeneralizedDice``. Returns (N,)."""
    owner = "generalized_dice"
    g = tensors.targets(y_true, y_pred, multilabel=multilabel, owner=owner)
    p = _activate(y_pred, from_logits=from_logits, multilabel=multilabel)
    mask = _class_weights(p.shape[-1], None, include_background or multilabel, owner)
    axes = _sum_axes(len(p.shape), per_sample)
    inter = ops.sum(p * g, axis=axes)
    total = ops.sum(p, axis=axes) + ops.sum(g, axis=axes)
    volume = ops.sum(g, axis=axes)
    present = ops.logical_and(volume > 0, mask > 0)
    safe = ops.where(present, volume, ops.ones_like(volume))
    if weight_type == "square":
        w = 1.0 / (safe * safe)
    elif weight_type == "simple":
        w = 1.0 / safe
    else:
        w = ops.ones_like(volume)
    w = ops.where(present, w, ops.zeros_like(w))
    # An absent class would weigh 1 / 0: give it the largest weight of the present classes
    # (as MONAI does); when no included class is present, weigh all included classes by 1.
    w_max = ops.max(w, axis=-1, keepdims=True)
    w = ops.where(present, w, w_max * ops.ones_like(w))
    w = ops.where(w_max > 0, w, ops.ones_like(w)) * mask
    score = _ratio(2.0 * ops.sum(w * inter, axis=-1) + smooth_nr,
                   ops.sum(w * total, axis=-1) + smooth_dr)
    return _per_sample(1.0 - score, y_pred, per_sample)


def tversky(y_true: Any, y_pred: Any, *, from_logits: bool = False, alpha: float = 0.3,
            beta: float = 0.7, gamma: float = 1.0, smooth_nr: float = 1e-5,
            smooth_dr: float = 1e-5, per_sample: bool = True, include_background: bool = True,
            class_weights: Sequence[float] | None = None, ignore_empty: bool = True,
            multilabel: bool = False) -> Any:
    """Tversky loss (``gamma`` = 1) or focal Tversky loss; see ``Tversky``. Returns (N,).

    ``alpha`` weights false positives and ``beta`` false negatives (Salehi et al. 2017).
    """
    owner = "tversky"
    g = tensors.targets(y_true, y_pred, multilabel=multilabel, owner=owner)
    p = _activate(y_pred, from_logits=from_logits, multilabel=multilabel)
    weights = _class_weights(p.shape[-1], _tuple(class_weights),
                             include_background or multilabel, owner)
    axes = _sum_axes(len(p.shape), per_sample)
    tp = ops.sum(p * g, axis=axes)
    fp = ops.sum(p * (1.0 - g), axis=axes)
    fn = ops.sum((1.0 - p) * g, axis=axes)
    index = _ratio(tp + smooth_nr, tp + alpha * fp + beta * fn + smooth_dr)
    # Clip at 0: rounding can leave 1 - index a hair below 0, and a fractional power of a
    # negative number is NaN.
    per_class = _power(_clip(1.0 - index, 0.0, math.inf), gamma)
    present = ops.sum(g, axis=axes) > 0 if ignore_empty else None
    return _per_sample(_class_mean(per_class, weights, present, fill=0.0), y_pred, per_sample)


def focal(y_true: Any, y_pred: Any, *, from_logits: bool = False, gamma: float = 2.0,
          alpha: float | Sequence[float] | None = None, multilabel: bool = False) -> Any:
    """Focal loss (Lin et al. 2017) per pixel; see ``Focal``. Returns ``y_pred.shape[:-1]``."""
    owner = "focal"
    g = tensors.targets(y_true, y_pred, multilabel=multilabel, owner=owner)
    channels = g.shape[-1]
    log_p, log_q = _log_probs(y_pred, from_logits=from_logits, multilabel=multilabel)
    p = ops.exp(log_p)
    if log_q is not None:  # sigmoid: each channel is a binary problem
        q = ops.exp(log_q)
        a_pos, a_neg = 1.0, 1.0
        if alpha is not None:
            a = _alpha_vector(alpha, channels, sigmoid=True, owner=owner)
            a_pos, a_neg = a, 1.0 - a
        loss = -(a_pos * g * _power(q, gamma) * log_p
                 + a_neg * (1.0 - g) * _power(p, gamma) * log_q)
        return ops.mean(loss, axis=-1)
    weights = 1.0 if alpha is None else _alpha_vector(alpha, channels, sigmoid=False,
                                                      owner=owner)
    # Clip 1 - p at 0: softmax can round p a hair above 1.
    modulating = _power(_clip(1.0 - p, 0.0, math.inf), gamma)
    return -ops.sum(weights * g * modulating * log_p, axis=-1)


def crossentropy(y_true: Any, y_pred: Any, *, from_logits: bool = False,
                 label_smoothing: float = 0.0, class_weights: Sequence[float] | None = None,
                 multilabel: bool = False) -> Any:
    """Binary or categorical crossentropy per pixel; see ``Crossentropy``."""
    owner = "crossentropy"
    g = tensors.targets(y_true, y_pred, multilabel=multilabel, owner=owner)
    channels = g.shape[-1]
    log_p, log_q = _log_probs(y_pred, from_logits=from_logits, multilabel=multilabel)
    cw = _tuple(class_weights)
    if log_q is not None:
        smoothed = g * (1.0 - label_smoothing) + 0.5 * label_smoothing
        loss = -(smoothed * log_p + (1.0 - smoothed) * log_q)
        if cw is not None:
            if channels == 1:
                if len(cw) != 2:
                    raise ValueError(f"{owner}: a binary head takes class_weights [background,"
                                     f" foreground] (2 entries); got {len(cw)}.")
                loss = loss * (cw[0] * (1.0 - g) + cw[1] * g)
            else:
                loss = loss * _weights_vector(cw, channels, owner)
        return ops.mean(loss, axis=-1)
    smoothed = g * (1.0 - label_smoothing) + label_smoothing / channels
    loss = -ops.sum(smoothed * log_p, axis=-1)
    if cw is not None:
        loss = loss * ops.sum(g * _weights_vector(cw, channels, owner), axis=-1)
    return loss


def weighted_crossentropy(y_true: Any, y_pred: Any, *, from_logits: bool = False,
                          pos_weight: float | str = "balanced", multilabel: bool = False) -> Any:
    """Binary crossentropy with weighted positives; see ``WeightedCrossentropy``."""
    owner = "weighted_crossentropy"
    if tensors.channels(y_pred, owner) > 1 and not multilabel:
        raise ValueError(f"{owner}: a per-channel sigmoid loss; y_pred has"
                         f" {y_pred.shape[-1]} channels: use one channel or multilabel=True.")
    g = tensors.targets(y_true, y_pred, multilabel=True, owner=owner)
    log_p, log_q = _log_probs(y_pred, from_logits=from_logits, multilabel=True)
    if pos_weight == "balanced":
        spatial = tuple(range(1, len(g.shape) - 1))
        frac = ops.mean(g, axis=spatial, keepdims=True) if spatial else g
        w_pos = 0.5 / ops.maximum(frac, _EPS)
        w_neg = 0.5 / ops.maximum(1.0 - frac, _EPS)
    else:
        w_pos, w_neg = float(pos_weight), 1.0
    return ops.mean(-(w_pos * g * log_p + w_neg * (1.0 - g) * log_q), axis=-1)


def _tuple(values: Sequence[float] | None) -> tuple[float, ...] | None:
    return None if values is None else tuple(float(v) for v in values)


def _weights_vector(weights: tuple[float, ...], channels: int, owner: str) -> Any:
    if len(weights) != channels:
        raise ValueError(f"{owner}: class_weights has {len(weights)} entries but y_pred has"
                         f" {channels} channels; give one weight per channel.")
    return ops.convert_to_tensor(np.asarray(weights, dtype="float32"))


def _alpha_vector(alpha: float | Sequence[float], channels: int, *, sigmoid: bool,
                  owner: str) -> Any:
    if isinstance(alpha, (int, float)):
        if not sigmoid:
            raise ValueError(f"{owner}: a scalar alpha={alpha!r} is ambiguous for a multi-class"
                             f" softmax head ({channels} classes); give one weight per class,"
                             f" e.g. alpha={[round(float(alpha), 4)] * channels}.")
        return float(alpha)
    if channels == 1:
        raise ValueError(f"{owner}: a binary head takes a scalar alpha (the weight of"
                         f" positives; negatives get 1 - alpha); got {list(alpha)}.")
    return _weights_vector(tuple(float(a) for a in alpha), channels, owner)

