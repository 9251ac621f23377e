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
import re
import reprlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

RECIPE_VERSION = 1

HEAD_KINDS = ("segmentation", "boundary", "classification")
NORMS = ("batch", "group", "instance", "none")
UPSAMPLE_MODES = ("transpose", "resize")
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
WEIGHTINGS = ("static",)
DERIVATIONS = ("boundary", "label")
BOUNDARY_MODES = ("inner", "outer", "thick", "touching")
LABEL_MODES = ("dominant", "presence", "count", "coverage")

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
# Options of losses and metrics that the head decides, never the recipe, and why.
HEAD_DECIDED_OPTIONS = {
    "from_logits": "its output is logits",
    "multilabel": "a presence target, {derive: label, mode: presence}, makes a classification"
                  " head multilabel, one sigmoid per class; any other head picks one class",
    "outlines": "a boundary head's output and target are outline maps, which boundary_f1"
                " compares as they are; other heads' outlines are extracted from their masks",
}
MAX_CLASSES = 4096  # output channels of one head (also the most classes a target may have)
MAX_HEAD_NAME = 64  # characters; a head's name becomes layer names, log keys and file names
# Names Keras or multiseg already use in the training logs ("val_<key>", "total/...",
# "optimizer/...", "learning_rate"); a head of that name would be confused with them.
RESERVED_HEAD_NAMES = ("val", "total", "optimizer", "learning")


class RecipeError(ValueError):
    """A recipe mistake: ``path`` is the field (``heads.mask.loss[0].name``) or file at fault."""

    def __init__(self, path: str, message: str):
        # One line on the terminal, whatever the message quotes.
        message = " ".join(message.splitlines())
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


# ---------------------------------------------------------------------------------------------
# The recipe objects. Each field's comment is the documentation of the recipe format.


@dataclass(frozen=True)
class AugmentSpec:
    """Joint augmentation of the image and its masks; every transform is off by default."""

    flip: bool = False  # random horizontal and vertical flips
    rotate90: bool = False  # random multiples of 90 degrees (square images only)
    rotate: float = 0.0  # rotation by up to +-rotate degrees (masks: nearest neighbour)
    scale: float = 0.0  # zoom by a factor in [1 - scale, 1 + scale]
    shift: float = 0.0  # shift by up to +-shift of the height and width
    crop: float = 0.0  # random window of (1 - crop) to 1 of each side, resized to full size
    brightness: float = 0.0  # add up to +-brightness to the image
    contrast: float = 0.0  # scale deviations from the mean by [1 - contrast, 1 + contrast]
    gamma: float = 0.0  # gamma in [1 / (1 + gamma), 1 + gamma] on the image's own range
    noise: float = 0.0  # Gaussian noise, standard deviation up to noise


# The largest value of each numeric augmentation option.
_AUGMENT_LIMITS = {"rotate": 180.0, "scale": 0.9, "shift": 0.5, "crop": 0.9,
                   "brightness": 1.0, "contrast": 1.0, "gamma": 4.0, "noise": 1.0}


@dataclass(frozen=True)
class SourceSpec:
    kind: str  # shapes | cells | cardiac (synthetic) | folder | arrays (your files)
    options: Mapping[str, Any] = field(default_factory=dict)  # the source's own options


@dataclass(frozen=True)
class DataSpec:
    source: SourceSpec
    image_size: tuple[int, int]  # (height, width) of every sample
    # Synthetic sources: samples generated (required). File sources: samples per epoch
    # (None: one pass over the images or tiles; with patches: random, one crop per image).
    train: int | None = None
    val: int | None = None  # validation samples (file sources: at most this many)
    augment: AugmentSpec = AugmentSpec()
    patches: str = "whole"  # whole (images are image_size) | tile | random (crops)
    tile_overlap: int = 0  # patches: tile -- pixels shared by neighbouring tiles, at least


@dataclass(frozen=True)
class ModelSpec:
    trunk: str = "unet"
    filters: tuple[int, ...] = (16, 32, 64, 128)  # one entry per level; bottleneck doubles last
    convs_per_level: int = 2
    norm: str = "batch"  # batch | group | instance | none
    groups: int = 8  # groups for norm: group (reduced to divide the channel count)
    # norm: batch -- weight of the old value in the moving statistics. Keras's 0.99 needs
    # many hundreds of steps to forget its initial values; 0.9 (PyTorch's 0.1) needs tens.
    norm_momentum: float = 0.9
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
    # Decided by the target, never written: a presence label (multi-hot) makes the head's
    # channels independent sigmoids, and its losses and metrics follow.
    multilabel: bool = False


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
    # model.norm: batch -- training batches over which the population statistics are
    # recomputed before each validation and before model.keras is saved; 0 turns it off.
    precise_bn: int = 8


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
                "source": {"kind": self.data.source.kind,
                           **_plain(dict(self.data.source.options))},
                "image_size": list(self.data.image_size),
                "train": self.data.train,
                "val": self.data.val,
                "augment": dataclasses.asdict(self.data.augment),
                "patches": self.data.patches,
                "tile_overlap": self.data.tile_overlap,
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
                  **_plain(dict(head.target.options))}
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


# Values quoted in messages are shortened: a 100 kB string or a deeply nested list from a
# broken recipe must give a readable message, not a huge one (or a RecursionError).
_SHOW = reprlib.Repr()
_SHOW.maxstring = _SHOW.maxother = 80
_SHOW.maxlevel = 3


