"""Recipe names to metric classes (``METRICS``), their options, and building from entries."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import keras

from multiseg.catalog import METRIC_CLASSES, resolve
from multiseg.catalog import metric_options as catalog_metric_options
from multiseg.headkinds import HEAD_DECIDED_OPTIONS
from multiseg.options import check_options
from multiseg.tensors import keyword_options, lookup

# The names, their classes and options are declared in ``multiseg.catalog`` (Keras-free,
# so that recipes are checked before Keras starts).
METRICS: dict[str, type] = {name: resolve(entry) for name, entry in METRIC_CLASSES.items()}

# Constructor arguments that the head decides, never the recipe, and why.
_HEAD_DECIDED = {"classes": "its output channels",
                 "from_logits": HEAD_DECIDED_OPTIONS["from_logits"],
                 "outlines": HEAD_DECIDED_OPTIONS["outlines"]}


def metric_options(name: str) -> dict[str, object]:
    """The options a recipe may give metric ``name``, with their defaults.

    Raises:
        ValueError: unknown metric name (with a suggestion).

    Example:
        >>> metric_options("boundary_f1")["tolerance"]
        2
    """
    lookup(name, METRICS, "metric")
    return catalog_metric_options(name)


def build_metric(entry: Any, *, classes: int, from_logits: bool,
                 outlines: bool = False) -> keras.metrics.Metric:
    """Build a metric from a recipe entry for a head with ``classes`` output channels.

    Args:
        entry: a metric name (``"dice"``) or a mapping ``{"name": "dice", **options}``.
        classes: the head's output channels (1 = binary).
        from_logits: whether the head outputs logits.
        outlines: whether the head's target is an outline map (a boundary head); passed to
            the metrics that take it (``boundary_f1``). Default False.

    Returns:
        The metric, named after the entry ("dice"; "dice_class2" with ``class_id: 2``) so that
        Keras logs "<head>_dice".

    Raises:
        ValueError: unknown name (with a suggestion), or an invalid option value (from the
            metric's constructor).
        multiseg.options.OptionError: (a ValueError) an unknown option, one of the wrong type,
            or one the head decides (``from_logits``, ``classes``, ``outlines``): the check
            the recipe reader makes (``multiseg.options.check_options``).

    Example:
        >>> build_metric({"name": "iou", "class_id": 1}, classes=3, from_logits=True)
    """
    if isinstance(entry, str):
        entry = {"name": entry}
    if not isinstance(entry, Mapping) or "name" not in entry:
        raise ValueError(f"a metric entry is a name or a mapping {{name: ..., options...}};"
                         f" got {entry!r}. Expected names: {', '.join(METRICS)}.")
    options = dict(entry)
    name = options.pop("name")
    cls = lookup(name, METRICS, "metric")
    options = check_options(f"metric '{name}'", options, metric_options(name),
                            decided=_HEAD_DECIDED)
    label = name if options.get("class_id") is None else f"{name}_class{options['class_id']}"
    if "outlines" in keyword_options(cls, ()):
        options["outlines"] = outlines
    return cls(classes, from_logits=from_logits, name=label, **options)

