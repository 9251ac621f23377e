"""Reading image and mask files (PNG, TIFF, JPEG, NPY) into checked NumPy arrays.

``read_array`` decodes a file as it is stored (8 or 16 bit, grey, RGB, palette...). ``to_image``
turns that into float32 (H, W, C) intensities and ``to_mask`` into an integer mask, by the
dataset's declared mask format. Every problem raises :class:`DataError` naming the file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

from multiseg.data.errors import DataError

IMAGE_EXTENSIONS = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".npy")
MASK_FORMATS = ("binary", "labels", "palette", "instances")
INTENSITIES = ("dtype", "minmax", "percentile")
# Percentiles of the "percentile" normalisation (as csbdeep/stardist normalise microscopy).
PERCENTILES = (1.0, 99.8)


def read_array(path: str) -> np.ndarray:
    """The pixels of one file as stored: (H, W) or (H, W, C), its own dtype.

    Palette PNGs ("P" mode) come back as their colour indices; use ``read_rgb`` for colours.

    Raises:
        DataError: the file cannot be read or decoded, or is not a 2D (multi-channel) image.
    """
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext == ".npy":
            array = np.load(path, allow_pickle=False)
        elif ext in (".tif", ".tiff"):
            import tifffile

            array = tifffile.imread(path)
        else:
            array = _read_pil(path, keep_palette=True)
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(path, "no such file") from None
    except Exception as exc:  # noqa: BLE001 - decoders raise anything on corrupt input
        raise DataError(path, f"cannot read the file ({type(exc).__name__}: {exc}); is it a"
                        " complete, uncorrupted image?") from None
    return _check_layout(path, np.asarray(array))


def read_rgb(path: str) -> np.ndarray:
    """The file as colours: palette PNGs are expanded to RGB; other files as ``read_array``."""
    if os.path.splitext(path)[1].lower() in (".png", ".jpg", ".jpeg"):
        try:
            return _check_layout(path, _read_pil(path, keep_palette=False))
        except DataError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise DataError(path, f"cannot read the file ({type(exc).__name__}: {exc})") from None
    return read_array(path)


def _read_pil(path: str, *, keep_palette: bool) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        img.load()  # decode now: a truncated file fails here, not later
        if getattr(img, "n_frames", 1) > 1:
            raise DataError(path, f"holds {img.n_frames} frames; expected one 2D image")
        mode = img.mode
        if mode == "P" and not keep_palette:
            img = img.convert("RGBA" if "transparency" in img.info else "RGB")
            mode = img.mode
        if mode in ("1", "CMYK", "YCbCr", "LAB", "HSV"):
            img = img.convert("L" if mode == "1" else "RGB")
        array = np.array(img)
    if mode in ("I", "I;16", "I;16B", "I;16L") and array.size and array.min() >= 0 \
            and array.max() <= 65535:
        array = array.astype(np.uint16)  # 16-bit PNGs may decode as 32-bit "I"
    return array


def _check_layout(path: str, array: np.ndarray) -> np.ndarray:
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise DataError(path, f"holds {array.dtype} values; expected integer or float pixels")
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] > 4:
        array = np.moveaxis(array, 0, -1)  # channels-first TIFF/NPY
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] > 4):
        raise DataError(path, f"has shape {array.shape}; expected a 2D image (H, W) or"
                        " (H, W, C) with C <= 4 (stacks and volumes are not supported)")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise DataError(path, f"is empty (shape {array.shape})")
    return array


def to_image(path: str, array: np.ndarray, *, intensity: str = "dtype",
             channels: int | None = None) -> np.ndarray:
    """Pixels as float32 (H, W, C) intensities.

    Args:
        path: the file, for messages.
        array: as ``read_array`` gives it.
        intensity: ``dtype`` divides integers by their type's maximum (255, 65535) and keeps
            floats; ``minmax`` maps each image's range to [0, 1]; ``percentile`` maps the 1st
            and 99.8th percentiles to 0 and 1 (usual for fluorescence microscopy).
        channels: None keeps the file's channels; 1 or 3 converts (grey <-> RGB).

    Raises:
        DataError: NaN or infinite pixels.
    """
    if array.ndim == 3 and array.shape[-1] in (2, 4):
        array = array[..., : array.shape[-1] - 1]  # drop alpha
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
        bad = int(np.sum(~np.isfinite(array)))
        raise DataError(path, f"has {bad} NaN or infinite pixel{'s' if bad > 1 else ''};"
                        " fix or drop the file (bad_files: skip skips it)")
    image = array.astype(np.float32)
    if intensity == "dtype":
        if np.issubdtype(array.dtype, np.integer):
            image /= float(np.iinfo(array.dtype).max)
    elif intensity == "minmax":
        low, high = float(image.min()), float(image.max())
        image = (image - low) / (high - low) if high > low else np.zeros_like(image)
    elif intensity == "percentile":
        low, high = np.percentile(image, PERCENTILES)
        image = (image - low) / max(float(high - low), 1e-6)
    else:
        raise ValueError(f"intensity must be one of {', '.join(INTENSITIES)}, got '{intensity}'")
    if image.ndim == 2:
        image = image[..., None]
    if channels == 3 and image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    elif channels == 1 and image.shape[-1] == 3:
        image = image @ np.array([0.299, 0.587, 0.114], np.float32)
        image = image[..., None]
    return np.ascontiguousarray(image, dtype=np.float32)


def _integer_values(path: str, array: np.ndarray, what: str) -> np.ndarray:
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)):
            raise DataError(path, f"{what} has NaN or infinite values")
        if np.any(array != np.round(array)):
            raise DataError(path, f"{what} holds non-integer values such as"
                            f" {array[array != np.round(array)][:3].tolist()}; masks hold"
                            " integer labels")
    if array.size and array.min() < 0:
        raise DataError(path, f"{what} holds negative values ({int(array.min())})")
    return array.astype(np.int64)


def _grey(path: str, array: np.ndarray, fmt: str) -> np.ndarray:
    if array.ndim == 3:
        if array.shape[-1] in (2, 4):
            array = array[..., :-1]
        if not np.all(array == array[..., :1]):
            raise DataError(path, f"is a colour image; a '{fmt}' mask must be grey (one"
                            " channel). For colour-coded masks use mask_format: palette")
        array = array[..., 0]
    return array


def to_mask(path: str, array: np.ndarray, *, fmt: str, classes: int | None = None,
            palette: Mapping[str, Sequence[int]] | None = None
            ) -> tuple[np.ndarray, np.ndarray | None, str | None]:
    """Decodes a mask by its declared format.

    Args:
        path: the file, for messages.
        array: as ``read_array`` (``read_rgb`` for palettes) gives it.
        fmt: ``binary`` (0/1, or 0/255 which is normalised), ``labels`` (class indices in
            ``[0, classes)``), ``palette`` (RGB colours, each declared in ``palette``, whose
            order gives the class index) or ``instances`` (0 background, every object its own
            positive id).
        classes: the class count (background included) for ``labels``.
        palette: ``{class name: [r, g, b]}`` for ``palette``.

    Returns:
        ``(semantic, instances, note)``: the semantic mask (H, W) uint8 (int32 beyond 255
        classes), the instance ids (H, W) int32 or None, and a note for the log or None.

    Raises:
        DataError: values that the format does not allow, naming them.
    """
    note = None
    if fmt == "palette":
        if array.ndim != 3 or array.shape[-1] not in (3, 4):
            raise DataError(path, f"has shape {array.shape}; a palette mask is an RGB image")
        rgb = array[..., :3].astype(np.int64)
        code = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        lut = {(int(c[0]) << 16) | (int(c[1]) << 8) | int(c[2]): i
               for i, c in enumerate((palette or {}).values())}
        values, inverse, counts = np.unique(code, return_inverse=True, return_counts=True)
        unknown = [(int(v), int(n)) for v, n in zip(values, counts, strict=True) if v not in lut]
        if unknown:
            shown = ", ".join(f"{[(v >> 16) & 255, (v >> 8) & 255, v & 255]} ({n} px)"
                              for v, n in unknown[:5])
            raise DataError(path, f"has {len(unknown)} colour{'s' if len(unknown) > 1 else ''}"
                            f" not declared in the palette: {shown}. Declared:"
                            f" {dict(palette or {})}. Add them to data.source.palette"
                            " (antialiased edges? save masks without smoothing, as PNG)")
        semantic = np.array([lut[int(v)] for v in values])[inverse.reshape(code.shape)]
        return semantic.astype(np.uint8 if len(lut) <= 256 else np.int32), None, None
    values = _integer_values(path, _grey(path, array, fmt), "the mask")
    if fmt == "binary":
        present = np.unique(values)
        top = int(present.max()) if present.size else 0
        if set(present.tolist()) <= {0, 1}:
            semantic = values
        elif set(present.tolist()) == {0, top} and top in (255, 65535):
            semantic = (values > 0).astype(np.int64)
            note = f"binary 0/{top} mask read as 0/1"
        else:
            hint = (" JPEG is lossy: store masks as PNG." if path.lower().endswith(
                (".jpg", ".jpeg")) else " Label or instance masks need mask_format: labels"
                " (with classes) or instances.")
            raise DataError(path, f"is not a binary mask: it holds the values"
                            f" {present[:8].tolist()}{'...' if present.size > 8 else ''};"
                            f" expected 0/1 or 0/255.{hint}")
        return semantic.astype(np.uint8), None, note
    if fmt == "labels":
        if classes is None:
            raise ValueError("labels masks need a class count")
        bad = values >= classes
        if bad.any():
            found = np.unique(values[bad])
            raise DataError(path, f"holds label value{'s' if found.size > 1 else ''}"
                            f" {found[:5].tolist()} outside [0, {classes}) in {int(bad.sum())}"
                            f" pixels (data.source.classes is {classes}). Raise classes, or"
                            " fix the mask (a 0/255 mask is mask_format: binary)")
        semantic = values if classes > 2 else (values > 0)
        return semantic.astype(np.uint8 if classes <= 256 else np.int32), None, None
    if fmt == "instances":
        if values.size and values.max() > np.iinfo(np.int32).max:
            raise DataError(path, f"instance id {int(values.max())} does not fit 32 bits")
        instances = values.astype(np.int32)
        return (instances > 0).astype(np.uint8), instances, None
    raise ValueError(f"mask format must be one of {', '.join(MASK_FORMATS)}, got '{fmt}'")
