"""What the file sources (``folder``, ``arrays``) share: their common options and the check
of them, the targets they provide, decoding and checking items in threads, and the split.

Loading is a validation pass: every file is decoded and checked (readable, mask present and of
its image's size, finite pixels, mask values allowed by the declared format, labels known)
before anything trains. A bad file raises :class:`DataError` naming it, or, with
``bad_files: skip``, is left out and listed in the data report. The sources themselves are
``multiseg.data.folder.Folder`` and ``multiseg.data.arrays.Arrays``.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from multiseg.data.errors import DataError
from multiseg.data.io import IMAGE_EXTENSIONS, INTENSITIES, MASK_FORMATS, to_image, to_mask
from multiseg.data.samples import Item, Loaded, TargetInfo

__all__ = ["BUILTIN_PREFIX", "COMMON_OPTIONS", "COMMON_TYPES", "IMAGE_EXTENSIONS", "FileSource",
           "builtin_sets", "check_channels", "check_common", "decode_all", "label_index",
           "make_item", "mask_classes", "read_csv", "require", "resolve_path", "sorted_names"]

BUILTIN_DIR = os.path.join(os.path.dirname(__file__), "builtin")
BUILTIN_PREFIX = "builtin:"

# Options shared by the file sources (a recipe's data.source mapping), with their defaults.
COMMON_OPTIONS: dict[str, Any] = {
    "mask_format": "binary",  # binary (0/1 or 0/255) | labels | palette | instances
    "classes": None,  # labels: number of classes, background included
    "class_names": None,  # names of the mask classes, background first
    "palette": None,  # palette: {class name: [r, g, b]}, background first
    "label_names": None,  # image-label class names in index order (default: as found)
    "split": "fraction",  # fraction | tiles, and folders | file (folder) or keys (arrays)
    "val_fraction": 0.2,  # share of images (or of tile cells, split: tiles) for validation
    "intensity": "dtype",  # dtype | minmax | percentile
    "channels": None,  # None: as stored; 1 or 3 converts grey <-> RGB
    "bad_files": "error",  # error | skip (skipped files are counted and listed)
}
COMMON_TYPES: dict[str, tuple[type, ...]] = {
    "classes": (int,),
    "class_names": (list,),
    "palette": (dict,),
    "label_names": (list,),
    "channels": (int,),
}


def resolve_path(path: str) -> str:
    """``builtin:nuclei`` is a data set shipped inside multiseg; other paths are as given."""
    if path.startswith(BUILTIN_PREFIX):
        return os.path.join(BUILTIN_DIR, path[len(BUILTIN_PREFIX):])
    return os.path.expanduser(path)


def builtin_sets() -> list[str]:
    return sorted(d for d in os.listdir(BUILTIN_DIR)
                  if os.path.isdir(os.path.join(BUILTIN_DIR, d)) and not d.startswith("_"))


def check_common(options: dict[str, Any], splits: tuple[str, ...]) -> tuple[str, str] | None:
    fmt = options["mask_format"]
    if fmt not in MASK_FORMATS:
        return "mask_format", f"unknown mask format '{fmt}'; expected one of" \
                              f" {', '.join(MASK_FORMATS)}"
    classes, names, palette = options["classes"], options["class_names"], options["palette"]
    if fmt == "labels":
        if classes is None:
            return "classes", ("is required with mask_format: labels (the number of label"
                               " values, background included)")
        if not 2 <= classes <= 65536:
            return "classes", f"must be in [2, 65536], got {classes}"
    elif classes is not None and fmt != "palette":
        return "classes", f"applies to mask_format: labels only (the format is '{fmt}')"
    if fmt == "palette":
        if not palette:
            return "palette", ("is required with mask_format: palette: {class name: [r, g, b]},"
                               " background first")
        seen = {}
        for name, colour in palette.items():
            if (not isinstance(colour, list) or len(colour) != 3
                    or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255
                               for c in colour)):
                return f"palette.{name}", f"expected [r, g, b] with 0..255 integers, got {colour!r}"
            if tuple(colour) in seen:
                return f"palette.{name}", f"colour {colour} is also '{seen[tuple(colour)]}'"
            seen[tuple(colour)] = name
        if len(palette) < 2:
            return "palette", "needs at least 2 colours (background and one class)"
        if classes is not None and classes != len(palette):
            return "classes", f"is {classes} but the palette has {len(palette)} colours"
    elif palette is not None:
        return "palette", f"applies to mask_format: palette only (the format is '{fmt}')"
    if names is not None:
        count = mask_classes(options)
        count = 2 if count == 1 else count
        if len(names) != count or not all(isinstance(n, str) for n in names):
            return "class_names", f"expected {count} names (strings), got {names!r}"
    if options["label_names"] is not None:
        label_names = options["label_names"]
        if len(label_names) < 2 or len(set(map(str, label_names))) != len(label_names):
            return "label_names", f"expected at least 2 distinct names, got {label_names!r}"
    if options["split"] not in splits:
        return "split", f"unknown split '{options['split']}'; expected one of {', '.join(splits)}"
    if not 0 < options["val_fraction"] < 1:
        return "val_fraction", f"must be in (0, 1), got {options['val_fraction']}"
    if options["intensity"] not in INTENSITIES:
        return "intensity", f"unknown '{options['intensity']}'; expected one of" \
                            f" {', '.join(INTENSITIES)}"
    if options["channels"] not in (None, 1, 3):
        return "channels", f"must be 1 or 3 (or null: as stored), got {options['channels']}"
    if options["bad_files"] not in ("error", "skip"):
        return "bad_files", f"must be error or skip, got '{options['bad_files']}'"
    return None


def mask_classes(options: dict[str, Any]) -> int:
    """Classes of the semantic mask as a head sees them (1 = binary)."""
    fmt = options["mask_format"]
    if fmt == "labels":
        count = options["classes"]
    elif fmt == "palette":
        count = len(options["palette"])
    else:
        count = 2
    return 1 if count == 2 else count


def _mask_targets(options: dict[str, Any]) -> dict[str, TargetInfo]:
    classes = mask_classes(options)
    names = options["class_names"]
    if names is None:
        if options["mask_format"] == "palette":
            names = list(options["palette"])
        elif classes == 1:
            names = ["background", "object" if options["mask_format"] == "instances"
                     else "foreground"]
        else:
            names = ["background"] + [f"class{i}" for i in range(1, classes)]
    targets = {"mask": TargetInfo("mask", classes, tuple(names))}
    if options["mask_format"] == "instances":
        targets["instances"] = TargetInfo("instances", 1, ("background", "object"))
    return targets


def label_index(names: list[str]) -> Callable[[Any, str], int]:
    lookup = {str(n): i for i, n in enumerate(names)}

    def index(value: Any, where: str) -> int:
        text = str(value).strip()
        if text in lookup:
            return lookup[text]
        if text.lstrip("-").isdigit() and 0 <= int(text) < len(names):
            return int(text)
        raise DataError(where, f"label '{text}' is not one of {list(lookup)} (or an index"
                        f" below {len(names)})")

    return index


def read_csv(path: str, columns: tuple[str, str]) -> list[tuple[int, str, str]]:
    """Rows (line number, first column, second column) of a CSV with a header row."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            header = [h.strip() for h in (reader.fieldnames or [])]
            missing = [c for c in columns if c not in header]
            if missing:
                raise DataError(path, f"needs a header row with the columns {list(columns)};"
                                f" found {header}")
            reader.fieldnames = header
            return [(i + 2, (row[columns[0]] or "").strip(), (row[columns[1]] or "").strip())
                    for i, row in enumerate(reader)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(path, f"cannot read the CSV file: {exc}") from None


def sorted_names(values: list[str]) -> list[str]:
    if all(v.lstrip("-").isdigit() for v in values):
        return [str(i) for i in range(max(int(v) for v in values) + 1)]
    return sorted(set(values))


def _split_fraction(items: list[Item], fraction: float, seed: int, where: str
                    ) -> tuple[list[Item], list[Item]]:
    if len(items) < 2:
        raise DataError(where, f"has {len(items)} usable image(s): split: fraction needs at"
                        " least 2. Hold out tiles of a large image with split: tiles")
    order = np.random.default_rng([seed, 7]).permutation(len(items))
    n_val = min(max(1, round(fraction * len(items))), len(items) - 1)
    val = sorted(order[:n_val].tolist())
    train = sorted(order[n_val:].tolist())
    return [items[i] for i in train], [items[i] for i in val]


def decode_all(jobs: list[tuple[str, Callable[[], Item]]], bad_files: str
                ) -> tuple[list[Item], list[tuple[str, str]], list[str]]:
    """Runs the decoding jobs in threads; returns the items, the skipped files and notes."""
    def run(job):
        try:
            return job[1](), None
        except DataError as exc:
            return None, exc

    workers = min(8, os.cpu_count() or 1, max(1, len(jobs)))
    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            results = list(pool.map(run, jobs))
    else:
        results = [run(job) for job in jobs]
    failures = [exc for _, exc in results if exc is not None]
    if failures and bad_files == "error":
        first = failures[0]
        rest = len(failures) - 1
        more = (f" ({rest} more file{'s fail' if rest > 1 else ' fails'} the check too;"
                " data.source.bad_files: skip leaves them out)"
                if len(failures) > 1 else " (data.source.bad_files: skip leaves bad files out)")
        raise DataError(first.path, first.message + more)
    items = [item for item, _ in results if item is not None]
    notes: list[str] = []
    for item in items:
        notes.extend(item.notes)
    return items, [(exc.path, exc.message) for exc in failures], notes


def check_channels(items: list[Item], bad_files: str, skipped: list[tuple[str, str]]
                    ) -> list[Item]:
    if not items:
        return items
    first = items[0]
    kept = []
    for item in items:
        if item.image.shape[-1] != first.image.shape[-1]:
            message = (f"has {item.image.shape[-1]} channel(s) but {first.name} has"
                       f" {first.image.shape[-1]}; set data.source.channels: 1 or 3 to"
                       " convert every image")
            if bad_files == "error":
                raise DataError(item.name, message)
            skipped.append((item.name, message))
        else:
            kept.append(item)
    return kept


def make_item(name: str, image: np.ndarray, mask: np.ndarray | None, mask_name: str,
               options: dict[str, Any], labels: dict[str, int]) -> Item:
    """Checks one image/mask pair already read; ``image`` and ``mask`` as stored."""
    pixels = to_image(name, image, intensity=options["intensity"], channels=options["channels"])
    if mask is None:
        return Item(name, pixels, {}, labels)
    if mask.shape[:2] != pixels.shape[:2]:
        raise DataError(mask_name, f"is {mask.shape[0]}x{mask.shape[1]} but its image {name}"
                        f" is {pixels.shape[0]}x{pixels.shape[1]}; a mask must match its image"
                        " pixel for pixel")
    semantic, instances, note = to_mask(mask_name, mask, fmt=options["mask_format"],
                                        classes=options["classes"], palette=options["palette"])
    masks = {"mask": semantic}
    if instances is not None:
        masks["instances"] = instances
    return Item(name, pixels, masks, labels, notes=[f"{mask_name}: {note}"] if note else [])


def require(items: list[Item], where: str, skipped: list[tuple[str, str]]) -> None:
    if not items:
        detail = (f"; {len(skipped)} bad file(s) were skipped, e.g. {skipped[0][0]}:"
                  f" {skipped[0][1]}" if skipped else "")
        raise DataError(where, f"no usable images (looked for"
                        f" {', '.join(IMAGE_EXTENSIONS)}){detail}")


class FileSource:
    """The part of a file source that does not depend on where its files are: the targets it
    provides and the split of the decoded items into training and validation sets."""

    @classmethod
    def label_names(cls, options: dict[str, Any]) -> list | None:
        """Names of the image-label classes in index order; None without image labels."""
        raise NotImplementedError

    @classmethod
    def targets(cls, options: dict[str, Any]) -> dict[str, TargetInfo]:
        targets = _mask_targets(options)
        names = cls.label_names(options)
        if names is not None:
            targets["label"] = TargetInfo("label", len(names), tuple(map(str, names)))
        return targets

    @staticmethod
    def split(parts: dict[str, list[Item]], options: dict[str, Any], *, seed: int, where: str,
              notes: list[str], skipped: list[tuple[str, str]]) -> Loaded:
        """The training and validation sets from ``parts``: ``all`` (split here by
        ``options["split"]``: ``fraction``, ``tiles``, or else all of it trains) or ``train`` and
        ``val`` already apart. Raises a DataError, naming ``where``, for a set left empty."""
        split = options["split"]
        if "all" in parts:
            require(parts["all"], where, skipped)
            items = parts.pop("all")
            if split == "fraction":
                parts["train"], parts["val"] = _split_fraction(items, options["val_fraction"],
                                                               seed, where)
            elif split == "tiles":
                parts["train"] = parts["val"] = items
            else:
                parts["train"] = items
        for name in ("train", "val"):
            require(parts[name], f"{where} ({name} split)", skipped)
        return Loaded(train=parts["train"], val=parts["val"],
                      holdout=options["val_fraction"] if split == "tiles" else 0.0,
                      where=options["path"], notes=notes, skipped=skipped)