def _show(value: Any) -> str:
    """A short repr of a user's value for an error message."""
    try:
        return _SHOW.repr(value)
    except ValueError:  # an integer beyond Python's 4300-digit str() limit
        return f"<an integer of {value.bit_length()} bits>"


def _name(key: Any) -> str:
    """A user's key as a piece of a field path: as written, or quoted (and shortened) when it
    is empty, long, or holds spaces or characters that do not print: a path stays one
    readable word."""
    text = str(key)
    plain = 0 < len(text) <= 80 and text.isprintable() and not any(c.isspace() for c in text)
    return text if plain else _show(text)


def _tidy(message: str) -> str:
    """A message from a data source or a loss/metric, shortened where it quotes a long value
    (a path, a number of a thousand digits) that the recipe gave it."""
    message = "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)
    return re.sub(r"\S{121,}", lambda m: f"{m[0][:50]}...{m[0][-50:]}", message)


def _suggest(word: str, choices: list[str] | tuple[str, ...]) -> str:
    word = str(word)
    same = [c for c in choices if c.lower() == word.lower()]  # 'Dice' -> 'dice'
    # A cut-short name ('acc' -> 'accuracy'), else the closest spelling.
    start = [c for c in choices if len(word) >= 3 and c.startswith(word)]
    close = same or start or difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


class _Section:
    """Reads one mapping of the recipe, remembering its path and the keys used."""

    def __init__(self, raw: Any, path: str, expected: str = "a mapping"):
        # ``expected`` says what belongs here, with an example, for the error on a non-mapping.
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise RecipeError(path, f"expected {expected}, got {_type_name(raw)}"
                              f" ({_show(raw)})")
        for key in raw:
            if not isinstance(key, str):
                raise RecipeError(path, f"keys must be strings, got {_type_name(key)}"
                                  f" ({_show(key)}); YAML reads unquoted yes, no, on, off,"
                                  " null and numbers as values: quote such a key")
        self.raw = raw
        self.path = path
        self.used: set[str] = set()

    def sub(self, key: str) -> str:
        return f"{self.path}.{_name(key)}" if self.path else _name(key)

    def has(self, key: str) -> bool:
        return key in self.raw

    def raw_value(self, key: str, default: Any = None) -> Any:
        self.used.add(key)
        return self.raw.get(key, default)

    def section(self, key: str, expected: str = "a mapping") -> _Section:
        return _Section(self.raw_value(key), self.sub(key), expected)

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ...,
            check: Callable[[Any], str | None] | None = None) -> Any:
        self.used.add(key)
        if key not in self.raw or self.raw[key] is None and default is not ...:
            if default is ...:
                raise self.missing(key)
            return default
        value = self.raw[key]
        return _check_value(value, kind, self.sub(key), check)

    def missing(self, key: str, explain: str = "") -> RecipeError:
        """The error for a required key that is absent; a misspelling of it is pointed out."""
        typo = difflib.get_close_matches(key, [k for k in self.raw if k not in self.used],
                                         n=1, cutoff=0.6)
        hint = f" (found '{typo[0]}': a misspelling of '{key}'?)" if typo else ""
        return RecipeError(self.sub(key), f"is required{explain}{hint}")

    def choice(self, key: str, choices: tuple[str, ...], default: Any = ...) -> str:
        value = self.get(key, str, default)
        if value not in choices:
            raise RecipeError(self.sub(key), f"unknown value {_show(value)}"
                              f"{_suggest(value, choices)}."
                              f" Expected one of: {', '.join(choices)}")
        return value

    def expect(self, *keys: str) -> None:
        """Declares the keys this mapping may hold and refuses any other at once: a misspelled
        key is usually the cause of the errors that would follow it, so it is reported first.
        It takes the place of ``finish``."""
        self.used.update(keys)
        self.finish()

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
        try:
            value = float(value)
        except OverflowError:
            raise RecipeError(path, f"must be a finite number, got {_show(value)}") from None
    if isinstance(value, bool) and bool not in kinds:
        ok = False
    else:
        ok = isinstance(value, kinds)
    if not ok:
        # "a number" covers integers: float fields take both.
        shown = [k for k in kinds if not (k is int and float in kinds)]
        expected = " or ".join(_type_name(k()) if k is not type(None) else "empty" for k in shown)
        raise RecipeError(path, f"expected {expected}, got {_type_name(value)} ({_show(value)})")
    if isinstance(value, float) and not math.isfinite(value):
        raise RecipeError(path, f"must be a finite number, got {value}")
    if check is not None:
        problem = check(value)
        if problem:
            raise RecipeError(path, f"{problem}, got {_show(value)}")
    return value


def _positive(value: float) -> str | None:
    return None if value > 0 else "must be > 0"


def _non_negative(value: float) -> str | None:
    return None if value >= 0 else "must be >= 0"


def _below_one(value: float) -> str | None:
    return None if 0 <= value < 1 else "must be in [0, 1)"


def _strictly_inside_unit(value: float) -> str | None:
    return None if 0 < value < 1 else "must be in (0, 1)"


def _at_most(limit: float) -> Callable[[float], str | None]:
    text = f"{limit:g}" if float(f"{limit:g}") == limit else str(int(limit))  # 2**32 - 1 too
    return lambda value: None if value <= limit else f"must be <= {text}"


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
        raise RecipeError(path, f"expected a list of integers, got {_type_name(raw)}"
                          f" ({_show(raw)})")
    if len(raw) < min_len:
        raise RecipeError(path, f"needs at least {min_len} entr{'y' if min_len == 1 else 'ies'}")
    return tuple(_check_value(v, int, f"{path}[{i}]", _all(check, _at_most(max_value)))
                 for i, v in enumerate(raw))


