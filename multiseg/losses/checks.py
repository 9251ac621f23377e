"""Checks of loss constructor arguments that only losses take: smoothing, weight lists, alpha.

Each message names the loss, the argument, the value and the rule (``multiseg.tensors.fail``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from multiseg.tensors import check_number, fail

# Default smoothing of the ratio losses' numerator and denominator (MONAI's value).
DEFAULT_SMOOTH = 1e-5


def check_weights(owner: str, arg: str, value: Any) -> tuple[float, ...] | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, (Sequence, np.ndarray)):
        raise fail(owner, arg, value, "None or a list of non-negative numbers, one per channel")
    weights = tuple(check_number(owner, f"{arg}[{i}]", v, low=0.0) for i, v in enumerate(value))
    if not weights or not any(w > 0 for w in weights):
        raise fail(owner, arg, value, "a non-empty list with at least one positive weight")
    return weights


def check_smoothing(owner: str, smooth: float | None, smooth_nr: float,
                     smooth_dr: float) -> tuple[float, float]:
    if smooth is not None:
        smooth = check_number(owner, "smooth", smooth, low=0.0)
        if smooth_nr != DEFAULT_SMOOTH or smooth_dr != DEFAULT_SMOOTH:
            raise ValueError(f"{owner}: give either `smooth` (sets both) or `smooth_nr`/"
                             f"`smooth_dr`, not both; got smooth={smooth!r}, "
                             f"smooth_nr={smooth_nr!r}, smooth_dr={smooth_dr!r}.")
        smooth_nr = smooth_dr = smooth
    smooth_nr = check_number(owner, "smooth_nr", smooth_nr, low=0.0)
    smooth_dr = check_number(owner, "smooth_dr", smooth_dr, low=0.0)
    if smooth_nr > 0 and smooth_dr == 0:
        raise fail(owner, "smooth_dr", smooth_dr, "a positive number when smooth_nr > 0 (an"
                    " empty class would score smooth_nr / 0 = inf)")
    return smooth_nr, smooth_dr



def check_alpha(owner: str, alpha: Any) -> float | tuple[float, ...] | None:
    if alpha is None:
        return None
    if isinstance(alpha, (int, float, np.number)) and not isinstance(alpha, (bool, np.bool_)):
        return check_number(owner, "alpha", alpha, low=0.0, high=1.0)
    return check_weights(owner, "alpha", alpha)
