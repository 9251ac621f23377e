"""Recipe names to loss classes (``LOSSES``), their options, and building from entries."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import keras

from multiseg.losses.combined import CombinedLoss
from multiseg.losses.pixel import Crossentropy, Focal, WeightedCrossentropy
from multiseg.losses.region import Dice, FocalTversky, GeneralizedDice, Jaccard, Tversky
from multiseg.options import OptionError, check_options, show
from multiseg.tensors import check_number, keyword_options, lookup

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


def loss_options(name: str) -> dict[str, object]:
    """The options a recipe may give loss ``name``, with their defaults.

    ``from_logits``, ``name``, ``reduction`` and ``dtype`` are excluded (the head decides them).

    Raises:
        ValueError: unknown loss name (with a suggestion).

    Example:
        >>> loss_options("tversky")["alpha"]
        0.3
    """
    return keyword_options(lookup(name, LOSSES, "loss"), _NOT_OPTIONS)


def check_channels(name: str, options: Mapping[str, Any], *, classes: int,
                   multilabel: bool = False) -> None:
    """Per-channel options of loss ``name`` must fit a head of ``classes`` output channels
    (independent sigmoids when ``multilabel``). The loss itself can only tell at the first
    training step, deep inside Keras; the recipe reader asks here at load time.

    Raises:
        multiseg.options.OptionError: naming the option (``class_weights``, ``alpha``) or
            ``name`` for a loss that does not fit the head at all.
    """
    sigmoid = classes == 1 or multilabel
    weights = options.get("class_weights")
    if isinstance(weights, (list, tuple)):
        # crossentropy on one sigmoid channel weighs [background, foreground].
        want = 2 if name == "crossentropy" and classes == 1 else classes
        if len(weights) != want:
            raise OptionError("class_weights", f"has {len(weights)} entries; this head has"
                              f" {classes} output channel{'s' if classes > 1 else ''}:"
                              f" give {want}" + (" ([background, foreground])"
                                                 if classes == 1 and want == 2 else ""))
    alpha = options.get("alpha") if name == "focal" else None
    if isinstance(alpha, (list, tuple)) and classes == 1:
        raise OptionError("alpha", "a binary head takes one number: the weight of positives"
                          f" (negatives get 1 - alpha), got {show(alpha)}")
    if isinstance(alpha, (list, tuple)) and len(alpha) != classes:
        raise OptionError("alpha", f"has {len(alpha)} entries; this head has {classes}"
                          " classes: give one weight per class")
    if isinstance(alpha, (int, float)) and not sigmoid:
        raise OptionError("alpha", f"one number is ambiguous for a {classes}-class softmax"
                          f" head: give one weight per class, e.g. {[alpha] * classes}")
    if name == "weighted_crossentropy" and not sigmoid:
        raise OptionError("name", f"weighted_crossentropy is a per-channel sigmoid loss; this"
                          f" head has {classes} softmax classes: use crossentropy with"
                          " class_weights (a presence target makes a head multilabel)")


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
