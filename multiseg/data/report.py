"""The data report: what was read, what was skipped, and the class frequencies per head.

Rare classes are the usual cause of "the model predicts only background": every class below
``RARE`` of a head's target pixels is a warning that names the recipe options that help.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import numpy as np

from multiseg.data.patches import RandomCrops, Tiles
from multiseg.data.samples import hw
from multiseg.headkinds import HEAD_KINDS

RARE = 0.01  # a mask class below this fraction of pixels gets a warning
EXAMPLES = 3  # file names shown after "e.g." when many files share a note
MAX_PIXELS = 2**25  # the class frequencies inspect at most this many pixels (about a second)
log = logging.getLogger("multiseg.data")
# What each head's shares are fractions of, by Frequency.kind.
UNITS = {"mask": "of pixels", "label": "of samples",
         "multilabel": "of samples containing the class"}


@dataclass
class Frequency:
    head: str
    # "mask" (fractions of pixels), "label" (fractions of samples) or "multilabel" (fraction
    # of samples where each class is present)
    kind: str
    names: tuple[str, ...]
    fractions: tuple[float, ...]
    samples: int  # samples inspected
    total: int = 0  # training samples they were drawn from (crops: training images)
    crops: bool = False  # the samples are random crops of the ``total`` training images

    @property
    def inspected(self) -> str:
        """What the shares were counted on, e.g. ``all 768 training samples``."""
        if self.crops:
            images = "the training image" if self.total == 1 else \
                f"the {self.total} training images"
            return f"{self.samples} random crops of {images}"
        if self.samples == self.total:
            return f"all {self.total} training samples"
        return f"a random {self.samples} of the {self.total} training samples"


@dataclass
class DataReport:
    source: str  # e.g. "folder builtin:nuclei"
    train: int  # training samples per epoch (train.steps_per_epoch may take fewer)
    val: int
    size: tuple[int, int]  # (height, width) of every sample
    channels: int
    images: tuple[int, int] = (0, 0)  # files or arrays read (train, val); 0 for synthetic
    held_out_tiles: bool = False  # split: tiles -- train and val come from the same images
    notes: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    frequencies: list[Frequency] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def text(self, *, max_listed: int = 5) -> str:
        """The report as printed at the start of training.

        Args:
            max_listed: skipped files listed by name (the rest are counted). Notes shared by
                many files always name ``EXAMPLES`` of them.
        """
        return "\n".join([*self._summary(), *self._skipped(max_listed), *self._notes(),
                          *self._frequencies(), *(f"warning: {w}" for w in self.warnings)])

    def _summary(self) -> list[str]:
        read = ""
        if self.held_out_tiles:
            images = f"{self.images[0]} image{'s' if self.images[0] != 1 else ''}"
            read = f", from {images} with tiles held out for validation"
        elif any(self.images):
            read = f", from {self.images[0]} train / {self.images[1]} val images"
        channels = f"{self.channels} channel{'s' if self.channels != 1 else ''}"
        return [f"data: {self.source}: {self.train} train / {self.val} val samples of"
                f" {hw(self.size)}, {channels}{read}"]

    def _skipped(self, max_listed: int) -> list[str]:
        if not self.skipped:
            return []
        lines = [f"skipped {len(self.skipped)} bad file(s) (bad_files: skip):"]
        lines += [f"  {path}: {why}" for path, why in self.skipped[:max_listed]]
        if len(self.skipped) > max_listed:
            lines.append(f"  ... and {len(self.skipped) - max_listed} more")
        return lines

    def _notes(self) -> list[str]:
        return [f"note: {note}" for note in _grouped(self.notes)]

    def _frequencies(self) -> list[str]:
        if not self.frequencies:
            return []
        lines = ["class frequencies of the training targets (before augmentation), in"
                 f" {self.frequencies[0].inspected}:"]
        for f in self.frequencies:
            shares = ", ".join(f"{n} {100 * v:.1f}%" for n, v in
                               zip(f.names, f.fractions, strict=True))
            lines.append(f"  {f.head}: {shares} ({UNITS[f.kind]})")
        return lines


def _grouped(notes: list[str]) -> list[str]:
    """Many files with the same note ("binary 0/255 mask read as 0/1") make one line that
    counts them and names ``EXAMPLES`` of them."""
    by_text: dict[str, list[str]] = {}
    for note in notes:
        where, _, text = note.partition(": ")
        key = text if text else note
        by_text.setdefault(key, []).append(where if text else "")
    lines = []
    for text, wheres in by_text.items():
        wheres = [w for w in wheres if w]
        if len(wheres) > 1:
            folder = os.path.dirname(wheres[0])
            if folder and all(os.path.dirname(w) == folder for w in wheres):
                names, where = [os.path.basename(w) for w in wheres], f" in {folder}"
            else:
                names, where = wheres, ""
            more = ", ..." if len(names) > EXAMPLES else ""
            lines.append(f"{text}: {len(names)} files{where}, e.g."
                         f" {', '.join(names[:EXAMPLES])}{more}")
        else:
            lines.append(f"{wheres[0]}: {text}" if wheres else text)
    return lines


def class_frequencies(batches, kinds: dict[str, str], names: dict[str, tuple[str, ...]], *,
                      max_pixels: int = MAX_PIXELS) -> list[Frequency]:
    """Class shares of every head's target over the training set, unaugmented.

    Every training sample is inspected when the set holds at most ``max_pixels`` pixels, else a
    seeded random subset of that many pixels' worth (so a set sorted by class is not judged by
    its first class). Random crops are drawn afresh every epoch: as many are inspected as an
    epoch draws, up to the same limit. ``train.steps_per_epoch`` does not change what is
    inspected.

    Args:
        batches: the training ``Batches``.
        kinds: per head, ``mask`` (shares of pixels), ``label`` (shares of samples) or
            ``multilabel`` (share of samples where each class is present).
        names: class names of each head's target, in index order.
        max_pixels: pixels inspected at most (at least one sample is).
    """
    samples = batches.samples
    crops = isinstance(samples, RandomCrops)
    height, width = (samples.size if isinstance(samples, (RandomCrops, Tiles)) else
                     samples.arrays["image"].shape[1:3])
    limit = max(1, max_pixels // (height * width))
    rng = np.random.default_rng([batches.seed, 3])
    total = len(samples)  # training samples; of random crops, the training images
    if crops:
        count = min(batches.count, limit)  # an epoch draws batches.count crops
        passes = -(-count // total)
        picked = np.concatenate([rng.permutation(total) for _ in range(passes)])[:count]
    else:
        count = min(total, limit)
        picked = (np.arange(total) if count == total else
                  np.sort(rng.choice(total, count, replace=False)))
    counts: dict[str, np.ndarray] = {h: np.zeros(len(names[h])) for h in kinds}
    step = max(1, batches.batch_size)
    for start in range(0, count, step):
        arrays = samples.take(picked[start : start + step],
                              np.random.default_rng([batches.seed, 3, start]))
        for target in batches.head_targets:
            head = target.head
            if head not in kinds:
                continue
            values = target.make(arrays)
            if kinds[head] == "multilabel":
                counts[head] += values.reshape(len(values), -1).sum(axis=0)
            else:
                classes = len(names[head])
                found = np.bincount(values.astype(np.int64).ravel(), minlength=classes)
                counts[head] += found[:classes]
    result = []
    for head, kind in kinds.items():
        found = counts[head]
        denom = count if kind == "multilabel" else max(float(found.sum()), 1.0)
        result.append(Frequency(head, kind, names[head], tuple((found / denom).tolist()),
                                count, total, crops))
    return result


def rare_class_warnings(frequencies: list[Frequency], heads) -> list[str]:
    """One warning per rare mask class or absent label class, naming the options that help."""
    warnings = []
    for f in frequencies:
        spec = heads[f.head]
        for name, share in zip(f.names, f.fractions, strict=True):
            if f.kind == "mask" and share < RARE:
                if HEAD_KINDS[spec.kind].outlines:  # a boundary head: its target is outlines
                    helps = ("a thicker target (target.width), a Tversky loss with beta > alpha,"
                             " or weighted_crossentropy with pos_weight: balanced")
                else:
                    helps = ("a Dice-type loss (dice, tversky, focal_tversky, generalized_dice),"
                             " class_weights on crossentropy or dice, or focal")
                warnings.append(
                    f"heads.{f.head}.target: class '{name}' is {100 * share:.2f}% of the pixels"
                    f" (< {100 * RARE:g}%): a model can score well by never predicting it."
                    f" Options that help: {helps}")
            elif f.kind != "mask" and share == 0:
                warnings.append(f"heads.{f.head}.target: class '{name}' never occurs in"
                                f" {f.inspected}; check the labels (or the bins of a derived"
                                " label)")
    return warnings


def emit(report: DataReport, *, max_listed: int = 5) -> None:
    """Logs the report, each part once: the counts, notes and class frequencies at INFO, the
    skipped files and every rare-class warning as warnings (which reach stderr even when
    logging is not set up). A caller that prints ``report.text()`` does not call this."""
    log.info("%s", "\n".join([*report._summary(), *report._notes(), *report._frequencies()]))
    if report.skipped:
        log.warning("%s", "\n".join(report._skipped(max_listed)))
    for warning in report.warnings:
        log.warning("%s", warning)
