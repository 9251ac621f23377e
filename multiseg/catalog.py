"""What a recipe may name: the losses and metrics, their options with defaults, and the rules
that fit a loss's per-channel options to a head. Keras-free, so that a recipe is read and
checked before Keras and TensorFlow are imported (a mistake is answered in a fraction of a
second, not after their start-up).

The options of a loss or metric are declared once, by the keyword-only arguments of its
class's constructor. This module reads them from the source with ``ast`` (following base
classes and module constants) instead of importing the class; ``tests/test_catalog.py``
checks that the reading equals ``inspect.signature`` of every imported class.
"""

from __future__ import annotations

import ast
import functools
import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from multiseg.options import OptionError, show

# Recipe name -> (module, class).
LOSS_CLASSES: dict[str, tuple[str, str]] = {
    "dice": ("multiseg.losses.region", "Dice"),
    "jaccard": ("multiseg.losses.region", "Jaccard"),
    "iou": ("multiseg.losses.region", "Jaccard"),
    "generalized_dice": ("multiseg.losses.region", "GeneralizedDice"),
    "tversky": ("multiseg.losses.region", "Tversky"),
    "focal_tversky": ("multiseg.losses.region", "FocalTversky"),
    "focal": ("multiseg.losses.pixel", "Focal"),
    "crossentropy": ("multiseg.losses.pixel", "Crossentropy"),
    "weighted_crossentropy": ("multiseg.losses.pixel", "WeightedCrossentropy"),
}
METRIC_CLASSES: dict[str, tuple[str, str]] = {
    "dice": ("multiseg.metrics.confusion", "DiceScore"),
    "iou": ("multiseg.metrics.confusion", "IoUScore"),
    "jaccard": ("multiseg.metrics.confusion", "IoUScore"),
    "accuracy": ("multiseg.metrics.accuracy", "Accuracy"),
    "top_k_accuracy": ("multiseg.metrics.accuracy", "TopKAccuracy"),
    "precision": ("multiseg.metrics.confusion", "Precision"),
    "recall": ("multiseg.metrics.confusion", "Recall"),
    "boundary_f1": ("multiseg.metrics.boundary", "BoundaryF1"),
}

# Constructor arguments that are not recipe options: decided by the head, or by Keras.
LOSS_NOT_OPTIONS = ("from_logits", "name", "reduction", "dtype")
METRIC_NOT_OPTIONS = ("classes", "from_logits", "outlines", "name", "dtype")

_ROOT = Path(__file__).resolve().parent.parent


def loss_options(name: str) -> dict[str, Any]:
    """The options a recipe may give loss ``name``, with their defaults.

    Example:
        >>> loss_options("tversky")["alpha"]
        0.3
    """
    return _options(*LOSS_CLASSES[name], LOSS_NOT_OPTIONS)


def metric_options(name: str) -> dict[str, Any]:
    """The options a recipe may give metric ``name``, with their defaults."""
    return _options(*METRIC_CLASSES[name], METRIC_NOT_OPTIONS)


def resolve(entry: tuple[str, str]) -> type:
    """The class an entry of ``LOSS_CLASSES`` or ``METRIC_CLASSES`` names (imports it)."""
    module, name = entry
    return getattr(importlib.import_module(module), name)


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


def _options(module: str, cls: str, skip: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in _keyword_defaults(module, cls).items() if k not in skip}


@functools.cache
def _keyword_defaults(module: str, cls: str) -> dict[str, Any]:
    """The keyword-only arguments of ``module.cls.__init__`` with their defaults, read from the
    source: the class's own ``__init__``, else its first base's (in this project)."""
    tree = _parse(module)
    node = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls), None)
    if node is None:
        where, name = _imported(tree, module, cls)
        return _keyword_defaults(where, name)
    init = next((n for n in node.body
                 if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
    if init is None:
        base = node.bases[0]
        if not isinstance(base, ast.Name):
            raise TypeError(f"{module}.{cls}: cannot follow base {ast.unparse(base)}")
        return _keyword_defaults(module, base.id)
    found = {}
    for arg, default in zip(init.args.kwonlyargs, init.args.kw_defaults, strict=True):
        if default is None:
            raise TypeError(f"{module}.{cls}: option '{arg.arg}' has no default")
        found[arg.arg] = _value(default, module)
    return found


def _value(node: ast.expr, module: str) -> Any:
    """A default's value: a literal, or a constant of the module (or imported into it)."""
    if isinstance(node, ast.Name):
        tree = _parse(module)
        for item in tree.body:
            if (isinstance(item, (ast.Assign, ast.AnnAssign)) and item.value is not None
                    and node.id in _targets(item)):
                return _value(item.value, module)
        where, name = _imported(tree, module, node.id)
        return _value(ast.Name(id=name), where)
    return ast.literal_eval(node)


def _targets(item: ast.Assign | ast.AnnAssign) -> list[str]:
    targets = item.targets if isinstance(item, ast.Assign) else [item.target]
    return [t.id for t in targets if isinstance(t, ast.Name)]


def _imported(tree: ast.Module, module: str, name: str) -> tuple[str, str]:
    for item in tree.body:
        if isinstance(item, ast.ImportFrom) and item.module and item.module.startswith("multiseg"):
            for alias in item.names:
                if (alias.asname or alias.name) == name:
                    return item.module, alias.name
    raise TypeError(f"{module}: cannot find '{name}'")


@functools.cache
def _parse(module: str) -> ast.Module:
    path = _ROOT.joinpath(*module.split("."))
    file = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    return ast.parse(file.read_text(encoding="utf-8"))
