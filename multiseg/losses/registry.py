"""Recipe names to loss classes (``LOSSES``), their options, and building from entries."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import keras

from multiseg.catalog import LOSS_CLASSES, check_channels, resolve
from multiseg.catalog import loss_options as catalog_loss_options
from multiseg.losses.combined import CombinedLoss
from multiseg.options import check_options
from multiseg.tensors import check_number, lookup

__all__ = ["LOSSES", "build", "check_channels", "loss_options"]

# The names, their classes and options are declared in ``multiseg.catalog`` (Keras-free,
# so that recipes are checked before Keras starts).
LOSSES: dict[str, type] = {name: resolve(entry) for name, entry in LOSS_CLASSES.items()}


def loss_options(name: str) -> dict[str, object]:
    """The options a recipe may give loss ``name``, with their defaults.

    ``from_logits``, ``name``, ``reduction`` and ``dtype`` are excluded (the head decides them).

    Raises:
        ValueError: unknown loss name (with a suggestion).

    Example:
        >>> loss_options("tversky")["alpha"]
        0.3
    """
    lookup(name, LOSSES, "loss")
    return catalog_loss_options(name)


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
    cls = lookup(name, LOSSES, "loss")
    weight = check_number(f"loss '{name}'", "weight", options.pop("weight", 1.0), low=0.0)
    # from_logits may be written in an entry only as the head declares it (checked below).
    options = check_options(f"loss '{name}'", options,
                            {**loss_options(name), "from_logits": False})
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
        ValueError: unknown name (with a suggestion), negative weight, an invalid option value
            (from the loss's constructor), or a ``from_logits`` conflict.
        multiseg.options.OptionError: (a ValueError) an unknown option or one of the wrong
            type, the check the recipe reader makes (``multiseg.options.check_options``).

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