# ---------------------------------------------------------------------------------------------
# Sections.


def _read_data(sec: _Section) -> DataSpec:
    from multiseg.data.patches import PATCH_MODES
    from multiseg.data.sources import SOURCES, is_synthetic, option_types, source_options

    sec.expect("source", "image_size", "train", "val", "augment", "patches", "tile_overlap")
    raw_source = sec.raw_value("source")
    src_path = sec.sub("source")
    if raw_source is None:
        raise RecipeError(src_path, f"is required. Built-in sources: {', '.join(SOURCES)}")
    if isinstance(raw_source, str):
        raw_source = {"kind": raw_source}
    src = _Section(raw_source, src_path, f"a source name ({', '.join(SOURCES)}) or a mapping"
                   " such as {kind: folder, path: data/my_set}")
    kind = src.choice("kind", tuple(SOURCES))
    allowed = source_options(kind)
    src.expect("kind", *allowed)
    options = {}
    for key, default in allowed.items():
        options[key] = src.get(key, option_types(kind, key), default)
    problem = SOURCES[kind].check_options(options)
    if problem:
        raise RecipeError(f"{src_path}.{_name(problem[0])}", _tidy(problem[1]))

    size_raw = sec.get("image_size", (list, int))
    size = _int_list(size_raw, sec.sub("image_size"), min_len=1, max_value=8192)
    if len(size) == 1:
        size = (size[0], size[0])
    if len(size) != 2:
        raise RecipeError(sec.sub("image_size"), f"expected [height, width], got"
                          f" {_show(size_raw)}")
    count_check = _all(_positive, _at_most(10_000_000))
    if is_synthetic(kind):
        train = sec.get("train", int, check=count_check)
        val = sec.get("val", int, check=count_check)
    else:
        # File sources: the files decide; train/val set samples per epoch (or at most).
        train = sec.get("train", int, None, count_check)
        val = sec.get("val", int, None, count_check)
    aug = sec.section("augment", "a mapping of transforms such as {flip: true, rotate: 15}")
    aug.expect("flip", "rotate90", *_AUGMENT_LIMITS)
    values: dict[str, Any] = {"flip": aug.get("flip", bool, False),
                              "rotate90": aug.get("rotate90", bool, False)}
    for key, limit in _AUGMENT_LIMITS.items():
        values[key] = aug.get(key, float, 0.0, _all(_non_negative, _at_most(limit)))
    augment = AugmentSpec(**values)
    if augment.rotate90 and size[0] != size[1]:
        raise RecipeError(aug.sub("rotate90"), f"needs square images, image_size is {list(size)}")
    patches = sec.choice("patches", PATCH_MODES, "whole")
    overlap = sec.get("tile_overlap", int, 0, _non_negative)
    if overlap and patches != "tile":
        raise RecipeError(sec.sub("tile_overlap"), "applies to patches: tile only")
    if overlap >= min(size):
        raise RecipeError(sec.sub("tile_overlap"), f"must be smaller than the tile size"
                          f" {list(size)}, got {_show(overlap)}")
    if is_synthetic(kind) and patches != "whole":
        raise RecipeError(sec.sub("patches"), f"the synthetic source '{kind}' draws samples at"
                          " image_size already; patches apply to folder and arrays sources")
    if options.get("split") == "tiles" and patches == "whole":
        raise RecipeError(f"{src_path}.split", "split: tiles holds out tiles of every image:"
                          " set data.patches to tile or random")
    return DataSpec(source=SourceSpec(kind, options), image_size=size, train=train, val=val,
                    augment=augment, patches=patches, tile_overlap=overlap)


def _read_model(sec: _Section) -> ModelSpec:
    sec.expect(*(f.name for f in dataclasses.fields(ModelSpec)))
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
        norm_momentum=sec.get("norm_momentum", float, 0.9, _strictly_inside_unit),
        activation=sec.get("activation", str, "relu"),
        dropout=sec.get("dropout", float, 0.0, _below_one),
        upsample=sec.choice("upsample", UPSAMPLE_MODES, "transpose"),
    )
    problem = _activation_problem(spec.activation)
    if problem:
        import keras

        names = [n for n in dir(keras.activations)
                 if not n.startswith("_") and not _activation_problem(n)]
        known = "such as relu, gelu, silu, elu, leaky_relu"
        if problem == "unknown":
            message = (f"unknown activation {_show(spec.activation)}"
                       f"{_suggest(spec.activation, names)}. Expected a keras activation name"
                       f" {known}")
        else:
            message = (f"activation {_show(spec.activation)} {problem}; the trunk needs a"
                       f" shape-preserving function of one argument {known}")
        raise RecipeError(sec.sub("activation"), message)
    return spec


def _activation_problem(name: str) -> str | None:
    """None for a keras activation that works element-wise, as the trunk's layers need; else
    'unknown', or why it does not fit (glu halves the channels, threshold takes arguments)."""
    import keras

    try:
        function = keras.activations.get(name)
    except (ValueError, TypeError):
        return "unknown"
    try:
        shape = tuple(keras.ops.shape(function(keras.ops.zeros((1, 2, 2, 4)))))
    except Exception:  # whatever a foreign function raises here, it does not fit
        return "takes arguments of its own"
    return None if shape == (1, 2, 2, 4) else "changes the shape of its input"


