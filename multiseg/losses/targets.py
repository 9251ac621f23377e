"""Checks of a head's NumPy targets before training: encoding, shape and values."""

from __future__ import annotations

import numpy as np


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
