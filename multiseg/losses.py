"""Segmentation losses: Dice, Jaccard, Tversky, focal, crossentropy and their combinations.

Every loss is a pure function (``dice``, ``jaccard``...) plus a thin, serialisable
``keras.losses.Loss`` subclass (``Dice``, ``Jaccard``...), as keras does for ``dice``/``Dice``.
``LOSSES`` maps recipe names to classes and ``build`` turns a recipe entry into a loss object.

Conventions shared by every loss (written out once here, repeated in ``docs/losses.md``):

- Tensors are channels-last. ``y_pred`` has C channels: C == 1 is a binary task (sigmoid when
  ``from_logits``), C > 1 a multi-class task (softmax when ``from_logits``), or C independent
  binary channels when ``multilabel=True`` (sigmoid per channel). The activation is applied
  exactly once, inside the loss, when ``from_logits=True``; never put one in the model as well.
- ``y_true`` for a binary task is a {0, 1} mask shaped like ``y_pred`` or without its last
  axis. For a multi-class task it is either integer labels shaped like ``y_pred`` without the
  channel axis (or with a channel axis of 1), possibly stored as floats because Keras casts
  targets to the loss dtype, or a one-hot tensor shaped like ``y_pred``. For ``multilabel`` it
  is a multi-hot tensor shaped like ``y_pred``. Image-level outputs (N, C) work the same way
  with labels (N,) or (N, 1).
- Region losses (Dice, Jaccard, Tversky...) return one value per sample, shape (N,); with
  ``per_sample=False`` the batch value is repeated N times so that Keras's reductions and
  sample weights behave the same in both modes. Pixel losses (crossentropy, focal...) return
  one value per pixel, shape ``y_pred.shape[:-1]``. Sample weights may be per sample (N,) or
  per pixel (N, ...): they are broadcast over pixels, or averaged per sample, to fit.
- All reductions run in float32, whatever the compute dtype (float16 sums over a 512x512 image
  overflow).
- An empty class (absent from the target and from the prediction) scores a perfect ratio of 1:
  the smoothing terms give (0 + s) / (0 + s) = 1, and with zero smoothing the 0 / 0 case is
  defined as 1 explicitly. Dice, Jaccard and (focal) Tversky leave a class absent from the
  target out of the class mean by default (``ignore_empty=True``): a soft prediction never puts
  exactly 0 on it, so it would score about 0 and floor the loss at about absent / classes.
- ``include_background`` concerns softmax heads only: binary and multilabel heads have no
  background channel.
- Label values are not range-checked inside the graph (a label outside [0, C) one-hot encodes
  to all zeros); ``check_targets`` checks the data, with a clear message, before training.
"""

from __future__ import annotations

import difflib
import inspect
import math
from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

# Probabilities are clipped to [_EPS, 1 - _EPS] before a log, as keras does.
_EPS = 1e-7
_DEFAULT_SMOOTH = 1e-5
_PACKAGE = "multiseg"


# --------------------------------------------------------------------------------------------
# Argument validation (constructors) -- every message names the argument, the value, the rule.
# --------------------------------------------------------------------------------------------


def _fail(owner: str, arg: str, value: Any, expected: str) -> ValueError:
    return ValueError(f"{owner}: invalid `{arg}`={value!r}; expected {expected}.")


def _check_bool(owner: str, arg: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise _fail(owner, arg, value, "True or False")
    return bool(value)


def _check_number(owner: str, arg: str, value: Any, *, low: float | None = None,
                  high: float | None = None, low_open: bool = False,
                  high_open: bool = False) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
        raise _fail(owner, arg, value, "a number")
    value = float(value)
    bad = not math.isfinite(value)
    if low is not None:
        bad = bad or value < low or (low_open and value == low)
    if high is not None:
        bad = bad or value > high or (high_open and value == high)
    if bad:
        lo = "" if low is None else f"{'>' if low_open else '>='} {low:g}"
        hi = "" if high is None else f"{'<' if high_open else '<='} {high:g}"
        raise _fail(owner, arg, value, f"a finite number {' and '.join(x for x in (lo, hi) if x)}")
    return value


def _check_weights(owner: str, arg: str, value: Any) -> tuple[float, ...] | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, (Sequence, np.ndarray)):
        raise _fail(owner, arg, value, "None or a list of non-negative numbers, one per channel")
    weights = tuple(_check_number(owner, f"{arg}[{i}]", v, low=0.0) for i, v in enumerate(value))
    if not weights or not any(w > 0 for w in weights):
        raise _fail(owner, arg, value, "a non-empty list with at least one positive weight")
    return weights


def _check_smoothing(owner: str, smooth: float | None, smooth_nr: float,
                     smooth_dr: float) -> tuple[float, float]:
    if smooth is not None:
        smooth = _check_number(owner, "smooth", smooth, low=0.0)
        if smooth_nr != _DEFAULT_SMOOTH or smooth_dr != _DEFAULT_SMOOTH:
            raise ValueError(f"{owner}: give either `smooth` (sets both) or `smooth_nr`/"
                             f"`smooth_dr`, not both; got smooth={smooth!r}, "
                             f"smooth_nr={smooth_nr!r}, smooth_dr={smooth_dr!r}.")
        smooth_nr = smooth_dr = smooth
    smooth_nr = _check_number(owner, "smooth_nr", smooth_nr, low=0.0)
    smooth_dr = _check_number(owner, "smooth_dr", smooth_dr, low=0.0)
    if smooth_nr > 0 and smooth_dr == 0:
        raise _fail(owner, "smooth_dr", smooth_dr, "a positive number when smooth_nr > 0 (an"
                    " empty class would score smooth_nr / 0 = inf)")
    return smooth_nr, smooth_dr


# --------------------------------------------------------------------------------------------
# Input handling shared by losses and metrics.
# --------------------------------------------------------------------------------------------


def _channels(y_pred: Any, owner: str) -> int:
    if len(y_pred.shape) < 2:
        raise ValueError(f"{owner}: y_pred must be channels-last with rank >= 2, (N, C) or"
                         f" (N, H, W, C); got shape {tuple(y_pred.shape)}.")
    channels = y_pred.shape[-1]
    if channels is None:
        raise ValueError(f"{owner}: the channel axis of y_pred must have a static size (it"
                         " decides binary vs multi-class); got shape"
                         f" {tuple(y_pred.shape)}.")
    return int(channels)


