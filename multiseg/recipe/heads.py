"""The recipe's heads: name, kind, target, loss terms and metrics of each.

What a kind of head is (its target, fixed channels, defaults, the options it decides) comes
from its record in ``multiseg.headkinds``; what a target is from ``multiseg.data.targets``;
the options of losses and metrics from their registries, checked by ``multiseg.options``.
Losses and metrics are built once here, so that a bad option value fails at load time.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from multiseg.catalog import (
    LOSS_CLASSES,
    METRIC_CLASSES,
    check_channels,
    loss_options,
    metric_options,
)
from multiseg.data.targets import (
    BOUNDARY_MODES,
    DERIVATIONS,
    LABEL_MODES,
    is_multi_hot,
    target_classes,
    target_kind,
)
from multiseg.headkinds import HEAD_DECIDED_OPTIONS, HEAD_KINDS, HeadKind
from multiseg.options import OptionError, check_options, show, suggest, type_name
from multiseg.recipe.reader import (
    BUILD_CHECKS,
    RecipeError,
    Section,
    at_most,
    checked,
    every,
    int_list,
    non_negative,
    positive,
    tidy,
)
from multiseg.recipe.spec import HeadSpec, LossTermSpec, MetricSpec, TargetSpec

MAX_CLASSES = 4096  # output channels of one head (also the most classes a target may have)
MAX_HEAD_NAME = 64  # characters; a head's name becomes layer names, log keys and file names
# Names Keras or multiseg already use in the training logs ("val_<key>", "total/...",
# "optimizer/...", "learning_rate"); a head of that name would be confused with them.
RESERVED_HEAD_NAMES = ("val", "total", "optimizer", "learning")

# What a head learning each kind of target is told when given the other kind.
_TARGET_NEEDED = {
    "label": "a {kind} head needs an image-level label target (e.g. 'label' or {{derive: label,"
             " from: mask}}), got a mask",
    "mask": "a {kind} head needs a per-pixel mask target, got an image-level label",
}


def head_name_problem(name: str) -> str | None:
    """Why a head name cannot be used, or None. It names the head's layers (TensorFlow takes
    ASCII names only), its log keys and its prediction files."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) or name.startswith("trunk"):
        return ("head names must be identifiers of ASCII letters, digits and '_', not starting"
                " with a digit, and not start with 'trunk' (the shared layers' prefix)")
    if len(name) > MAX_HEAD_NAME:
        return f"head names have at most {MAX_HEAD_NAME} characters, this one has {len(name)}"
    if name in RESERVED_HEAD_NAMES or name.startswith("val_"):
        return ("is a reserved name: Keras logs validation values as 'val_<key>', and multiseg"
                " groups its logs under 'total', 'optimizer' and 'learning_rate'. Choose"
                " another name")
    return None


def _attach_points(levels: int) -> tuple[str, ...]:
    # decoder.k is the decoder at 1/2^k resolution; plain "decoder" is full resolution.
    return ("decoder", "bottleneck") + tuple(f"decoder.{k}" for k in range(1, levels))


def _read_target(raw: Any, path: str, source_targets: Mapping[str, Any]) -> TargetSpec:
    if isinstance(raw, str):
        if raw not in source_targets:
            raise RecipeError(path, f"the data source has no target {show(raw)}"
                              f"{suggest(raw, list(source_targets))}. It provides: "
                              f"{', '.join(source_targets)}; or derive one with"
                              " {derive: boundary, from: mask}")
        if source_targets[raw].kind == "instances":
            raise RecipeError(path, f"'{raw}' holds object ids, not a target a head can"
                              f" learn: use the semantic mask, or derive from it, e.g."
                              f" {{derive: boundary, from: {raw}}} (lines between objects) or"
                              f" {{derive: label, from: {raw}, mode: count, bins: [5, 20]}}")
        return TargetSpec(source=raw)
    sec = Section(raw, path)
    sec.expect("derive", "from", "width", "mode", "bins")
    derive = sec.choice("derive", DERIVATIONS)
    # Options of the other derivation: say where they belong.
    for key, owner in (("width", "boundary"), ("bins", "label")):
        if sec.has(key) and derive != owner:
            raise RecipeError(sec.sub(key), f"applies to derive: {owner}, not {derive}")
    src = sec.get("from", str, "mask")
    masks = [k for k, t in source_targets.items() if t.kind in ("mask", "instances")]
    if src not in masks:
        raise RecipeError(sec.sub("from"), f"{show(src)} is not a mask of the data source"
                          f"{suggest(src, masks)}; masks it provides:"
                          f" {', '.join(masks) or 'none'}")
    options: dict[str, Any] = {}
    if derive == "boundary":
        options["width"] = sec.get("width", int, 1, every(positive, at_most(64)))
        options["mode"] = sec.choice("mode", BOUNDARY_MODES, "thick")
    else:
        mode = options["mode"] = sec.choice("mode", LABEL_MODES, "dominant")
        if mode == "count" and source_targets[src].kind != "instances":
            instances = [k for k, t in source_targets.items() if t.kind == "instances"]
            raise RecipeError(sec.sub("mode"), f"counting objects needs instance ids; '{src}'"
                              " is a semantic mask. "
                              + (f"Use from: {instances[0]}" if instances else
                                 "Read instance masks with data.source.mask_format: instances"))
        if mode in ("count", "coverage"):
            options["bins"] = _read_bins(sec, mode)
        elif sec.has("bins"):
            raise RecipeError(sec.sub("bins"), f"applies to mode: count or coverage, not {mode}")
    return TargetSpec(source=src, derive=derive, options=options)