def _attach_points(levels: int) -> tuple[str, ...]:
    # decoder.k is the decoder at 1/2^k resolution; plain "decoder" is full resolution.
    return ("decoder", "bottleneck") + tuple(f"decoder.{k}" for k in range(1, levels))


def _read_target(raw: Any, path: str, source_targets: Mapping[str, Any]) -> TargetSpec:
    if isinstance(raw, str):
        if raw not in source_targets:
            raise RecipeError(path, f"the data source has no target {_show(raw)}"
                              f"{_suggest(raw, list(source_targets))}. It provides: "
                              f"{', '.join(source_targets)}; or derive one with"
                              " {derive: boundary, from: mask}")
        if source_targets[raw].kind == "instances":
            raise RecipeError(path, f"'{raw}' holds object ids, not a target a head can"
                              f" learn: use the semantic mask, or derive from it, e.g."
                              f" {{derive: boundary, from: {raw}}} (lines between objects) or"
                              f" {{derive: label, from: {raw}, mode: count, bins: [5, 20]}}")
        return TargetSpec(source=raw)
    sec = _Section(raw, path)
    sec.expect("derive", "from", "width", "mode", "bins")
    derive = sec.choice("derive", DERIVATIONS)
    # Options of the other derivation: say where they belong.
    for key, owner in (("width", "boundary"), ("bins", "label")):
        if sec.has(key) and derive != owner:
            raise RecipeError(sec.sub(key), f"applies to derive: {owner}, not {derive}")
    src = sec.get("from", str, "mask")
    masks = [k for k, t in source_targets.items() if t.kind in ("mask", "instances")]
    if src not in masks:
        raise RecipeError(sec.sub("from"), f"{_show(src)} is not a mask of the data source"
                          f"{_suggest(src, masks)}; masks it provides:"
                          f" {', '.join(masks) or 'none'}")
    options: dict[str, Any] = {}
    if derive == "boundary":
        options["width"] = sec.get("width", int, 1, _all(_positive, _at_most(64)))
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


def _read_bins(sec: _Section, mode: str) -> list[float]:
    """Increasing thresholds that cut a count or a fraction into len(bins) + 1 classes."""
    path = sec.sub("bins")
    raw = sec.raw_value("bins")
    example = "[5, 20]" if mode == "count" else "[0.1, 0.3]"
    if raw is None:
        raise RecipeError(path, f"is required with mode: {mode}: increasing thresholds such as"
                          f" {example} (classes: below the first, between, from the last)")
    if not isinstance(raw, list) or not raw:
        raise RecipeError(path, f"expected a non-empty list of numbers such as {example}, got"
                          f" {_show(raw)}")
    if len(raw) >= MAX_CLASSES:
        raise RecipeError(path, f"has {len(raw)} thresholds, which make {len(raw) + 1} classes;"
                          f" a head has at most {MAX_CLASSES} classes ({MAX_CLASSES - 1}"
                          " thresholds)")
    if mode == "count":  # a number of objects: any positive threshold up to a billion
        check = _all(_positive, _at_most(1e9))
    else:  # a fraction of the pixels, strictly between none and all
        def check(v: float) -> str | None:
            return None if 0 < v < 1 else "must be in (0, 1)"
    bins = [_check_value(v, float, f"{path}[{i}]", check) for i, v in enumerate(raw)]
    if any(b <= a for a, b in zip(bins, bins[1:], strict=False)):
        raise RecipeError(path, f"must increase strictly, got {_show(raw)}")
    # Object counts read best as integers ("bins=[11]", not [11.0]).
    return [int(b) if mode == "count" and float(b).is_integer() else b for b in bins]


def target_classes(target: TargetSpec, source_targets: Mapping[str, Any]) -> int:
    """Number of classes the target carries (1 for binary maps)."""
    info = source_targets[target.source]
    if target.derive == "boundary":
        return 1
    if target.derive == "label":
        mode = target.options.get("mode", "dominant")
        if mode in ("count", "coverage"):
            return len(target.options["bins"]) + 1
        # dominant: the most frequent foreground class; presence: one 0/1 per foreground
        # class. A binary mask gives "has foreground or not" (2 classes) in both modes.
        foreground = info.classes - 1 if info.classes > 1 else 1
        return foreground if foreground > 1 else 2
    return info.classes


def is_multi_hot(target: TargetSpec, source_targets: Mapping[str, Any]) -> bool:
    """Whether the target holds one 0/1 per class: a presence label of a mask with two or more
    foreground classes (of one foreground class it is a plain 0/1 label)."""
    return (target.derive == "label" and target.options.get("mode") == "presence"
            and source_targets[target.source].classes > 2)


def target_kind(target: TargetSpec, source_targets: Mapping[str, Any]) -> str:
    """'mask' for per-pixel targets, 'label' for image-level ones."""
    if target.derive == "boundary":
        return "mask"
    if target.derive == "label":
        return "label"
    return source_targets[target.source].kind


def decided_options(multilabel: bool) -> dict[str, Any]:
    """The options a head passes to each of its losses and metrics, beyond ``from_logits``
    (given separately): ``multilabel`` for a head whose target is multi-hot."""
    return {"multilabel": True} if multilabel else {}


def _refuse_single_label(name: str, options: Mapping[str, Any], what: str, where: str,
                         multilabel: bool) -> None:
    if multilabel and "multilabel" not in options:
        raise RecipeError(where, f"{what} '{name}' takes one class per image; this head's"
                          " presence target is multi-hot (one 0/1 per class)")


