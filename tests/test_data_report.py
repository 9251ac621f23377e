"""The data report's text: every count is the one counted and says of what, each message is
given once, sizes say which is the height, notes name a few files and count them all.

Built from real data: small folders of PNGs written in ``tmp_path`` and the synthetic shapes.
"""

from __future__ import annotations

import copy
import json
import logging
import os

import numpy as np
import pytest
from PIL import Image

from multiseg.data import __main__ as data_cli
from multiseg.data import build_data
from multiseg.data.report import EXAMPLES, class_frequencies
from multiseg.recipe import from_dict

CORRUPT = b"\x89PNG\r\n\x1a\n garbage"  # a PNG signature and nothing readable after it


def write_folder(root, n, *, size=(16, 24), bad=(), seed=0):
    """``n`` grey images (``size`` is height, width) with one 0/255 square mask each;
    the images numbered in ``bad`` are corrupt. Returns {file name: 0/1 mask}."""
    rng = np.random.default_rng(seed)
    os.makedirs(root / "images", exist_ok=True)
    os.makedirs(root / "masks", exist_ok=True)
    masks = {}
    for i in range(n):
        mask = np.zeros(size, np.uint8)
        y, x = rng.integers(0, size[0] - 6), rng.integers(0, size[1] - 6)
        mask[y : y + 4 + i % 3, x : x + 6] = 1
        image = (40 + 150 * mask + rng.integers(0, 20, size)).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"im{i:02d}.png")
        Image.fromarray(mask * 255).save(root / "masks" / f"im{i:02d}.png")
        masks[f"im{i:02d}.png"] = mask
    for i in bad:
        (root / "images" / f"im{i:02d}.png").write_bytes(CORRUPT)
    return masks


def folder_raw(root, tmp_path, *, size=(16, 24), batch_size=3, **source):
    return {
        "name": "report", "seed": 4,
        "data": {"source": {"kind": "folder", "path": str(root), "val_fraction": 0.25, **source},
                 "image_size": list(size)},
        "model": {"filters": [4, 8]},
        "heads": {"mask": {"kind": "segmentation", "target": "mask"},
                  "edge": {"kind": "boundary", "target": {"derive": "boundary", "from": "mask"}}},
        "train": {"epochs": 1, "batch_size": batch_size},
        "output": str(tmp_path / "run"),
    }


def frequency(data, head):
    return {f.head: f for f in data.report.frequencies}[head]


