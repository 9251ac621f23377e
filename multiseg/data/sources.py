"""Data sources: the registry ``SOURCES``, and the built-in synthetic sources.

Two families share one interface for recipe validation (``OPTIONS`` with defaults,
``OPTION_TYPES`` for options whose default is None, ``check_options``, ``targets``):

- synthetic sources (``shapes``, ``cells``, ``cardiac``): deterministic by seed, generated in
  memory at the recipe's image size, no download; they have ``sample``.
- file sources (``folder`` in ``multiseg.data.folder``, ``arrays`` in ``multiseg.data.arrays``,
  what they share in ``multiseg.data.files``): the user's images and masks, read and checked
  once; they have ``load``.

Each synthetic source draws sample ``i`` of a split from its own random stream
(``default_rng([seed, split, i])``), so a sample does not change when the set grows or when a
run resumes. A source returns plain NumPy arrays:

- ``image``: float32 (N, H, W, C) in [0, 1]
- every mask target: uint8 (N, H, W) class indices (binary masks hold 0 and 1)
- every label target: int32 (N,)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from multiseg.data.arrays import Arrays
from multiseg.data.folder import Folder
from multiseg.data.samples import TargetInfo

__all__ = ["SOURCES", "TargetInfo", "generate", "is_synthetic", "option_types", "source_options",
           "source_targets"]

SPLITS = {"train": 0, "val": 1, "test": 2}


def _grid(size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0 : size[0], 0 : size[1]]
    return yy.astype(np.float32), xx.astype(np.float32)


def _smooth_background(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray,
                       channels: int, low: float, high: float) -> np.ndarray:
    """A random linear gradient per channel: lighting that varies across the field."""
    h, w = yy.shape
    base = rng.uniform(low, high, size=channels)
    slope = rng.uniform(-0.15, 0.15, size=(2, channels))
    return (base + slope[0] * (yy[..., None] / h - 0.5)
            + slope[1] * (xx[..., None] / w - 0.5)).astype(np.float32)


class Shapes:
    """Circles, squares and triangles of random colour on a noisy background.

    Colour says nothing about the class: the network must learn geometry. The image label is
    the shape type covering the most pixels.
    """

    OPTIONS: dict[str, Any] = {
        "min_objects": 1,  # objects per image, at least
        "max_objects": 4,  # and at most
        "noise": 0.05,  # standard deviation of the Gaussian pixel noise
        "channels": 3,  # 1 (grey) or 3 (RGB)
    }
    CLASS_NAMES = ("background", "circle", "square", "triangle")

    @staticmethod
    def check_options(options: dict[str, Any]) -> tuple[str, str] | None:
        if options["min_objects"] < 1:
            return "min_objects", f"must be >= 1, got {options['min_objects']}"
        if options["max_objects"] < options["min_objects"]:
            return "max_objects", (f"must be >= min_objects ({options['min_objects']}),"
                                   f" got {options['max_objects']}")
        if options["max_objects"] > 32:
            return "max_objects", f"must be <= 32, got {options['max_objects']}"
        if not 0 <= options["noise"] <= 1:
            return "noise", f"must be in [0, 1], got {options['noise']}"
        if options["channels"] not in (1, 3):
            return "channels", f"must be 1 or 3, got {options['channels']}"
        return None

    @classmethod
    def targets(cls, options: dict[str, Any]) -> dict[str, TargetInfo]:
        return {"mask": TargetInfo("mask", 4, cls.CLASS_NAMES),
                "label": TargetInfo("label", 3, cls.CLASS_NAMES[1:])}

    @classmethod
    def sample(cls, rng: np.random.Generator, size: tuple[int, int], options: dict[str, Any]
               ) -> dict[str, np.ndarray]:
        h, w = size
        yy, xx = _grid(size)
        channels = options["channels"]
        image = _smooth_background(rng, yy, xx, channels, 0.1, 0.6)
        mask = np.zeros(size, np.uint8)
        n = rng.integers(options["min_objects"], options["max_objects"] + 1)
        scale = min(h, w)
        for _ in range(n):
            kind = rng.integers(1, 4)
            r = rng.uniform(0.08, 0.16) * scale
            cy, cx = rng.uniform(r, h - r), rng.uniform(r, w - r)
            if kind == 1:
                inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
            elif kind == 2:
                half = r * 0.886  # same area as the circle
                inside = (np.abs(yy - cy) <= half) & (np.abs(xx - cx) <= half)
            else:
                side = r * 2.69  # equilateral triangle of the circle's area
                top = cy - side * 0.577
                height = side * 0.866
                rel = (yy - top) / height
                inside = (rel >= 0) & (rel <= 1) & (np.abs(xx - cx) <= rel * side / 2)
            colour = rng.uniform(0.0, 1.0, size=channels)
            # Keep every object visible against the local background.
            colour = np.where(np.abs(colour - image[int(cy), int(cx)]) < 0.25,
                              (colour + 0.5) % 1.0, colour)
            image[inside] = colour
            mask[inside] = kind
        image += rng.normal(0.0, options["noise"], size=image.shape).astype(np.float32)
        counts = np.bincount(mask.ravel(), minlength=4)[1:]
        label = int(np.argmax(counts))
        return {"image": np.clip(image, 0, 1), "mask": mask, "label": np.int32(label)}


class Cells:
    """Bright, blurred, sometimes touching elliptical cells on a dark field (binary task).

    The image label is density: 1 when the field holds more than ``dense_above`` cells.
    """

    OPTIONS: dict[str, Any] = {
        "min_cells": 2,
        "max_cells": 12,
        "dense_above": 6,  # label 1 (dense) above this many cells
        "noise": 0.06,
    }

    @staticmethod
    def check_options(options: dict[str, Any]) -> tuple[str, str] | None:
        # Every count of cells lies in [0, 200], the most cells an image may hold.
        if not 0 <= options["min_cells"] <= 200:
            return "min_cells", f"must be in [0, 200], got {options['min_cells']}"
        if not options["min_cells"] <= options["max_cells"] <= 200:
            return "max_cells", (f"must be in [min_cells ({options['min_cells']}), 200], got"
                                 f" {options['max_cells']}")
        if not 0 <= options["dense_above"] <= 200:
            return "dense_above", ("must be in [0, 200] (label 1 above this many cells), got"
                                   f" {options['dense_above']}")
        if not 0 <= options["noise"] <= 1:
            return "noise", f"must be in [0, 1], got {options['noise']}"
        return None

    @classmethod
    def targets(cls, options: dict[str, Any]) -> dict[str, TargetInfo]:
        return {"mask": TargetInfo("mask", 1, ("background", "cell")),
                "label": TargetInfo("label", 2, ("sparse", "dense"))}

    @classmethod
    def sample(cls, rng: np.random.Generator, size: tuple[int, int], options: dict[str, Any]
               ) -> dict[str, np.ndarray]:
        h, w = size
        yy, xx = _grid(size)
        brightness = np.zeros(size, np.float32)
        mask = np.zeros(size, np.uint8)
        n = int(rng.integers(options["min_cells"], options["max_cells"] + 1))
        scale = min(h, w)
        for _ in range(n):
            ry, rx = rng.uniform(0.05, 0.1, size=2) * scale
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            angle = rng.uniform(0, np.pi)
            dy, dx = yy - cy, xx - cx
            u = (dy * np.cos(angle) + dx * np.sin(angle)) / ry
            v = (-dy * np.sin(angle) + dx * np.cos(angle)) / rx
            d2 = u**2 + v**2
            inside = d2 <= 1
            mask[inside] = 1
            level = rng.uniform(0.5, 0.9)
            brightness = np.maximum(brightness, np.where(inside, level * (1 - 0.3 * d2), 0))
        # Soft edges: a cheap 3x3 box blur, then noise.
        padded = np.pad(brightness, 1, mode="edge")
        blurred = sum(padded[i : i + h, j : j + w] for i in range(3) for j in range(3)) / 9
        image = 0.08 + blurred + rng.normal(0, options["noise"], size=size)
        return {"image": np.clip(image, 0, 1).astype(np.float32)[..., None], "mask": mask,
                "label": np.int32(n > options["dense_above"])}


class Cardiac:
    """A short-axis cardiac slice caricature: left-ventricle blood pool, myocardium ring, and a
    right-ventricle crescent, in noisy tissue (4 classes). The label is the slice level
    (apical, mid, basal) from the ventricle's size.
    """

    OPTIONS: dict[str, Any] = {"noise": 0.08}
    CLASS_NAMES = ("background", "left_ventricle", "myocardium", "right_ventricle")

    @staticmethod
    def check_options(options: dict[str, Any]) -> tuple[str, str] | None:
        if not 0 <= options["noise"] <= 1:
            return "noise", f"must be in [0, 1], got {options['noise']}"
        return None

    @classmethod
    def targets(cls, options: dict[str, Any]) -> dict[str, TargetInfo]:
        return {"mask": TargetInfo("mask", 4, cls.CLASS_NAMES),
                "label": TargetInfo("label", 3, ("apical", "mid", "basal"))}

    @classmethod
    def sample(cls, rng: np.random.Generator, size: tuple[int, int], options: dict[str, Any]
               ) -> dict[str, np.ndarray]:
        h, w = size
        yy, xx = _grid(size)
        scale = min(h, w)
        level = int(rng.integers(0, 3))
        r_lv = scale * (0.08 + 0.04 * level + rng.uniform(0, 0.03))
        wall = scale * rng.uniform(0.04, 0.06)
        cy = h / 2 + rng.uniform(-0.1, 0.1) * h
        cx = w / 2 + rng.uniform(-0.1, 0.1) * w
        dist = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
        mask = np.zeros(size, np.uint8)
        angle = rng.uniform(-0.5, 0.5) + np.pi  # the RV sits to the left of the LV
        ry, rx = cy + np.sin(angle) * (r_lv + wall), cx + np.cos(angle) * (r_lv + wall)
        r_rv = r_lv * rng.uniform(1.1, 1.4)
        rv = ((yy - ry) ** 2 + (xx - rx) ** 2 <= r_rv**2) & (dist > r_lv + wall)
        mask[rv] = 3
        mask[(dist > r_lv) & (dist <= r_lv + wall)] = 2
        mask[dist <= r_lv] = 1
        tissue = _smooth_background(rng, yy, xx, 1, 0.25, 0.4)[..., 0]
        intensity = np.choose(mask, [tissue, np.full(size, rng.uniform(0.75, 0.9)),
                                     np.full(size, rng.uniform(0.12, 0.2)),
                                     np.full(size, rng.uniform(0.65, 0.85))])
        image = intensity + rng.normal(0, options["noise"], size=size)
        return {"image": np.clip(image, 0, 1).astype(np.float32)[..., None], "mask": mask,
                "label": np.int32(level)}


SOURCES = {"shapes": Shapes, "cells": Cells, "cardiac": Cardiac, "folder": Folder,
           "arrays": Arrays}


def is_synthetic(kind: str) -> bool:
    """Generated in memory (sample counts come from the recipe), not read from files."""
    return hasattr(SOURCES[kind], "sample")


def option_types(kind: str, key: str) -> tuple[type, ...]:
    """The types a recipe value of a source option may have."""
    default = SOURCES[kind].OPTIONS[key]
    if default is not None:
        return (type(default),)
    return getattr(SOURCES[kind], "OPTION_TYPES", {}).get(key, (int, float, str))


def source_options(kind: str) -> dict[str, Any]:
    """The options a recipe may set for a source, with their defaults."""
    return dict(SOURCES[kind].OPTIONS)


def source_targets(kind: str, options: dict[str, Any]) -> dict[str, TargetInfo]:
    """What the source provides besides the image, keyed by the name a recipe uses."""
    return SOURCES[kind].targets({**SOURCES[kind].OPTIONS, **options})


def generate(kind: str, options: dict[str, Any], *, count: int, size: tuple[int, int],
             seed: int, split: str) -> dict[str, np.ndarray]:
    """Draws ``count`` samples of a split as stacked arrays."""
    source = SOURCES[kind]
    options = {**source.OPTIONS, **options}
    samples = [source.sample(np.random.default_rng([seed, SPLITS[split], i]), size, options)
               for i in range(count)]
    return {key: np.stack([s[key] for s in samples]) for key in samples[0]}