def _read_terms(raw: Any, path: str, kind: str, multilabel: bool = False
                ) -> tuple[LossTermSpec, ...]:
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
        if not isinstance(entry, (Mapping, type(None))):
            raise RecipeError(where, "expected a loss name such as 'dice' or a mapping {name:"
                              f" dice, weight: 1.0, ...}}, got {_type_name(entry)}"
                              f" ({_show(entry)})")
        sec = _Section(entry, where)
        name = sec.get("name", str)
        if name not in LOSSES:
            raise RecipeError(sec.sub("name"), f"unknown loss {_show(name)}"
                              f"{_suggest(name, list(LOSSES))}. Expected one of: "
                              f"{', '.join(LOSSES)}")
        options = _read_options(sec, loss_options(name), f"loss '{name}'", ("name", "weight"))
        weight = sec.get("weight", float, 1.0, _all(_non_negative, _at_most(1e6)))
        sec.finish()
        _refuse_single_label(name, loss_options(name), "loss", where, multilabel)
        _try_build(where, options, build_loss,
                   {"name": name, **options, **decided_options(multilabel)}, from_logits=True)
        terms.append(LossTermSpec(name=name, weight=weight, options=options))
    if all(t.weight == 0 for t in terms):
        raise RecipeError(path, "every term has weight 0: the head would learn nothing")
    return tuple(terms)


def _check_term_channels(term: LossTermSpec, classes: int, where: str,
                         multilabel: bool = False) -> None:
    """Per-channel loss options must fit the head's output channels. The loss itself can only
    tell at the first training step, deep inside Keras; the recipe knows now."""
    sigmoid = classes == 1 or multilabel
    weights = term.options.get("class_weights")
    if isinstance(weights, list):
        # crossentropy on one sigmoid channel weighs [background, foreground].
        want = 2 if term.name == "crossentropy" and classes == 1 else classes
        if len(weights) != want:
            raise RecipeError(f"{where}.class_weights", f"has {len(weights)} entries; this head"
                              f" has {classes} output channel{'s' if classes > 1 else ''}:"
                              f" give {want}" + (" ([background, foreground])"
                                                 if classes == 1 and want == 2 else ""))
    alpha = term.options.get("alpha") if term.name == "focal" else None
    if isinstance(alpha, list) and classes == 1:
        raise RecipeError(f"{where}.alpha", "a binary head takes one number: the weight of"
                          f" positives (negatives get 1 - alpha), got {_show(alpha)}")
    if isinstance(alpha, list) and len(alpha) != classes:
        raise RecipeError(f"{where}.alpha", f"has {len(alpha)} entries; this head has"
                          f" {classes} classes: give one weight per class")
    if isinstance(alpha, (int, float)) and not sigmoid:
        raise RecipeError(f"{where}.alpha", f"one number is ambiguous for a {classes}-class"
                          f" softmax head: give one weight per class, e.g. {[alpha] * classes}")
    if term.name == "weighted_crossentropy" and not sigmoid:
        raise RecipeError(f"{where}.name", f"weighted_crossentropy is a per-channel sigmoid"
                          f" loss; this head has {classes} softmax classes: use crossentropy"
                          " with class_weights (a presence target makes a head multilabel)")


# Loss and metric options whose default (None) says nothing of their type, checked here.
# `threshold` is a probability: a head's logits go through its sigmoid before the cut.
_OPTION_CHECKS: dict[str, tuple[type, Callable[[Any], str | None]]] = {
    "threshold": (float, lambda v: None if 0 < v < 1 else "must be a probability in (0, 1)"),
}


def _read_options(sec: _Section, allowed: Mapping[str, Any], what: str,
                  fixed: tuple[str, ...]) -> dict[str, Any]:
    """The options of one loss term or metric (every key but ``fixed``). Unknown keys are
    refused first; then each value must have its default's type: a boolean for a boolean
    default, an integer for an integer one (kept an integer), a number for a float one. Null
    means the default. Options that default to None or a string are checked by the loss or
    metric itself when it is built, except those in ``_OPTION_CHECKS``."""
    for key in sec.raw:
        if key in fixed:
            continue
        if key in HEAD_DECIDED_OPTIONS:
            raise RecipeError(sec.sub(key), f"is decided by the head"
                              f" ({HEAD_DECIDED_OPTIONS[key]}), not by the recipe: remove it")
        if key not in allowed:
            raise RecipeError(sec.sub(key), f"unknown option of {what}"
                              f"{_suggest(key, [*allowed, *fixed])}. Options: "
                              f"{', '.join(allowed) or 'none'}")
    options = {}
    for key in sec.raw:
        if key in fixed:
            continue
        value = sec.raw_value(key)
        if value is None:  # null: the default, as for every other key
            continue
        default = allowed[key]
        path = sec.sub(key)
        if isinstance(default, (bool, int, float)):  # type(True) is bool, not int
            value = _check_value(value, type(default), path)
        elif key in _OPTION_CHECKS:
            kind, check = _OPTION_CHECKS[key]
            value = _check_value(value, kind, path, check)
        _check_option_size(value, path)
        options[key] = value
    return options


def _check_option_size(value: Any, path: str) -> None:
    """Numbers in loss and metric options (and in their lists) must be finite and of a sane
    size: the losses compute in float32, where 1e300 is inf."""
    entries = list(enumerate(value)) if isinstance(value, list) else [(None, value)]
    for i, entry in entries:
        if isinstance(entry, (int, float)) and not isinstance(entry, bool):
            _check_value(entry, (int, float), path if i is None else f"{path}[{i}]",
                         lambda v: None if abs(v) <= 1e6 else "must be between -1e6 and 1e6")


