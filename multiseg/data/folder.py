"""The ``folder`` source: images and masks in two folders, matched by file stem."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from multiseg.data.errors import DataError
from multiseg.data.files import (
    BUILTIN_PREFIX,
    COMMON_OPTIONS,
    COMMON_TYPES,
    IMAGE_EXTENSIONS,
    FileSource,
    builtin_sets,
    check_channels,
    check_common,
    decode_all,
    label_index,
    make_item,
    read_csv,
    resolve_path,
    sorted_names,
)
from multiseg.data.io import read_array, read_rgb
from multiseg.data.samples import Item, Loaded


class Folder(FileSource):
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
        problem = check_common(options, cls.SPLITS)
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
        rows = read_csv(os.path.join(root, options["labels"]), ("image", "label"))
        return sorted_names([label for _, _, label in rows if label])

    @classmethod
    def label_names(cls, options: dict[str, Any]) -> list | None:
        if options["labels"] is None:
            return None
        return options["label_names"] or cls._found_label_names(options,
                                                                resolve_path(options["path"]))

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
            for line, image, which in read_csv(split_path, ("image", "split")):
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
            items, bad, found_notes = decode_all([(j[0], j[1]) for j in jobs],
                                                  options["bad_files"])
            skipped += bad
            notes += found_notes
            items = check_channels(items, options["bad_files"], skipped)
            if assigned is not None:
                stems = {j[0]: j[2] for j in jobs}
                parts["train"] = [i for i in items if assigned.get(stems[i.name]) == "train"]
                parts["val"] = [i for i in items if assigned.get(stems[i.name]) == "val"]
            else:
                parts[name] = items
        if split == "folders":
            check_channels(parts["train"] + parts["val"], "error", [])
        return cls.split(parts, options, seed=seed, where=os.path.join(root, options["images"]),
                         notes=notes, skipped=skipped)

    @classmethod
    def _labeller(cls, options: dict[str, Any], root: str) -> Callable[[str, str], int] | None:
        names = cls.label_names(options)
        if names is None:
            return None
        index = label_index(list(map(str, names)))
        if options["labels"] == "folders":
            return lambda path, folder: index(folder, path)
        csv_path = os.path.join(root, options["labels"])
        table = {}
        for line, image, label in read_csv(csv_path, ("image", "label")):
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
        return make_item(path, image, reader(mask_path), mask_path, options, labels)

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