def _read_bins(sec: Section, mode: str) -> list[float]:
    """Increasing thresholds that cut a count or a fraction into len(bins) + 1 classes."""
    path = sec.sub("bins")
    raw = sec.raw_value("bins")
    example = "[5, 20]" if mode == "count" else "[0.1, 0.3]"
    if raw is None:
        raise RecipeError(path, f"is required with mode: {mode}: increasing thresholds such as"
                          f" {example} (classes: below the first, between, from the last)")
    if not isinstance(raw, list) or not raw:
        raise RecipeError(path, f"expected a non-empty list of numbers such as {example}, got"
                          f" {show(raw)}")
    if len(raw) >= MAX_CLASSES:
        raise RecipeError(path, f"has {len(raw)} thresholds, which make {len(raw) + 1} classes;"
                          f" a head has at most {MAX_CLASSES} classes ({MAX_CLASSES - 1}"
                          " thresholds)")
    if mode == "count":  # a number of objects: any positive threshold up to a billion
        check = every(positive, at_most(1e9))
    else:  # a fraction of the pixels, strictly between none and all
        def check(v: float) -> str | None:
            return None if 0 < v < 1 else "must be in (0, 1)"
    bins = [checked(v, float, f"{path}[{i}]", check) for i, v in enumerate(raw)]
    if any(b <= a for a, b in zip(bins, bins[1:], strict=False)):
        raise RecipeError(path, f"must increase strictly, got {show(raw)}")
    # Object counts read best as integers ("bins=[11]", not [11.0]).
    return [int(b) if mode == "count" and float(b).is_integer() else b for b in bins]


def _refuse_single_label(name: str, options: Mapping[str, Any], what: str, where: str,
                         multilabel: bool) -> None:
    if multilabel and "multilabel" not in options:
        raise RecipeError(where, f"{what} '{name}' takes one class per image; this head's"
                          " presence target is multi-hot (one 0/1 per class)")


def _read_terms(raw: Any, path: str, head: HeadKind, multilabel: bool = False
                ) -> tuple[LossTermSpec, ...]:
    if raw is None:
        raw = [dict(term) for term in head.default_losses]
    entries = raw if isinstance(raw, list) else [raw]
    if not entries:
        raise RecipeError(path, "needs at least one loss term")
    terms = []
    for i, entry in enumerate(entries):
        where = f"{path}[{i}]" if isinstance(raw, list) else path
        if isinstance(entry, str):
            entry = {"name": entry}
        if not isinstance(entry, (Mapping, type(None))):
            raise RecipeError(where, "expected a loss name such as 'dice' or a mapping {name:"
                              f" dice, weight: 1.0, ...}}, got {type_name(entry)}"
                              f" ({show(entry)})")
        sec = Section(entry, where)
        name = sec.get("name", str)
        if name not in LOSS_CLASSES:
            raise RecipeError(sec.sub("name"), f"unknown loss {show(name)}"
                              f"{suggest(name, list(LOSS_CLASSES))}. Expected one of: "
                              f"{', '.join(LOSS_CLASSES)}")
        allowed = loss_options(name)
        options = _read_options(sec, allowed, f"loss '{name}'", ("name", "weight"))
        weight = sec.get("weight", float, 1.0, every(non_negative, at_most(1e6)))
        sec.finish()
        _refuse_single_label(name, allowed, "loss", where, multilabel)
        decided = _decided(head, multilabel, allowed)
        _try_build(where, options, "loss", {"name": name, **options, **decided},
                   from_logits=head.from_logits)
        terms.append(LossTermSpec(name=name, weight=weight, options=options))
    if all(t.weight == 0 for t in terms):
        raise RecipeError(path, "every term has weight 0: the head would learn nothing")
    return tuple(terms)


