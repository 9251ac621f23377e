"""Helpers shared by the loss and metric families: argument checks, target handling, lookups.

``multiseg.losses`` and ``multiseg.metrics`` both check constructor arguments with the same
words, read ``y_true`` against ``y_pred`` the same way (labels, one-hot or binary masks, see
``multiseg.losses``), and turn a recipe name into a class through a literal dict. Those pieces
live here, so that neither family imports the other's private names.
"""

from __future__ import annotations

import difflib
import inspect
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from keras import ops

# The package string of every registered multiseg Loss and Metric (``multiseg>Dice``); saved
# models name their classes with it, so it can never change.
PACKAGE = "multiseg"

# --------------------------------------------------------------------------------------------
# Argument checks (constructors): every message names the argument, the value, the rule.
# --------------------------------------------------------------------------------------------


def fail(owner: str, arg: str, value: Any, expected: str) -> ValueError:
    """The error of a bad constructor argument: ``Dice: invalid `smooth`=-2.0; expected ...``."""
    return ValueError(f"{owner}: invalid `{arg}`={value!r}; expected {expected}.")


def check_bool(owner: str, arg: str, value: Any) -> bool:
    """``value`` as a bool; a ValueError (``fail``) unless it is True or False."""
    if not isinstance(value, (bool, np.bool_)):
        raise fail(owner, arg, value, "True or False")
    return bool(value)


def check_number(owner: str, arg: str, value: Any, *, low: float | None = None,
                 high: float | None = None, low_open: bool = False,
                 high_open: bool = False) -> float:
    """``value`` as a finite float within the bounds (``low_open``: ``low`` itself excluded);
    a ValueError (``fail``) that states the rule otherwise."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
        raise fail(owner, arg, value, "a number")
    value = float(value)
    bad = not math.isfinite(value)
    if low is not None:
        bad = bad or value < low or (low_open and value == low)
    if high is not None:
        bad = bad or value > high or (high_open and value == high)
    if bad:
        lo = "" if low is None else f"{'>' if low_open else '>='} {low:g}"
        hi = "" if high is None else f"{'<' if high_open else '<='} {high:g}"
        raise fail(owner, arg, value, f"a finite number {' and '.join(x for x in (lo, hi) if x)}")
    return value


# --------------------------------------------------------------------------------------------
# Targets against predictions.
# --------------------------------------------------------------------------------------------


def channels(y_pred: Any, owner: str) -> int:
    """The static channel count of channels-last ``y_pred``: 1 is binary, C > 1 multi-class.

    Raises:
        ValueError: rank below 2, or a channel axis of unknown size.
    """
    if len(y_pred.shape) < 2:
        raise ValueError(f"{owner}: y_pred must be channels-last with rank >= 2, (N, C) or"
                         f" (N, H, W, C); got shape {tuple(y_pred.shape)}.")
    count = y_pred.shape[-1]
    if count is None:
        raise ValueError(f"{owner}: the channel axis of y_pred must have a static size (it"
                         " decides binary vs multi-class); got shape"
                         f" {tuple(y_pred.shape)}.")
    return int(count)


def _check_same_grid(y_true: Any, y_pred: Any, owner: str, hint: str) -> None:
    t_shape, p_shape = tuple(y_true.shape), tuple(y_pred.shape)
    for a, b in zip(t_shape, p_shape[: len(t_shape)], strict=False):
        if a is not None and b is not None and a != b:
            raise ValueError(f"{owner}: y_true shape {t_shape} does not match y_pred shape"
                             f" {p_shape}{hint}.")


def targets(y_true: Any, y_pred: Any, *, multilabel: bool, owner: str) -> Any:
    """``y_true`` as a float32 one-hot (or multi-hot / binary) tensor shaped like ``y_pred``.

    Integer labels (possibly stored as floats: Keras casts targets to the loss dtype) are
    rounded and one-hot encoded; a label outside [0, C) encodes to all zeros.

    Raises:
        ValueError: rank or channel count of ``y_true`` incompatible with ``y_pred``.
    """
    count = channels(y_pred, owner)
    t_rank, p_rank = len(y_true.shape), len(y_pred.shape)
    t_last = y_true.shape[-1] if t_rank else None
    if count == 1 or multilabel:
        what = "a binary mask" if count == 1 else f"a multi-hot tensor with {count} channels"
        if t_rank == p_rank - 1 and count == 1:
            y_true = ops.expand_dims(y_true, -1)
        elif t_rank != p_rank or (t_last is not None and t_last != count):
            raise ValueError(
                f"{owner}: y_pred {tuple(y_pred.shape)} has {count} channel(s), so y_true"
                f" must be {what} shaped like it; got y_true {tuple(y_true.shape)}."
                + (" Integer labels need a softmax head: multilabel=False." if multilabel
                   and t_rank == p_rank - 1 else "")
                + (" A one-hot target needs a head with one channel per class." if count == 1
                   else ""))
        _check_same_grid(y_true, y_pred, owner, "")
        return ops.cast(y_true, "float32")
    if t_rank == p_rank and t_last == count:
        _check_same_grid(y_true, y_pred, owner, " (one-hot target)")
        return ops.cast(y_true, "float32")
    if t_rank == p_rank and t_last == 1:
        y_true = ops.squeeze(y_true, -1)
    elif t_rank == p_rank and t_last is not None:
        raise ValueError(
            f"{owner}: y_true {tuple(y_true.shape)} looks one-hot with {t_last} channels but"
            f" y_pred {tuple(y_pred.shape)} has {count} classes. Give labels shaped"
            f" {tuple(y_pred.shape[:-1])} or a one-hot tensor with {count} channels.")
    elif t_rank != p_rank - 1:
        raise ValueError(
            f"{owner}: y_true {tuple(y_true.shape)} is neither integer labels shaped"
            f" {tuple(y_pred.shape[:-1])} nor one-hot shaped {tuple(y_pred.shape)}.")
    _check_same_grid(y_true, y_pred, owner, " (integer labels)")
    # Labels may arrive as floats (Keras casts y_true to the loss dtype): round, then one-hot.
    labels = ops.cast(ops.round(ops.cast(y_true, "float32")), "int32")
    return ops.one_hot(labels, count, dtype="float32")


# --------------------------------------------------------------------------------------------
# Names to classes.
# --------------------------------------------------------------------------------------------


def lookup(name: Any, registry: Mapping[str, type], what: str) -> type:
    """The class of recipe name ``name`` in ``registry`` (``LOSSES``, ``METRICS``).

    Raises:
        ValueError: ``name`` is not a string, or unknown (with a suggestion), naming the
            known names.
    """
    if not isinstance(name, str):
        raise ValueError(f"{what} name must be a string; got {name!r}. Expected one of:"
                         f" {', '.join(registry)}.")
    if name not in registry:
        close = difflib.get_close_matches(name, list(registry), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ValueError(f"unknown {what} '{name}'{hint}. Expected one of:"
                         f" {', '.join(registry)}.")
    return registry[name]


def keyword_options(cls: type, skip: Sequence[str]) -> dict[str, Any]:
    """The keyword-only constructor arguments of ``cls`` but ``skip``, with their defaults:
    the options a recipe may give a loss or metric, declared once by its signature."""
    params = inspect.signature(cls.__init__).parameters
    return {k: p.default for k, p in params.items()
            if k != "self" and k not in skip and p.kind is p.KEYWORD_ONLY}