def _check_same_grid(y_true: Any, y_pred: Any, owner: str, hint: str) -> None:
    t_shape, p_shape = tuple(y_true.shape), tuple(y_pred.shape)
    for a, b in zip(t_shape, p_shape[: len(t_shape)], strict=False):
        if a is not None and b is not None and a != b:
            raise ValueError(f"{owner}: y_true shape {t_shape} does not match y_pred shape"
                             f" {p_shape}{hint}.")


def _targets(y_true: Any, y_pred: Any, *, multilabel: bool, owner: str) -> Any:
    """Return ``y_true`` as a float32 one-hot (or multi-hot / binary) tensor shaped like y_pred.

    Raises:
        ValueError: rank or channel count of ``y_true`` incompatible with ``y_pred``.
    """
    channels = _channels(y_pred, owner)
    t_rank, p_rank = len(y_true.shape), len(y_pred.shape)
    t_last = y_true.shape[-1] if t_rank else None
    if channels == 1 or multilabel:
        what = "a binary mask" if channels == 1 else f"a multi-hot tensor with {channels} channels"
        if t_rank == p_rank - 1 and channels == 1:
            y_true = ops.expand_dims(y_true, -1)
        elif t_rank != p_rank or (t_last is not None and t_last != channels):
            raise ValueError(
                f"{owner}: y_pred {tuple(y_pred.shape)} has {channels} channel(s), so y_true"
                f" must be {what} shaped like it; got y_true {tuple(y_true.shape)}."
                + (" Integer labels need a softmax head: multilabel=False." if multilabel
                   and t_rank == p_rank - 1 else "")
                + (" A one-hot target needs a head with one channel per class." if channels == 1
                   else ""))
        _check_same_grid(y_true, y_pred, owner, "")
        return ops.cast(y_true, "float32")
    if t_rank == p_rank and t_last == channels:
        _check_same_grid(y_true, y_pred, owner, " (one-hot target)")
        return ops.cast(y_true, "float32")
    if t_rank == p_rank and t_last == 1:
        y_true = ops.squeeze(y_true, -1)
    elif t_rank == p_rank and t_last is not None:
        raise ValueError(
            f"{owner}: y_true {tuple(y_true.shape)} looks one-hot with {t_last} channels but"
            f" y_pred {tuple(y_pred.shape)} has {channels} classes. Give labels shaped"
            f" {tuple(y_pred.shape[:-1])} or a one-hot tensor with {channels} channels.")
    elif t_rank != p_rank - 1:
        raise ValueError(
            f"{owner}: y_true {tuple(y_true.shape)} is neither integer labels shaped"
            f" {tuple(y_pred.shape[:-1])} nor one-hot shaped {tuple(y_pred.shape)}.")
    _check_same_grid(y_true, y_pred, owner, " (integer labels)")
    # Labels may arrive as floats (Keras casts y_true to the loss dtype): round, then one-hot.
    labels = ops.cast(ops.round(ops.cast(y_true, "float32")), "int32")
    return ops.one_hot(labels, channels, dtype="float32")


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


# --------------------------------------------------------------------------------------------
# Pure functions.
# --------------------------------------------------------------------------------------------


def dice(y_true: Any, y_pred: Any, *, from_logits: bool = False, smooth_nr: float = 1e-5,
         smooth_dr: float = 1e-5, squared: bool = False, per_sample: bool = True,
         include_background: bool = True, class_weights: Sequence[float] | None = None,
         ignore_empty: bool = True, multilabel: bool = False) -> Any:
    """Soft Dice loss per sample; see ``Dice`` for the formula and arguments. Returns (N,)."""
    owner = "dice"
    g = _targets(y_true, y_pred, multilabel=multilabel, owner=owner)
    p = _activate(y_pred, from_logits=from_logits, multilabel=multilabel)
    weights = _class_weights(p.shape[-1], _tuple(class_weights),
                             include_background or multilabel, owner)
    axes = _sum_axes(len(p.shape), per_sample)
    inter = ops.sum(p * g, axis=axes)
    if squared:
        total = ops.sum(p * p, axis=axes) + ops.sum(g * g, axis=axes)
    else:
        total = ops.sum(p, axis=axes) + ops.sum(g, axis=axes)
    score = _ratio(2.0 * inter + smooth_nr, total + smooth_dr)
    present = ops.sum(g, axis=axes) > 0 if ignore_empty else None
    return _per_sample(1.0 - _class_mean(score, weights, present, fill=1.0), y_pred, per_sample)


def jaccard(y_true: Any, y_pred: Any, *, from_logits: bool = False, smooth_nr: float = 1e-5,
            smooth_dr: float = 1e-5, squared: bool = False, per_sample: bool = True,
            include_background: bool = True, class_weights: Sequence[float] | None = None,
            ignore_empty: bool = True, multilabel: bool = False) -> Any:
    """Soft Jaccard (IoU) loss per sample; see ``Jaccard``. Returns (N,)."""
    owner = "jaccard"
    g = _targets(y_true, y_pred, multilabel=multilabel, owner=owner)
    p = _activate(y_pred, from_logits=from_logits, multilabel=multilabel)
    weights = _class_weights(p.shape[-1], _tuple(class_weights),
                             include_background or multilabel, owner)
    axes = _sum_axes(len(p.shape), per_sample)
    inter = ops.sum(p * g, axis=axes)
    if squared:
        total = ops.sum(p * p, axis=axes) + ops.sum(g * g, axis=axes)
    else:
        total = ops.sum(p, axis=axes) + ops.sum(g, axis=axes)
    score = _ratio(inter + smooth_nr, total - inter + smooth_dr)
    present = ops.sum(g, axis=axes) > 0 if ignore_empty else None
    return _per_sample(1.0 - _class_mean(score, weights, present, fill=1.0), y_pred, per_sample)


