"""python -m multiseg.predict: images in, every head's prediction out."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from multiseg.data import DataError
from multiseg.data.patches import tile_starts
from multiseg.predict import fit_channels, main, predict, predict_logits


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Two RGB PNGs of different sizes, neither the training size (32x32)."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for name, size in (("a", (40, 52)), ("b", (32, 32))):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(
            folder / f"{name}.png")
    return folder


def _softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_outputs_match_the_model(trained_tiny, images, tmp_path):
    out = tmp_path / "pred"
    report = predict(trained_tiny.run_dir, [str(images)], str(out))
    assert sorted(report["images"]) == ["a", "b"]
    model = trained_tiny.model
    pixels = np.asarray(Image.open(images / "a.png"), np.float32) / 255.0  # intensity: dtype
    expected = {k: np.asarray(v)[0] for k, v in model.predict_on_batch(pixels[None]).items()}

    written = Image.open(out / "a.mask.png")
    labels = np.asarray(written)
    assert written.mode == "P" and labels.shape == (40, 52) and labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, np.argmax(expected["mask"], axis=-1))
    # A viewer sees the class colours: background black, each class its own colour.
    colours = np.asarray(written.convert("RGB")).reshape(-1, 3)
    by_class = {int(c): tuple(colours[labels.ravel() == c][0]) for c in np.unique(labels)}
    assert by_class.get(0, (0, 0, 0)) == (0, 0, 0)
    assert len(set(by_class.values())) == len(by_class)
    edges = Image.open(out / "a.boundary.png")
    assert edges.mode == "P"
    np.testing.assert_array_equal(np.asarray(edges),
                                  np.where(expected["boundary"][..., 0] >= 0, 1, 0))
    on = np.asarray(edges.convert("RGB"))[np.asarray(edges) == 1]
    assert (on == 255).all()  # the boundary drawn white on black

    saved = json.loads((out / "predictions.json").read_text())
    shape = saved["images"]["a"]["shape"]
    probs = np.array(list(shape["probabilities"].values()))
    np.testing.assert_allclose(probs, _softmax(expected["shape"]), atol=1e-5)
    assert list(shape["probabilities"]) == ["circle", "square", "triangle"]
    assert shape["predicted"] == ["circle", "square", "triangle"][int(np.argmax(probs))]


def test_probabilities_written_on_request(trained_tiny, images, tmp_path):
    predict(trained_tiny.run_dir, [str(images / "b.png")], str(tmp_path), save_probabilities=True)
    pixels = np.asarray(Image.open(images / "b.png"), np.float32) / 255.0
    logits = {k: np.asarray(v, np.float64)[0]
              for k, v in trained_tiny.model.predict_on_batch(pixels[None]).items()}
    probs = np.load(tmp_path / "b.mask.npy")
    assert probs.shape == (32, 32, 4)
    np.testing.assert_allclose(probs, _softmax(logits["mask"]), atol=1e-5)
    edge = np.load(tmp_path / "b.boundary.npy")
    assert edge.shape == (32, 32, 1)
    np.testing.assert_allclose(edge, 1 / (1 + np.exp(-logits["boundary"])), atol=1e-5)


@pytest.mark.parametrize("length,tile,stride", [(100, 32, 24), (32, 32, 24), (20, 32, 24),
                                                (65, 32, 32)])
def test_windows_cover_every_pixel_inside_the_image(length, tile, stride):
    # The windows predict_logits uses: neighbours share tile - stride pixels.
    starts = tile_starts(length, tile, tile - stride)
    covered = np.zeros(length, bool)
    for s in starts:
        assert 0 <= s and (s + tile <= length or s == 0)
        covered[s : s + tile] = True
    assert covered.all()


def test_tiling_averages_window_logits(trained_tiny):
    model = trained_tiny.model
    image = np.random.default_rng(1).random((48, 32, 3), dtype=np.float32)
    tiled = predict_logits(model, image, tile=32, overlap=0.5)
    # Windows start at rows 0 and 16 (stride 16): rows 16-31 are the mean of both windows.
    top = {k: np.asarray(v)[0] for k, v in model.predict_on_batch(image[None, :32]).items()}
    low = {k: np.asarray(v)[0] for k, v in model.predict_on_batch(image[None, 16:]).items()}
    np.testing.assert_allclose(tiled["mask"][:16], top["mask"][:16], atol=1e-5)
    np.testing.assert_allclose(tiled["mask"][16:32], (top["mask"][16:] + low["mask"][:16]) / 2,
                               atol=1e-5)
    np.testing.assert_allclose(tiled["mask"][32:], low["mask"][16:], atol=1e-5)
    np.testing.assert_allclose(tiled["shape"], (top["shape"] + low["shape"]) / 2, atol=1e-5)


@pytest.mark.parametrize("checkpoint", [False, True])
def test_grey_images_are_converted_for_a_colour_model(trained_tiny, tmp_path, checkpoint):
    grey = tmp_path / "grey.png"
    values = np.random.default_rng(2).integers(0, 256, (32, 32), dtype=np.uint8)
    Image.fromarray(values).save(grey)
    out = tmp_path / "o"
    report = predict(trained_tiny.run_dir, [str(grey)], str(out), checkpoint=checkpoint)
    assert report["images"]["grey"]["converted"] == "grey -> RGB"
    rgb = np.repeat(values[..., None], 3, axis=-1).astype(np.float32) / 255.0
    expected = trained_tiny.model.predict_on_batch(rgb[None])["mask"][0]
    np.testing.assert_array_equal(np.asarray(Image.open(out / "grey.mask.png")),
                                  np.argmax(np.asarray(expected), axis=-1))


def test_channels_are_fitted_to_the_model():
    rgba = np.random.default_rng(3).random((4, 5, 4), dtype=np.float32)
    grey, done = fit_channels("x.png", rgba, 1)
    np.testing.assert_allclose(grey[..., 0], rgba[..., :3] @ [0.299, 0.587, 0.114], atol=1e-6)
    assert done == "RGB -> grey"
    assert fit_channels("x.png", rgba, 3)[1] == "RGBA -> RGB"
    same, done = fit_channels("x.png", rgba[..., :3], 3)
    assert done is None and same is not None
    with pytest.raises(DataError, match="x.png: has 5 channel"):
        fit_channels("x.png", np.zeros((2, 2, 5), np.float32), 3)


def test_cli_errors_name_the_file(trained_tiny, tmp_path, capsys):
    grey = tmp_path / "grey.png"
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(grey)
    assert main([trained_tiny.run_dir, str(tmp_path / "missing.png"), "--out",
                 str(tmp_path / "o")]) == 2
    assert "missing.png: no such file" in capsys.readouterr().err
    assert main([str(tmp_path), str(grey), "--out", str(tmp_path / "o")]) == 2
    assert "no recipe.yaml" in capsys.readouterr().err


def test_cli_writes_predictions(trained_tiny, images, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main([trained_tiny.run_dir, str(images / "a.png"), "--out", str(out), "--tile",
                 "32"]) == 0
    assert "1 image(s)" in capsys.readouterr().out
    assert sorted(os.listdir(out)) == ["a.boundary.png", "a.mask.png", "predictions.json"]
