"""Data: a source's samples, each head's target (given or derived), augmentation, batches.

``build_data(recipe)`` reads (and checks) the source, cuts tiles or crops to the recipe's image
size, and returns the training and validation ``Batches`` with a ``DataReport``: counts,
skipped files, notes and the class frequencies of every head's target. Data problems raise
:class:`DataError` naming the file.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from multiseg.data.errors import DataError
from multiseg.data.patches import RandomCrops, Stacked, Tiles, make_sets
from multiseg.data.pipeline import Batches, HeadTarget
from multiseg.data.report import DataReport, class_frequencies, emit, rare_class_warnings
from multiseg.data.samples import hw
from multiseg.data.sources import SOURCES, TargetInfo, generate, is_synthetic, source_targets
from multiseg.headkinds import HEAD_KINDS

__all__ = ["Batches", "Data", "DataError", "DataReport", "HeadTarget", "StepRange",
           "TargetInfo", "build_data", "head_targets", "stream_steps"]


def __getattr__(name: str):
    # The feeds import Keras; reading and checking data does not need them.
    if name in ("StepRange", "stream_steps"):
        from multiseg.data import feeds

        return getattr(feeds, name)
    raise AttributeError(f"module 'multiseg.data' has no attribute '{name}'")


@dataclass
class Data:
    train: Batches
    val: Batches
    targets: dict[str, TargetInfo]  # what the source provides
    channels: int
    report: DataReport | None = None  # counts, skipped files, notes, class frequencies


def head_targets(recipe) -> list[HeadTarget]:
    infos = source_targets(recipe.data.source.kind, recipe.data.source.options)
    return [HeadTarget(head=name, source=h.target.source, derive=h.target.derive,
                       options=dict(h.target.options),
                       source_classes=infos[h.target.source].classes)
            for name, h in recipe.heads.items()]


def _bin_names(bins, unit: str) -> tuple[str, ...]:
    fmt = (lambda v: f"{100 * v:g}%") if unit == "%" else (lambda v: f"{v:g}")
    edges = [fmt(b) for b in bins]
    return (f"<{edges[0]}", *(f"{a}-{b}" for a, b in zip(edges, edges[1:], strict=False)),
            f">={edges[-1]}")


def target_names(target: HeadTarget, infos: dict[str, TargetInfo]) -> tuple[str, ...]:
    """Class names of a head's target, in index order (binary maps: two names)."""
    info = infos[target.source]
    names = info.names or tuple(str(i) for i in range(max(2, info.classes)))
    if target.derive == "boundary":
        return ("background", "boundary")
    if target.derive == "label":
        mode = target.options.get("mode", "dominant")
        if mode == "count":
            return _bin_names(target.options["bins"], "")
        if mode == "coverage":
            return _bin_names(target.options["bins"], "%")
        if info.classes == 1:
            return (f"no {names[-1]}", names[-1])
        return tuple(names[1:])
    if info.kind == "mask" and info.classes == 1 and len(names) == 1:
        return ("background", names[0])
    return tuple(names)


def _channels(samples) -> int:
    if isinstance(samples, Stacked):
        return int(samples.arrays["image"].shape[-1])
    return int(samples.items[0].image.shape[-1])


def build_data(recipe, *, frequencies: bool = True, log_report: bool = True) -> Data:
    """Reads the recipe's data (a validation pass over every file), and wraps the training and
    validation sets in batch sequences.

    Args:
        recipe: a validated ``multiseg.recipe.Recipe``.
        frequencies: compute the class frequencies of every head's target (and warn about
            rare classes) for the report.
        log_report: log the report (``multiseg.data`` logger; warnings reach stderr). Off
            when the caller prints ``Data.report.text()`` itself.

    Raises:
        DataError: a bad file (unless ``bad_files: skip``), or no usable data, naming it.
    """
    spec = recipe.data
    kind, options = spec.source.kind, dict(spec.source.options)
    infos = source_targets(kind, options)
    targets = head_targets(recipe)
    augment = asdict(spec.augment)  # the keyword arguments of augment_batch
    batch_size = recipe.train.batch_size
    notes: list[str] = []
    skipped: list[tuple[str, str]] = []
    images = (0, 0)
    held_out = False
    if is_synthetic(kind):
        train_set = Stacked(generate(kind, options, count=spec.train, size=spec.image_size,
                                     seed=recipe.seed, split="train"))
        val_set = Stacked(generate(kind, options, count=spec.val, size=spec.image_size,
                                   seed=recipe.seed, split="val"))
        train_count, val_count = None, None
        where = kind
    else:
        loaded = SOURCES[kind].load(options, seed=recipe.seed)
        train_set, val_set, patch_notes = make_sets(loaded, spec.image_size, mode=spec.patches,
                                                    overlap=spec.tile_overlap, seed=recipe.seed)
        notes = loaded.notes + patch_notes
        skipped = loaded.skipped
        images = (len(loaded.train), len(loaded.val))
        held_out = bool(loaded.holdout)
        train_count = spec.train
        val_count = min(spec.val, len(val_set)) if spec.val else None
        if spec.val and spec.val > len(val_set):
            notes.append(f"data.val is {spec.val} but the validation split has {len(val_set)}"
                         f" samples: using {len(val_set)}")
        where = f"{kind} {options.get('path')}"
    train = Batches(train_set, targets, batch_size=batch_size, shuffle=True, augment=augment,
                    seed=recipe.seed, steps=recipe.train.steps_per_epoch, count=train_count)
    val = Batches(val_set, targets, batch_size=batch_size, shuffle=False, augment=None,
                  seed=recipe.seed, count=val_count)
    channels = _channels(train_set)
    if isinstance(train_set, RandomCrops):
        notes.append(f"training samples are random crops of {hw(spec.image_size)},"
                     f" {train.count} per epoch; validation uses fixed tiles")
    elif isinstance(train_set, Tiles) and not is_synthetic(kind):
        drawn = f", {train.count} drawn per epoch" if train.count != len(train_set) else ""
        notes.append(f"training samples are {len(train_set)} tiles of {hw(spec.image_size)}"
                     f"{drawn}")
    drawn = train.steps * batch_size
    if recipe.train.steps_per_epoch and drawn != train.count:
        notes.append(f"train.steps_per_epoch is {train.steps}: an epoch draws {train.steps} x"
                     f" {batch_size} = {drawn}" + (f" of the {train.count} training samples"
                                                   if drawn < train.count else
                                                   f" samples, the {train.count} training"
                                                   " samples repeated"))
    report = DataReport(source=where, train=train.count, val=val.count, size=spec.image_size,
                        channels=channels, images=images, notes=notes, skipped=skipped,
                        held_out_tiles=held_out)
    if frequencies:
        kinds = {t.head: ("multilabel" if recipe.heads[t.head].multilabel else
                          HEAD_KINDS[recipe.heads[t.head].kind].target)  # "mask" or "label"
                 for t in targets}
        names = {t.head: target_names(t, infos) for t in targets}
        report.frequencies = class_frequencies(train, kinds, names)
        report.warnings = rare_class_warnings(report.frequencies, recipe.heads)
    if log_report:
        emit(report)
    return Data(train=train, val=val, targets=infos, channels=channels, report=report)

