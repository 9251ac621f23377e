"""Sample sets: what a batch is drawn from, every sample at the recipe's image size.

- ``Stacked``: samples already at the size, stacked (synthetic sources).
- ``Tiles``: fixed windows of images (``patches: whole``: the whole image; ``patches: tile``;
  and the validation set of ``patches: random``).
- ``RandomCrops``: a new random window of an image for every draw (``patches: random``).

With ``split: tiles`` a seeded fraction of the cells of a non-overlapping grid of every image
is held out for validation; training tiles and crops never overlap a held-out cell.

A set has ``len()`` (its natural number of samples) and ``take(indices, rng)``, which returns
a batch as a dict of stacked arrays: ``image`` (N, H, W, C) float32, masks (N, H, W), labels
(N,). Random crops draw from ``rng``, the batch's own random stream.
"""

from __future__ import annotations

import math

import numpy as np

from multiseg.data.errors import DataError
from multiseg.data.samples import Item, Loaded, hw

PATCH_MODES = ("whole", "tile", "random")


class Stacked:
    def __init__(self, arrays: dict[str, np.ndarray]):
        self.arrays = arrays

    def __len__(self) -> int:
        return len(self.arrays["image"])

    def take(self, indices: np.ndarray, rng: np.random.Generator | None = None
             ) -> dict[str, np.ndarray]:
        return {k: v[indices] for k, v in self.arrays.items()}


def _empty_batch(items: list[Item], n: int, size: tuple[int, int]) -> dict[str, np.ndarray]:
    first = items[0]
    out = {"image": np.empty((n, *size, first.image.shape[-1]), np.float32)}
    for key, mask in first.masks.items():
        out[key] = np.empty((n, *size), mask.dtype)
    for key in first.labels:
        out[key] = np.empty((n,), np.int32)
    return out


def _fill(out: dict[str, np.ndarray], j: int, item: Item, y: int, x: int,
          size: tuple[int, int]) -> None:
    h, w = size
    out["image"][j] = item.image[y : y + h, x : x + w]
    for key, mask in item.masks.items():
        out[key][j] = mask[y : y + h, x : x + w]
    for key, label in item.labels.items():
        out[key][j] = label


class Tiles:
    def __init__(self, items: list[Item], regions: list[tuple[int, int, int]],
                 size: tuple[int, int]):
        self.items = items
        self.regions = regions  # (item index, top, left)
        self.size = size

    def __len__(self) -> int:
        return len(self.regions)

    def take(self, indices: np.ndarray, rng: np.random.Generator | None = None
             ) -> dict[str, np.ndarray]:
        out = _empty_batch(self.items, len(indices), self.size)
        for j, i in enumerate(indices):
            k, y, x = self.regions[int(i)]
            _fill(out, j, self.items[k], y, x, self.size)
        return out


