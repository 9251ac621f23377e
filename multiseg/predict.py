"""Predict with a trained run: ``python -m multiseg.predict RUN_DIR IMAGE|FOLDER ... --out DIR``.

Each image is read and normalised as the run's recipe reads its training images, passed through
the model whole (the trunk pads any size; ``--tile`` cuts very large images into overlapping
windows whose logits are averaged), and every head's prediction is written:

- ``<out>/<stem>.<head>.png``: every spatial head as a palette PNG: each pixel holds its class
  index (one-channel heads: 1 where the probability is at least 0.5), a viewer shows the class
  colours (the source's own palette when its masks came as colours, else multiseg's, binary
  maps black and white);
- ``<out>/<stem>.<head>.npy`` (with ``--probabilities``): the per-pixel probabilities;
- ``<out>/predictions.json``: every classification head's class probabilities and predicted
  class per image, with the files written for the spatial heads.

A grey image given to a model trained on colour images is repeated into three channels, and a
colour image given to a grey model is converted to luminance (alpha channels are dropped);
``predictions.json`` records each conversion.

A classification head sees the whole input, so on an image much larger than the training
tiles its answer is about the whole image (with ``--tile``: the mean over windows).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from multiseg import errors, load_model
from multiseg.colours import class_colours, palette_image
from multiseg.data import DataError, head_targets, target_names
from multiseg.data.files import IMAGE_EXTENSIONS
from multiseg.data.io import read_array, to_image
from multiseg.data.patches import tile_starts
from multiseg.data.sources import is_synthetic, source_targets
from multiseg.headkinds import HEAD_KINDS
from multiseg.runs import WeightsMismatch, load_run_model, run_recipe
from multiseg.startup import import_keras

if TYPE_CHECKING:
    import keras


@dataclass(frozen=True)
class HeadPrediction:
    """How to turn one head's logits into probabilities and what to write."""

    name: str
    spatial: bool  # a map per pixel (written as pictures), else one answer per image
    classes: int
    sigmoid: bool  # one channel, or a multi-label presence head
    names: tuple[str, ...]
    colours: np.ndarray  # (classes, 3) uint8, the palette of its label images


def head_predictions(recipe) -> list[HeadPrediction]:
    options = recipe.data.source.options
    infos = source_targets(recipe.data.source.kind, options)
    heads = []
    for target in head_targets(recipe):
        head = recipe.heads[target.head]
        colours = class_colours(head.classes)
        palette = options.get("palette") if options.get("mask_format") == "palette" else None
        if (palette and target.source == "mask" and target.derive is None
                and len(palette) == head.classes):
            colours = np.array(list(palette.values()), np.uint8)  # the data's own colours
        heads.append(HeadPrediction(target.head, HEAD_KINDS[head.kind].spatial, head.classes,
                                    sigmoid=head.classes == 1 or head.multilabel,
                                    names=target_names(target, infos), colours=colours))
    return heads


