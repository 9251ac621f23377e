"""The weighting methods of ``train.weighting``: one record each, read by the recipe.

A record holds every fact the recipe reader needs about a method: whether it works on the
losses or on the trunk's gradients, its options with their defaults and checks, and how many
weighted heads it needs. The Keras side (state and update rule of each method) is in
``multiseg.weighting.state``, keyed by the same names.

This module imports neither Keras nor the rest of multiseg.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

Check = Callable[[Any], "str | None"]


def _positive_at_most(limit: float) -> Check:
    return lambda v: None if 0 < v <= limit else f"must be > 0 and <= {limit:g}"


def _non_negative_at_most(limit: float) -> Check:
    return lambda v: None if 0 <= v <= limit else f"must be >= 0 and <= {limit:g}"


@dataclass(frozen=True)
class WeightingMethod:
    """What the recipe knows of a weighting method."""

    name: str
    level: str  # "loss": weights of the heads' losses | "gradient": on the trunk's gradients
    summary: str  # one line, for docs and error messages
    # option -> (default, type, check); a default of ... makes the option required.
    options: Mapping[str, tuple[Any, type, Check | None]] = field(default_factory=dict)
    min_heads: int = 2  # heads with loss_weight > 0 that the method needs to make sense
    # The most heads with loss_weight > 0 it takes (upgrad solves its projection exactly
    # over every subset of the heads: 2^K small linear systems per step).
    max_heads: int | None = None


SCHEDULE_SHAPES = ("linear", "cosine")

METHODS: dict[str, WeightingMethod] = {
    "static": WeightingMethod(
        "static", "loss", "each head's loss_weight, constant", min_heads=1),
    "scheduled": WeightingMethod(
        "scheduled", "loss", "per-head weights that move from `initial` to `final` between"
        " epochs `begin` and `end`", options={"heads": (..., dict, None)}, min_heads=1),
    "uncertainty": WeightingMethod(
        "uncertainty", "loss", "learned log-variances s: loss_weight * exp(-s) * L + s"
        " (Kendall et al. 2018)"),
    "dwa": WeightingMethod(
        "dwa", "loss", "dynamic weight average: K softmax(r / T) of the rates at which the"
        " epoch losses fall (Liu et al. 2019)",
        options={"temperature": (2.0, float, _positive_at_most(1e3))}),
    "rlw": WeightingMethod(
        "rlw", "loss", "random loss weighting: K softmax(N(0, I)) drawn each step"
        " (Lin et al. 2022)"),
    "famo": WeightingMethod(
        "famo", "loss", "fast adaptive multitask optimisation: weights that equalise the"
        " heads' rates of improvement (Liu et al. 2023)",
        options={"learning_rate": (0.025, float, _positive_at_most(10.0)),
                 "decay": (1e-3, float, _non_negative_at_most(1.0))}),
    "pcgrad": WeightingMethod(
        "pcgrad", "gradient", "projecting conflicting gradients: on the shared trunk, each"
        " head's gradient loses its component against every other head's it conflicts with,"
        " in random order (Yu et al. 2020)"),
    "upgrad": WeightingMethod(
        "upgrad", "gradient", "unconflicting projection of gradients: on the shared trunk, the"
        " sum of each head's gradient projected onto the cone of directions that no head's"
        " loss rises along (Quinton & Rey 2024)", max_heads=8),
    "gradnorm": WeightingMethod(
        "gradnorm", "gradient", "gradient normalisation: learned loss weights that equalise"
        " the heads' gradient norms at the last shared layer, scaled by their relative"
        " training rates to the power alpha (Chen et al. 2018)",
        options={"alpha": (1.5, float, _non_negative_at_most(10.0)),
                 "learning_rate": (0.025, float, _positive_at_most(10.0))}),
}

# The backends whose training step the gradient-level methods have (per-head gradients in
# the step: a persistent tape on TensorFlow, one vjp pulled back per head on JAX).
GRADIENT_BACKENDS = ("tensorflow", "jax")
# Precisions a gradient-level method trains in: mixed_float16 scales the loss, and the step
# would have to unscale every head's gradient and skip non-finite ones before combining.
GRADIENT_PRECISIONS = ("float32", "mixed_bfloat16")

# Options of every method but static: how often the weights go to TensorBoard.
COMMON_OPTIONS: dict[str, tuple[Any, type, Check | None]] = {
    "log_every": (50, int, lambda v: None if 0 <= v <= 10_000_000
                  else "must be >= 0 and <= 10000000"),
}

# A schedule entry of `scheduled` (per head): default, type, check.
SCHEDULE_OPTIONS: dict[str, tuple[Any, type, Check | None]] = {
    "initial": (..., float, _non_negative_at_most(1e6)),
    "final": (None, float, _non_negative_at_most(1e6)),  # None: the head's loss_weight
    "begin": (0.0, float, _non_negative_at_most(1e5)),  # epoch (fractions allowed)
    "end": (..., float, _positive_at_most(1e5)),
    "shape": ("linear", str, lambda v: None if v in SCHEDULE_SHAPES
              else f"expected one of: {', '.join(SCHEDULE_SHAPES)}"),
}
