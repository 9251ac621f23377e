"""Sources that read the user's files: ``folder`` (images/ and masks/) and ``arrays`` (.npz/.npy).

Loading is a validation pass: every file is decoded and checked (readable, mask present and of
its image's size, finite pixels, mask values allowed by the declared format, labels known)
before anything trains. A bad file raises :class:`DataError` naming it, or, with
``bad_files: skip``, is left out and listed in the data report.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from multiseg.data.errors import DataError
from multiseg.data.io import (
    IMAGE_EXTENSIONS,
    INTENSITIES,
    MASK_FORMATS,
    read_array,
    read_rgb,
    to_image,
    to_mask,
)
from multiseg.data.samples import Item, Loaded, TargetInfo

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


def _check_common(options: dict[str, Any], splits: tuple[str, ...]) -> tuple[str, str] | None:
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


def _label_index(names: list[str]) -> Callable[[Any, str], int]:
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


def _read_csv(path: str, columns: tuple[str, str]) -> list[tuple[int, str, str]]:
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


def _sorted_names(values: list[str]) -> list[str]:
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


def _decode_all(jobs: list[tuple[str, Callable[[], Item]]], bad_files: str
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


def _check_channels(items: list[Item], bad_files: str, skipped: list[tuple[str, str]]
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


def _make_item(name: str, image: np.ndarray, mask: np.ndarray | None, mask_name: str,
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


class Folder:
    """Images and masks in two folders, matched by file stem.

    ``path/images/a.png`` pairs with ``path/masks/a.png`` (any of PNG, TIFF, JPEG, NPY; 8 or 16
    bit; grey or RGB). Image labels come from a CSV (columns ``image,label``) or from
    sub-folder names (``images/<label>/a.png``). The split is a seeded fraction of the images,
    separate ``path/train`` and ``path/val`` folders (each with images/ and masks/), a CSV
    (columns ``image,split``), or held-out tiles of every image (``split: tiles``).
    """

    OPTIONS: dict[str, Any] = {
        "path": None,  # the data folder; builtin:<name> for a set shipped with multiseg
        "images": "images",  # sub-folder of the images
        "masks": "masks",  # sub-folder of the masks
        "mask_suffix": "",  # mask file stem = image stem + suffix (e.g. "_mask")
        "labels": None,  # image labels: "folders" (sub-folder names) or a CSV file
        "split_file": None,  # split: file -- a CSV with columns image,split (train | val)
        **COMMON_OPTIONS,
    }
    OPTION_TYPES: dict[str, tuple[type, ...]] = {
        "path": (str,), "labels": (str,), "split_file": (str,), **COMMON_TYPES,
    }
    SPLITS = ("fraction", "folders", "file", "tiles")

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> tuple[str, str] | None:
        if not options["path"]:
            return "path", ("is required: the folder holding images/ and masks/ (or"
                            f" {BUILTIN_PREFIX}<name> for a built-in set:"
                            f" {', '.join(builtin_sets())})")
        root = resolve_path(options["path"])
        if not os.path.isdir(root):
            extra = (f" Built-in sets: {', '.join(builtin_sets())}"
                     if options["path"].startswith(BUILTIN_PREFIX) else "")
            return "path", f"no such folder: {root}.{extra}"
        problem = _check_common(options, cls.SPLITS)
        if problem:
            return problem
        for split_dir in cls._split_dirs(options, root):
            for key in ("images", "masks"):
                folder = os.path.join(split_dir, options[key])
                if not os.path.isdir(folder):
                    return key, f"no such folder: {folder}"
        if options["split"] == "file":
            if not options["split_file"]:
                return "split_file", "is required with split: file (a CSV: image,split)"
            if not os.path.isfile(os.path.join(root, options["split_file"])):
                return "split_file", f"no such file: {os.path.join(root, options['split_file'])}"
        elif options["split_file"]:
            return "split_file", "applies to split: file only"
        labels = options["labels"]
        if labels is not None and labels != "folders" and not os.path.isfile(
                os.path.join(root, labels)):
            return "labels", (f"expected 'folders' or a CSV file (image,label) in {root}; no such"
                              f" file: {os.path.join(root, labels)}")
        if labels is not None and options["label_names"] is None:
            try:
                if len(cls._found_label_names(options, root)) < 2:
                    return "labels", "found fewer than 2 label classes"
            except DataError as exc:
                return "labels", str(exc)
        return None

    @staticmethod
    def _split_dirs(options: dict[str, Any], root: str) -> list[str]:
        if options["split"] == "folders":
            return [os.path.join(root, "train"), os.path.join(root, "val")]
        return [root]

    @classmethod
    def _found_label_names(cls, options: dict[str, Any], root: str) -> list[str]:
        if options["labels"] == "folders":
            names = set()
            for split_dir in cls._split_dirs(options, root):
                folder = os.path.join(split_dir, options["images"])
                names.update(d for d in os.listdir(folder)
                             if os.path.isdir(os.path.join(folder, d)) and not d.startswith("."))
            return sorted(names)
        rows = _read_csv(os.path.join(root, options["labels"]), ("image", "label"))
        return _sorted_names([label for _, _, label in rows if label])

    @classmethod
    def targets(cls, options: dict[str, Any]) -> dict[str, TargetInfo]:
        targets = _mask_targets(options)
        if options["labels"] is not None:
            names = options["label_names"] or cls._found_label_names(
                options, resolve_path(options["path"]))
            targets["label"] = TargetInfo("label", len(names), tuple(map(str, names)))
        return targets

    @classmethod
    def load(cls, options: dict[str, Any], *, seed: int) -> Loaded:
        options = {**cls.OPTIONS, **options}
        root = resolve_path(options["path"])
        label_of = cls._labeller(options, root)
        split = options["split"]
        assigned: dict[str, str] | None = None
        if split == "file":
            assigned = {}
            split_path = os.path.join(root, options["split_file"])
            for line, image, which in _read_csv(split_path, ("image", "split")):
                if which not in ("train", "val", "test"):
                    raise DataError(f"{split_path}:{line}", f"split '{which}' for '{image}' is"
                                    " not train, val or test")
                assigned[os.path.splitext(image)[0]] = which
        parts: dict[str, list[Item]] = {}
        notes: list[str] = []
        skipped: list[tuple[str, str]] = []
        for split_dir, name in ([(os.path.join(root, "train"), "train"),
                                 (os.path.join(root, "val"), "val")]
                                if split == "folders" else [(root, "all")]):
            jobs, unmatched = cls._pairs(options, split_dir, label_of)
            if unmatched:
                mask_dir = os.path.join(split_dir, options["masks"])
                notes.append(f"{len(unmatched)} mask(s) in {mask_dir} have no image and are"
                             f" ignored, e.g. {unmatched[0]}")
            if assigned is not None:
                missing = [j for j in jobs if j[2] not in assigned]
                if missing:
                    notes.append(f"{len(missing)} image(s) not listed in {options['split_file']}"
                                 f" are ignored, e.g. {missing[0][0]}")
            items, bad, found_notes = _decode_all([(j[0], j[1]) for j in jobs],
                                                  options["bad_files"])
            skipped += bad
            notes += found_notes
            items = _check_channels(items, options["bad_files"], skipped)
            if assigned is not None:
                stems = {j[0]: j[2] for j in jobs}
                parts["train"] = [i for i in items if assigned.get(stems[i.name]) == "train"]
                parts["val"] = [i for i in items if assigned.get(stems[i.name]) == "val"]
            else:
                parts[name] = items
        where = os.path.join(root, options["images"])
        if split == "fraction":
            _require(parts["all"], where, skipped)
            parts["train"], parts["val"] = _split_fraction(parts.pop("all"),
                                                           options["val_fraction"], seed, where)
        elif split == "tiles":
            _require(parts["all"], where, skipped)
            parts["train"] = parts["val"] = parts.pop("all")
        for name in ("train", "val"):
            _require(parts[name], f"{where} ({name} split)", skipped)
        if split == "folders":
            _check_channels(parts["train"] + parts["val"], "error", [])
        return Loaded(train=parts["train"], val=parts["val"],
                      holdout=options["val_fraction"] if split == "tiles" else 0.0,
                      where=options["path"], notes=notes, skipped=skipped)

    @classmethod
    def _labeller(cls, options: dict[str, Any], root: str) -> Callable[[str, str], int] | None:
        if options["labels"] is None:
            return None
        names = options["label_names"] or cls._found_label_names(options, root)
        index = _label_index(list(map(str, names)))
        if options["labels"] == "folders":
            return lambda path, folder: index(folder, path)
        csv_path = os.path.join(root, options["labels"])
        table = {}
        for line, image, label in _read_csv(csv_path, ("image", "label")):
            table[os.path.splitext(image)[0]] = (label, f"{csv_path}:{line}")
            table[image] = table[os.path.splitext(image)[0]]

        def lookup(path: str, folder: str) -> int:
            rel = os.path.splitext(os.path.basename(path))[0]
            for key in (os.path.join(folder, rel) if folder else rel, rel):
                if key in table:
                    return index(table[key][0], table[key][1])
            raise DataError(path, f"has no row in {csv_path} (columns image,label)")

        return lookup

    @classmethod
    def _pairs(cls, options: dict[str, Any], split_dir: str,
               label_of: Callable[[str, str], int] | None
               ) -> tuple[list[tuple[str, Callable[[], Item], str]], list[str]]:
        """One decoding job per image: (image path, job, stem); and masks without image."""
        image_dir = os.path.join(split_dir, options["images"])
        mask_dir = os.path.join(split_dir, options["masks"])
        by_folder = options["labels"] == "folders"
        images = _list_files(image_dir, depth=1 if by_folder else 0)
        masks = _list_files(mask_dir, depth=1)
        mask_index: dict[str, str] = {}
        for path in masks:
            rel = os.path.splitext(os.path.relpath(path, mask_dir))[0]
            for key in {rel, os.path.basename(rel)}:
                if key in mask_index and mask_index[key] != path:
                    raise DataError(path, f"and {mask_index[key]} are both masks for '{key}';"
                                    " keep one")
                mask_index[key] = path
        seen: dict[str, str] = {}
        jobs = []
        used = set()
        suffix = options["mask_suffix"]
        for path in images:
            rel = os.path.relpath(path, image_dir)
            folder = os.path.dirname(rel)
            if by_folder and not folder:
                raise DataError(path, "lies directly in the images folder; with labels: folders"
                                " every image sits in a sub-folder named after its label")
            stem = os.path.splitext(rel)[0]
            if stem in seen:
                raise DataError(path, f"and {seen[stem]} have the same name; masks are matched"
                                " by name, so keep one")
            seen[stem] = path
            mask_path = mask_index.get(stem + suffix) or mask_index.get(
                os.path.basename(stem) + suffix)
            if mask_path:
                used.add(mask_path)
            jobs.append((path, _pair_job(path, mask_path, mask_dir, stem + suffix, folder,
                                         options, label_of), os.path.basename(stem)))
        unmatched = sorted(set(masks) - used)
        return jobs, unmatched


def _pair_job(path: str, mask_path: str | None, mask_dir: str, wanted: str, folder: str,
              options: dict[str, Any], label_of: Callable[[str, str], int] | None
              ) -> Callable[[], Item]:
    def job() -> Item:
        if mask_path is None:
            raise DataError(path, f"has no mask: no {wanted}.png/.tif/.tiff/.jpg/.npy in"
                            f" {mask_dir}")
        labels = {"label": label_of(path, folder)} if label_of else {}
        image = read_array(path)
        reader = read_rgb if options["mask_format"] == "palette" else read_array
        return _make_item(path, image, reader(mask_path), mask_path, options, labels)

    return job


def _list_files(folder: str, depth: int) -> list[str]:
    """Image files in ``folder`` (and ``depth`` levels of sub-folders), sorted, hidden skipped."""
    found = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.name.startswith("."):
            continue
        if entry.is_dir() and depth > 0:
            found.extend(_list_files(entry.path, depth - 1))
        elif entry.is_file() and os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS:
            found.append(entry.path)
    return found


def _require(items: list[Item], where: str, skipped: list[tuple[str, str]]) -> None:
    if not items:
        detail = (f"; {len(skipped)} bad file(s) were skipped, e.g. {skipped[0][0]}:"
                  f" {skipped[0][1]}" if skipped else "")
        raise DataError(where, f"no usable images (looked for"
                        f" {', '.join(IMAGE_EXTENSIONS)}){detail}")


class Arrays:
    """Images, masks and optional labels already held as arrays.

    ``path`` is an ``.npz`` file with the arrays under the keys named by ``images``, ``masks``
    and ``labels``, or a folder holding ``<key>.npy`` files. Images are (N, H, W) or
    (N, H, W, C); masks (N, H, W); labels (N,). ``split: keys`` reads the validation set from
    the same keys prefixed with ``val_``.
    """

    OPTIONS: dict[str, Any] = {
        "path": None,  # an .npz file, or a folder of .npy files
        "images": "images",  # key (file stem) of the images
        "masks": "masks",  # key of the masks
        "labels": None,  # key of the image labels, if any
        **COMMON_OPTIONS,
    }
    OPTION_TYPES: dict[str, tuple[type, ...]] = {"path": (str,), "labels": (str,),
                                                 **COMMON_TYPES}
    SPLITS = ("fraction", "tiles", "keys")

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> tuple[str, str] | None:
        if not options["path"]:
            return "path", "is required: an .npz file or a folder of .npy files"
        path = resolve_path(options["path"])
        if not os.path.exists(path):
            return "path", f"no such file or folder: {path}"
        problem = _check_common(options, cls.SPLITS)
        if problem:
            return problem
        try:
            keys = _array_keys(path)
        except DataError as exc:
            return "path", str(exc)
        wanted = [options["images"], options["masks"]] + (
            [options["labels"]] if options["labels"] else [])
        if options["split"] == "keys":
            wanted += [f"val_{k}" for k in wanted]
        for key in wanted:
            if key not in keys:
                field = key.removeprefix("val_")
                field = next(f for f in ("images", "masks", "labels") if options[f] == field)
                return field, f"no array '{key}' in {path}; it holds: {', '.join(keys)}"
        if options["labels"] and options["label_names"] is None:
            labels = _load_arrays(path, [options["labels"]])[options["labels"]]
            if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
                return "labels", (f"'{options['labels']}' must be non-negative integers of shape"
                                  f" (N,), got {labels.dtype} {labels.shape}")
        return None

    @classmethod
    def targets(cls, options: dict[str, Any]) -> dict[str, TargetInfo]:
        targets = _mask_targets(options)
        if options["labels"]:
            names = options["label_names"]
            if names is None:
                path = resolve_path(options["path"])
                keys = [options["labels"]] + ([f"val_{options['labels']}"]
                                              if options["split"] == "keys" else [])
                top = max(int(a.max(initial=0)) for a in _load_arrays(path, keys).values())
                names = [str(i) for i in range(max(top + 1, 2))]
            targets["label"] = TargetInfo("label", len(names), tuple(map(str, names)))
        return targets

    @classmethod
    def load(cls, options: dict[str, Any], *, seed: int) -> Loaded:
        options = {**cls.OPTIONS, **options}
        path = resolve_path(options["path"])
        keys = [options["images"], options["masks"]] + (
            [options["labels"]] if options["labels"] else [])
        n_labels = len(cls.targets(options)["label"].names) if options["labels"] else 0
        parts: dict[str, list[Item]] = {}
        skipped: list[tuple[str, str]] = []
        notes: list[str] = []
        for prefix in ("", "val_") if options["split"] == "keys" else ("",):
            arrays = _load_arrays(path, [prefix + k for k in keys])
            images = arrays[prefix + options["images"]]
            masks = arrays[prefix + options["masks"]]
            labels = arrays.get(prefix + options["labels"]) if options["labels"] else None
            name = f"{path}:{prefix}{options['images']}"
            if images.ndim not in (3, 4):
                raise DataError(name, f"has shape {images.shape}; expected (N, H, W) or"
                                " (N, H, W, C)")
            for what, other in (("masks", masks), ("labels", labels)):
                if other is not None and len(other) != len(images):
                    raise DataError(f"{path}:{prefix}{options[what]}", f"has {len(other)}"
                                    f" entries but {name} has {len(images)}")
            jobs = [(f"{name}[{i}]", _array_job(f"{name}[{i}]", images[i], masks[i],
                                                f"{path}:{prefix}{options['masks']}[{i}]",
                                                None if labels is None else labels[i],
                                                n_labels, options))
                    for i in range(len(images))]
            items, bad, found = _decode_all(jobs, options["bad_files"])
            skipped += bad
            notes += found
            parts["val" if prefix else "all"] = _check_channels(items, options["bad_files"],
                                                                skipped)
        _require(parts["all"], path, skipped)
        if options["split"] == "keys":
            parts["train"] = parts.pop("all")
        elif options["split"] == "tiles":
            parts["train"] = parts["val"] = parts.pop("all")
        else:
            parts["train"], parts["val"] = _split_fraction(parts.pop("all"),
                                                           options["val_fraction"], seed, path)
        _require(parts["val"], f"{path} (val split)", skipped)
        return Loaded(train=parts["train"], val=parts["val"],
                      holdout=options["val_fraction"] if options["split"] == "tiles" else 0.0,
                      where=options["path"], notes=notes, skipped=skipped)


def _array_job(name: str, image: np.ndarray, mask: np.ndarray, mask_name: str,
               label: Any, n_labels: int, options: dict[str, Any]) -> Callable[[], Item]:
    def job() -> Item:
        labels = {}
        if label is not None:
            if not 0 <= int(label) < n_labels:
                raise DataError(name, f"has label {int(label)} outside [0, {n_labels})")
            labels["label"] = int(label)
        return _make_item(name, np.asarray(image), np.asarray(mask), mask_name, options, labels)

    return job


def _array_keys(path: str) -> list[str]:
    if os.path.isdir(path):
        return sorted(os.path.splitext(f)[0] for f in os.listdir(path) if f.endswith(".npy"))
    try:
        with np.load(path, allow_pickle=False) as handle:
            return list(handle.files)
    except Exception as exc:  # noqa: BLE001 - corrupt archives raise anything
        raise DataError(path, f"cannot read the .npz file ({type(exc).__name__}: {exc})"
                        ) from None


def _load_arrays(path: str, keys: list[str]) -> dict[str, np.ndarray]:
    try:
        if os.path.isdir(path):
            return {k: np.load(os.path.join(path, f"{k}.npy"), allow_pickle=False)
                    for k in keys}
        with np.load(path, allow_pickle=False) as handle:
            return {k: handle[k] for k in keys}
    except Exception as exc:  # noqa: BLE001
        raise DataError(path, f"cannot read the arrays ({type(exc).__name__}: {exc})") from None