def _try_build(path: str, options: Mapping[str, Any], make: Callable[..., Any], *args: Any,
               **kwargs: Any) -> None:
    """Builds a loss or metric now (``make(*args, **kwargs)``) so that bad option values fail
    at load time."""
    try:
        make(*args, **kwargs)
    except (ValueError, TypeError) as exc:
        message = _tidy(str(exc))
        # The loss or metric quotes the option at fault ("invalid `alpha`=..."): name its path.
        found = re.search(r"`(\w+)(\[\d+\])?`", message)
        if found and found.group(1) in options:
            path = f"{path}.{found.group(1)}{found.group(2) or ''}"
        raise RecipeError(path, message) from None


def _read_metrics(raw: Any, path: str, kind: str, classes: int, multilabel: bool = False
                  ) -> tuple[MetricSpec, ...]:
    from multiseg.metrics import METRICS, build_metric, metric_options

    if raw is None:
        raw = DEFAULT_METRICS[kind]
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
                              f" dice, ...}}, got {_type_name(entry)} ({_show(entry)})")
        sec = _Section(entry, where)
        name = sec.get("name", str)
        if name not in METRICS:
            raise RecipeError(sec.sub("name") if isinstance(raw[i], dict) else where,
                              f"unknown metric {_show(name)}{_suggest(name, list(METRICS))}."
                              f" Expected one of: {', '.join(METRICS)}")
        options = _read_options(sec, metric_options(name), f"metric '{name}'", ("name",))
        sec.finish()
        if options.get("threshold") is not None and classes > 1 and not multilabel:
            raise RecipeError(f"{where}.threshold", "applies to one-channel or multilabel"
                              " (presence) heads; this head picks the most likely of its"
                              f" {classes} classes")
        _refuse_single_label(name, metric_options(name), "metric", where, multilabel)
        _try_build(where, options, build_metric,
                   {"name": name, **options, **decided_options(multilabel)},
                   classes=classes, from_logits=True)
        label = options.get("class_id", "")
        if (name, label) in seen:
            raise RecipeError(where, f"metric '{name}' is listed twice")
        seen.add((name, label))
        metrics.append(MetricSpec(name=name, options=options))
    return tuple(metrics)


def _read_head(name: str, sec: _Section, levels: int, source_targets: Mapping[str, Any]
               ) -> HeadSpec:
    if sec.has("multilabel"):
        raise RecipeError(sec.sub("multilabel"), f"is decided by the head"
                          f" ({HEAD_DECIDED_OPTIONS['multilabel']}), not by the recipe:"
                          " remove it")
    sec.expect(*(f.name for f in dataclasses.fields(HeadSpec)
                 if f.name not in ("name", "multilabel")))
    kind = sec.choice("kind", HEAD_KINDS)
    raw_target = sec.raw_value("target")
    if raw_target is None:
        raise sec.missing("target", ": the source key (mask, label) or a derivation such as"
                          " {derive: boundary, from: mask}")
    if not isinstance(raw_target, (str, Mapping)):
        raise RecipeError(sec.sub("target"), "expected the source key (mask, label) or a"
                          " derivation such as {derive: boundary, from: mask}, got"
                          f" {_type_name(raw_target)} ({_show(raw_target)})")
    target = _read_target(sec.raw_value("target"), sec.sub("target"), source_targets)
    t_kind = target_kind(target, source_targets)
    t_classes = target_classes(target, source_targets)
    if t_classes > MAX_CLASSES:
        raise RecipeError(sec.sub("target"), f"target '{target.source}'"
                          f"{' (derived)' if target.derive else ''} has {t_classes} classes;"
                          f" a head has at most {MAX_CLASSES}")
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
        classes = sec.get("classes", int, t_classes, _all(_positive, _at_most(MAX_CLASSES)))
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
        raise RecipeError(sec.sub("attach"), f"unknown attach point {_show(attach)}"
                          f"{_suggest(attach, points)}. This trunk has: {', '.join(points)}")
    branch = _int_list(sec.get("branch", (list, int), []), sec.sub("branch"), min_len=0)
    if len(branch) > 16:
        raise RecipeError(sec.sub("branch"), f"at most 16 layers, got {len(branch)}")
    multilabel = is_multi_hot(target, source_targets)
    loss = _read_terms(sec.raw_value("loss"), sec.sub("loss"), kind, multilabel)
    for i, term in enumerate(loss):
        where = f"{sec.sub('loss')}[{i}]" if isinstance(sec.raw.get("loss"), list) else sec.sub(
            "loss")
        _check_term_channels(term, classes, where, multilabel)
    loss_weight = sec.get("loss_weight", float, 1.0, _all(_non_negative, _at_most(1e6)))
    metrics = _read_metrics(sec.raw_value("metrics"), sec.sub("metrics"), kind, classes,
                            multilabel)
    grad_scale = sec.get("grad_scale", float, 1.0, _all(_non_negative, _at_most(1e3)))
    return HeadSpec(name=name, kind=kind, classes=classes, attach=attach, branch=branch,
                    target=target, loss=loss, loss_weight=loss_weight, metrics=metrics,
                    grad_scale=grad_scale, multilabel=multilabel)


