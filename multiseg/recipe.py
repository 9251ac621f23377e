"""Recipes: YAML files validated into frozen dataclasses.

A recipe is plain data. It is read with ``yaml.safe_load`` only, every key is known (unknown keys
are errors with a suggestion), every error names the field path, and validation happens here,
before anything is built. Only this module and the ``build_*`` functions look at a recipe.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

RECIPE_VERSION = 1

HEAD_KINDS = ("segmentation", "boundary", "classification")
NORMS = ("batch", "group", "none")
UPSAMPLE_MODES = ("transpose", "resize")
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
WEIGHTINGS = ("static",)
DERIVATIONS = ("boundary", "label")
BOUNDARY_MODES = ("inner", "outer", "thick")
LABEL_MODES = ("dominant",)

# Defaults chosen per head kind: what a user gets by writing only `kind` and `target`.
DEFAULT_LOSSES: dict[str, list[dict[str, Any]]] = {
    "segmentation": [{"name": "dice", "weight": 1.0}, {"name": "crossentropy", "weight": 1.0}],
    "boundary": [{"name": "tversky", "weight": 1.0}, {"name": "crossentropy", "weight": 1.0}],
    "classification": [{"name": "crossentropy", "weight": 1.0}],
}
DEFAULT_METRICS: dict[str, list[str]] = {
    "segmentation": ["dice", "iou"],
    "boundary": ["dice"],
    "classification": ["accuracy"],
}
# Options that the head decides, never the recipe.
HEAD_DECIDED_OPTIONS = ("from_logits",)


class RecipeError(ValueError):
    """A recipe mistake: ``path`` is the field (``heads.mask.loss[0].name``) or file at fault."""

    def __init__(self, path: str, message: str):
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


# ---------------------------------------------------------------------------------------------
# The recipe objects. Each field's comment is the documentation of the recipe format.


@dataclass(frozen=True)
class AugmentSpec:
    flip: bool = False  # random horizontal and vertical flips
    rotate90: bool = False  # random multiples of 90 degrees (square images only)


@dataclass(frozen=True)
class SourceSpec:
    kind: str  # built-in source: shapes | cells | cardiac
    options: Mapping[str, Any] = field(default_factory=dict)  # the source's own options


@dataclass(frozen=True)
class DataSpec:
    source: SourceSpec
    image_size: tuple[int, int]  # (height, width) of every sample
    train: int  # number of training samples
    val: int  # number of validation samples
    augment: AugmentSpec = AugmentSpec()


@dataclass(frozen=True)
class ModelSpec:
    trunk: str = "unet"
    filters: tuple[int, ...] = (16, 32, 64, 128)  # one entry per level; bottleneck doubles last
    convs_per_level: int = 2
    norm: str = "batch"  # batch | group | none
    groups: int = 8  # groups for norm: group (reduced to divide the channel count)
    activation: str = "relu"  # any keras activation name
    dropout: float = 0.0  # dropout rate before the bottleneck and in the decoder
    upsample: str = "transpose"  # transpose (learned) | resize (bilinear, then conv)


@dataclass(frozen=True)
class TargetSpec:
    source: str  # key of the source sample this target is, or is derived from
    derive: str | None = None  # None | boundary | label
    options: Mapping[str, Any] = field(default_factory=dict)  # width, mode, ...


@dataclass(frozen=True)
class LossTermSpec:
    name: str  # key of multiseg.losses.LOSSES
    weight: float = 1.0  # weight of this term inside the head's loss
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MetricSpec:
    name: str  # key of multiseg.metrics.METRICS
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class HeadSpec:
    name: str
    kind: str  # segmentation | boundary | classification
    classes: int  # output channels; 1 means binary (sigmoid)
    attach: str  # decoder | bottleneck | decoder.<k> (decoder at 1/2^k resolution)
    branch: tuple[int, ...]  # filters (or units) of the head's own layers before its output
    target: TargetSpec
    loss: tuple[LossTermSpec, ...]
    loss_weight: float  # w_i in total = sum_i w_i * L_i
    metrics: tuple[MetricSpec, ...]
    grad_scale: float = 1.0  # gradient sent into the shared trunk (0 = stop-gradient)


@dataclass(frozen=True)
class OptimizerSpec:
    name: str = "adam"
    learning_rate: float = 1e-3
    weight_decay: float | None = None
    momentum: float | None = None  # sgd and rmsprop
    clipnorm: float | None = None  # per-variable clipping: does not couple the heads


@dataclass(frozen=True)
class GradflowSpec:
    every: int = 0  # steps between per-head gradient snapshots; 0 turns them off


@dataclass(frozen=True)
class TrainSpec:
    epochs: int = 10
    batch_size: int = 16
    steps_per_epoch: int | None = None  # None: one pass over the training samples
    optimizer: OptimizerSpec = OptimizerSpec()
    lr_schedule: str = "constant"  # constant | cosine
    weighting: str = "static"
    gradflow: GradflowSpec = GradflowSpec()
    deterministic: bool = False  # op-level determinism (slower)
    on_nonfinite: str = "stop"  # a NaN/Inf loss: stop (keep the last good checkpoint) | skip
    max_skipped_steps: int = 10  # with skip: give up after this many steps in a row


@dataclass(frozen=True)
class Recipe:
    name: str
    data: DataSpec
    model: ModelSpec
    heads: Mapping[str, HeadSpec]  # insertion order is the recipe's order
    train: TrainSpec
    output: str  # run directory
    seed: int = 0
    version: int = RECIPE_VERSION

    def to_dict(self) -> dict[str, Any]:
        """The resolved recipe as plain data; loading it again gives an equal recipe."""
        return {
            "version": self.version,
            "name": self.name,
            "seed": self.seed,
            "data": {
                "source": {"kind": self.data.source.kind, **dict(self.data.source.options)},
                "image_size": list(self.data.image_size),
                "train": self.data.train,
                "val": self.data.val,
                "augment": dataclasses.asdict(self.data.augment),
            },
            "model": {**dataclasses.asdict(self.model), "filters": list(self.model.filters)},
            "heads": {name: _head_to_dict(h) for name, h in self.heads.items()},
            "train": _plain(dataclasses.asdict(self.train)),
            "output": self.output,
        }


def _head_to_dict(head: HeadSpec) -> dict[str, Any]:
    target: Any = head.target.source
    if head.target.derive:
        target = {"derive": head.target.derive, "from": head.target.source,
                  **dict(head.target.options)}
    return {
        "kind": head.kind,
        "classes": head.classes,
        "attach": head.attach,
        "branch": list(head.branch),
        "target": target,
        "loss": [{"name": t.name, "weight": t.weight, **dict(t.options)} for t in head.loss],
        "loss_weight": head.loss_weight,
        "metrics": [{"name": m.name, **dict(m.options)} if m.options else m.name
                    for m in head.metrics],
        "grad_scale": head.grad_scale,
    }


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------
# Reading: a small cursor that knows its field path and which keys were consumed.


def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a mapping", type(None): "empty"}.get(type(value),
                                                                          type(value).__name__)


def _suggest(word: str, choices: list[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


class _Section:
    """Reads one mapping of the recipe, remembering its path and the keys used."""

    def __init__(self, raw: Any, path: str):
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise RecipeError(path, f"expected a mapping, got {_type_name(raw)}")
        for key in raw:
            if not isinstance(key, str):
                raise RecipeError(path, f"keys must be strings, got {key!r}")
        self.raw = raw
        self.path = path
        self.used: set[str] = set()

    def sub(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def has(self, key: str) -> bool:
        return key in self.raw

    def raw_value(self, key: str, default: Any = None) -> Any:
        self.used.add(key)
        return self.raw.get(key, default)

    def section(self, key: str) -> _Section:
        return _Section(self.raw_value(key), self.sub(key))

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ...,
            check: Callable[[Any], str | None] | None = None) -> Any:
        self.used.add(key)
        if key not in self.raw or self.raw[key] is None and default is not ...:
            if default is ...:
                raise RecipeError(self.sub(key), "is required")
            return default
        value = self.raw[key]
        return _check_value(value, kind, self.sub(key), check)

    def choice(self, key: str, choices: tuple[str, ...], default: Any = ...) -> str:
        value = self.get(key, str, default)
        if value not in choices:
            raise RecipeError(self.sub(key), f"unknown value '{value}'{_suggest(value, choices)}."
                              f" Expected one of: {', '.join(choices)}")
        return value

    def finish(self) -> None:
        unknown = [k for k in self.raw if k not in self.used]
        if unknown:
            key = unknown[0]
            raise RecipeError(self.sub(key), f"unknown key{_suggest(key, sorted(self.used))}."
                              f" Known keys here: {', '.join(sorted(self.used))}")


def _check_value(value: Any, kind: type | tuple[type, ...], path: str,
                 check: Callable[[Any], str | None] | None = None) -> Any:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(value, bool) and bool not in kinds:
        ok = False
    else:
        ok = isinstance(value, kinds)
    if not ok:
        expected = " or ".join(_type_name(k()) if k is not type(None) else "empty" for k in kinds)
        raise RecipeError(path, f"expected {expected}, got {_type_name(value)} ({value!r})")
    if isinstance(value, float) and not math.isfinite(value):
        raise RecipeError(path, f"must be a finite number, got {value}")
    if check is not None:
        problem = check(value)
        if problem:
            raise RecipeError(path, f"{problem}, got {value!r}")
    return value


def _positive(value: float) -> str | None:
    return None if value > 0 else "must be > 0"


def _non_negative(value: float) -> str | None:
    return None if value >= 0 else "must be >= 0"


def _at_most(limit: float) -> Callable[[float], str | None]:
    return lambda value: None if value <= limit else f"must be <= {limit:g}"


def _all(*checks: Callable[[Any], str | None]) -> Callable[[Any], str | None]:
    def run(value: Any) -> str | None:
        for check in checks:
            problem = check(value)
            if problem:
                return problem
        return None
    return run


def _int_list(raw: Any, path: str, *, min_len: int, check=_positive, max_value=4096) -> tuple:
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = [raw]
    if not isinstance(raw, list):
        raise RecipeError(path, f"expected a list of integers, got {_type_name(raw)} ({raw!r})")
    if len(raw) < min_len:
        raise RecipeError(path, f"needs at least {min_len} entr{'y' if min_len == 1 else 'ies'}")
    return tuple(_check_value(v, int, f"{path}[{i}]", _all(check, _at_most(max_value)))
                 for i, v in enumerate(raw))


# ---------------------------------------------------------------------------------------------
# Sections.


def _read_data(sec: _Section) -> DataSpec:
    from multiseg.data.sources import SOURCES, source_options

    raw_source = sec.raw_value("source")
    src_path = sec.sub("source")
    if raw_source is None:
        raise RecipeError(src_path, f"is required. Built-in sources: {', '.join(SOURCES)}")
    if isinstance(raw_source, str):
        raw_source = {"kind": raw_source}
    src = _Section(raw_source, src_path)
    kind = src.choice("kind", tuple(SOURCES))
    allowed = source_options(kind)
    options = {}
    for key, default in allowed.items():
        value = src.get(key, (type(default),) if default is not None else (int, float, str),
                        default)
        options[key] = value
    src.finish()
    problem = SOURCES[kind].check_options(options)
    if problem:
        raise RecipeError(f"{src_path}.{problem[0]}", problem[1])

    size_raw = sec.get("image_size", (list, int))
    size = _int_list(size_raw, sec.sub("image_size"), min_len=1, max_value=8192)
    if len(size) == 1:
        size = (size[0], size[0])
    if len(size) != 2:
        raise RecipeError(sec.sub("image_size"), f"expected [height, width], got {size_raw!r}")
    train = sec.get("train", int, check=_all(_positive, _at_most(10_000_000)))
    val = sec.get("val", int, check=_all(_positive, _at_most(10_000_000)))
    aug = sec.section("augment")
    augment = AugmentSpec(flip=aug.get("flip", bool, False),
                          rotate90=aug.get("rotate90", bool, False))
    aug.finish()
    if augment.rotate90 and size[0] != size[1]:
        raise RecipeError(aug.sub("rotate90"), f"needs square images, image_size is {list(size)}")
    sec.finish()
    return DataSpec(source=SourceSpec(kind, options), image_size=size, train=train, val=val,
                    augment=augment)


def _read_model(sec: _Section) -> ModelSpec:
    trunk = sec.choice("trunk", ("unet",), "unet")
    filters = _int_list(sec.get("filters", (list, int), [16, 32, 64, 128]), sec.sub("filters"),
                        min_len=1, max_value=2048)
    if len(filters) > 7:
        raise RecipeError(sec.sub("filters"), f"at most 7 levels, got {len(filters)}")
    spec = ModelSpec(
        trunk=trunk,
        filters=filters,
        convs_per_level=sec.get("convs_per_level", int, 2, _all(_positive, _at_most(8))),
        norm=sec.choice("norm", NORMS, "batch"),
        groups=sec.get("groups", int, 8, _all(_positive, _at_most(1024))),
        activation=sec.get("activation", str, "relu"),
        dropout=sec.get("dropout", float, 0.0, lambda v: None if 0 <= v < 1 else "must be in [0, 1)"),
        upsample=sec.choice("upsample", UPSAMPLE_MODES, "transpose"),
    )
    try:
        import keras

        keras.activations.get(spec.activation)
    except (ValueError, TypeError):
        raise RecipeError(sec.sub("activation"),
                          f"unknown activation '{spec.activation}' (a keras activation name such"
                          " as relu, gelu, silu, elu, leaky_relu)") from None
    sec.finish()
    return spec


def _attach_points(levels: int) -> tuple[str, ...]:
    # decoder.k is the decoder at 1/2^k resolution; plain "decoder" is full resolution.
    return ("decoder", "bottleneck") + tuple(f"decoder.{k}" for k in range(1, levels))


def _read_target(raw: Any, path: str, source_targets: Mapping[str, Any]) -> TargetSpec:
    if isinstance(raw, str):
        if raw not in source_targets:
            raise RecipeError(path, f"the data source has no target '{raw}'"
                              f"{_suggest(raw, list(source_targets))}. It provides: "
                              f"{', '.join(source_targets)}; or derive one with"
                              " {derive: boundary, from: mask}")
        return TargetSpec(source=raw)
    sec = _Section(raw, path)
    derive = sec.choice("derive", DERIVATIONS)
    src = sec.get("from", str, "mask")
    if src not in source_targets or source_targets[src].kind != "mask":
        masks = [k for k, t in source_targets.items() if t.kind == "mask"]
        raise RecipeError(sec.sub("from"), f"'{src}' is not a mask of the data source;"
                          f" masks it provides: {', '.join(masks) or 'none'}")
    options: dict[str, Any] = {}
    if derive == "boundary":
        options["width"] = sec.get("width", int, 1, _all(_positive, _at_most(64)))
        options["mode"] = sec.choice("mode", BOUNDARY_MODES, "thick")
    else:
        options["mode"] = sec.choice("mode", LABEL_MODES, "dominant")
    sec.finish()
    return TargetSpec(source=src, derive=derive, options=options)


def target_classes(target: TargetSpec, source_targets: Mapping[str, Any]) -> int:
    """Number of classes the target carries (1 for binary maps)."""
    info = source_targets[target.source]
    if target.derive == "boundary":
        return 1
    if target.derive == "label":
        # The most frequent foreground class; a binary mask gives "has foreground or not".
        foreground = info.classes - 1 if info.classes > 1 else 1
        return foreground if foreground > 1 else 2
    return info.classes


def target_kind(target: TargetSpec, source_targets: Mapping[str, Any]) -> str:
    """'mask' for per-pixel targets, 'label' for image-level ones."""
    if target.derive == "boundary":
        return "mask"
    if target.derive == "label":
        return "label"
    return source_targets[target.source].kind


def _read_terms(raw: Any, path: str, kind: str) -> tuple[LossTermSpec, ...]:
    from multiseg.losses import LOSSES, loss_options
    from multiseg.losses import build as build_loss

    if raw is None:
        raw = DEFAULT_LOSSES[kind]
    entries = raw if isinstance(raw, list) else [raw]
    if not entries:
        raise RecipeError(path, "needs at least one loss term")
    terms = []
    for i, entry in enumerate(entries):
        where = f"{path}[{i}]" if isinstance(raw, list) else path
        if isinstance(entry, str):
            entry = {"name": entry}
        sec = _Section(entry, where)
        name = sec.get("name", str)
        if name not in LOSSES:
            raise RecipeError(sec.sub("name"), f"unknown loss '{name}'"
                              f"{_suggest(name, list(LOSSES))}. Expected one of: "
                              f"{', '.join(LOSSES)}")
        weight = sec.get("weight", float, 1.0, _all(_non_negative, _at_most(1e6)))
        options = _read_options(sec, loss_options(name), f"loss '{name}'")
        sec.finish()
        _try_build(where, lambda: build_loss({"name": name, **options}, from_logits=True))
        terms.append(LossTermSpec(name=name, weight=weight, options=options))
    if all(t.weight == 0 for t in terms):
        raise RecipeError(path, "every term has weight 0: the head would learn nothing")
    return tuple(terms)


def _read_options(sec: _Section, allowed: Mapping[str, Any], what: str) -> dict[str, Any]:
    options = {}
    for key in list(sec.raw):
        if key in ("name", "weight"):
            continue
        if key in HEAD_DECIDED_OPTIONS:
            raise RecipeError(sec.sub(key), f"is decided by the head (its output is logits),"
                              " not by the recipe: remove it")
        if key not in allowed:
            raise RecipeError(sec.sub(key), f"unknown option of {what}"
                              f"{_suggest(key, list(allowed))}. Options: "
                              f"{', '.join(allowed) or 'none'}")
        value = sec.raw_value(key)
        default = allowed[key]
        if isinstance(default, bool):
            value = _check_value(value, bool, sec.sub(key))
        elif isinstance(default, (int, float)) and not isinstance(value, (list, tuple)):
            value = _check_value(value, (int, float), sec.sub(key))
        options[key] = value
    return options


def _try_build(path: str, make: Callable[[], Any]) -> None:
    """Builds a loss or metric now so that bad option values fail at load time."""
    try:
        make()
    except (ValueError, TypeError) as exc:
        raise RecipeError(path, str(exc)) from None


def _read_metrics(raw: Any, path: str, kind: str, classes: int) -> tuple[MetricSpec, ...]:
    from multiseg.metrics import METRICS, build_metric, metric_options

    if raw is None:
        raw = DEFAULT_METRICS[kind]
    if not isinstance(raw, list):
        raw = [raw]
    metrics = []
    seen = set()
    for i, entry in enumerate(raw):
        where = f"{path}[{i}]"
        if isinstance(entry, str):
            entry = {"name": entry}
        sec = _Section(entry, where)
        name = sec.get("name", str)
        if name not in METRICS:
            raise RecipeError(sec.sub("name") if isinstance(raw[i], dict) else where,
                              f"unknown metric '{name}'{_suggest(name, list(METRICS))}."
                              f" Expected one of: {', '.join(METRICS)}")
        options = _read_options(sec, metric_options(name), f"metric '{name}'")
        sec.finish()
        _try_build(where, lambda: build_metric({"name": name, **options}, classes=classes,
                                               from_logits=True))
        label = options.get("class_id", "")
        if (name, label) in seen:
            raise RecipeError(where, f"metric '{name}' is listed twice")
        seen.add((name, label))
        metrics.append(MetricSpec(name=name, options=options))
    return tuple(metrics)


def _read_head(name: str, sec: _Section, levels: int, source_targets: Mapping[str, Any]
               ) -> HeadSpec:
    kind = sec.choice("kind", HEAD_KINDS)
    target = _read_target(sec.raw_value("target"), sec.sub("target"), source_targets)
    if not sec.has("target"):
        raise RecipeError(sec.sub("target"), "is required: the source key (mask, label) or a"
                          " derivation such as {derive: boundary, from: mask}")
    t_kind = target_kind(target, source_targets)
    t_classes = target_classes(target, source_targets)
    if kind == "classification" and t_kind != "label":
        raise RecipeError(sec.sub("target"), "a classification head needs an image-level label"
                          " target (e.g. 'label' or {derive: label, from: mask}), got a mask")
    if kind != "classification" and t_kind != "mask":
        raise RecipeError(sec.sub("target"), f"a {kind} head needs a per-pixel mask target,"
                          " got an image-level label")
    if kind == "boundary":
        classes = sec.get("classes", int, 1)
        if classes != 1:
            raise RecipeError(sec.sub("classes"), "a boundary head has exactly 1 channel")
        if target.derive != "boundary" and t_classes != 1:
            raise RecipeError(sec.sub("target"), f"target '{target.source}' has {t_classes}"
                              " classes; a boundary head needs a binary map: use"
                              f" {{derive: boundary, from: {target.source}}}")
    else:
        classes = sec.get("classes", int, t_classes, _all(_positive, _at_most(4096)))
        if kind == "segmentation" and classes == 2:
            raise RecipeError(sec.sub("classes"), "2 classes is a binary task: use classes: 1"
                              " (one sigmoid channel) with a binary mask")
        if classes != t_classes and not (kind == "classification" and t_classes == 2
                                         and classes == 1):
            raise RecipeError(sec.sub("classes"), f"is {classes} but target"
                              f" '{target.source}'{' (derived)' if target.derive else ''} has"
                              f" {t_classes} class{'es' if t_classes != 1 else ' (binary)'}")
    points = _attach_points(levels)
    default_attach = "bottleneck" if kind == "classification" else "decoder"
    attach = sec.get("attach", str, default_attach)
    if attach not in points:
        raise RecipeError(sec.sub("attach"), f"unknown attach point '{attach}'"
                          f"{_suggest(attach, points)}. This trunk has: {', '.join(points)}")
    branch = _int_list(sec.get("branch", (list, int), []), sec.sub("branch"), min_len=0)
    loss = _read_terms(sec.raw_value("loss"), sec.sub("loss"), kind)
    loss_weight = sec.get("loss_weight", float, 1.0, _all(_non_negative, _at_most(1e6)))
    metrics = _read_metrics(sec.raw_value("metrics"), sec.sub("metrics"), kind, classes)
    grad_scale = sec.get("grad_scale", float, 1.0, _all(_non_negative, _at_most(1e3)))
    sec.finish()
    return HeadSpec(name=name, kind=kind, classes=classes, attach=attach, branch=branch,
                    target=target, loss=loss, loss_weight=loss_weight, metrics=metrics,
                    grad_scale=grad_scale)


def _read_train(sec: _Section) -> TrainSpec:
    opt_raw = sec.raw_value("optimizer")
    if isinstance(opt_raw, str):
        opt_raw = {"name": opt_raw}
    opt = _Section(opt_raw, sec.sub("optimizer"))
    optimizer = OptimizerSpec(
        name=opt.choice("name", OPTIMIZERS, "adam"),
        learning_rate=opt.get("learning_rate", float, 1e-3, _all(_positive, _at_most(10.0))),
        weight_decay=opt.get("weight_decay", float, None, _non_negative),
        momentum=opt.get("momentum", float, None,
                         lambda v: None if 0 <= v < 1 else "must be in [0, 1)"),
        clipnorm=opt.get("clipnorm", float, None, _positive),
    )
    opt.finish()
    gf_raw = sec.raw_value("gradflow")
    if isinstance(gf_raw, int) and not isinstance(gf_raw, bool):
        gf_raw = {"every": gf_raw}
    gf = _Section(gf_raw, sec.sub("gradflow"))
    gradflow = GradflowSpec(every=gf.get("every", int, 0, _non_negative))
    gf.finish()
    spec = TrainSpec(
        epochs=sec.get("epochs", int, 10, _all(_positive, _at_most(100_000))),
        batch_size=sec.get("batch_size", int, 16, _all(_positive, _at_most(65_536))),
        steps_per_epoch=sec.get("steps_per_epoch", int, None, _all(_positive,
                                                                   _at_most(10_000_000))),
        optimizer=optimizer,
        lr_schedule=sec.choice("lr_schedule", ("constant", "cosine"), "constant"),
        weighting=sec.choice("weighting", WEIGHTINGS, "static"),
        gradflow=gradflow,
        deterministic=sec.get("deterministic", bool, False),
        on_nonfinite=sec.choice("on_nonfinite", ("stop", "skip"), "stop"),
        max_skipped_steps=sec.get("max_skipped_steps", int, 10, _all(_positive,
                                                                     _at_most(1_000_000))),
    )
    sec.finish()
    return spec


def from_dict(raw: Any, *, where: str = "") -> Recipe:
    """Validates plain data (as YAML gives it) into a :class:`Recipe`.

    Raises:
        RecipeError: naming the field path of the first mistake.
    """
    from multiseg.data.sources import source_targets as get_source_targets

    if raw is None:
        raise RecipeError(where, "the recipe is empty")
    top = _Section(raw, "")
    version = top.get("version", int, RECIPE_VERSION)
    if version != RECIPE_VERSION:
        raise RecipeError("version", f"this multiseg reads recipe version {RECIPE_VERSION},"
                          f" got {version}")
    name = top.get("name", str, "multiseg-run",
                   lambda v: None if v and "/" not in v and v.strip() == v
                   else "must be a non-empty name without '/' or surrounding spaces")
    seed = top.get("seed", int, 0, _all(_non_negative, _at_most(2**32 - 1)))
    data = _read_data(top.section("data"))
    model = _read_model(top.section("model"))
    heads_raw = top.raw_value("heads")
    if not heads_raw:
        raise RecipeError("heads", "at least one head is required, e.g. heads: {mask: {kind:"
                          " segmentation, target: mask}}")
    heads_sec = _Section(heads_raw, "heads")
    s_targets = get_source_targets(data.source.kind, data.source.options)
    heads = {}
    for head_name in heads_raw:
        if not head_name.isidentifier() or head_name.startswith("trunk"):
            raise RecipeError(f"heads.{head_name}", "head names must be identifiers (letters,"
                              " digits, '_', not starting with a digit) and not start with"
                              " 'trunk'")
        heads[head_name] = _read_head(head_name, heads_sec.section(head_name),
                                      len(model.filters), s_targets)
    train = _read_train(top.section("train"))
    output = top.get("output", str, f"runs/{name}",
                     lambda v: None if v.strip() else "must be a non-empty path")
    top.finish()
    return Recipe(name=name, data=data, model=model, heads=heads, train=train, output=output,
                  seed=seed, version=version)


# ---------------------------------------------------------------------------------------------
# Files and overrides.


def parse_override(text: str) -> tuple[list[str | int], Any]:
    """``heads.mask.loss[0].weight=0.5`` -> (['heads', 'mask', 'loss', 0, 'weight'], 0.5)."""
    if "=" not in text:
        raise RecipeError("--set", f"expected key.path=value, got '{text}'")
    key, _, value_text = text.partition("=")
    parts: list[str | int] = []
    for piece in key.strip().split("."):
        name, _, rest = piece.partition("[")
        if not name:
            raise RecipeError("--set", f"empty key in '{key}'")
        parts.append(name)
        while rest:
            index, _, rest = rest.partition("]")
            if not index.isdigit():
                raise RecipeError("--set", f"bad index '[{index}]' in '{key}'")
            parts.append(int(index))
            rest = rest[1:] if rest.startswith("[") else rest
    try:
        value = yaml.safe_load(value_text) if value_text.strip() else None
    except yaml.YAMLError as exc:
        raise RecipeError(f"--set {key}", f"value is not valid YAML: {exc}") from None
    return parts, value


def apply_override(raw: dict, parts: list[str | int], value: Any) -> None:
    """Sets one value inside raw recipe data, creating mappings on the way."""
    node: Any = raw
    path = ""
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        path = f"{path}[{part}]" if isinstance(part, int) else (f"{path}.{part}" if path else part)
        if isinstance(part, int):
            if not isinstance(node, list) or part >= len(node):
                raise RecipeError(path, "no such list entry to override")
        elif not isinstance(node, dict):
            raise RecipeError(path, "cannot set a key inside a value that is not a mapping")
        if last:
            node[part] = value
        else:
            if isinstance(part, str) and (part not in node or node[part] is None):
                node[part] = {}
            elif isinstance(part, str) and isinstance(node[part], str):
                # `source: shapes` is shorthand for `source: {kind: shapes}`; same for loss.
                node[part] = {"kind" if part == "source" else "name": node[part]}
            node = node[part]


def load_raw(path: str | os.PathLike) -> Any:
    """Reads a recipe file with ``yaml.safe_load``; errors name the file."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        raise RecipeError(path, "no such recipe file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(path, f"cannot read the recipe: {exc}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else path
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RecipeError(where, f"not valid YAML (or uses a tag that a safe loader refuses):"
                          f" {problem}") from None


def load(path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Loads, overrides and validates a recipe file."""
    raw = load_raw(path)
    if raw is None:
        raise RecipeError(os.fspath(path), "the recipe file is empty")
    if not isinstance(raw, dict):
        raise RecipeError(os.fspath(path), f"a recipe is a mapping of sections, got"
                          f" {_type_name(raw)}")
    for text in overrides:
        parts, value = parse_override(text)
        apply_override(raw, parts, value)
    try:
        return from_dict(raw)
    except RecipeError as exc:
        raise RecipeError(exc.path, f"{exc.message} (in {os.fspath(path)})") from None


def dump(recipe: Recipe) -> str:
    """The resolved recipe as YAML text."""
    return yaml.safe_dump(recipe.to_dict(), sort_keys=False)
