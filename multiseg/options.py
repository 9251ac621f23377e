"""Options of losses, metrics and data sources: one check, and the words its errors use.

A family (losses, metrics, sources) declares its options once, as keyword arguments with
defaults; ``check_options`` is the one check of a user's options against such a declaration.
It raises ``OptionError`` naming the option; the recipe reader turns that into a
``RecipeError`` with the field's path, and the Python API lets it through as a ``ValueError``.

This module imports neither Keras nor the rest of multiseg.
"""

from __future__ import annotations

import difflib
import math
import reprlib
from collections.abc import Callable, Mapping
from typing import Any

# Values quoted in messages are shortened: a 100 kB string or a deeply nested list from a
# broken recipe must give a readable message, not a huge one (or a RecursionError).
_SHOW = reprlib.Repr()
_SHOW.maxstring = _SHOW.maxother = 80
_SHOW.maxlevel = 3


def show(value: Any) -> str:
    """A short repr of a user's value for an error message."""
    try:
        return _SHOW.repr(value)
    except ValueError:  # an integer beyond Python's 4300-digit str() limit
        return f"<an integer of {value.bit_length()} bits>"


def type_name(value: Any) -> str:
    """How a message names the type of a user's value: "an integer", "a mapping"."""
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a mapping", type(None): "empty"}.get(type(value),
                                                                          type(value).__name__)


def suggest(word: Any, choices: list[str] | tuple[str, ...]) -> str:
    """`` (did you mean 'dice'?)`` for a near miss of one of ``choices``, else ``""``."""
    word = str(word)
    same = [c for c in choices if c.lower() == word.lower()]  # 'Dice' -> 'dice'
    # A cut-short name ('acc' -> 'accuracy'), else the closest spelling.
    start = [c for c in choices if len(word) >= 3 and c.startswith(word)]
    close = same or start or difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


class OptionError(ValueError):
    """A bad option: ``key`` is the option (``alpha``, or ``alpha[1]`` for a list entry)."""

    def __init__(self, key: str, message: str):
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}")


Check = Callable[[Any], "str | None"]

# Options whose default (None) says nothing of their type, checked by name.
# `threshold` is a probability: a head's logits go through its sigmoid before the cut.
_CHECKS_BY_NAME: dict[str, tuple[type, Check]] = {
    "threshold": (float, lambda v: None if 0 < v < 1 else "must be a probability in (0, 1)"),
}
LARGEST_OPTION_VALUE = 1e6  # the losses compute in float32, where 1e300 is inf


def check_value(value: Any, kind: type | tuple[type, ...], key: str,
                check: Check | None = None) -> Any:
    """``value`` if it is of ``kind`` (an integer passes for a float, as a float) and passes
    ``check``; else an ``OptionError`` naming ``key``."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        try:
            value = float(value)
        except OverflowError:
            raise OptionError(key, f"must be a finite number, got {show(value)}") from None
    ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
    if not ok:
        # "a number" covers integers: float fields take both.
        shown = [k for k in kinds if not (k is int and float in kinds)]
        expected = " or ".join(type_name(k()) if k is not type(None) else "empty"
                               for k in shown)
        raise OptionError(key, f"expected {expected}, got {type_name(value)} ({show(value)})")
    if isinstance(value, float) and not math.isfinite(value):
        raise OptionError(key, f"must be a finite number, got {value}")
    if check is not None:
        problem = check(value)
        if problem:
            raise OptionError(key, f"{problem}, got {show(value)}")
    return value


def _check_size(value: Any, key: str) -> None:
    entries = list(enumerate(value)) if isinstance(value, list) else [(None, value)]
    for i, entry in entries:
        if isinstance(entry, (int, float)) and not isinstance(entry, bool):
            check_value(entry, (int, float), key if i is None else f"{key}[{i}]",
                        lambda v: None if abs(v) <= LARGEST_OPTION_VALUE
                        else "must be between -1e6 and 1e6")


def check_options(what: str, options: Mapping[str, Any], allowed: Mapping[str, Any], *,
                  decided: Mapping[str, str] = {}, fixed: tuple[str, ...] = ()
                  ) -> dict[str, Any]:
    """The options of one loss, metric or source, checked against its declaration.

    Unknown keys are refused first (with a suggestion), then keys in ``decided`` (options the
    head decides, with why). Each value must have its default's type: a boolean for a boolean
    default, an integer for an integer one (kept an integer), a number for a float one.
    Numbers must be finite and within +-1e6. None means the default and is dropped. Options
    that default to None or a string are left to the constructor, except those checked by name
    (``threshold``).

    Args:
        what: how messages name the owner, e.g. ``loss 'dice'``.
        options: the user's options.
        allowed: the declared options and their defaults.
        decided: options the caller decides, mapped to why.
        fixed: keys of the entry that are not options (``name``, ``weight``); skipped.

    Raises:
        OptionError: naming the option at fault.
    """
    for key in options:
        if key in fixed:
            continue
        if key in decided:
            raise OptionError(key, f"is decided by the head ({decided[key]}), not by the"
                              " recipe: remove it")
        if key not in allowed:
            raise OptionError(key, f"unknown option of {what}{suggest(key, [*allowed, *fixed])}."
                              f" Options: {', '.join(allowed) or 'none'}")
    checked = {}
    for key, value in options.items():
        if key in fixed or value is None:  # null: the default, as for every other key
            continue
        default = allowed[key]
        if isinstance(default, (bool, int, float)):  # type(True) is bool, not int
            value = check_value(value, type(default), key)
        elif key in _CHECKS_BY_NAME:
            kind, check = _CHECKS_BY_NAME[key]
            value = check_value(value, kind, key, check)
        _check_size(value, key)
        checked[key] = value
    return checked