def input_files(paths: list[str]) -> list[str]:
    """The image files named, and those directly inside the folders named, in sorted order."""
    files = []
    for path in paths:
        if os.path.isdir(path):
            found = sorted(os.path.join(path, f) for f in os.listdir(path)
                           if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS)
            if not found:
                raise DataError(path, f"holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
            files += found
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise DataError(path, "no such file or folder")
    return files


def read_input(path: str, recipe) -> np.ndarray:
    """One image as float32 (H, W, C), normalised as the recipe's source normalises."""
    options = {} if is_synthetic(recipe.data.source.kind) else recipe.data.source.options
    return to_image(path, read_array(path), intensity=options.get("intensity", "dtype"),
                    channels=options.get("channels"))


# ITU-R BT.601 luma, the weights of PIL's "L" conversion.
LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def fit_channels(path: str, image: np.ndarray, expected: int) -> tuple[np.ndarray, str | None]:
    """``image`` (H, W, C) with the ``expected`` channels: grey repeated into RGB, RGB(A)
    converted to luminance, an alpha channel dropped; with what was done (None: nothing).

    Raises:
        DataError: no such conversion (e.g. 5 channels for a 3-channel model).
    """
    have = image.shape[-1]
    if have == expected:
        return image, None
    colour = image[..., :3] if have in (3, 4) else None
    grey = image[..., :1] if have in (1, 2) else None
    if expected == 3 and grey is not None:
        return np.repeat(grey, 3, axis=-1), "grey -> RGB"
    if expected == 3 and colour is not None:
        return colour, "RGBA -> RGB"
    if expected == 1 and colour is not None:
        return (colour @ LUMA)[..., None].astype(np.float32), "RGB -> grey"
    if expected == 1 and grey is not None:
        return grey, "grey with alpha -> grey"
    raise DataError(path, f"has {have} channel(s) but the model was trained on {expected};"
                    " convert the file")


def predict_logits(model: keras.Model, image: np.ndarray, *, tile: int | None = None,
                   overlap: float = 0.25) -> dict[str, np.ndarray]:
    """Every head's logits for one (H, W, C) image: spatial heads (H, W, C'), others (C',).

    With ``tile``, windows of ``tile`` pixels overlapping by at least ``overlap`` of a tile
    (evenly spread, the last flush with the edge) are predicted one by one; spatial logits are
    averaged where windows overlap, image-level logits over windows.
    """
    if tile is None or max(image.shape[:2]) <= tile:
        outputs = model.predict_on_batch(image[None])
        # float32 whatever the model computes in (train.precision: mixed_*)
        return {name: np.asarray(value, np.float32)[0] for name, value in outputs.items()}
    height, width = image.shape[:2]
    shared = tile - max(1, int(round(tile * (1 - overlap))))  # pixels neighbours share
    sums: dict[str, np.ndarray] = {}
    counts = np.zeros((height, width, 1), np.float32)
    image_level: dict[str, list[np.ndarray]] = {}
    for top in tile_starts(height, tile, shared):
        for left in tile_starts(width, tile, shared):
            window = image[top : top + tile, left : left + tile]
            outputs = model.predict_on_batch(window[None])
            h, w = window.shape[:2]
            counts[top : top + h, left : left + w] += 1
            for name, value in outputs.items():
                value = np.asarray(value, np.float32)[0]
                if value.ndim == 3:
                    total = sums.setdefault(name, np.zeros((height, width, value.shape[-1]),
                                                           np.float32))
                    total[top : top + h, left : left + w] += value
                else:
                    image_level.setdefault(name, []).append(value)
    result = {name: total / counts for name, total in sums.items()}
    result.update({name: np.mean(values, axis=0) for name, values in image_level.items()})
    return result


def probabilities(head: HeadPrediction, logits: np.ndarray) -> np.ndarray:
    if head.sigmoid:
        return 1.0 / (1.0 + np.exp(-logits))
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def spatial_labels(head: HeadPrediction, probs: np.ndarray) -> np.ndarray:
    """(H, W) class indices; a one-channel map: 1 where the probability is at least 0.5."""
    if head.classes == 1:
        return (probs[..., 0] >= 0.5).astype(np.uint8)
    return np.argmax(probs, axis=-1).astype(np.uint8 if head.classes <= 256 else np.uint16)


def write_labels(path: str, head: HeadPrediction, labels: np.ndarray) -> None:
    """A palette PNG (index and colour) up to 256 classes; a 16-bit grey PNG beyond."""
    if head.classes <= 256:
        palette_image(labels, head.colours).save(path)
    else:
        from PIL import Image

        Image.fromarray(labels).save(path)


def image_level_answer(head: HeadPrediction, probs: np.ndarray) -> dict:
    names = head.names if len(head.names) == probs.shape[-1] else tuple(
        str(i) for i in range(probs.shape[-1]))
    answer: dict = {"probabilities": {n: round(float(p), 6) for n, p in zip(names, probs,
                                                                           strict=True)}}
    if head.sigmoid:
        answer["present"] = [n for n, p in zip(names, probs, strict=True) if p >= 0.5]
    else:
        answer["predicted"] = names[int(np.argmax(probs))]
    return answer


def _run_model(run_dir: str, recipe, *, checkpoint: bool, first: tuple[str, np.ndarray]):
    """The trained model; ``model.keras`` knows its input channels, a checkpoint does not, so
    that one is built for the first image's channels, else for grey or RGB (the other)."""
    model_path = os.path.join(run_dir, "model.keras")
    if not checkpoint and os.path.isfile(model_path):
        return load_model(model_path, compile=False)
    path, image = first
    have = image.shape[-1]
    for channels in dict.fromkeys((have, 3 if have in (1, 2) else 1)):
        try:
            return load_run_model(run_dir, recipe, channels=channels, checkpoint=True)
        except WeightsMismatch:
            continue
    raise DataError(path, f"has {have} channel(s); the run's checkpoint fits neither them nor"
                    " a grey or RGB conversion") from None


def predict(run_dir: str, inputs: list[str], out: str, *, tile: int | None = None,
            overlap: float = 0.25, save_probabilities: bool = False,
            checkpoint: bool = False) -> dict:
    """Writes every head's prediction for every input image; returns ``predictions.json``."""
    recipe = run_recipe(run_dir)
    files = input_files(inputs)
    heads = head_predictions(recipe)
    first = read_input(files[0], recipe)
    model = _run_model(run_dir, recipe, checkpoint=checkpoint, first=(files[0], first))
    expected = model.inputs[0].shape[-1]
    os.makedirs(out, exist_ok=True)
    report: dict = {"run": run_dir, "images": {}}
    stems: dict[str, str] = {}
    for path in files:
        image = first if path == files[0] else read_input(path, recipe)
        image, converted = fit_channels(path, image, expected)
        stem = os.path.splitext(os.path.basename(path))[0]
        if stem in stems:
            raise DataError(path, f"has the same name as {stems[stem]}: their outputs would"
                            " overwrite each other; predict them into separate --out folders")
        stems[stem] = path
        logits = predict_logits(model, image, tile=tile, overlap=overlap)
        entry: dict = {"path": path, "size": list(image.shape[:2])}
        if converted:
            entry["converted"] = converted
        for head in heads:
            probs = probabilities(head, logits[head.name])
            if not head.spatial:
                entry[head.name] = image_level_answer(head, probs)
                continue
            picture = os.path.join(out, f"{stem}.{head.name}.png")
            write_labels(picture, head, spatial_labels(head, probs))
            entry[head.name] = {"png": picture}
            if save_probabilities:
                array_path = os.path.join(out, f"{stem}.{head.name}.npy")
                np.save(array_path, probs.astype(np.float32))
                entry[head.name]["probabilities"] = array_path
        report["images"][stem] = entry
    with open(os.path.join(out, "predictions.json"), "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=2)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m multiseg.predict",
        description="Write every head's prediction for images, with a trained run.")
    parser.add_argument("run_dir", help="a run directory written by multiseg.train")
    parser.add_argument("inputs", nargs="+", help="image files or folders of images")
    parser.add_argument("--out", required=True, help="folder for the predictions (created)")
    parser.add_argument("--tile", type=int, help="predict in windows of this many pixels"
                        " (for images too large to pass whole)")
    parser.add_argument("--overlap", type=float, default=0.25,
                        help="overlap of neighbouring windows with --tile (default 0.25)")
    parser.add_argument("--probabilities", action="store_true",
                        help="also write each spatial head's probabilities as .npy")
    parser.add_argument("--checkpoint", action="store_true",
                        help="use the latest checkpoint instead of model.keras")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="also show the backend's start-up messages (TensorFlow, CUDA)")
    args = parser.parse_args(argv)
    if args.tile is not None and args.tile < 16:
        parser.error("--tile must be at least 16 pixels")
    if not 0 <= args.overlap < 1:
        parser.error("--overlap must be in [0, 1)")
    try:
        run_recipe(args.run_dir, build=False)  # mistakes are answered before Keras starts
        input_files(args.inputs)
        import_keras(verbose=args.verbose)
        report = predict(args.run_dir, args.inputs, args.out, tile=args.tile,
                         overlap=args.overlap, save_probabilities=args.probabilities,
                         checkpoint=args.checkpoint)
    except errors.UserError as exc:
        print(errors.report(exc), file=sys.stderr)
        return exc.exit_code
    print(f"{len(report['images'])} image(s) -> {args.out}"
          f" ({os.path.join(args.out, 'predictions.json')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