def generalized_dice(y_true: Any, y_pred: Any, *, from_logits: bool = False,
                     weight_type: str = "square", smooth_nr: float = 1e-5,
                     smooth_dr: float = 1e-5, per_sample: bool = True,
                     include_background: bool = True, multilabel: bool = False) -> Any:
    """Generalized Dice loss (Sudre 2017); see ``GeneralizedDice``. Returns (N,)."""
    owner = "generalized_dice"
    g = _targets(y_true, y_pred, multilabel=multilabel, owner=owner)
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
    g = _targets(y_true, y_pred, multilabel=multilabel, owner=owner)
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
    g = _targets(y_true, y_pred, multilabel=multilabel, owner=owner)
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
    g = _targets(y_true, y_pred, multilabel=multilabel, owner=owner)
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
    if _channels(y_pred, owner) > 1 and not multilabel:
        raise ValueError(f"{owner}: a per-channel sigmoid loss; y_pred has"
                         f" {y_pred.shape[-1]} channels: use one channel or multilabel=True.")
    g = _targets(y_true, y_pred, multilabel=True, owner=owner)
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


# --------------------------------------------------------------------------------------------
# Loss classes.
# --------------------------------------------------------------------------------------------


def _adapt_sample_weight(sample_weight: Any, y_pred: Any, per_pixel: bool) -> Any:
    """Fit Keras sample weights to the loss's output: (N, ...) per pixel or (N,) per sample.

    Per-sample weights (N,) are expanded to (N, 1, ..., 1) for pixel losses; pixel weight maps
    (N, ...) or (N, ..., 1) are averaged to one weight per sample for region losses.
    """
    w = ops.cast(ops.convert_to_tensor(sample_weight), "float32")
    rank = len(y_pred.shape)
    if len(w.shape) == rank and w.shape[-1] == 1:
        w = ops.squeeze(w, -1)
    if per_pixel:
        while 0 < len(w.shape) < rank - 1:
            w = ops.expand_dims(w, -1)
    elif len(w.shape) > 1:
        w = ops.mean(w, axis=tuple(range(1, len(w.shape))))
    return w


