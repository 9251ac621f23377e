"""Joint augmentation: one random transform applied to the image and every spatial target.

Geometric transforms (flips, quarter turns, a small affine: rotation, scale, shift, random
crop) move the image and its masks together; masks are resampled with nearest neighbour, so
they keep their integer labels and instance ids. Photometric transforms (brightness,
contrast, gamma, Gaussian noise) touch the image only. Everything is drawn from the ``rng``
passed in, so a batch is a pure function of its random stream.
"""

from __future__ import annotations

import math

import numpy as np

# Augmentation options and their "off" values; the recipe's ``data.augment`` mirrors them.
OPTIONS = {
    "flip": False,  # random horizontal and vertical flips
    "rotate90": False,  # random multiples of 90 degrees (square images)
    "rotate": 0.0,  # rotation by up to +-rotate degrees
    "scale": 0.0,  # zoom by a factor in [1 - scale, 1 + scale]
    "shift": 0.0,  # shift by up to +-shift of the height and width
    "crop": 0.0,  # a random window of (1 - crop) to 1 of each side, resized to the full size
    "brightness": 0.0,  # add up to +-brightness
    "contrast": 0.0,  # scale deviations from the mean by [1 - contrast, 1 + contrast]
    "gamma": 0.0,  # gamma in [1 / (1 + gamma), 1 + gamma], on the image's own range
    "noise": 0.0,  # Gaussian noise of standard deviation up to noise
}


def is_active(options: dict) -> bool:
    return any(bool(options.get(k, v)) for k, v in OPTIONS.items())


def augment_batch(rng: np.random.Generator, image: np.ndarray, masks: dict[str, np.ndarray],
                  **options) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Augments each sample of a batch: image (N, H, W, C) float, masks (N, H, W) integers.

    Args:
        rng: the random stream of this batch.
        image: the images; not modified (a new array is returned when anything changes).
        masks: spatial targets, moved exactly like the image.
        **options: the keys of ``OPTIONS``; unset ones are off.

    Returns:
        ``(image, masks)``; the inputs themselves when every option is off.

    Raises:
        ValueError: an unknown option, or rotate90 on non-square images.
    """
    unknown = set(options) - set(OPTIONS)
    if unknown:
        raise ValueError(f"unknown augmentation option(s) {sorted(unknown)}; expected"
                         f" {', '.join(OPTIONS)}")
    opts = {**OPTIONS, **options}
    if not is_active(opts):
        return image, masks
    if opts["rotate90"] and image.shape[1] != image.shape[2]:
        raise ValueError(f"rotate90 needs square images, got {image.shape[1]}x{image.shape[2]}")
    image = np.ascontiguousarray(image, np.float32)  # no copy of a float32 batch
    # Every sample is written once into new arrays: the inputs are never modified.
    out_image = np.empty_like(image)
    out_masks = {k: np.empty_like(v) for k, v in masks.items()}
    for i in range(image.shape[0]):
        sample, sample_masks = augment_sample(rng, image[i], {k: v[i] for k, v in masks.items()},
                                              opts)
        if sample.dtype.kind == "V":  # whole pixels, only flipped or turned
            pixels(out_image[i])[...] = sample
        else:
            out_image[i] = sample
        for k, v in sample_masks.items():
            out_masks[k][i] = v
    return out_image, out_masks


def pixels(image: np.ndarray) -> np.ndarray:
    """A view of ``image`` (H, W, C), whose channels are contiguous, as (H, W) items of one
    whole pixel each. NumPy flips and turns these two to three times faster than the floats
    themselves (it moves one item per pixel instead of looping over 3 channels)."""
    return image.view(np.dtype((np.void, image.shape[-1] * image.itemsize)))[..., 0]


def augment_sample(rng: np.random.Generator, image: np.ndarray, masks: dict[str, np.ndarray],
                   opts: dict) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One sample: image (H, W, C) float32, masks (H, W); ``opts`` holds every key of
    ``OPTIONS``. The image comes back as float32, or as a flipped or turned ``pixels`` view
    when only flips and turns are on; masks may be views of the input."""
    affine = opts["rotate"] or opts["scale"] or opts["shift"] or opts["crop"]
    photometric_on = opts["brightness"] or opts["contrast"] or opts["gamma"] or opts["noise"]
    if not (affine or photometric_on):  # only flips and turns: whole pixels move
        image = pixels(image)
    if opts["flip"]:
        if rng.random() < 0.5:
            image, masks = image[::-1], {k: v[::-1] for k, v in masks.items()}
        if rng.random() < 0.5:
            image, masks = image[:, ::-1], {k: v[:, ::-1] for k, v in masks.items()}
    if opts["rotate90"]:
        turns = int(rng.integers(0, 4))
        if turns:
            image = np.rot90(image, turns, axes=(0, 1))
            masks = {k: np.rot90(v, turns, axes=(0, 1)) for k, v in masks.items()}
    if affine:
        matrix, offset = random_affine(rng, image.shape[:2], rotate=opts["rotate"],
                                       scale=opts["scale"], shift=opts["shift"],
                                       crop=opts["crop"])
        image = warp(image, matrix, offset, order=1)
        masks = {k: warp(v, matrix, offset, order=0) for k, v in masks.items()}
    if photometric_on:
        image = photometric(rng, image, brightness=opts["brightness"],
                            contrast=opts["contrast"], gamma=opts["gamma"], noise=opts["noise"])
    return image, masks