def _read_train(sec: _Section) -> TrainSpec:
    sec.expect(*(f.name for f in dataclasses.fields(TrainSpec)))
    opt_raw = sec.raw_value("optimizer")
    if isinstance(opt_raw, str):
        opt_raw = {"name": opt_raw}
    opt = _Section(opt_raw, sec.sub("optimizer"), f"an optimizer name ({', '.join(OPTIMIZERS)})"
                   " or a mapping such as {name: adam, learning_rate: 1.0e-3}")
    opt.expect(*(f.name for f in dataclasses.fields(OptimizerSpec)))
    optimizer = OptimizerSpec(
        name=opt.choice("name", OPTIMIZERS, "adam"),
        learning_rate=opt.get("learning_rate", float, 1e-3, _all(_positive, _at_most(10.0))),
        weight_decay=opt.get("weight_decay", float, None, _all(_non_negative, _at_most(1.0))),
        momentum=opt.get("momentum", float, None, _below_one),
        clipnorm=opt.get("clipnorm", float, None, _all(_positive, _at_most(1e6))),
    )
    if optimizer.momentum is not None and optimizer.name not in ("sgd", "rmsprop"):
        raise RecipeError(opt.sub("momentum"), f"applies to sgd and rmsprop, not"
                          f" {optimizer.name} (whose moments are its own)")
    gf_raw = sec.raw_value("gradflow")
    if isinstance(gf_raw, int) and not isinstance(gf_raw, bool):
        gf_raw = {"every": gf_raw}
    gf = _Section(gf_raw, sec.sub("gradflow"),
                  "a number of steps or a mapping such as {every: 200}")
    gf.expect("every")
    gradflow = GradflowSpec(every=gf.get("every", int, 0, _all(_non_negative,
                                                               _at_most(10_000_000))))
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
        precise_bn=sec.get("precise_bn", int, 8, _all(_non_negative, _at_most(100_000))),
    )
    return spec


def _check_run_name(name: str) -> str | None:
    """Why ``name`` cannot name a run directory (runs/<name>), or None."""
    if not name:
        return "must be a non-empty name (it names the run directory)"
    if len(name) > 255:
        return (f"must be a name of at most 255 characters (it names the run directory), has"
                f" {len(name)}")
    if "/" in name:
        return "must be a name without '/' (it names one run directory, runs/<name>)"
    if name.strip() != name:
        return "must be a name without surrounding spaces"
    if not name.isprintable():
        return "must be a name without control characters"
    if name in (".", ".."):
        return "must be a name other than '.' and '..' (it names the run directory)"
    return None


def _check_head_name(name: str) -> str | None:
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


def _output_problem(path: str) -> str | None:
    """Why ``path`` cannot name a run directory, judged from the text alone, or None."""
    if not path.strip():
        return "must be a non-empty path (the run directory)"
    if not path.isprintable():
        return "must be a path without control characters"
    if len(path) > 4096 or any(len(part.encode()) > 255 for part in path.split(os.sep)):
        return "must be a path of at most 4096 characters, and 255 bytes for each of its parts"
    return None


def check_output(path: str, where: str = "output") -> None:
    """Refuses a run directory that cannot be made: a bad path (see ``_output_problem``), or
    an existing file in its place or in the place of one of its parents. ``load`` runs it on
    the recipe's ``output``; ``from_dict`` checks the text only, not the disk.

    Raises:
        RecipeError: naming ``where`` (``output``, or ``--output`` on the command line).
    """
    problem = _output_problem(path)
    if problem:
        raise RecipeError(where, f"{problem}, got {_show(path)}")
    # Training makes the directory before anything else; a file in the way is a recipe mistake.
    node = os.path.abspath(path)
    while not os.path.exists(node) and os.path.dirname(node) != node:
        node = os.path.dirname(node)
    if os.path.exists(node) and not os.path.isdir(node):
        what = ("is an existing file" if node == os.path.abspath(path)
                else f"lies inside {_show(node)}, which is a file")
        raise RecipeError(where, f"{what}; the run directory must be a directory: choose"
                          " another path")


def from_dict(raw: Any, *, where: str = "") -> Recipe:
    """Validates plain data (as YAML gives it) into a :class:`Recipe`.

    Raises:
        RecipeError: naming the field path of the first mistake.
    """
    from multiseg.data.sources import source_targets as get_source_targets

    if raw is None:
        raise RecipeError(where, "the recipe is empty")
    top = _Section(raw, "")
    # A misspelled section ("haeds") is the mistake to report, not the section it hides.
    top.used.update(("version", "name", "seed", "data", "model", "heads", "train", "output"))
    top.finish()
    version = top.get("version", int, RECIPE_VERSION)
    if version != RECIPE_VERSION:
        raise RecipeError("version", f"this multiseg reads recipe version {RECIPE_VERSION},"
                          f" got {version}")
    name = top.get("name", str, "multiseg-run", _check_run_name)
    seed = top.get("seed", int, 0, _all(_non_negative, _at_most(2**32 - 1)))
    data = _read_data(top.section("data"))
    model = _read_model(top.section("model"))
    heads_raw = top.raw_value("heads")
    if heads_raw is None:
        raise top.missing("heads", ": at least one head, e.g. heads: {mask: {kind:"
                          " segmentation, target: mask}}")
    example = "e.g. heads: {mask: {kind: segmentation, target: mask}}"
    if not isinstance(heads_raw, Mapping):
        raise RecipeError("heads", f"expected a mapping of head names to heads, {example}; got"
                          f" {_type_name(heads_raw)} ({_show(heads_raw)})")
    if not heads_raw:
        raise RecipeError("heads", f"at least one head is required, {example}")
    heads_sec = _Section(heads_raw, "heads")
    s_targets = get_source_targets(data.source.kind, data.source.options)
    heads = {}
    for head_name in heads_raw:
        head_path = f"heads.{_name(head_name)}"
        problem = _check_head_name(head_name)
        if problem:
            raise RecipeError(head_path, problem)
        head = heads_sec.section(head_name, "a head: a mapping such as {kind: segmentation,"
                                 " target: mask}")
        heads[head_name] = _read_head(head_name, head, len(model.filters), s_targets)
    if all(head.loss_weight == 0 for head in heads.values()):
        raise RecipeError("heads", "every head has loss_weight 0: nothing would be trained")
    train = _read_train(top.section("train"))
    output = top.get("output", str, f"runs/{name}", _output_problem)
    top.finish()
    return Recipe(name=name, data=data, model=model, heads=heads, train=train, output=output,
                  seed=seed, version=version)


