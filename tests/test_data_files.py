"""File sources: folders and arrays built on the fly, every mask format, splits, and errors.

Every data error must name the file at fault; recipe mistakes name the field.
"""

from __future__ import annotations

import copy
import os
import re

import numpy as np
import pytest
import tifffile
from PIL import Image

from multiseg.data import DataError, build_data
from multiseg.data.arrays import Arrays
from multiseg.data.folder import Folder
from multiseg.data.io import read_array, to_image, to_mask
from multiseg.recipe import RecipeError, from_dict

# -- helpers -----------------------------------------------------------------------------------


def save(path, array):
    """Writes ``array`` as PNG/JPEG (Pillow), TIFF (tifffile) or NPY, by extension."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npy":
        np.save(path, array)
    elif ext in (".tif", ".tiff"):
        tifffile.imwrite(path, array, photometric="rgb" if array.ndim == 3 else "minisblack")
    else:
        Image.fromarray(array).save(path)
    return str(path)


def squares(n, size=16, seed=0):
    """``n`` grey images with one bright square each, and the square as a 0/1 mask."""
    rng = np.random.default_rng(seed)
    images, masks = [], []
    for _ in range(n):
        mask = np.zeros((size, size), np.uint8)
        y, x = rng.integers(0, size - 6, size=2)
        mask[y : y + 6, x : x + 6] = 1
        images.append((40 + 160 * mask + rng.integers(0, 20, mask.shape)).astype(np.uint8))
        masks.append(mask)
    return images, masks


def make_folder(root, n=4, size=16, image_ext=".png", mask_ext=".png", mask_scale=255):
    images, masks = squares(n, size)
    for i, (image, mask) in enumerate(zip(images, masks, strict=True)):
        save(os.path.join(root, "images", f"img{i}{image_ext}"), image)
        save(os.path.join(root, "masks", f"img{i}{mask_ext}"), (mask * mask_scale).astype(np.uint8))
    return images, masks


def folder_recipe(path, tmp_path, **source):
    """A two-head recipe (mask and its boundary) on a folder source, tiny sizes."""
    return {
        "name": "files", "seed": 3,
        "data": {"source": {"kind": "folder", "path": str(path), **source},
                 "image_size": [16, 16]},
        "model": {"filters": [4, 8]},
        "heads": {"mask": {"kind": "segmentation", "target": "mask"},
                  "edge": {"kind": "boundary", "target": {"derive": "boundary", "from": "mask"}}},
        "train": {"epochs": 1, "batch_size": 2},
        "output": str(tmp_path / "run"),
    }


def build(raw):
    return build_data(from_dict(raw))


# -- reading files -----------------------------------------------------------------------------


class TestReadArray:
    @pytest.mark.parametrize("ext,dtype,channels", [
        (".png", np.uint8, 1), (".png", np.uint16, 1), (".png", np.uint8, 3),
        (".tif", np.uint16, 1), (".tif", np.float32, 3), (".npy", np.float32, 1),
        (".npy", np.int32, 1), (".jpg", np.uint8, 3),
    ])
    def test_round_trip(self, tmp_path, ext, dtype, channels):
        rng = np.random.default_rng(0)
        shape = (6, 7) if channels == 1 else (6, 7, channels)
        top = 1.0 if np.issubdtype(dtype, np.floating) else min(np.iinfo(dtype).max, 60000)
        array = (rng.uniform(0, top, shape)).astype(dtype)
        path = save(str(tmp_path / f"a{ext}"), array)
        back = read_array(path)
        assert back.shape == shape
        if ext != ".jpg":  # lossy
            np.testing.assert_array_equal(back, array)
            assert back.dtype == dtype

    def test_dtype_intensity(self, tmp_path):
        # 8-bit divides by 255 and 16-bit by 65535: the brightest possible pixel is 1.
        for dtype, top in ((np.uint8, 255), (np.uint16, 65535)):
            image = to_image("x", np.array([[0, top]], dtype))
            np.testing.assert_allclose(image[..., 0], [[0.0, 1.0]], atol=1e-6)

    def test_percentile_and_minmax(self):
        values = np.arange(1000, dtype=np.uint16).reshape(10, 100)
        minmax = to_image("x", values, intensity="minmax")
        assert minmax.min() == 0.0 and minmax.max() == 1.0
        pct = to_image("x", values, intensity="percentile")
        # The 1st percentile of 0..999 is 9.99 -> 0, the 99.8th is 997.002 -> 1.
        np.testing.assert_allclose(np.percentile(pct, [1, 99.8]), [0, 1], atol=1e-5)

    def test_channels_conversion(self):
        grey = np.full((2, 2), 255, np.uint8)
        assert to_image("x", grey, channels=3).shape == (2, 2, 3)
        rgb = np.zeros((2, 2, 3), np.uint8)
        assert to_image("x", rgb, channels=1).shape == (2, 2, 1)

    def test_corrupt_file_names_it(self, tmp_path):
        path = tmp_path / "broken.png"
        good = tmp_path / "good.png"
        Image.fromarray(np.zeros((32, 32), np.uint8)).save(good)
        path.write_bytes(good.read_bytes()[:40])  # truncated
        with pytest.raises(DataError, match="cannot read") as info:
            read_array(str(path))
        assert info.value.path == str(path)

    def test_garbage_tiff(self, tmp_path):
        path = tmp_path / "noise.tif"
        path.write_bytes(b"not a tiff at all")
        with pytest.raises(DataError, match=re.escape(str(path))):
            read_array(str(path))

    @pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
    def test_non_finite_pixels(self, bad):
        image = np.zeros((4, 4), np.float32)
        image[1, 2] = bad
        with pytest.raises(DataError, match="images/a.npy: has 1 NaN or infinite pixel"):
            to_image("images/a.npy", image)


class TestMaskFormats:
    def test_binary_0_255_normalised_with_note(self):
        semantic, instances, note = to_mask("m.png", np.array([[0, 255]], np.uint8),
                                            fmt="binary")
        np.testing.assert_array_equal(semantic, [[0, 1]])
        assert instances is None and "0/255" in note

    def test_binary_rejects_other_values(self):
        with pytest.raises(DataError, match=r"m.png: is not a binary mask.*\[0, 1, 2\]"):
            to_mask("m.png", np.array([[0, 1, 2]], np.uint8), fmt="binary")

    def test_binary_jpeg_hint(self):
        with pytest.raises(DataError, match="JPEG is lossy"):
            to_mask("m.jpg", np.array([[0, 3, 252, 255]], np.uint8), fmt="binary")

    def test_labels_range(self):
        semantic, _, _ = to_mask("m.png", np.array([[0, 1, 2]], np.uint8), fmt="labels",
                                 classes=3)
        np.testing.assert_array_equal(semantic, [[0, 1, 2]])
        with pytest.raises(DataError, match=r"m.png: holds label value \[5\] outside \[0, 3\)"):
            to_mask("m.png", np.array([[0, 5]], np.uint8), fmt="labels", classes=3)

    def test_palette(self):
        palette = {"background": [0, 0, 0], "tumour": [255, 0, 0], "stroma": [0, 0, 255]}
        rgb = np.array([[[0, 0, 0], [255, 0, 0]], [[0, 0, 255], [255, 0, 0]]], np.uint8)
        semantic, _, _ = to_mask("m.png", rgb, fmt="palette", palette=palette)
        np.testing.assert_array_equal(semantic, [[0, 1], [2, 1]])
        rgb[0, 0] = [9, 9, 9]
        with pytest.raises(DataError, match=r"m.png: has 1 colour not declared.*\[9, 9, 9\]"):
            to_mask("m.png", rgb, fmt="palette", palette=palette)

    def test_instances(self):
        ids = np.array([[0, 7, 7], [0, 300, 0]], np.uint16)
        semantic, instances, _ = to_mask("m.png", ids, fmt="instances")
        np.testing.assert_array_equal(semantic, [[0, 1, 1], [0, 1, 0]])
        np.testing.assert_array_equal(instances, ids)

    def test_colour_mask_for_grey_format(self):
        rgb = np.zeros((2, 2, 3), np.uint8)
        rgb[0, 0] = [255, 0, 0]
        with pytest.raises(DataError, match="mask_format: palette"):
            to_mask("m.png", rgb, fmt="binary")


# -- the folder source ---------------------------------------------------------------------------


class TestFolder:
    def test_png_binary_0_255(self, tmp_path):
        images, masks = make_folder(tmp_path / "set", n=5)
        data = build(folder_recipe(tmp_path / "set", tmp_path, split="fraction", val_fraction=0.4))
        assert data.channels == 1
        assert len(data.train.samples) == 3 and len(data.val.samples) == 2
        x, y = data.val[0]
        assert x.dtype == np.float32 and y["mask"].shape == (2, 16, 16, 1)
        assert set(np.unique(y["mask"])) == {0.0, 1.0}
        # Bright pixels are exactly the mask pixels (images were made that way).
        np.testing.assert_array_equal(x[..., 0] > 0.5, y["mask"][..., 0] == 1)
        assert any("0/255 mask read as 0/1" in note for note in data.report.notes)
        assert "0/255 mask read as 0/1: 5 files" in data.report.text()

    def test_tiff_16bit_labels(self, tmp_path):
        root = tmp_path / "set"
        for i in range(3):
            labels = np.zeros((16, 16), np.uint8)
            labels[:8], labels[8:, :8] = 1, 2
            save(str(root / "images" / f"s{i}.tif"), labels.astype(np.uint16) * 20000)
            save(str(root / "masks" / f"s{i}.tif"), labels)
        raw = folder_recipe(root, tmp_path, mask_format="labels", classes=3,
                            class_names=["bg", "a", "b"])
        raw["heads"]["mask"]["classes"] = 3
        data = build(raw)
        assert data.targets["mask"].classes == 3 and data.targets["mask"].names == ("bg", "a", "b")
        x, y = data.train[0]
        # 16-bit intensities over 65535: label 2 -> 40000 / 65535.
        np.testing.assert_allclose(x[..., 0], y["mask"][..., 0] * 20000 / 65535, atol=1e-6)

    def test_npy_files(self, tmp_path):
        root = tmp_path / "set"
        for i in range(2):
            mask = np.zeros((16, 16), np.uint8)
            mask[i : i + 4, 2:6] = 1
            save(str(root / "images" / f"n{i}.npy"), mask.astype(np.float32) * 0.5)
            save(str(root / "masks" / f"n{i}.npy"), mask)
        data = build(folder_recipe(root, tmp_path))
        x, y = data.val[0]
        np.testing.assert_allclose(x[..., 0], y["mask"][..., 0] * 0.5)

    def test_rgb_jpeg_with_palette_masks(self, tmp_path):
        root = tmp_path / "set"
        palette = {"background": [0, 0, 0], "red": [255, 0, 0], "blue": [0, 0, 255]}
        for i in range(2):
            rgb = np.zeros((16, 16, 3), np.uint8)
            rgb[:, :5] = palette["red"]
            rgb[:, 10:] = palette["blue"]
            save(str(root / "images" / f"c{i}.jpg"), rgb)
            save(str(root / "masks" / f"c{i}.png"), rgb)
        raw = folder_recipe(root, tmp_path, mask_format="palette", palette=palette)
        data = build(raw)
        assert data.channels == 3
        assert data.targets["mask"].names == ("background", "red", "blue")
        _, y = data.val[0]
        np.testing.assert_array_equal(y["mask"][0, 0, :, 0], [1] * 5 + [0] * 5 + [2] * 6)

    def test_mask_suffix_and_unmatched_note(self, tmp_path):
        root = tmp_path / "set"
        images, masks = squares(2)
        for i in range(2):
            save(str(root / "images" / f"a{i}.png"), images[i])
            save(str(root / "masks" / f"a{i}_mask.png"), masks[i])
        save(str(root / "masks" / "orphan_mask.png"), masks[0])
        data = build(folder_recipe(root, tmp_path, mask_suffix="_mask"))
        assert any("have no image" in note for note in data.report.notes)

    def test_instance_masks_give_semantic_and_instances(self, tmp_path):
        root = tmp_path / "set"
        ids = np.zeros((16, 16), np.uint16)
        ids[2:8, 2:6], ids[2:8, 6:10] = 5, 9  # two touching objects
        for i in range(2):
            save(str(root / "images" / f"i{i}.png"), (ids > 0).astype(np.uint8) * 200)
            save(str(root / "masks" / f"i{i}.png"), ids)
        raw = folder_recipe(root, tmp_path, mask_format="instances")
        raw["heads"]["edge"]["target"] = {"derive": "boundary", "from": "instances",
                                          "mode": "touching"}
        data = build(raw)
        assert set(data.targets) == {"mask", "instances"}
        _, y = data.val[0]
        np.testing.assert_array_equal(y["mask"][0, ..., 0], ids > 0)
        # The line between the two objects: columns 5 and 6 of rows 2..7, nothing else.
        expected = np.zeros((16, 16))
        expected[2:8, 5:7] = 1
        np.testing.assert_array_equal(y["edge"][0, ..., 0], expected)

    def test_labels_from_csv(self, tmp_path):
        root = tmp_path / "set"
        make_folder(root, n=4)
        (root / "labels.csv").write_text("image,label\nimg0.png,cat\nimg1,dog\nimg2.png,dog\n"
                                         "img3.png,cat\n")
        raw = folder_recipe(root, tmp_path, labels="labels.csv", split="fraction",
                            val_fraction=0.5)
        raw["heads"]["kind"] = {"kind": "classification", "target": "label"}
        data = build(raw)
        assert data.targets["label"].names == ("cat", "dog")
        labels = {item.name.rsplit("/", 1)[1]: item.labels["label"]
                  for item in data.train.samples.items + data.val.samples.items}
        assert labels == {"img0.png": 0, "img1.png": 1, "img2.png": 1, "img3.png": 0}

    def test_labels_from_folders(self, tmp_path):
        root = tmp_path / "set"
        images, masks = squares(4)
        for i in range(4):
            cls = "round" if i % 2 else "flat"
            save(str(root / "images" / cls / f"x{i}.png"), images[i])
            save(str(root / "masks" / f"x{i}.png"), masks[i] * 255)
        raw = folder_recipe(root, tmp_path, labels="folders")
        raw["heads"]["kind"] = {"kind": "classification", "target": "label"}
        recipe = from_dict(raw)
        assert recipe.heads["kind"].classes == 2
        data = build_data(recipe)
        got = {os.path.basename(i.name): i.labels["label"]
               for i in data.train.samples.items + data.val.samples.items}
        assert got == {"x0.png": 0, "x1.png": 1, "x2.png": 0, "x3.png": 1}  # flat < round

    def test_split_fraction_is_seeded_and_disjoint(self, tmp_path):
        make_folder(tmp_path / "set", n=10)
        raw = folder_recipe(tmp_path / "set", tmp_path, val_fraction=0.3)
        names = [sorted(i.name for i in s.samples.items) for s in
                 (lambda d: (d.train, d.val))(build(raw))]
        again = [sorted(i.name for i in s.samples.items) for s in
                 (lambda d: (d.train, d.val))(build(raw))]
        assert names == again and len(names[1]) == 3
        assert not set(names[0]) & set(names[1]) and len(set(names[0]) | set(names[1])) == 10
        raw["seed"] = 4
        other = build(raw)
        assert sorted(i.name for i in other.val.samples.items) != names[1]

    def test_split_folders(self, tmp_path):
        make_folder(tmp_path / "set" / "train", n=3)
        make_folder(tmp_path / "set" / "val", n=2)
        data = build(folder_recipe(tmp_path / "set", tmp_path, split="folders"))
        assert len(data.train.samples) == 3 and len(data.val.samples) == 2
        assert all("/val/" in i.name for i in data.val.samples.items)

    def test_split_file(self, tmp_path):
        make_folder(tmp_path / "set", n=4)
        (tmp_path / "set" / "split.csv").write_text(
            "image,split\nimg0.png,val\nimg1.png,train\nimg2,train\nimg3.png,test\n")
        data = build(folder_recipe(tmp_path / "set", tmp_path, split="file",
                                   split_file="split.csv"))
        assert [os.path.basename(i.name) for i in data.train.samples.items] == ["img1.png",
                                                                                 "img2.png"]
        assert [os.path.basename(i.name) for i in data.val.samples.items] == ["img0.png"]


class TestFolderErrors:
    """Each bad input is a DataError naming the file; bad_files: skip lists it instead."""

    def test_missing_mask(self, tmp_path):
        make_folder(tmp_path / "set", n=3)
        os.remove(tmp_path / "set" / "masks" / "img1.png")
        with pytest.raises(DataError, match="img1.png: has no mask") as info:
            build(folder_recipe(tmp_path / "set", tmp_path))
        assert info.value.path.endswith(os.path.join("images", "img1.png"))

    def test_mask_size_differs(self, tmp_path):
        make_folder(tmp_path / "set", n=3)
        save(str(tmp_path / "set" / "masks" / "img2.png"), np.zeros((16, 12), np.uint8))
        with pytest.raises(DataError, match=r"masks/img2.png: is 16x12 but its image .*img2.png"
                                            r" is 16x16"):
            build(folder_recipe(tmp_path / "set", tmp_path))

    def test_corrupt_image(self, tmp_path):
        make_folder(tmp_path / "set", n=3)
        (tmp_path / "set" / "images" / "img0.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
        with pytest.raises(DataError, match=r"images/img0.png: cannot read the file"):
            build(folder_recipe(tmp_path / "set", tmp_path))

    @pytest.mark.parametrize("bad", [np.nan, np.inf])
    def test_non_finite_image(self, tmp_path, bad):
        root = tmp_path / "set"
        for i in range(3):
            image = np.ones((16, 16), np.float32)
            if i == 1:
                image[3, 3] = bad
            save(str(root / "images" / f"f{i}.npy"), image)
            save(str(root / "masks" / f"f{i}.npy"), np.zeros((16, 16), np.uint8))
        with pytest.raises(DataError, match=r"images/f1.npy: has 1 NaN or infinite pixel"):
            build(folder_recipe(root, tmp_path))

    def test_empty_folder(self, tmp_path):
        os.makedirs(tmp_path / "set" / "images")
        os.makedirs(tmp_path / "set" / "masks")
        with pytest.raises(DataError, match=r"set/images: no usable images"):
            build(folder_recipe(tmp_path / "set", tmp_path))

    def test_labels_outside_classes(self, tmp_path):
        root = tmp_path / "set"
        make_folder(root, n=2, mask_scale=1)
        save(str(root / "masks" / "img1.png"), np.full((16, 16), 4, np.uint8))
        raw = folder_recipe(root, tmp_path, mask_format="labels", classes=3)
        with pytest.raises(DataError, match=r"masks/img1.png: holds label value \[4\]"):
            build(raw)

    def test_several_bad_files_counted(self, tmp_path):
        make_folder(tmp_path / "set", n=4)
        for i in (1, 3):
            os.remove(tmp_path / "set" / "masks" / f"img{i}.png")
        with pytest.raises(DataError, match=r"img1.png: has no mask.*1 more file fails"):
            build(folder_recipe(tmp_path / "set", tmp_path))

    def test_skip_counts_and_lists(self, tmp_path):
        make_folder(tmp_path / "set", n=5)
        os.remove(tmp_path / "set" / "masks" / "img1.png")
        (tmp_path / "set" / "images" / "img3.png").write_bytes(b"junk")
        data = build(folder_recipe(tmp_path / "set", tmp_path, bad_files="skip"))
        skipped = sorted(os.path.basename(p) for p, _ in data.report.skipped)
        assert skipped == ["img1.png", "img3.png"]
        assert len(data.train.samples) + len(data.val.samples) == 3
        text = data.report.text()
        assert "skipped 2 bad file(s)" in text and "img3.png: cannot read" in text

    def test_everything_skipped_is_an_error(self, tmp_path):
        make_folder(tmp_path / "set", n=2)
        for i in range(2):
            os.remove(tmp_path / "set" / "masks" / f"img{i}.png")
        with pytest.raises(DataError, match=r"no usable images .*; 2 bad file.s. were skipped"):
            build(folder_recipe(tmp_path / "set", tmp_path, bad_files="skip"))

    def test_channels_differ(self, tmp_path):
        make_folder(tmp_path / "set", n=3)
        save(str(tmp_path / "set" / "images" / "img2.png"), np.zeros((16, 16, 3), np.uint8))
        with pytest.raises(DataError, match=r"img2.png: has 3 channel.*channels: 1 or 3"):
            build(folder_recipe(tmp_path / "set", tmp_path))
        data = build(folder_recipe(tmp_path / "set", tmp_path, channels=3))
        assert data.channels == 3

    def test_wrong_size_for_whole_images(self, tmp_path):
        make_folder(tmp_path / "set", n=2, size=20)
        with pytest.raises(DataError, match=r"img\d.png: is 20x20 but data.image_size is"
                                            r" \[16, 16\].*patches: tile or random"):
            build(folder_recipe(tmp_path / "set", tmp_path))

    def test_duplicate_stems(self, tmp_path):
        make_folder(tmp_path / "set", n=2)
        save(str(tmp_path / "set" / "images" / "img0.tif"), np.zeros((16, 16), np.uint8))
        with pytest.raises(DataError, match="have the same name"):
            build(folder_recipe(tmp_path / "set", tmp_path))

    def test_one_image_cannot_split_by_fraction(self, tmp_path):
        make_folder(tmp_path / "set", n=1)
        with pytest.raises(DataError, match="split: tiles"):
            build(folder_recipe(tmp_path / "set", tmp_path))

    def test_missing_csv_label(self, tmp_path):
        make_folder(tmp_path / "set", n=3)
        (tmp_path / "set" / "labels.csv").write_text("image,label\nimg0.png,a\nimg1.png,b\n")
        raw = folder_recipe(tmp_path / "set", tmp_path, labels="labels.csv")
        with pytest.raises(DataError, match=r"img2.png: has no row in .*labels.csv"):
            build(raw)


# (option, value, field path the RecipeError names, words in the message)
RECIPE_CASES = [
    ("path", None, "path", "is required"),
    ("path", "/no/such/folder", "path", "no such folder"),
    ("path", "builtin:nucleii", "path", "Built-in sets: nuclei"),
    ("mask_format", "label", "mask_format", "binary, labels, palette, instances"),
    ("mask_format", "labels", "classes", "is required with mask_format: labels"),
    ("classes", 3, "classes", "labels only"),
    ("palette", {"a": [0, 0, 0]}, "palette", "palette only"),
    ("split", "random", "split", "fraction, folders, file, tiles"),
    ("split", "file", "split_file", "is required"),
    ("val_fraction", 1.5, "val_fraction", r"\(0, 1\)"),
    ("intensity", "auto", "intensity", "dtype, minmax, percentile"),
    ("channels", 2, "channels", "1 or 3"),
    ("bad_files", "ignore", "bad_files", "error or skip"),
    ("labels", "nope.csv", "labels", "no such file"),
    ("masks", "labels", "masks", "no such folder"),
    ("colour", "red", "colour", "unknown key"),
]


class TestRecipeChecks:
    @pytest.mark.parametrize("key,value,field,words", RECIPE_CASES,
                             ids=[f"{c[0]}={c[1]!r}" for c in RECIPE_CASES])
    def test_source_option_errors_name_the_field(self, tmp_path, key, value, field, words):
        make_folder(tmp_path / "set", n=2)
        raw = folder_recipe(tmp_path / "set", tmp_path)
        raw["data"]["source"][key] = value
        with pytest.raises(RecipeError, match=words) as info:
            from_dict(raw)
        assert info.value.path == f"data.source.{field}"

    def test_palette_colour_checked(self, tmp_path):
        make_folder(tmp_path / "set", n=2)
        raw = folder_recipe(tmp_path / "set", tmp_path, mask_format="palette",
                            palette={"bg": [0, 0, 0], "x": [300, 0, 0]})
        with pytest.raises(RecipeError, match=r"\[r, g, b\]") as info:
            from_dict(raw)
        assert info.value.path == "data.source.palette.x"

    def test_split_tiles_needs_patches(self, tmp_path):
        make_folder(tmp_path / "set", n=2)
        with pytest.raises(RecipeError, match="data.patches to tile or random"):
            from_dict(folder_recipe(tmp_path / "set", tmp_path, split="tiles"))

    def test_instances_are_not_a_target(self, tmp_path):
        make_folder(tmp_path / "set", n=2)
        raw = folder_recipe(tmp_path / "set", tmp_path, mask_format="instances")
        raw["heads"]["mask"]["target"] = "instances"
        with pytest.raises(RecipeError, match="object ids") as info:
            from_dict(raw)
        assert info.value.path == "heads.mask.target"

    def test_count_needs_instances(self, tmp_path):
        make_folder(tmp_path / "set", n=2)
        raw = folder_recipe(tmp_path / "set", tmp_path)
        raw["heads"]["n"] = {"kind": "classification",
                             "target": {"derive": "label", "mode": "count", "bins": [3]}}
        with pytest.raises(RecipeError, match="mask_format: instances") as info:
            from_dict(raw)
        assert info.value.path == "heads.n.target.mode"

    @pytest.mark.parametrize("bins,words", [(None, "is required"), ([], "non-empty"),
                                            ([0.5, 0.2], "increase"), ([1.5], r"\(0, 1\)")])
    def test_coverage_bins(self, tmp_path, bins, words):
        make_folder(tmp_path / "set", n=2)
        raw = folder_recipe(tmp_path / "set", tmp_path)
        target = {"derive": "label", "mode": "coverage"}
        if bins is not None:
            target["bins"] = bins
        raw["heads"]["n"] = {"kind": "classification", "target": target}
        with pytest.raises(RecipeError, match=words) as info:
            from_dict(raw)
        assert info.value.path.startswith("heads.n.target.bins")

    def test_resolved_round_trip(self, tmp_path):
        import yaml

        from multiseg.recipe import dump

        make_folder(tmp_path / "set", n=2, size=64)
        raw = folder_recipe(tmp_path / "set", tmp_path, mask_format="palette",
                            palette={"bg": [0, 0, 0], "fg": [255, 255, 255]},
                            split="tiles", val_fraction=0.3)
        raw["data"].update({"patches": "tile", "tile_overlap": 4, "train": 12,
                            "augment": {"rotate": 10, "gamma": 0.2, "flip": True}})
        raw["heads"]["n"] = {"kind": "classification",
                             "target": {"derive": "label", "mode": "coverage", "bins": [0.2]}}
        recipe = from_dict(raw)
        assert recipe.data.augment.rotate == 10.0 and recipe.data.patches == "tile"
        assert from_dict(yaml.safe_load(dump(recipe))) == recipe

    def test_file_sources_make_train_and_val_optional(self, tmp_path):
        make_folder(tmp_path / "set", n=2)
        recipe = from_dict(folder_recipe(tmp_path / "set", tmp_path))
        assert recipe.data.train is None and recipe.data.val is None
        tiny = copy.deepcopy(folder_recipe(tmp_path / "set", tmp_path))
        tiny["data"]["source"] = "shapes"
        with pytest.raises(RecipeError, match="is required") as info:
            from_dict(tiny)
        assert info.value.path == "data.train"


# -- the arrays source -------------------------------------------------------------------------


class TestArrays:
    def arrays(self, n=6):
        images, masks = squares(n)
        return np.stack(images), np.stack(masks), np.arange(n) % 2

    def recipe(self, path, tmp_path, **source):
        raw = folder_recipe(path, tmp_path, **source)
        raw["data"]["source"]["kind"] = "arrays"
        return raw

    def test_npz_with_labels(self, tmp_path):
        images, masks, labels = self.arrays()
        np.savez(tmp_path / "set.npz", images=images, masks=masks, labels=labels)
        raw = self.recipe(tmp_path / "set.npz", tmp_path, labels="labels",
                          label_names=["even", "odd"], val_fraction=0.5)
        raw["heads"]["parity"] = {"kind": "classification", "target": "label"}
        data = build(raw)
        assert len(data.train.samples) == 3 and len(data.val.samples) == 3
        x, y = data.val[0]
        np.testing.assert_array_equal(x[..., 0] > 0.5, y["mask"][..., 0] == 1)
        for item in data.val.samples.items:  # names say where each sample came from
            index = int(re.search(r"images\[(\d+)\]$", item.name).group(1))
            assert item.labels["label"] == index % 2

    def test_folder_of_npy_and_split_keys(self, tmp_path):
        images, masks, _ = self.arrays()
        folder = tmp_path / "arrays"
        os.makedirs(folder)
        for key, value in (("images", images[:4]), ("masks", masks[:4]),
                           ("val_images", images[4:]), ("val_masks", masks[4:])):
            np.save(folder / f"{key}.npy", value)
        data = build(self.recipe(folder, tmp_path, split="keys"))
        assert len(data.train.samples) == 4 and len(data.val.samples) == 2

    def test_nan_names_the_sample(self, tmp_path):
        images, masks, _ = self.arrays()
        images = images.astype(np.float32)
        images[2, 0, 0] = np.nan
        np.savez(tmp_path / "set.npz", images=images, masks=masks)
        with pytest.raises(DataError, match=r"set.npz:images\[2\]: has 1 NaN"):
            build(self.recipe(tmp_path / "set.npz", tmp_path))

    def test_mask_values_name_the_sample(self, tmp_path):
        images, masks, _ = self.arrays()
        masks[4, 0, 0] = 7
        np.savez(tmp_path / "set.npz", images=images, masks=masks)
        with pytest.raises(DataError, match=r"set.npz:masks\[4\]: is not a binary mask"):
            build(self.recipe(tmp_path / "set.npz", tmp_path))

    def test_length_mismatch(self, tmp_path):
        images, masks, _ = self.arrays()
        np.savez(tmp_path / "set.npz", images=images, masks=masks[:5])
        with pytest.raises(DataError, match=r"set.npz:masks: has 5 entries"):
            build(self.recipe(tmp_path / "set.npz", tmp_path))

    def test_missing_key_is_a_recipe_error(self, tmp_path):
        images, masks, _ = self.arrays()
        np.savez(tmp_path / "set.npz", images=images, masks=masks)
        with pytest.raises(RecipeError, match="no array 'labls'") as info:
            from_dict(self.recipe(tmp_path / "set.npz", tmp_path, labels="labls"))
        assert info.value.path == "data.source.labels"

    def test_corrupt_npz(self, tmp_path):
        (tmp_path / "set.npz").write_bytes(b"PK junk")
        with pytest.raises(RecipeError, match="cannot read the .npz file"):
            from_dict(self.recipe(tmp_path / "set.npz", tmp_path))


def test_sources_share_option_names():
    """Both file sources read masks the same way: the shared options exist in both."""
    for key in ("mask_format", "classes", "palette", "split", "bad_files", "intensity"):
        assert key in Folder.OPTIONS and key in Arrays.OPTIONS