def random_affine(rng: np.random.Generator, size: tuple[int, int], *, rotate: float = 0.0,
                  scale: float = 0.0, shift: float = 0.0, crop: float = 0.0
                  ) -> tuple[np.ndarray, np.ndarray]:
    """A random output-to-input mapping ``src = matrix @ dst + offset`` in (y, x) pixels.

    The rotation and zoom are about the image centre; ``crop`` picks a window of a random
    fraction f in [1 - crop, 1] of the size, placed at random inside the image, and stretches
    it to the full size.
    """
    h, w = size
    centre = np.array([(h - 1) / 2, (w - 1) / 2])
    angle = math.radians(rng.uniform(-rotate, rotate)) if rotate else 0.0
    zoom = rng.uniform(1 - scale, 1 + scale) if scale else 1.0
    move = rng.uniform(-shift, shift, size=2) * np.array([h, w]) if shift else np.zeros(2)
    fraction = rng.uniform(1 - crop, 1.0) if crop else 1.0
    window = (rng.uniform(-0.5, 0.5, size=2) * (1 - fraction) * np.array([h, w])
              if crop else np.zeros(2))
    cos, sin = math.cos(angle), math.sin(angle)
    # dst = centre + zoom * R (src' - centre) + move, where src' is the point in the window.
    inverse = np.array([[cos, sin], [-sin, cos]]) / zoom  # R^-1 / zoom
    matrix = fraction * inverse
    offset = centre + window - matrix @ (centre + move)
    return matrix, offset


def warp(array: np.ndarray, matrix: np.ndarray, offset: np.ndarray, *, order: int
         ) -> np.ndarray:
    """Resamples ``array`` (H, W) or (H, W, C) at ``matrix @ (y, x) + offset``.

    ``order`` 0 is nearest neighbour (masks: labels stay labels), 1 bilinear (images). Points
    outside the image are mirrored back in (``... 1 0 | 0 1 ... n-1 | n-1 n-2 ...``, scipy's
    ``reflect``), for the image and its masks alike. Channels are never mixed.
    """
    if array.ndim == 3:  # channel by channel: a 2D transform is faster than a 3D one
        return np.stack([warp(array[..., c], matrix, offset, order=order)
                         for c in range(array.shape[-1])], axis=-1)
    output = array.dtype if order == 0 or np.issubdtype(array.dtype, np.floating) else np.float64
    from scipy import ndimage  # here: reading a recipe needs this package, not scipy

    out = ndimage.affine_transform(array, matrix, offset, order=order, mode="reflect",
                                   output=output, prefilter=False)
    return out.astype(array.dtype, copy=False)


def photometric(rng: np.random.Generator, image: np.ndarray, *, brightness: float = 0.0,
                contrast: float = 0.0, gamma: float = 0.0, noise: float = 0.0) -> np.ndarray:
    """Gamma, contrast, brightness and noise on one image (H, W, C); masks never change."""
    if gamma:
        g = math.exp(rng.uniform(-math.log1p(gamma), math.log1p(gamma)))
        low, high = float(image.min()), float(image.max())
        if high > low:
            image = low + (high - low) * ((image - low) / (high - low)) ** g
    if contrast:
        mean = image.mean(axis=(0, 1), keepdims=True)
        image = (image - mean) * rng.uniform(1 - contrast, 1 + contrast) + mean
    if brightness:
        image = image + rng.uniform(-brightness, brightness)
    if noise:
        sigma = rng.uniform(0, noise)
        image = image + rng.normal(0.0, sigma, size=image.shape)
    return np.asarray(image, np.float32)