# ---------------------------------------------------------------------------------------------
# Files and overrides.


def parse_override(text: str) -> tuple[list[str | int], Any]:
    """``heads.mask.loss[0].weight=0.5`` -> (['heads', 'mask', 'loss', 0, 'weight'], 0.5)."""
    if "=" not in text:
        raise RecipeError("--set", f"expected key.path=value, got {_show(text)}")
    key, _, value_text = text.partition("=")
    parts: list[str | int] = []
    for piece in key.strip().split("."):
        name, _, rest = piece.partition("[")
        if not name:
            raise RecipeError("--set", f"empty key in {_show(key)}")
        parts.append(name)
        while rest:
            index, _, rest = rest.partition("]")
            if not index.isdigit():
                raise RecipeError("--set", f"bad index {_show(f'[{index}]')} in {_show(key)}")
            parts.append(int(index))
            rest = rest[1:] if rest.startswith("[") else rest
    try:
        value = yaml.safe_load(value_text) if value_text.strip() else None
    except (yaml.YAMLError, RecursionError, ValueError) as exc:
        problem = getattr(exc, "problem", None) or (str(exc).splitlines() or [repr(exc)])[0]
        raise RecipeError(f"--set {_name(key)}", f"value is not valid YAML: {problem}") from None
    return parts, value


def apply_override(raw: dict, parts: list[str | int], value: Any) -> None:
    """Sets one value inside raw recipe data, creating mappings on the way."""
    node: Any = raw
    path = ""
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        path = (f"{path}[{part}]" if isinstance(part, int)
                else f"{path}.{_name(part)}" if path else _name(part))
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
            elif isinstance(part, str) and isinstance(node[part], str) and part in (
                    "source", "loss", "optimizer"):
                # `source: shapes` is shorthand for `source: {kind: shapes}`; same for loss
                # and optimizer ({name: ...}). Other strings are not mappings to set into.
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
    # yaml.safe_load, in its steps, to look at the document's nodes before building values.
    loader = None
    try:
        loader = yaml.SafeLoader(text)  # its reader refuses control characters right away
        node = loader.get_single_node()
        if node is None:
            return None
        _refuse_duplicate_keys(node, path)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else path
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RecipeError(where, f"not valid YAML (or uses a tag that a safe loader refuses):"
                          f" {problem}") from None
    except RecursionError:
        raise RecipeError(path, "not a recipe: nested too deeply to read") from None
    except RecipeError:
        raise
    except ValueError as exc:
        # A value YAML recognises but cannot build: !!int abc, 2001-02-30, a 5000-digit number.
        raise RecipeError(path, f"not valid YAML: a value cannot be read: {exc}") from None
    finally:
        if loader is not None:
            loader.dispose()


def _refuse_duplicate_keys(root: yaml.Node, file: str) -> None:
    """A key given twice in one mapping is an error. PyYAML keeps the last one without a word,
    so a second head ``mask:`` would silently replace the first. Merge keys (``<<``) and the
    keys they bring keep their YAML meaning."""
    todo, done = [(root, "")], set()
    while todo:  # iterative, and each node once: aliases can share nodes many times over
        node, where = todo.pop()
        if id(node) in done:
            continue
        done.add(id(node))
        children = []
        if isinstance(node, yaml.SequenceNode):
            children = [(child, f"{where}[{i}]") for i, child in enumerate(node.value)]
        elif isinstance(node, yaml.MappingNode):
            lines: dict[tuple[str, str], int] = {}
            for key_node, value_node in node.value:
                if (not isinstance(key_node, yaml.ScalarNode)
                        or key_node.tag == "tag:yaml.org,2002:merge"):
                    continue
                sub = f"{where}.{_name(key_node.value)}" if where else _name(key_node.value)
                key = (key_node.tag, key_node.value)
                line = key_node.start_mark.line + 1
                if key in lines:
                    raise RecipeError(sub, f"is given twice in {file} (lines {lines[key]} and"
                                      f" {line}); YAML would keep only the last one silently:"
                                      " remove or rename one")
                lines[key] = line
                children.append((value_node, sub))
        todo.extend(reversed(children))


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
        recipe = from_dict(raw)
        check_output(recipe.output)
        return recipe
    except RecipeError as exc:
        if not exc.path:  # the top level: name the file
            raise RecipeError(os.fspath(path), exc.message) from None
        raise RecipeError(exc.path, f"{exc.message} (in {os.fspath(path)})") from None


def dump(recipe: Recipe) -> str:
    """The resolved recipe as YAML text."""
    return yaml.safe_dump(recipe.to_dict(), sort_keys=False)