def _check_term_channels(term: LossTermSpec, classes: int, where: str,
                         multilabel: bool = False) -> None:
    try:
        check_channels(term.name, term.options, classes=classes, multilabel=multilabel)
    except OptionError as exc:
        raise RecipeError(f"{where}.{exc.key}", exc.message) from None


def _read_options(sec: Section, allowed: Mapping[str, Any], what: str,
                  fixed: tuple[str, ...]) -> dict[str, Any]:
    """The options of one loss term or metric (every key but ``fixed``), checked against the
    declared ``allowed`` by ``multiseg.options.check_options``; its error becomes a
    ``RecipeError`` at the option's path."""
    sec.used.update(sec.raw)
    try:
        return check_options(what, sec.raw, allowed, decided=HEAD_DECIDED_OPTIONS, fixed=fixed)
    except OptionError as exc:
        if exc.key in sec.raw:
            path = sec.sub(exc.key)
        else:  # an entry of a list option: alpha[1]
            key, _, index = exc.key.partition("[")
            path = f"{sec.sub(key)}[{index}"
        raise RecipeError(path, exc.message) from None


def _decided(head: HeadKind, multilabel: bool, allowed: Mapping[str, Any]) -> dict[str, Any]:
    """The options the head decides that a loss or metric declaring ``allowed`` takes
    (``multilabel``); ``from_logits`` and ``outlines`` go to its builder as arguments."""
    decided = head.decided_options(multilabel=multilabel)
    return {key: value for key, value in decided.items() if key in allowed}


def _try_build(path: str, options: Mapping[str, Any], what: str, *args: Any,
               **kwargs: Any) -> None:
    """Builds a loss or metric now (``build(*args, **kwargs)``) so that bad option values fail
    at load time; skipped when reading without Keras (``BUILD_CHECKS``)."""
    if not BUILD_CHECKS.get():
        return
    if what == "loss":
        from multiseg.losses import build
    else:
        from multiseg.metrics import build_metric as build
    try:
        build(*args, **kwargs)
    except (ValueError, TypeError) as exc:
        message = tidy(str(exc))
        # The loss or metric quotes the option at fault ("invalid `alpha`=..."): name its path.
        found = re.search(r"`(\w+)(\[\d+\])?`", message)
        if found and found.group(1) in options:
            path = f"{path}.{found.group(1)}{found.group(2) or ''}"
        raise RecipeError(path, message) from None


def _read_metrics(raw: Any, path: str, head: HeadKind, classes: int, multilabel: bool = False
                  ) -> tuple[MetricSpec, ...]:
    if raw is None:
        raw = list(head.default_metrics)
    listed = isinstance(raw, list)
    if not listed:
        raw = [raw]
    metrics = []
    seen = set()
    for i, entry in enumerate(raw):
        where = f"{path}[{i}]" if listed else path
        if isinstance(entry, str):
            entry = {"name": entry}
        if not isinstance(entry, (Mapping, type(None))):
            raise RecipeError(where, "expected a metric name such as 'dice' or a mapping {name:"
                              f" dice, ...}}, got {type_name(entry)} ({show(entry)})")
        sec = Section(entry, where)
        name = sec.get("name", str)
        if name not in METRIC_CLASSES:
            raise RecipeError(sec.sub("name") if isinstance(raw[i], dict) else where,
                              f"unknown metric {show(name)}{suggest(name, list(METRIC_CLASSES))}."
                              f" Expected one of: {', '.join(METRIC_CLASSES)}")
        allowed = metric_options(name)
        options = _read_options(sec, allowed, f"metric '{name}'", ("name",))
        sec.finish()
        if options.get("threshold") is not None and classes > 1 and not multilabel:
            raise RecipeError(f"{where}.threshold", "applies to one-channel or multilabel"
                              " (presence) heads; this head picks the most likely of its"
                              f" {classes} classes")
        _refuse_single_label(name, allowed, "metric", where, multilabel)
        decided = _decided(head, multilabel, allowed)
        _try_build(where, options, "metric", {"name": name, **options, **decided},
                   classes=classes, from_logits=head.from_logits, outlines=head.outlines)
        label = options.get("class_id", "")
        if (name, label) in seen:
            raise RecipeError(where, f"metric '{name}' is listed twice")
        seen.add((name, label))
        metrics.append(MetricSpec(name=name, options=options))
    return tuple(metrics)