class TestCounts:
    """The class frequencies say how many samples they counted, and of how many."""

    def test_all_samples_inspected_whatever_the_steps(self, tiny_raw):
        # 16 training samples, batch 8, one step per epoch: an epoch draws 8 of them, but the
        # shares are of the whole training set (the issue: "(of 8 samples)").
        tiny_raw["train"]["steps_per_epoch"] = 1
        data = build_data(from_dict(tiny_raw), log_report=False)
        shape = frequency(data, "shape")
        assert (shape.samples, shape.total) == (16, 16)
        text = data.report.text()
        assert "class frequencies of the training targets (before augmentation), in all 16" \
               " training samples:" in text
        assert "an epoch draws 1 x 8 = 8 of the 16 training samples" in text
        # The shares are those of the 16 generated masks and labels, counted here.
        arrays = data.train.samples.arrays
        mask = np.bincount(arrays["mask"].ravel(), minlength=4) / arrays["mask"].size
        np.testing.assert_allclose(frequency(data, "mask").fractions, mask, rtol=1e-9)
        labels = np.bincount(arrays["label"], minlength=3) / 16
        np.testing.assert_allclose(shape.fractions, labels, rtol=1e-9)

    def test_a_subset_says_it_is_one(self, tiny_raw):
        data = build_data(from_dict(tiny_raw), frequencies=False, log_report=False)
        names = {"mask": ("background", "circle", "square", "triangle"),
                 "shape": ("circle", "square", "triangle")}
        # A budget of 5 samples of 32 x 32 pixels.
        found = class_frequencies(data.train, {"mask": "mask", "shape": "label"}, names,
                                  max_pixels=5 * 32 * 32)
        assert [(f.samples, f.total) for f in found] == [(5, 16), (5, 16)]
        data.report.frequencies = found
        text = data.report.text()
        assert "in a random 5 of the 16 training samples:" in text
        assert "  mask: background" in text and "(of pixels)" in text
        assert "  shape: circle" in text and "(of samples)" in text
        # Seeded: the same subset twice.
        again = class_frequencies(data.train, {"mask": "mask", "shape": "label"}, names,
                                  max_pixels=5 * 32 * 32)
        assert [f.fractions for f in again] == [f.fractions for f in found]

    def test_skipped_files_are_not_counted(self, tmp_path):
        # 8 files, 2 corrupt: 6 read, 2 of them validation, 4 training. With batch 3 an epoch
        # draws 2 batches (6 samples, 2 of them repeats): the old report said "(of 6 samples)".
        masks = write_folder(tmp_path / "set", 8, bad=(2, 5))
        data = build_data(from_dict(folder_raw(tmp_path / "set", tmp_path,
                                                bad_files="skip")), log_report=False)
        text = data.report.text()
        assert "4 train / 2 val samples" in text and "from 4 train / 2 val images" in text
        assert "in all 4 training samples:" in text
        mask = frequency(data, "mask")
        assert (mask.samples, mask.total) == (4, 4)
        train = [os.path.basename(item.name) for item in data.train.samples.items]
        assert len(train) == 4 and not {"im02.png", "im05.png"} & set(train)
        foreground = np.mean([masks[name] for name in train])
        np.testing.assert_allclose(mask.fractions, [1 - foreground, foreground], rtol=1e-9)

    def test_more_per_epoch_than_tiles(self, tmp_path):
        # 8 files: 6 training tiles; data.train asks for 10 samples per epoch.
        write_folder(tmp_path / "set", 8)
        raw = folder_raw(tmp_path / "set", tmp_path)
        raw["data"]["train"] = 10
        text = build_data(from_dict(raw), log_report=False).report.text()
        assert "10 train / 2 val samples" in text
        assert "note: training samples are 6 tiles of 16 x 24 (height x width), 10 drawn per" \
               " epoch" in text
        assert "in all 6 training samples:" in text

    def test_random_crops_say_so(self, tmp_path):
        write_folder(tmp_path / "set", 3, size=(40, 40))
        raw = folder_raw(tmp_path / "set", tmp_path, size=(16, 16), split="tiles")
        raw["data"].update(patches="random", train=10)
        data = build_data(from_dict(raw), log_report=False)
        text = data.report.text()
        assert "in 10 random crops of the 3 training images:" in text
        assert (frequency(data, "mask").samples, frequency(data, "mask").total) == (10, 3)

    def test_absent_label_names_what_was_inspected(self, tiny_raw):
        tiny_raw["heads"]["shape"]["target"] = {"derive": "label", "mode": "coverage",
                                                "bins": [0.99]}  # no shape covers 99%
        tiny_raw["heads"]["shape"]["classes"] = 2
        data = build_data(from_dict(tiny_raw), log_report=False)
        assert data.report.warnings == [
            "heads.shape.target: class '>=99%' never occurs in all 16 training samples; check"
            " the labels (or the bins of a derived label)"]


