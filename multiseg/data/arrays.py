"""The ``arrays`` source: images, masks and labels already held as arrays (.npz or .npy)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

from multiseg.data.errors import DataError
from multiseg.data.files import (
    COMMON_OPTIONS,
    COMMON_TYPES,
    FileSource,
    check_channels,
    check_common,
    decode_all,
    make_item,
    resolve_path,
)
from multiseg.data.samples import Item, Loaded


class Arrays(FileSource):
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
        problem = check_common(options, cls.SPLITS)
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
    def label_names(cls, options: dict[str, Any]) -> list | None:
        if not options["labels"]:
            return None
        if options["label_names"] is not None:
            return options["label_names"]
        path = resolve_path(options["path"])
        keys = [options["labels"]] + ([f"val_{options['labels']}"]
                                      if options["split"] == "keys" else [])
        top = max(int(a.max(initial=0)) for a in _load_arrays(path, keys).values())
        return [str(i) for i in range(max(top + 1, 2))]

    @classmethod
    def load(cls, options: dict[str, Any], *, seed: int) -> Loaded:
        options = {**cls.OPTIONS, **options}
        path = resolve_path(options["path"])
        keys = [options["images"], options["masks"]] + (
            [options["labels"]] if options["labels"] else [])
        n_labels = len(cls.label_names(options)) if options["labels"] else 0
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
            items, bad, found = decode_all(jobs, options["bad_files"])
            skipped += bad
            notes += found
            parts["val" if prefix else "all"] = check_channels(items, options["bad_files"],
                                                                skipped)
        return cls.split(parts, options, seed=seed, where=path, notes=notes, skipped=skipped)


def _array_job(name: str, image: np.ndarray, mask: np.ndarray, mask_name: str,
               label: Any, n_labels: int, options: dict[str, Any]) -> Callable[[], Item]:
    def job() -> Item:
        labels = {}
        if label is not None:
            if not 0 <= int(label) < n_labels:
                raise DataError(name, f"has label {int(label)} outside [0, {n_labels})")
            labels["label"] = int(label)
        return make_item(name, np.asarray(image), np.asarray(mask), mask_name, options, labels)

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
