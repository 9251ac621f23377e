"""The recipe objects: frozen dataclasses, and the resolved recipe as plain data.

Each field's comment is the documentation of the recipe format (docs/recipes.md says it at
length). The readers that build these objects from YAML are in ``reader``, ``sections`` and
``heads``; files and overrides in ``files``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

RECIPE_VERSION = 1


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
AUGMENT_LIMITS = {"rotate": 180.0, "scale": 0.9, "shift": 0.5, "crop": 0.9,
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
class WeightingSpec:
    method: str = "static"  # a key of multiseg.weighting.choices.METHODS
    options: Mapping[str, Any] = field(default_factory=dict)  # the method's own options
    log_every: int = 50  # steps between the weights written to TensorBoard; 0: per epoch only

    def to_plain(self) -> Any:
        """As a recipe writes it: ``static``, or ``{method: dwa, temperature: 2.0, ...}``."""
        if self.method == "static":
            return "static"
        return {"method": self.method, **_plain(dict(self.options)), "log_every": self.log_every}


@dataclass(frozen=True)
class TrainSpec:
    epochs: int = 10
    batch_size: int = 16
    steps_per_epoch: int | None = None  # None: one pass over the training samples
    optimizer: OptimizerSpec = OptimizerSpec()
    lr_schedule: str = "constant"  # constant | cosine
    weighting: WeightingSpec = WeightingSpec()
    gradflow: GradflowSpec = GradflowSpec()
    deterministic: bool = False  # op-level determinism (slower)
    on_nonfinite: str = "stop"  # a NaN/Inf loss: stop (keep the last good checkpoint) | skip
    max_skipped_steps: int = 10  # with skip: give up after this many steps in a row
    # model.norm: batch -- training batches over which the population statistics are
    # recomputed before each validation and before model.keras is saved; 0 turns it off.
    precise_bn: int = 8
    # float32 | mixed_bfloat16 | mixed_float16: layers compute in the low dtype, variables,
    # losses and metrics stay float32 (mixed_float16 adds loss scaling).
    precision: str = "float32"
    # auto | true | false: XLA compilation of the training step (auto: what is measured
    # fastest on the backend and device, see multiseg.models.build.choose_jit_compile).
    jit_compile: bool | str = "auto"
    # Training steps per call into the compiled step (Keras's steps_per_execution): the host
    # dispatches them without waiting for the device, and callbacks (progress, logs, guards)
    # run once per call. 1 on PyTorch, and with on_nonfinite: skip.
    steps_per_execution: int = 1
    # none | mirrored | multi_worker (TensorFlow) | data_parallel (JAX): batch_size is the
    # global batch, split across replicas (multiseg.distribute).
    distribute: str = "none"


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
            "train": {**_plain(dataclasses.asdict(self.train)),
                      "weighting": self.train.weighting.to_plain()},
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