def read_head(name: str, sec: Section, levels: int, source_targets: Mapping[str, Any]
              ) -> HeadSpec:
    """One head of the recipe, checked against its kind's record (``multiseg.headkinds``)
    and the data source's targets."""
    if sec.has("multilabel"):
        raise RecipeError(sec.sub("multilabel"), f"is decided by the head"
                          f" ({HEAD_DECIDED_OPTIONS['multilabel']}), not by the recipe:"
                          " remove it")
    sec.expect(*(f.name for f in dataclasses.fields(HeadSpec)
                 if f.name not in ("name", "multilabel")))
    kind = sec.choice("kind", tuple(HEAD_KINDS))
    head = HEAD_KINDS[kind]
    raw_target = sec.raw_value("target")
    if raw_target is None:
        raise sec.missing("target", ": the source key (mask, label) or a derivation such as"
                          " {derive: boundary, from: mask}")
    if not isinstance(raw_target, (str, Mapping)):
        raise RecipeError(sec.sub("target"), "expected the source key (mask, label) or a"
                          " derivation such as {derive: boundary, from: mask}, got"
                          f" {type_name(raw_target)} ({show(raw_target)})")
    target = _read_target(sec.raw_value("target"), sec.sub("target"), source_targets)
    t_kind = target_kind(target, source_targets)
    t_classes = target_classes(target, source_targets)
    if t_classes > MAX_CLASSES:
        raise RecipeError(sec.sub("target"), f"target '{target.source}'"
                          f"{' (derived)' if target.derive else ''} has {t_classes} classes;"
                          f" a head has at most {MAX_CLASSES}")
    if t_kind != head.target:
        raise RecipeError(sec.sub("target"), _TARGET_NEEDED[head.target].format(kind=kind))
    if head.channels is not None:
        classes = sec.get("classes", int, head.channels)
        if classes != head.channels:
            raise RecipeError(sec.sub("classes"), f"a {kind} head has exactly {head.channels}"
                              f" channel{'s' if head.channels > 1 else ''}")
        if t_classes != head.channels:
            # An outline map is derived from a mask of any number of classes.
            fix = f": use {{derive: boundary, from: {target.source}}}" if head.outlines else ""
            need = "a binary map" if head.channels == 1 else f"{head.channels} classes"
            raise RecipeError(sec.sub("target"), f"target '{target.source}' has {t_classes}"
                              f" classes; a {kind} head needs {need}{fix}")
    else:
        classes = sec.get("classes", int, t_classes, every(positive, at_most(MAX_CLASSES)))
        if head.refuses_two_classes and classes == 2:
            raise RecipeError(sec.sub("classes"), "2 classes is a binary task: use classes: 1"
                              " (one sigmoid channel) with a binary mask")
        if classes != t_classes and not (head.binary_from_two_classes and t_classes == 2
                                         and classes == 1):
            raise RecipeError(sec.sub("classes"), f"is {classes} but target"
                              f" '{target.source}'{' (derived)' if target.derive else ''} has"
                              f" {t_classes} class{'es' if t_classes != 1 else ' (binary)'}")
    points = _attach_points(levels)
    attach = sec.get("attach", str, head.default_attach)
    if attach not in points:
        raise RecipeError(sec.sub("attach"), f"unknown attach point {show(attach)}"
                          f"{suggest(attach, points)}. This trunk has: {', '.join(points)}")
    branch = int_list(sec.get("branch", (list, int), []), sec.sub("branch"), min_len=0)
    if len(branch) > 16:
        raise RecipeError(sec.sub("branch"), f"at most 16 layers, got {len(branch)}")
    multilabel = is_multi_hot(target, source_targets)
    loss = _read_terms(sec.raw_value("loss"), sec.sub("loss"), head, multilabel)
    for i, term in enumerate(loss):
        where = f"{sec.sub('loss')}[{i}]" if isinstance(sec.raw.get("loss"), list) else sec.sub(
            "loss")
        _check_term_channels(term, classes, where, multilabel)
    loss_weight = sec.get("loss_weight", float, 1.0, every(non_negative, at_most(1e6)))
    metrics = _read_metrics(sec.raw_value("metrics"), sec.sub("metrics"), head, classes,
                            multilabel)
    grad_scale = sec.get("grad_scale", float, 1.0, every(non_negative, at_most(1e3)))
    return HeadSpec(name=name, kind=kind, classes=classes, attach=attach, branch=branch,
                    target=target, loss=loss, loss_weight=loss_weight, metrics=metrics,
                    grad_scale=grad_scale, multilabel=multilabel)