class RandomCrops:
    def __init__(self, items: list[Item], size: tuple[int, int],
                 held_out: list[set[tuple[int, int]]] | None = None):
        self.items = items
        self.size = size
        self.held_out = held_out
        self._blocked = None
        if held_out is not None:
            # Integral images of the held-out area: a window is allowed when its sum is 0.
            self._blocked = []
            self._train_cells = []
            h, w = size
            for item, cells in zip(items, held_out, strict=True):
                mask = np.zeros(item.size, np.int64)
                for r, c in cells:
                    mask[r * h : (r + 1) * h, c * w : (c + 1) * w] = 1
                integral = np.zeros((item.size[0] + 1, item.size[1] + 1), np.int64)
                integral[1:, 1:] = mask.cumsum(0).cumsum(1)
                self._blocked.append(integral)
                self._train_cells.append([(r, c) for r in range(item.size[0] // h)
                                          for c in range(item.size[1] // w)
                                          if (r, c) not in cells])

    def __len__(self) -> int:
        return len(self.items)

    def _allowed(self, k: int, y: int, x: int) -> bool:
        s = self._blocked[k]
        h, w = self.size
        return s[y + h, x + w] - s[y, x + w] - s[y + h, x] + s[y, x] == 0

    def window(self, k: int, rng: np.random.Generator) -> tuple[int, int]:
        """A random window of item ``k`` that avoids its held-out cells."""
        item = self.items[k]
        span_y, span_x = item.size[0] - self.size[0], item.size[1] - self.size[1]
        for _ in range(64 if self._blocked is not None else 1):
            y, x = int(rng.integers(0, span_y + 1)), int(rng.integers(0, span_x + 1))
            if self._blocked is None or self._allowed(k, y, x):
                return y, x
        cells = self._train_cells[k]  # crowded by held-out cells: fall back to a free cell
        r, c = cells[int(rng.integers(0, len(cells)))]
        return r * self.size[0], c * self.size[1]

    def take(self, indices: np.ndarray, rng: np.random.Generator | None = None
             ) -> dict[str, np.ndarray]:
        if rng is None:
            raise ValueError("random crops need the batch's random stream")
        out = _empty_batch(self.items, len(indices), self.size)
        for j, i in enumerate(indices):
            k = int(i) % len(self.items)
            y, x = self.window(k, rng)
            _fill(out, j, self.items[k], y, x, self.size)
        return out


def tile_starts(length: int, tile: int, overlap: int = 0) -> list[int]:
    """Tile origins along one axis covering ``length``: evenly spread, the last one flush with
    the end, neighbours sharing at least ``overlap`` pixels (0 <= ``overlap`` < ``tile``).

    The one tiling of multiseg: training and validation tiles (``data.tile_overlap``) and the
    windows of tiled prediction (``multiseg.predict``) both come from here. A ``length`` up to
    ``tile`` is one tile at 0 (the caller pads or takes a smaller window).

    Example:
        >>> tile_starts(100, 64)
        [0, 36]
    """
    if length <= tile:
        return [0]
    n = math.ceil((length - overlap) / (tile - overlap))
    return sorted({int(round(v)) for v in np.linspace(0, length - tile, n)})


def _pad(item: Item, size: tuple[int, int], notes: list[str]) -> Item:
    h, w = item.size
    if h >= size[0] and w >= size[1]:
        return item
    pad = ((0, max(0, size[0] - h)), (0, max(0, size[1] - w)))
    # The file first and no size of its own: many small files make one note in the report.
    notes.append(f"{item.name}: smaller than data.image_size {list(size)}, padded with zeros"
                 " (image) and background (masks) at the bottom and right")
    return Item(item.name, np.pad(item.image, (*pad, (0, 0))),
                {k: np.pad(v, pad) for k, v in item.masks.items()}, dict(item.labels))


def _held_out_cells(items: list[Item], size: tuple[int, int], fraction: float, seed: int
                    ) -> list[set[tuple[int, int]]]:
    cells = []
    for k, item in enumerate(items):
        rows, cols = item.size[0] // size[0], item.size[1] // size[1]
        if rows * cols < 2:
            raise DataError(item.name, f"is {item.size[0]}x{item.size[1]}: fewer than 2 tiles of"
                            f" {size[0]}x{size[1]}, so no tile can be held out for validation;"
                            " use a smaller data.image_size or split: fraction")
        n_val = min(max(1, round(fraction * rows * cols)), rows * cols - 1)
        chosen = np.random.default_rng([seed, 8, k]).choice(rows * cols, n_val, replace=False)
        cells.append({(int(i) // cols, int(i) % cols) for i in sorted(chosen)})
    return cells


def _grid(items: list[Item], size: tuple[int, int], overlap: int) -> list[tuple[int, int, int]]:
    return [(k, y, x) for k, item in enumerate(items)
            for y in tile_starts(item.size[0], size[0], overlap)
            for x in tile_starts(item.size[1], size[1], overlap)]


def make_sets(loaded: Loaded, size: tuple[int, int], *, mode: str, overlap: int, seed: int
              ) -> tuple[Stacked | Tiles | RandomCrops, Stacked | Tiles, list[str]]:
    """The training and validation sample sets of a file source, and notes for the log.

    Raises:
        DataError: with ``mode: whole``, an image whose size is not ``size``; with held-out
            tiles, an image too small to hold out one.
    """
    notes: list[str] = []
    if mode not in PATCH_MODES:
        raise ValueError(f"patch mode must be one of {', '.join(PATCH_MODES)}, got '{mode}'")
    if mode == "whole":
        for item in loaded.train + loaded.val:
            if item.size != tuple(size):
                raise DataError(item.name, f"is {item.size[0]}x{item.size[1]} but"
                                f" data.image_size is {list(size)}; cut images into tiles or"
                                " random crops of that size with data.patches: tile or"
                                " random, or set data.image_size to the images' size")
        return (Tiles(loaded.train, [(k, 0, 0) for k in range(len(loaded.train))], size),
                Tiles(loaded.val, [(k, 0, 0) for k in range(len(loaded.val))], size), notes)
    if loaded.holdout:
        items = [_pad(item, size, notes) for item in loaded.train]
        held = _held_out_cells(items, size, loaded.holdout, seed)
        h, w = size
        val = Tiles(items, [(k, r * h, c * w) for k, cells in enumerate(held)
                            for r, c in sorted(cells)], size)
        if mode == "tile":
            train = Tiles(items, [(k, r * h, c * w) for k, (item, cells)
                                  in enumerate(zip(items, held, strict=True))
                                  for r in range(item.size[0] // h)
                                  for c in range(item.size[1] // w) if (r, c) not in cells],
                          size)
        else:
            train = RandomCrops(items, size, held)
        n_cells = sum((i.size[0] // h) * (i.size[1] // w) for i in items)
        notes.append(f"held out {len(val)} of {n_cells} tiles of {hw(size)} for validation")
        return train, val, notes
    train_items = [_pad(item, size, notes) for item in loaded.train]
    val_items = [_pad(item, size, notes) for item in loaded.val]
    train = (Tiles(train_items, _grid(train_items, size, overlap), size) if mode == "tile"
             else RandomCrops(train_items, size))
    return train, Tiles(val_items, _grid(val_items, size, overlap), size), notes