class TestOnce:
    """Each message once: in the text, and in the log when the report is logged instead."""

    @pytest.fixture
    def raw(self, tmp_path):
        write_folder(tmp_path / "set", 8, bad=(2, 5))
        raw = folder_raw(tmp_path / "set", tmp_path, bad_files="skip")
        # No square covers 99% of its image: a warning that this class never occurs.
        raw["heads"]["big"] = {"kind": "classification", "target": {
            "derive": "label", "mode": "coverage", "bins": [0.99]}}
        return raw

    def test_text(self, raw):
        report = build_data(from_dict(raw), log_report=False).report
        text = report.text()
        for name in ("im02.png", "im05.png"):
            assert text.count(name) == 1
        assert len(report.warnings) == 1 and text.count(report.warnings[0]) == 1

    def test_log(self, raw, caplog):
        with caplog.at_level(logging.INFO, logger="multiseg.data"):
            data = build_data(from_dict(raw))
        logged = "\n".join(r.getMessage() for r in caplog.records)
        for name in ("im02.png", "im05.png"):
            assert logged.count(name) == 1
        assert len(data.report.warnings) == 1 and logged.count(data.report.warnings[0]) == 1
        skipped = [r for r in caplog.records if "im02.png" in r.getMessage()]
        assert skipped[0].levelname == "WARNING"  # reaches stderr without logging set up
        assert "data: folder" in logged and "class frequencies" in logged

    def test_cli(self, raw, tmp_path, capsys, caplog):
        path = tmp_path / "r.yaml"
        path.write_text(json.dumps(raw))
        with caplog.at_level(logging.INFO, logger="multiseg.data"):
            assert data_cli.main([str(path)]) == 0
        captured = capsys.readouterr()
        shown = captured.out + captured.err + "\n".join(r.getMessage() for r in caplog.records)
        for name in ("im02.png", "im05.png"):
            assert shown.count(name) == 1


class TestListing:
    """Notes shared by many files name a few and count them all; skipped files are listed up
    to ``max_listed`` (5 at training start, 20 in ``python -m multiseg.data``)."""

    def test_shared_note_names_a_few(self, tmp_path):
        write_folder(tmp_path / "set", 7)
        report = build_data(from_dict(folder_raw(tmp_path / "set", tmp_path)),
                            log_report=False).report
        expected = (f"note: binary 0/255 mask read as 0/1: 7 files in {tmp_path / 'set' / 'masks'},"
                    " e.g. im00.png, im01.png, im02.png, ...")
        assert EXAMPLES == 3
        for text in (report.text(), report.text(max_listed=20)):
            assert expected in text.splitlines()

    def test_skipped_files_listed_up_to_max_listed(self, tmp_path):
        write_folder(tmp_path / "set", 10, bad=range(7))
        report = build_data(from_dict(folder_raw(tmp_path / "set", tmp_path,
                                                 bad_files="skip")), log_report=False).report
        short = report.text()
        assert "skipped 7 bad file(s) (bad_files: skip):" in short
        assert sum(f"im{i:02d}.png: cannot read" in short for i in range(7)) == 5
        assert "  ... and 2 more" in short
        full = report.text(max_listed=20)
        assert all(full.count(f"im{i:02d}.png: cannot read") == 1 for i in range(7))
        assert "more" not in full


class TestSizes:
    """Every size in the report says which number is the height."""

    def test_header_and_notes(self, tmp_path):
        write_folder(tmp_path / "set", 4, size=(16, 24))
        text = build_data(from_dict(folder_raw(tmp_path / "set", tmp_path, size=(16, 24))),
                          log_report=False).report.text()
        assert "samples of 16 x 24 (height x width), 1 channel," in text
        assert "note: training samples are 3 tiles of 16 x 24 (height x width)" in text
        assert "16x24" not in text

    def test_held_out_tiles_and_crops(self, tmp_path):
        write_folder(tmp_path / "set", 1, size=(32, 48))
        raw = folder_raw(tmp_path / "set", tmp_path, size=(16, 24), split="tiles")
        raw["data"].update(patches="random", train=6)
        text = build_data(from_dict(raw), log_report=False).report.text()
        assert "samples of 16 x 24 (height x width), 1 channel," in text
        assert "held out 1 of 4 tiles of 16 x 24 (height x width) for validation" in text
        assert "training samples are random crops of 16 x 24 (height x width), 6 per epoch" \
               in text

    def test_synthetic_channels(self, tiny_raw):
        raw = copy.deepcopy(tiny_raw)
        raw["data"]["image_size"] = [32, 48]
        raw["data"]["augment"] = {"flip": True}  # rotate90 needs square samples
        text = build_data(from_dict(raw), log_report=False).report.text()
        assert text.startswith("data: shapes: 16 train / 8 val samples of 32 x 48 (height x"
                               " width), 3 channels")
