"""Head kinds: the one record of what each kind of head is.

Every module that needs to know something about a head kind asks its record here: the recipe
reader (defaults, target it learns, fixed channels), the model builder, data, prediction and
reports (spatial or not), losses and metrics (options the head decides). Adding a head kind is
a record here, a builder in ``multiseg.models.heads``, its docs and its tests.

This module imports neither Keras nor the rest of multiseg, so that anything can ask it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class HeadKind:
    name: str
    spatial: bool  # output (N, H, W, C) if True, else (N, C)
    target: str  # what it learns: "mask" (per pixel) or "label" (per image)
    default_losses: tuple[Mapping[str, Any], ...]  # loss terms when the recipe gives none
    default_metrics: tuple[str, ...]  # metrics when the recipe gives none
    default_attach: str  # trunk attach point when the recipe gives none
    builder: str  # function name in multiseg.models.heads
    channels: int | None = None  # fixed output channels, or None: the target's classes
    from_logits: bool = True  # its output is logits; losses and metrics are told so
    # The target is an outline map already: boundary metrics compare the maps themselves
    # instead of outlines extracted from them (a filled blob would match its outline).
    outlines: bool = False
    # A one-channel (sigmoid) output may learn a two-class target: classes 1 with a 0/1 label.
    binary_from_two_classes: bool = False
    refuses_two_classes: bool = False  # 2 classes must be written as classes: 1

    def decided_options(self, *, multilabel: bool) -> dict[str, Any]:
        """The options this head passes to each of its losses and metrics: ``from_logits``
        always, ``multilabel`` when its target is multi-hot, ``outlines`` for outline maps.
        A loss or metric takes those of them its constructor has."""
        options: dict[str, Any] = {"from_logits": self.from_logits}
        if multilabel:
            options["multilabel"] = True
        if self.outlines:
            options["outlines"] = True
        return options


_REGION_AND_PIXEL = ({"name": "dice", "weight": 1.0}, {"name": "crossentropy", "weight": 1.0})

HEAD_KINDS: dict[str, HeadKind] = {
    "segmentation": HeadKind(
        name="segmentation", spatial=True, target="mask", default_losses=_REGION_AND_PIXEL,
        default_metrics=("dice", "iou"), default_attach="decoder",
        builder="segmentation_head", refuses_two_classes=True),
    "boundary": HeadKind(
        name="boundary", spatial=True, target="mask",
        default_losses=({"name": "tversky", "weight": 1.0},
                        {"name": "crossentropy", "weight": 1.0}),
        default_metrics=("dice",), default_attach="decoder", builder="boundary_head",
        channels=1, outlines=True),
    "classification": HeadKind(
        name="classification", spatial=False, target="label",
        default_losses=({"name": "crossentropy", "weight": 1.0},),
        default_metrics=("accuracy",), default_attach="bottleneck",
        builder="classification_head", binary_from_two_classes=True),
}

# Options of losses and metrics that the head decides, never the recipe, and why.
HEAD_DECIDED_OPTIONS = {
    "from_logits": "its output is logits",
    "multilabel": "a presence target, {derive: label, mode: presence}, makes a classification"
                  " head multilabel, one sigmoid per class; any other head picks one class",
    "outlines": "a boundary head's output and target are outline maps, which boundary_f1"
                " compares as they are; other heads' outlines are extracted from their masks",
}


def head_kind(name: str) -> HeadKind:
    """The record of head kind ``name``; a KeyError names the known kinds."""
    try:
        return HEAD_KINDS[name]
    except KeyError:
        raise KeyError(f"unknown head kind {name!r}; known: {', '.join(HEAD_KINDS)}") from None
