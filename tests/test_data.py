"""Synthetic sources, derived targets, augmentation alignment and batching."""

from __future__ import annotations

import numpy as np
import pytest

from multiseg.data import Batches, HeadTarget, build_data
from multiseg.data.augment import augment_batch
from multiseg.data.sources import SOURCES, generate, source_targets
from multiseg.data.targets import boundary_map, dominant_label


class TestSources:
    @pytest.mark.parametrize("kind", list(SOURCES))
    def test_shapes_and_ranges(self, kind):
        arrays = generate(kind, {}, count=6, size=(24, 40), seed=0, split="train")
        targets = source_targets(kind, {})
        assert arrays["image"].shape[:3] == (6, 24, 40)
        assert arrays["image"].dtype == np.float32
        assert 0.0 <= arrays["image"].min() and arrays["image"].max() <= 1.0
        assert arrays["mask"].shape == (6, 24, 40)
        classes = targets["mask"].classes
        assert arrays["mask"].max() <= max(classes - 1, 1)
        assert arrays["label"].shape == (6,)
        assert 0 <= arrays["label"].min() and arrays["label"].max() < targets["label"].classes

    @pytest.mark.parametrize("kind", list(SOURCES))
    def test_deterministic_by_seed_and_index(self, kind):
        a = generate(kind, {}, count=4, size=(32, 32), seed=5, split="train")
        b = generate(kind, {}, count=6, size=(32, 32), seed=5, split="train")
        c = generate(kind, {}, count=4, size=(32, 32), seed=6, split="train")
        d = generate(kind, {}, count=4, size=(32, 32), seed=5, split="val")
        np.testing.assert_array_equal(a["image"], b["image"][:4])  # growing keeps samples
        assert not np.array_equal(a["image"], c["image"])
        assert not np.array_equal(a["image"], d["image"])

    def test_shapes_label_is_dominant_class(self):
        arrays = generate("shapes", {}, count=20, size=(48, 48), seed=2, split="train")
        expected = dominant_label(arrays["mask"], classes=4)
        np.testing.assert_array_equal(arrays["label"], expected)


class TestBoundary:
    def test_square_hand_computed(self):
        mask = np.zeros((1, 6, 6), np.uint8)
        mask[0, 2:4, 2:4] = 1
        thick = boundary_map(mask, width=1)[0]
        # Every pixel whose 3x3 window touches both labels: the 4x4 block around the square,
        # which here is rows/cols 1..4, and nothing else.
        expected = np.zeros((6, 6), np.uint8)
        expected[1:5, 1:5] = 1
        np.testing.assert_array_equal(thick, expected)
        inner = boundary_map(mask, width=1, mode="inner")[0]
        np.testing.assert_array_equal(inner, mask[0])  # a 2x2 square is all edge
        outer = boundary_map(mask, width=1, mode="outer")[0]
        np.testing.assert_array_equal(outer, expected - mask[0])

    def test_width_grows(self):
        mask = np.zeros((1, 16, 16), np.uint8)
        mask[0, 4:12, 4:12] = 2
        widths = [boundary_map(mask, width=w).sum() for w in (1, 2, 3)]
        assert widths[0] < widths[1] < widths[2]

    def test_uniform_mask_has_no_boundary(self):
        assert boundary_map(np.full((2, 8, 8), 3, np.uint8), width=2).sum() == 0

    def test_between_touching_classes(self):
        mask = np.zeros((1, 4, 6), np.uint8)
        mask[0, :, :3], mask[0, :, 3:] = 1, 2
        inner = boundary_map(mask, width=1, mode="inner")[0]
        np.testing.assert_array_equal(inner[:, 2:4], np.ones((4, 2)))
        assert inner[:, [0, 1, 4, 5]].sum() == 0

    def test_bad_mode(self):
        with pytest.raises(ValueError, match="thick, inner or outer"):
            boundary_map(np.zeros((1, 4, 4), np.uint8), mode="middle")


class TestDominantLabel:
    def test_hand_computed(self):
        mask = np.zeros((3, 4, 4), np.uint8)
        mask[0, :2, :2] = 1          # 4 px of class 1
        mask[0, 2:, :] = 3           # 8 px of class 3 -> label 2
        mask[1, 0, 0] = 2            # 1 px of class 2 -> label 1
        # mask[2] is empty -> label 0
        np.testing.assert_array_equal(dominant_label(mask, classes=4), [2, 1, 0])

    def test_binary(self):
        mask = np.zeros((2, 3, 3), np.uint8)
        mask[1, 1, 1] = 1
        np.testing.assert_array_equal(dominant_label(mask, classes=1), [0, 1])


class TestAugment:
    def test_image_and_masks_stay_aligned(self):
        rng = np.random.default_rng(0)
        mask = rng.integers(0, 4, size=(16, 12, 12)).astype(np.uint8)
        # The image encodes its own mask, so alignment is checked exactly.
        image = np.stack([mask, mask * 2, mask * 3], axis=-1).astype(np.float32)
        out_image, out = augment_batch(rng, image, {"mask": mask}, flip=True, rotate90=True)
        np.testing.assert_array_equal(out_image[..., 0], out["mask"])
        np.testing.assert_array_equal(out_image[..., 2], out["mask"] * 3)
        assert not np.array_equal(out["mask"], mask)  # something did change
        np.testing.assert_array_equal(np.sort(out["mask"].reshape(16, -1)),
                                      np.sort(mask.reshape(16, -1)))

    def test_off_is_identity(self):
        image = np.zeros((2, 4, 4, 1), np.float32)
        mask = {"mask": np.zeros((2, 4, 4), np.uint8)}
        out_image, out = augment_batch(np.random.default_rng(0), image, mask, flip=False,
                                       rotate90=False)
        assert out_image is image and out is mask


class TestBatches:
    def test_targets_per_head(self, tiny_recipe):
        data = build_data(tiny_recipe)
        images, targets = data.train[0]
        assert images.shape == (8, 32, 32, 3)
        assert set(targets) == {"mask", "boundary", "shape"}
        assert targets["mask"].shape == (8, 32, 32, 1)
        assert targets["boundary"].shape == (8, 32, 32, 1)
        assert set(np.unique(targets["boundary"])) <= {0.0, 1.0}
        assert targets["shape"].shape == (8,)
        assert len(data.train) == 2 and len(data.val) == 1

    def test_boundary_derived_after_augmentation(self, tiny_recipe):
        data = build_data(tiny_recipe)
        _, targets = data.train[1]
        mask = targets["mask"][..., 0].astype(np.uint8)
        np.testing.assert_array_equal(targets["boundary"][..., 0], boundary_map(mask, width=1))

    def test_epoch_order_reproducible(self, tiny_recipe):
        a, b = build_data(tiny_recipe), build_data(tiny_recipe)
        a.train.set_epoch(3)
        b.train.set_epoch(2)
        b.train.on_epoch_end()  # epoch 2 -> 3, as during fit
        np.testing.assert_array_equal(a.train[1][0], b.train[1][0])
        a.train.set_epoch(4)
        assert not np.array_equal(a.train[1][0], b.train[1][0])

    def test_steps_per_epoch_wraps(self):
        arrays = {"image": np.zeros((5, 4, 4, 1), np.float32),
                  "mask": np.zeros((5, 4, 4), np.uint8)}
        batches = Batches(arrays, [HeadTarget("m", "mask", None, {}, 4)], batch_size=2,
                          shuffle=True, augment=None, seed=0, steps=7)
        assert len(batches) == 7
        assert all(batches[i][0].shape[0] == 2 for i in range(7))
