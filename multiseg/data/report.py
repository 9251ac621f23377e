"""The data report: what was read, what was skipped, and the class frequencies per head.

Rare classes are the usual cause of "the model predicts only background": every class below
``RARE`` of a head's target pixels is a warning that names the recipe options that help.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from multiseg.headkinds import HEAD_KINDS

RARE = 0.01  # a mask class below this fraction of pixels gets a warning
log = logging.getLogger("multiseg.data")


@dataclass
class Frequency:
    head: str
    kind: str  # "mask" (fractions of pixels) or "label" (fractions of samples)
    names: tuple[str, ...]
    fractions: tuple[float, ...]
    samples: int  # samples inspected


@dataclass
class DataReport:
    source: str  # e.g. "folder builtin:nuclei"
    train: int  # samples per epoch
    val: int
    size: tuple[int, int]
    channels: int
    images: tuple[int, int] = (0, 0)  # files or arrays read (train, val); 0 for synthetic
    held_out_tiles: bool = False  # split: tiles -- train and val come from the same images
    notes: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    frequencies: list[Frequency] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def text(self, *, max_listed: int = 5) -> str:
        """The report as printed at the start of training."""
        read = ""
        if self.held_out_tiles:
            read = f", from {self.images[0]} image(s) with tiles held out for validation"
        elif any(self.images):
            read = f", from {self.images[0]} train / {self.images[1]} val images"
        lines = [f"data: {self.source}: {self.train} train / {self.val} val samples of"
                 f" {self.size[0]}x{self.size[1]}x{self.channels}{read}"]
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} bad file(s) (bad_files: skip):")
            lines += [f"  {path}: {why}" for path, why in self.skipped[:max_listed]]
            if len(self.skipped) > max_listed:
                lines.append(f"  ... and {len(self.skipped) - max_listed} more")
        for note in _grouped(self.notes, max_listed):
            lines.append(f"note: {note}")
        if self.frequencies:
            lines.append("class frequencies of the training targets (before augmentation):")
            for f in self.frequencies:
                unit = "pixels" if f.kind == "mask" else f"of {f.samples} samples"
                shares = ", ".join(f"{n} {100 * v:.1f}%" for n, v in
                                   zip(f.names, f.fractions, strict=True))
                lines.append(f"  {f.head}: {shares}" + (f" ({unit})" if f.kind != "mask"
                                                         else ""))
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _grouped(notes: list[str], limit: int) -> list[str]:
    """Many files with the same note ("binary 0/255 mask read as 0/1") make one line."""
    by_text: dict[str, list[str]] = {}
    for note in notes:
        where, _, text = note.partition(": ")
        key = text if text else note
        by_text.setdefault(key, []).append(where if text else "")
    lines = []
    for text, wheres in by_text.items():
        wheres = [w for w in wheres if w]
        if len(wheres) > 1:
            lines.append(f"{text}: {len(wheres)} files, e.g. {', '.join(wheres[:limit])}")
        else:
            lines.append(f"{wheres[0]}: {text}" if wheres else text)
    return lines


def class_frequencies(batches, kinds: dict[str, str], names: dict[str, tuple[str, ...]], *,
                      max_samples: int = 512) -> list[Frequency]:
    """Class shares of every head's target over the first training batches, unaugmented.

    Args:
        batches: the training ``Batches``.
        kinds: per head, ``mask`` (shares of pixels), ``label`` (shares of samples) or
            ``multilabel`` (share of samples where each class is present).
        names: class names of each head's target, in index order.
        max_samples: samples inspected at most.
    """
    augment, batches.augment = batches.augment, None
    counts: dict[str, np.ndarray] = {h: np.zeros(len(names[h])) for h in kinds}
    seen = 0
    try:
        for index in range(len(batches)):
            _, targets = batches.batch(0, index)
            for head, target in targets.items():
                classes = len(names[head])
                if kinds[head] == "multilabel":
                    counts[head] += target.reshape(len(target), -1).sum(axis=0)
                else:
                    found = np.bincount(target.astype(np.int64).ravel(), minlength=classes)
                    counts[head] += found[:classes]
            seen += len(next(iter(targets.values())))
            if seen >= max_samples:
                break
    finally:
        batches.augment = augment
    result = []
    for head, kind in kinds.items():
        total = counts[head]
        denom = seen if kind == "multilabel" else max(float(total.sum()), 1.0)
        result.append(Frequency(head, "mask" if kind == "mask" else "label", names[head],
                                tuple((total / denom).tolist()), seen))
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
            elif f.kind == "label" and share == 0:
                warnings.append(f"heads.{f.head}.target: class '{name}' never occurs in the"
                                f" {f.samples} training samples inspected; check the labels"
                                " (or the bins of a derived label)")
    return warnings


def emit(report: DataReport) -> None:
    """Logs the report: the summary at INFO, skipped files and rare classes as warnings."""
    log.info("%s", report.text())
    if report.skipped:
        log.warning("skipped %d bad file(s): %s", len(report.skipped),
                    "; ".join(f"{p}: {w}" for p, w in report.skipped[:5]))
    for warning in report.warnings:
        log.warning("%s", warning)