class _SegmentationLoss(keras.losses.Loss):
    """Common constructor arguments and config of every multiseg loss."""

    # True: ``call`` returns one value per pixel; False: one value per sample.
    _per_pixel = False

    def __call__(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> Any:
        if sample_weight is not None:
            sample_weight = _adapt_sample_weight(sample_weight, y_pred, self._per_pixel)
        return super().__call__(y_true, y_pred, sample_weight)

    def __init__(self, *, from_logits: bool, multilabel: bool, name: str | None,
                 reduction: str | None, dtype: Any) -> None:
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        owner = type(self).__name__
        self.from_logits = _check_bool(owner, "from_logits", from_logits)
        self.multilabel = _check_bool(owner, "multilabel", multilabel)

    def _options(self) -> dict[str, Any]:
        """Options beyond from_logits/multilabel, as passed to the pure function."""
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        options = {k: (list(v) if isinstance(v, tuple) else v)
                   for k, v in self._options().items()}
        return {**super().get_config(), "from_logits": self.from_logits,
                "multilabel": self.multilabel, **options, "dtype": self._dtype_policy.name}


class _RegionLoss(_SegmentationLoss):
    """Shared arguments of the ratio losses (smoothing, reduction, background, class weights)."""

    def __init__(self, *, from_logits: bool, smooth: float | None, smooth_nr: float,
                 smooth_dr: float, per_sample: bool, include_background: bool,
                 class_weights: Sequence[float] | None, ignore_empty: bool, multilabel: bool,
                 name: str | None, reduction: str | None, dtype: Any) -> None:
        super().__init__(from_logits=from_logits, multilabel=multilabel, name=name,
                         reduction=reduction, dtype=dtype)
        owner = type(self).__name__
        self.smooth_nr, self.smooth_dr = _check_smoothing(owner, smooth, smooth_nr, smooth_dr)
        self.per_sample = _check_bool(owner, "per_sample", per_sample)
        self.include_background = _check_bool(owner, "include_background", include_background)
        self.class_weights = _check_weights(owner, "class_weights", class_weights)
        self.ignore_empty = _check_bool(owner, "ignore_empty", ignore_empty)

    def _options(self) -> dict[str, Any]:
        return {"smooth_nr": self.smooth_nr, "smooth_dr": self.smooth_dr,
                "per_sample": self.per_sample, "include_background": self.include_background,
                "class_weights": self.class_weights, "ignore_empty": self.ignore_empty}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Dice(_RegionLoss):
    """Soft Dice loss, mean over classes, per sample or over the batch.

    Formula, for class c with probabilities p and one-hot target g summed over the pixels of a
    sample (``per_sample=True``) or of the whole batch (``per_sample=False``)::

        D_c  = (2 * sum(p * g) + smooth_nr) / (sum(p) + sum(g) + smooth_dr)
               (squared=True: sum(p^2) + sum(g^2) in the denominator, V-Net)
        loss = 1 - sum_c w_c * D_c / sum_c w_c        (then the mean over samples)

    with w_c = ``class_weights`` (default 1) and w_0 = 0 when ``include_background=False``.
    With ``ignore_empty=True`` (the default) the class mean runs over the classes present in
    the sample's target (the batch's with ``per_sample=False``), and a sample with no included
    class present scores loss 0. With ``ignore_empty=False`` an absent class scores
    D_c = smooth_nr / (sum(p) + smooth_dr), about 0 for any soft prediction, so the loss has a
    floor of about sum_{absent c} w_c / sum_c w_c (absent classes / classes) that training
    cannot lower; its gradient, smooth_nr / (sum(p) + smooth_dr)^2, is nearly 0.
    Two empty masks give D = 1 (smoothing gives s / s; with zero smoothing the 0 / 0 case is
    defined as 1). Unlike ``keras.losses.Dice`` the ratio is per class, not pooled over
    classes, and the numerator is smoothed too.

    Args:
        from_logits: ``y_pred`` are logits (sigmoid or softmax applied here). Default False.
        smooth: sets both ``smooth_nr`` and ``smooth_dr`` (e.g. 1.0, the blog convention).
            Default None.
        smooth_nr: added to the numerator. Default 1e-5 (MONAI's value).
        smooth_dr: added to the denominator. Default 1e-5; must be > 0 if ``smooth_nr`` > 0.
        squared: square the terms of the denominator (V-Net). Default False.
        per_sample: True: one ratio per sample and class, then the mean; False: sums over the
            whole batch first. Default True.
        include_background: keep channel 0 in the class mean (multi-class only; a binary head's
            single channel is always the foreground). Default True.
        class_weights: one non-negative weight per channel for the class mean. Default None.
        ignore_empty: leave classes absent from the target (per sample, or over the batch
            with ``per_sample=False``) out of the class mean; a sample with no included class
            present scores 0. Default True (see above for the floor it removes).
        multilabel: C > 1 channels are independent sigmoid outputs. Default False.
        name, reduction, dtype: as ``keras.losses.Loss``.

    Shape:
        y_pred (N, ..., C); y_true labels (N, ...) / (N, ..., 1) or one-hot (N, ..., C).
        ``call`` returns (N,).

    Raises:
        ValueError: an invalid argument, or ``y_true`` incompatible with ``y_pred``.

    Example:
        >>> loss = Dice(from_logits=True, smooth=1.0)
        >>> value = loss(labels, logits)   # labels (N, H, W), logits (N, H, W, C)

    Reference:
        Milletari et al., "V-Net", 3DV 2016; MONAI ``DiceLoss``.
    """

    def __init__(self, *, from_logits: bool = False, smooth: float | None = None,
                 smooth_nr: float = _DEFAULT_SMOOTH, smooth_dr: float = _DEFAULT_SMOOTH,
                 squared: bool = False, per_sample: bool = True, include_background: bool = True,
                 class_weights: Sequence[float] | None = None, ignore_empty: bool = True,
                 multilabel: bool = False, name: str | None = "dice",
                 reduction: str | None = "sum_over_batch_size", dtype: Any = None) -> None:
        super().__init__(from_logits=from_logits, smooth=smooth, smooth_nr=smooth_nr,
                         smooth_dr=smooth_dr, per_sample=per_sample,
                         include_background=include_background, class_weights=class_weights,
                         ignore_empty=ignore_empty, multilabel=multilabel, name=name,
                         reduction=reduction, dtype=dtype)
        self.squared = _check_bool(type(self).__name__, "squared", squared)

    def _options(self) -> dict[str, Any]:
        return {**super()._options(), "squared": self.squared}

    def call(self, y_true: Any, y_pred: Any) -> Any:
        return dice(y_true, y_pred, from_logits=self.from_logits, multilabel=self.multilabel,
                    **self._options())


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Jaccard(_RegionLoss):
    """Soft Jaccard (IoU) loss, mean over classes, per sample or over the batch.

    Formula, sums over the pixels of a sample (``per_sample=True``) or of the batch::

        I_c  = sum(p * g);   U_c = sum(p) + sum(g) - I_c   (squared: sum(p^2) + sum(g^2) - I_c)
        J_c  = (I_c + smooth_nr) / (U_c + smooth_dr)
        loss = 1 - sum_c w_c * J_c / sum_c w_c

    Same arguments, defaults and empty-class behaviour (``ignore_empty``) as ``Dice``. Note
    that MONAI's ``DiceLoss(jaccard=True)`` needs a smoothing of ``2 * s`` to equal this
    formula with ``s``.

    Args:
        from_logits, smooth, smooth_nr, smooth_dr, squared, per_sample, include_background,
        class_weights, ignore_empty, multilabel, name, reduction, dtype: as ``Dice``.

    Shape:
        As ``Dice``; ``call`` returns (N,).

    Raises:
        ValueError: an invalid argument, or ``y_true`` incompatible with ``y_pred``.

    Example:
        >>> Jaccard(from_logits=True)(labels, logits)

    Reference:
        Rahman & Wang, "Optimizing intersection-over-union in deep neural networks", ISVC 2016.
    """

    def __init__(self, *, from_logits: bool = False, smooth: float | None = None,
                 smooth_nr: float = _DEFAULT_SMOOTH, smooth_dr: float = _DEFAULT_SMOOTH,
                 squared: bool = False, per_sample: bool = True, include_background: bool = True,
                 class_weights: Sequence[float] | None = None, ignore_empty: bool = True,
                 multilabel: bool = False, name: str | None = "jaccard",
                 reduction: str | None = "sum_over_batch_size", dtype: Any = None) -> None:
        super().__init__(from_logits=from_logits, smooth=smooth, smooth_nr=smooth_nr,
                         smooth_dr=smooth_dr, per_sample=per_sample,
                         include_background=include_background, class_weights=class_weights,
                         ignore_empty=ignore_empty, multilabel=multilabel, name=name,
                         reduction=reduction, dtype=dtype)
        self.squared = _check_bool(type(self).__name__, "squared", squared)

    def _options(self) -> dict[str, Any]:
        return {**super()._options(), "squared": self.squared}

    def call(self, y_true: Any, y_pred: Any) -> Any:
        return jaccard(y_true, y_pred, from_logits=self.from_logits,
                       multilabel=self.multilabel, **self._options())


GENERALIZED_DICE_WEIGHTS = ("square", "simple", "uniform")


@keras.saving.register_keras_serializable(package=_PACKAGE)
class GeneralizedDice(_SegmentationLoss):
    """Generalized Dice loss: one ratio over all classes, classes weighted by their volume.

    Formula, with G_c = sum(g_c) the target volume of class c in a sample (or the batch)::

        w_c  = 1 / G_c^2 ("square"), 1 / G_c ("simple") or 1 ("uniform")
        GD   = (2 * sum_c w_c * sum(p_c * g_c) + smooth_nr)
               / (sum_c w_c * (sum(p_c) + sum(g_c)) + smooth_dr)
        loss = 1 - GD

    A class absent from the target would get w_c = inf; it gets the largest weight of the
    present classes instead (MONAI's rule), and when no included class is present all included
    classes weigh 1, so the loss is always finite. Keep the smoothing tiny: it is added after
    the weighted sums, where weights ~ 1 / G^2 make them small, so ``smooth=1`` would swamp the
    loss. Two empty masks give loss 0.

    Args:
        from_logits: ``y_pred`` are logits. Default False.
        weight_type: "square", "simple" or "uniform". Default "square" (Sudre et al.).
        smooth, smooth_nr, smooth_dr: as ``Dice``; defaults 1e-5.
        per_sample: one ratio per sample (True) or over the batch (False). Default True.
        include_background: keep channel 0 (multi-class only). Default True.
        multilabel: C > 1 channels are independent sigmoid outputs. Default False.
        name, reduction, dtype: as ``keras.losses.Loss``.

    Shape:
        As ``Dice``; ``call`` returns (N,).

    Raises:
        ValueError: an invalid argument, or ``y_true`` incompatible with ``y_pred``.

    Example:
        >>> GeneralizedDice(from_logits=True)(labels, logits)

    Reference:
        Sudre et al., "Generalised Dice overlap as a deep learning loss function for highly
        unbalanced segmentations", DLMIA 2017.
    """

    def __init__(self, *, from_logits: bool = False, weight_type: str = "square",
                 smooth: float | None = None, smooth_nr: float = _DEFAULT_SMOOTH,
                 smooth_dr: float = _DEFAULT_SMOOTH, per_sample: bool = True,
                 include_background: bool = True, multilabel: bool = False,
                 name: str | None = "generalized_dice",
                 reduction: str | None = "sum_over_batch_size", dtype: Any = None) -> None:
        super().__init__(from_logits=from_logits, multilabel=multilabel, name=name,
                         reduction=reduction, dtype=dtype)
        owner = type(self).__name__
        if weight_type not in GENERALIZED_DICE_WEIGHTS:
            raise _fail(owner, "weight_type", weight_type,
                        f"one of {', '.join(GENERALIZED_DICE_WEIGHTS)}")
        self.weight_type = weight_type
        self.smooth_nr, self.smooth_dr = _check_smoothing(owner, smooth, smooth_nr, smooth_dr)
        self.per_sample = _check_bool(owner, "per_sample", per_sample)
        self.include_background = _check_bool(owner, "include_background", include_background)

    def _options(self) -> dict[str, Any]:
        return {"weight_type": self.weight_type, "smooth_nr": self.smooth_nr,
                "smooth_dr": self.smooth_dr, "per_sample": self.per_sample,
                "include_background": self.include_background}

    def call(self, y_true: Any, y_pred: Any) -> Any:
        return generalized_dice(y_true, y_pred, from_logits=self.from_logits,
                                multilabel=self.multilabel, **self._options())


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Tversky(_RegionLoss):
    """Tversky loss: Dice with separate weights for false positives and false negatives.

    Formula, sums over the pixels of a sample (``per_sample=True``) or of the batch::

        TP_c = sum(p * g);  FP_c = sum(p * (1 - g));  FN_c = sum((1 - p) * g)
        TI_c = (TP_c + smooth_nr) / (TP_c + alpha * FP_c + beta * FN_c + smooth_dr)
        loss = sum_c w_c * (1 - TI_c) / sum_c w_c

    ``alpha`` weights FALSE POSITIVES and ``beta`` FALSE NEGATIVES, as in Salehi et al. 2017
    (``keras.losses.Tversky`` 3.15 swaps them). alpha = beta = 0.5 is Dice; beta > alpha favours
    recall (thin or small structures). Per class, not pooled: with pooled softmax classes total
    FP equals total FN and alpha, beta would have no effect. With ``ignore_empty=True`` (the
    default) classes absent from the target are left out of the class mean, as in ``Dice``;
    with False an absent class adds about w_c / sum_c w_c to the loss (TI_c ~ 0).

    Args:
        from_logits: ``y_pred`` are logits. Default False.
        alpha: weight of false positives, >= 0. Default 0.3 (Salehi's best setting).
        beta: weight of false negatives, >= 0. Default 0.7.
        smooth, smooth_nr, smooth_dr, per_sample, include_background, class_weights,
        ignore_empty, multilabel, name, reduction, dtype: as ``Dice``.

    Shape:
        As ``Dice``; ``call`` returns (N,).

    Raises:
        ValueError: an invalid argument, or ``y_true`` incompatible with ``y_pred``.

    Example:
        >>> Tversky(alpha=0.3, beta=0.7, from_logits=True)(mask, logits)

    Reference:
        Salehi et al., "Tversky loss function for image segmentation using 3D fully
        convolutional deep networks", MLMI 2017.
    """

    def __init__(self, *, from_logits: bool = False, alpha: float = 0.3, beta: float = 0.7,
                 smooth: float | None = None, smooth_nr: float = _DEFAULT_SMOOTH,
                 smooth_dr: float = _DEFAULT_SMOOTH, per_sample: bool = True,
                 include_background: bool = True, class_weights: Sequence[float] | None = None,
                 ignore_empty: bool = True, multilabel: bool = False, name: str | None = "tversky",
                 reduction: str | None = "sum_over_batch_size", dtype: Any = None) -> None:
        super().__init__(from_logits=from_logits, smooth=smooth, smooth_nr=smooth_nr,
                         smooth_dr=smooth_dr, per_sample=per_sample,
                         include_background=include_background, class_weights=class_weights,
                         ignore_empty=ignore_empty, multilabel=multilabel, name=name,
                         reduction=reduction, dtype=dtype)
        owner = type(self).__name__
        self.alpha = _check_number(owner, "alpha", alpha, low=0.0)
        self.beta = _check_number(owner, "beta", beta, low=0.0)
        if self.alpha == 0 and self.beta == 0 and self.smooth_dr == 0:
            raise _fail(owner, "alpha", alpha, "alpha + beta > 0 or smooth_dr > 0 (otherwise"
                        " the index is TP / TP)")

    def _options(self) -> dict[str, Any]:
        return {**super()._options(), "alpha": self.alpha, "beta": self.beta}

    def call(self, y_true: Any, y_pred: Any) -> Any:
        return tversky(y_true, y_pred, from_logits=self.from_logits, multilabel=self.multilabel,
                       **self._options())


@keras.saving.register_keras_serializable(package=_PACKAGE)
class FocalTversky(Tversky):
    """Focal Tversky loss: the per-class Tversky loss raised to the power ``gamma``.

    Formula (TI_c as in ``Tversky``)::

        loss = sum_c w_c * (1 - TI_c) ** gamma / sum_c w_c

    ``gamma`` is the exponent itself. Abraham & Khan write the exponent as 1 / gamma and
    recommend their gamma = 4/3, which is this loss's default ``gamma=0.75``. An exponent below
    1 raises the loss and its gradient as the index approaches 1 ((1 - TI)^0.75 > 1 - TI), which
    keeps small, already fairly well segmented structures training; gamma = 1 is ``Tversky``.

    Args:
        from_logits: ``y_pred`` are logits. Default False.
        alpha: weight of false positives. Default 0.3.
        beta: weight of false negatives. Default 0.7.
        gamma: exponent, > 0. Default 0.75.
        smooth, smooth_nr, smooth_dr, per_sample, include_background, class_weights,
        ignore_empty, multilabel, name, reduction, dtype: as ``Dice``.

    Shape:
        As ``Dice``; ``call`` returns (N,).

    Raises:
        ValueError: an invalid argument, or ``y_true`` incompatible with ``y_pred``.

    Example:
        >>> FocalTversky(gamma=0.75, from_logits=True)(mask, logits)

    Reference:
        Abraham & Khan, "A novel focal Tversky loss function with improved attention U-Net for
        lesion segmentation", ISBI 2019.
    """

    def __init__(self, *, from_logits: bool = False, alpha: float = 0.3, beta: float = 0.7,
                 gamma: float = 0.75, smooth: float | None = None,
                 smooth_nr: float = _DEFAULT_SMOOTH, smooth_dr: float = _DEFAULT_SMOOTH,
                 per_sample: bool = True, include_background: bool = True,
                 class_weights: Sequence[float] | None = None, ignore_empty: bool = True,
                 multilabel: bool = False, name: str | None = "focal_tversky",
                 reduction: str | None = "sum_over_batch_size", dtype: Any = None) -> None:
        super().__init__(from_logits=from_logits, alpha=alpha, beta=beta, smooth=smooth,
                         smooth_nr=smooth_nr, smooth_dr=smooth_dr, per_sample=per_sample,
                         include_background=include_background, class_weights=class_weights,
                         ignore_empty=ignore_empty, multilabel=multilabel, name=name,
                         reduction=reduction, dtype=dtype)
        self.gamma = _check_number(type(self).__name__, "gamma", gamma, low=0.0,
                                   low_open=True)

    def _options(self) -> dict[str, Any]:
        return {**super()._options(), "gamma": self.gamma}


def _check_alpha(owner: str, alpha: Any) -> float | tuple[float, ...] | None:
    if alpha is None:
        return None
    if isinstance(alpha, (int, float, np.number)) and not isinstance(alpha, (bool, np.bool_)):
        return _check_number(owner, "alpha", alpha, low=0.0, high=1.0)
    return _check_weights(owner, "alpha", alpha)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Focal(_SegmentationLoss):
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
        self.gamma = _check_number(owner, "gamma", gamma, low=0.0)
        self.alpha = _check_alpha(owner, alpha)

    def _options(self) -> dict[str, Any]:
        return {"gamma": self.gamma, "alpha": self.alpha}

    def call(self, y_true: Any, y_pred: Any) -> Any:
        return focal(y_true, y_pred, from_logits=self.from_logits, multilabel=self.multilabel,
                     **self._options())


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Crossentropy(_SegmentationLoss):
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
        self.label_smoothing = _check_number(owner, "label_smoothing", label_smoothing,
                                             low=0.0, high=1.0, high_open=True)
        self.class_weights = _check_weights(owner, "class_weights", class_weights)

    def _options(self) -> dict[str, Any]:
        return {"label_smoothing": self.label_smoothing, "class_weights": self.class_weights}

    def call(self, y_true: Any, y_pred: Any) -> Any:
        return crossentropy(y_true, y_pred, from_logits=self.from_logits,
                            multilabel=self.multilabel, **self._options())


@keras.saving.register_keras_serializable(package=_PACKAGE)
class WeightedCrossentropy(_SegmentationLoss):
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
                raise _fail(owner, "pos_weight", pos_weight, "'balanced' or a positive number")
            self.pos_weight: float | str = pos_weight
        else:
            self.pos_weight = _check_number(owner, "pos_weight", pos_weight, low=0.0,
                                            low_open=True)

    def _options(self) -> dict[str, Any]:
        return {"pos_weight": self.pos_weight}

    def call(self, y_true: Any, y_pred: Any) -> Any:
        return weighted_crossentropy(y_true, y_pred, from_logits=self.from_logits,
                                     multilabel=self.multilabel, **self._options())


# --------------------------------------------------------------------------------------------
# Combination of terms.
# --------------------------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package=_PACKAGE)
class CombinedLoss(keras.losses.Loss):
    """Weighted sum of loss terms inside one head: ``sum_i weight_i * loss_i(y_true, y_pred)``.

    Each term is reduced by its own ``reduction`` (with the sample weights passed through) and
    the weighted scalars are summed, so terms with per-pixel and per-sample outputs mix freely.

    Args:
        terms: ``(label, weight, loss)`` triples, or ``(weight, loss)`` pairs (the label is
            then the loss's ``name``). Labels are made unique: "dice", "dice_2".
        name: Default "combined_loss".
        reduction, dtype: as ``keras.losses.Loss`` (the result is already a scalar).

    Attributes:
        terms: list of ``(label, weight, loss)``.

    Raises:
        ValueError: no terms, a negative or non-finite weight, or a term that is not a Loss.

    Example:
        >>> CombinedLoss([("dice", 1.0, Dice()), ("crossentropy", 0.5, Crossentropy())])
    """

    def __init__(self, terms: Sequence[tuple[Any, ...]], *, name: str | None = "combined_loss",
                 reduction: str | None = "sum_over_batch_size", dtype: Any = None) -> None:
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if isinstance(terms, (str, Mapping)) or not isinstance(terms, Sequence) or not terms:
            raise _fail("CombinedLoss", "terms", terms,
                        "a non-empty list of (label, weight, loss) triples")
        self.terms: list[tuple[str, float, keras.losses.Loss]] = []
        used: set[str] = set()
        for i, term in enumerate(terms):
            if not isinstance(term, (tuple, list)) or len(term) not in (2, 3):
                raise _fail("CombinedLoss", f"terms[{i}]", term,
                            "a (label, weight, loss) triple or a (weight, loss) pair")
            label, weight, loss = term if len(term) == 3 else (None, *term)
            if not isinstance(loss, keras.losses.Loss):
                raise _fail("CombinedLoss", f"terms[{i}] loss", loss, "a keras.losses.Loss")
            weight = _check_number("CombinedLoss", f"terms[{i}] weight", weight, low=0.0)
            base = label = str(label or loss.name)
            count = 1
            while label in used:
                count += 1
                label = f"{base}_{count}"
            used.add(label)
            self.terms.append((label, weight, loss))

    def __call__(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> Any:
        total = None
        for _, weight, loss in self.terms:
            value = weight * ops.cast(loss(y_true, y_pred, sample_weight), "float32")
            total = value if total is None else total + value
        return total

    def call(self, y_true: Any, y_pred: Any) -> Any:
        return self(y_true, y_pred)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "dtype": self._dtype_policy.name,
                "terms": [{"label": label, "weight": weight,
                           "loss": keras.saving.serialize_keras_object(loss)}
                          for label, weight, loss in self.terms]}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> CombinedLoss:
        config = dict(config)
        terms = [(t["label"], t["weight"], keras.saving.deserialize_keras_object(t["loss"]))
                 for t in config.pop("terms")]
        return cls(terms, **config)


# --------------------------------------------------------------------------------------------
# Registry, building from recipe entries, checks on targets and heads.
# --------------------------------------------------------------------------------------------

LOSSES: dict[str, type] = {
    "dice": Dice,
    "jaccard": Jaccard,
    "iou": Jaccard,
    "generalized_dice": GeneralizedDice,
    "tversky": Tversky,
    "focal_tversky": FocalTversky,
    "focal": Focal,
    "crossentropy": Crossentropy,
    "weighted_crossentropy": WeightedCrossentropy,
}

# Constructor arguments that are not recipe options.
_NOT_OPTIONS = ("from_logits", "name", "reduction", "dtype")


def _lookup(name: Any, registry: Mapping[str, type], what: str) -> type:
    if not isinstance(name, str):
        raise ValueError(f"{what} name must be a string; got {name!r}. Expected one of:"
                         f" {', '.join(registry)}.")
    if name not in registry:
        close = difflib.get_close_matches(name, list(registry), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ValueError(f"unknown {what} '{name}'{hint}. Expected one of:"
                         f" {', '.join(registry)}.")
    return registry[name]


def _signature_options(cls: type, skip: Sequence[str]) -> dict[str, Any]:
    params = inspect.signature(cls.__init__).parameters
    return {k: p.default for k, p in params.items()
            if k != "self" and k not in skip and p.kind is p.KEYWORD_ONLY}


def loss_options(name: str) -> dict[str, object]:
    """The options a recipe may give loss ``name``, with their defaults.

    ``from_logits``, ``name``, ``reduction`` and ``dtype`` are excluded (the head decides them).

    Raises:
        ValueError: unknown loss name (with a suggestion).

    Example:
        >>> loss_options("tversky")["alpha"]
        0.3
    """
    return _signature_options(_lookup(name, LOSSES, "loss"), _NOT_OPTIONS)


def _check_options(name: str, options: Mapping[str, Any], allowed: Mapping[str, Any],
                   what: str) -> None:
    for key in options:
        if key not in allowed:
            close = difflib.get_close_matches(key, list(allowed), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ValueError(f"unknown option '{key}' of {what} '{name}'{hint}. Options:"
                             f" {', '.join(allowed) or 'none'}.")


def _build_term(entry: Any, from_logits: bool | None) -> tuple[str, float, keras.losses.Loss]:
    if isinstance(entry, str):
        entry = {"name": entry}
    if not isinstance(entry, Mapping):
        raise ValueError(f"a loss entry is a name or a mapping {{name: ..., weight: ...,"
                         f" options...}}; got {entry!r}.")
    options = dict(entry)
    if "name" not in options:
        raise ValueError(f"loss entry {entry!r} has no 'name'. Expected one of:"
                         f" {', '.join(LOSSES)}.")
    name = options.pop("name")
    cls = _lookup(name, LOSSES, "loss")
    weight = _check_number(f"loss '{name}'", "weight", options.pop("weight", 1.0), low=0.0)
    _check_options(name, options, {**loss_options(name), "from_logits": False}, "loss")
    if from_logits is not None:
        given = options.get("from_logits", from_logits)
        if given != from_logits:
            raise ValueError(f"loss '{name}': entry has from_logits={given!r} but the head"
                             f" declares from_logits={from_logits!r}; remove it from the entry.")
        options["from_logits"] = from_logits
    return name, weight, cls(name=name, **options)


def build(entry: Any, *, from_logits: bool | None = None) -> keras.losses.Loss:
    """Build a loss from a recipe entry.

    Args:
        entry: a loss name (``"dice"``), a mapping ``{"name": "dice", "weight": 1.0,
            **options}``, or a list of such entries (a weighted sum).
        from_logits: when given, injected into every term (the head decides it); an entry
            that sets a different ``from_logits`` is an error. Default None (keep the entry's).

    Returns:
        The plain loss for a single entry of weight 1, else a ``CombinedLoss`` (always for a
        list, so that each term keeps its label).

    Raises:
        ValueError: unknown name (with a suggestion), unknown option, invalid option value,
            negative weight, or a ``from_logits`` conflict.

    Example:
        >>> build([{"name": "dice", "smooth": 1.0}, "crossentropy"], from_logits=True)
    """
    if isinstance(entry, (list, tuple)):
        if not entry:
            raise ValueError("an empty list of loss terms; give at least one, e.g. ['dice'].")
        return CombinedLoss([_build_term(e, from_logits) for e in entry])
    label, weight, loss = _build_term(entry, from_logits)
    if weight == 1.0:
        return loss
    return CombinedLoss([(label, weight, loss)])


def check_targets(y_true: np.ndarray, *, classes: int, where: str,
                  encoding: str | None = None) -> None:
    """Check a NumPy target array before training: encoding, shape and values.

    Args:
        y_true: targets of a head: a binary mask (``classes == 1``), integer labels (any
            integer-valued dtype, floats included) or a one-hot array (last axis ``classes``).
        classes: the head's output channels; 1 means binary.
        where: what is checked (a head name, a file), repeated in the error message.
        encoding: "labels", "onehot" or "binary" to insist on one; None (default) accepts
            labels or one-hot for ``classes > 1``, deciding one-hot when the last axis has
            ``classes`` entries that are all 0/1 and sum to 1.

    Raises:
        ValueError: non-finite or non-numeric values; a binary mask with values other than
            0 and 1; labels that are not integers or fall outside ``[0, classes)``; a one-hot
            array whose channel count differs from ``classes`` or whose rows do not sum to 1.

    Example:
        >>> check_targets(masks, classes=4, where="heads.mask (train split)")
    """
    y = np.asarray(y_true)
    if not isinstance(classes, (int, np.integer)) or isinstance(classes, bool) or classes < 1:
        raise ValueError(f"{where}: invalid classes={classes!r}; expected an integer >= 1.")
    if encoding not in (None, "labels", "onehot", "binary"):
        raise ValueError(f"{where}: invalid encoding={encoding!r}; expected None, 'labels',"
                         " 'onehot' or 'binary'.")
    if y.dtype == bool:
        y = y.astype(np.uint8)
    if not np.issubdtype(y.dtype, np.number):
        raise ValueError(f"{where}: targets must be numeric; got dtype {y.dtype}.")
    if y.size == 0:
        raise ValueError(f"{where}: targets are empty (shape {y.shape}).")
    if not np.all(np.isfinite(y)):
        raise ValueError(f"{where}: targets contain {int(np.sum(~np.isfinite(y)))} NaN or"
                         " infinite values.")
    if classes == 1 or encoding == "binary":
        if classes != 1:
            raise ValueError(f"{where}: encoding='binary' needs classes=1; got {classes}.")
        if encoding == "onehot":
            raise ValueError(f"{where}: a binary head (classes=1) takes a 0/1 mask, not"
                             " one-hot targets.")
        bad = (y != 0) & (y != 1)
        if bad.any():
            values = np.unique(y[bad])[:5].tolist()
            hint = " (a 0/255 image mask? divide by 255)" if y.max() == 255 else ""
            raise ValueError(f"{where}: a binary mask must hold only 0 and 1; found"
                             f" {values} in {int(bad.sum())} pixels{hint}.")
        return
    looks_onehot = (y.ndim >= 2 and y.shape[-1] > 1 and bool(np.all((y == 0) | (y == 1)))
                    and bool(np.all(y.sum(axis=-1) == 1)))
    if encoding == "onehot" or (encoding is None and looks_onehot and y.shape[-1] == classes):
        if y.ndim < 2 or y.shape[-1] != classes:
            raise ValueError(f"{where}: one-hot targets need a last axis of {classes} (the"
                             f" head's classes); got shape {y.shape}.")
        if not np.all((y >= 0) & (y <= 1)) or not np.allclose(y.sum(axis=-1), 1.0, atol=1e-5):
            raise ValueError(f"{where}: one-hot targets must be in [0, 1] and sum to 1 over"
                             " the last axis.")
        return
    if encoding is None and looks_onehot and y.ndim != 3:
        raise ValueError(f"{where}: targets look one-hot with {y.shape[-1]} channels (shape"
                         f" {y.shape}) but the head has classes={classes}; give {classes}"
                         " channels or integer labels.")
    not_int = y != np.round(y)
    if not_int.any():
        raise ValueError(f"{where}: labels must be integers; found"
                         f" {np.unique(y[not_int])[:5].tolist()}.")
    bad = (y < 0) | (y >= classes)
    if bad.any():
        values = np.unique(y[bad])[:5].tolist()
        raise ValueError(f"{where}: label values must be in [0, {classes}) for classes="
                         f"{classes}; found {values} in {int(bad.sum())} pixels.")


# Layers and ops that only move values around: look through them for the activation.
_SHAPE_ONLY = {"Cropping1D", "Cropping2D", "Cropping3D", "Reshape", "Identity", "Flatten",
               "Permute", "Squeeze", "ExpandDims", "Cast", "InputLayer"}
_ACTIVATIONS = {"softmax": "softmax", "sigmoid": "sigmoid", "log_softmax": "log_softmax",
                "logsoftmax": "log_softmax", "linear": "linear"}


def output_activation(output: Any) -> str | None:
    """Name of the activation that produced a functional-model output, if it can be told.

    Follows ``output._keras_history`` back through shape-only layers (cropping, reshape...)
    to the layer or op that computed the values: a ``Softmax``/``Activation`` layer, a
    ``keras.ops.softmax``/``sigmoid`` op, or a layer with an ``activation`` attribute (Conv,
    Dense). Returns "softmax", "sigmoid", "linear", another activation name, or None when the
    producing operation says nothing (e.g. an ``Add``).
    """
    history = getattr(output, "_keras_history", None)
    for _ in range(64):
        if history is None:
            return None
        op = history.operation
        kind = type(op).__name__
        if kind in _SHAPE_ONLY:
            inputs = op._inbound_nodes[history.node_index].input_tensors
            if len(inputs) != 1:
                return None
            history = getattr(inputs[0], "_keras_history", None)
            continue
        if kind.lower() in _ACTIVATIONS:
            return _ACTIVATIONS[kind.lower()]
        activation = getattr(op, "activation", None)
        if activation is None:
            return None
        found = getattr(activation, "__name__", None) or str(activation)
        return _ACTIVATIONS.get(found, found)
    return None


def check_logits_head(output: Any, *, from_logits: bool, multilabel: bool = False,
                      where: str) -> str | None:
    """Check a head's symbolic output against the loss's ``from_logits`` before training.

    Catches: a softmax or sigmoid output fed to a loss with ``from_logits=True`` (the
    activation would be applied twice); a linear output fed to ``from_logits=False`` (logits
    read as probabilities); a sigmoid on C > 1 channels for a softmax loss; a softmax over one
    channel (always 1). Outputs whose activation cannot be told pass.

    Args:
        output: a Keras symbolic tensor (a functional model's output).
        from_logits: what the head's losses declare.
        multilabel: C > 1 channels are independent sigmoids. Default False.
        where: the head name (or path), repeated in the message.

    Returns:
        The activation name found (see ``output_activation``) or None.

    Raises:
        ValueError: one of the mistakes above.

    Example:
        >>> check_logits_head(model.outputs[0], from_logits=True, where="heads.mask")
    """
    activation = output_activation(output)
    channels = output.shape[-1]
    if activation in ("softmax", "sigmoid") and from_logits:
        raise ValueError(f"{where}: the output already goes through {activation} and the loss"
                         f" has from_logits=True, so {activation} would be applied twice;"
                         " remove the activation from the model (preferred: stabler) or use"
                         " from_logits=False.")
    if activation == "linear" and not from_logits:
        raise ValueError(f"{where}: the output is linear (logits) but the loss has"
                         " from_logits=False and would read logits as probabilities; use"
                         " from_logits=True.")
    if activation == "sigmoid" and channels is not None and channels > 1 and not multilabel:
        raise ValueError(f"{where}: a sigmoid output with {channels} channels feeds a"
                         " multi-class softmax loss; use softmax (or logits), or"
                         " multilabel=True for independent channels.")
    if activation == "softmax" and channels == 1:
        raise ValueError(f"{where}: softmax over a single channel is always 1; a binary head"
                         " needs sigmoid (or logits).")
    return activation
