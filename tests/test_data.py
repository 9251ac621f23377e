"""Synthetic sources, derived targets, augmentation alignment and batching.

File sources are tested in test_data_files.py, sample sets and the input pipeline in
test_data_pipeline.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from multiseg.data import Batches, HeadTarget, build_data, pipeline
from multiseg.data.augment import OPTIONS, augment_batch, random_affine, warp
from multiseg.data.sources import SOURCES, generate, is_synthetic, source_targets
from multiseg.data.targets import (
    boundary_map,
    count_label,
    coverage_label,
    dominant_label,
    presence_labels,
)

SYNTHETIC = [kind for kind in SOURCES if is_synthetic(kind)]


# -- brute-force oracles: what scipy.ndimage computes in the code, written out with NumPy ----


def _window_extreme_oracle(mask, radius, reduce):
    """Max or min over a (2r+1) x (2r+1) window, edges replicated (scipy's mode "nearest")."""
    h, w = mask.shape[1:]
    out = np.pad(mask, ((0, 0), (radius, radius), (0, 0)), mode="edge")
    out = reduce.reduce([out[:, i : i + h] for i in range(2 * radius + 1)])
    out = np.pad(out, ((0, 0), (0, 0), (radius, radius)), mode="edge")
    return reduce.reduce([out[:, :, j : j + w] for j in range(2 * radius + 1)])


def _boundary_oracle(mask, width, mode):
    high = _window_extreme_oracle(mask, width, np.maximum)
    if mode == "touching":
        lifted = mask.astype(np.int64)
        lifted[mask == 0] = np.iinfo(np.int64).max
        low_fg = _window_extreme_oracle(lifted, width, np.minimum)
        return ((mask > 0) & ((high > mask) | (low_fg < mask))).astype(np.uint8)
    changes = high != _window_extreme_oracle(mask, width, np.minimum)
    if mode == "inner":
        changes &= mask > 0
    elif mode == "outer":
        changes &= mask == 0
    return changes.astype(np.uint8)


def _reflect(index, n):
    """Mirror integer indices into [0, n): ... 1 0 | 0 1 ... n-1 | n-1 n-2 ..."""
    index = np.mod(index, 2 * n)
    return np.where(index >= n, 2 * n - 1 - index, index)


def _warp_oracle(array, matrix, offset, order):
    """``array`` resampled at ``matrix @ (y, x) + offset``, points outside mirrored back in."""
    h, w = array.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    src_y = matrix[0, 0] * yy + matrix[0, 1] * xx + offset[0]
    src_x = matrix[1, 0] * yy + matrix[1, 1] * xx + offset[1]
    if order == 0:
        iy = _reflect(np.floor(src_y + 0.5).astype(np.int64), h)
        ix = _reflect(np.floor(src_x + 0.5).astype(np.int64), w)
        return array[iy, ix]
    y0, x0 = np.floor(src_y), np.floor(src_x)
    fy, fx = (src_y - y0).astype(np.float32), (src_x - x0).astype(np.float32)
    y0, x0 = y0.astype(np.int64), x0.astype(np.int64)
    ya, yb = _reflect(y0, h), _reflect(y0 + 1, h)
    xa, xb = _reflect(x0, w), _reflect(x0 + 1, w)
    if array.ndim == 3:
        fy, fx = fy[..., None], fx[..., None]
    top = array[ya, xa] * (1 - fx) + array[ya, xb] * fx
    bottom = array[yb, xa] * (1 - fx) + array[yb, xb] * fx
    return (top * (1 - fy) + bottom * fy).astype(array.dtype)


class TestSources:
    @pytest.mark.parametrize("kind", SYNTHETIC)
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

    @pytest.mark.parametrize("kind", SYNTHETIC)
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

    def test_width_by_hand(self):
        mask = np.zeros((1, 16, 16), np.uint8)
        mask[0, 4:12, 4:12] = 2
        widths = [int(boundary_map(mask, width=w).sum()) for w in (1, 2, 3)]
        # Pixels within w (Chebyshev) of the 8x8 square's edge, on either side: the square
        # grown by w minus the square shrunk by w, (8 + 2w)^2 - (8 - 2w)^2 = 64 w.
        assert widths == [64, 128, 192]

    def test_uniform_mask_has_no_boundary(self):
        assert boundary_map(np.full((2, 8, 8), 3, np.uint8), width=2).sum() == 0

    def test_between_touching_classes(self):
        mask = np.zeros((1, 4, 6), np.uint8)
        mask[0, :, :3], mask[0, :, 3:] = 1, 2
        inner = boundary_map(mask, width=1, mode="inner")[0]
        np.testing.assert_array_equal(inner[:, 2:4], np.ones((4, 2)))
        assert inner[:, [0, 1, 4, 5]].sum() == 0

    def test_bad_mode(self):
        with pytest.raises(ValueError, match="thick, inner, outer or touching"):
            boundary_map(np.zeros((1, 4, 4), np.uint8), mode="middle")

    @pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.int64])
    def test_matches_brute_force(self, dtype):
        rng = np.random.default_rng(0)
        for trial in range(60):
            h, w = (int(v) for v in rng.integers(1, 30, 2))
            mask = rng.integers(0, int(rng.integers(1, 6)) + 1, (2, h, w))
            if trial % 2:  # blocks: uniform regions, so interiors exist
                mask = np.repeat(np.repeat(mask[:, ::3, ::3], 3, 1), 3, 2)
            if dtype != np.uint8 and trial % 3 == 0:
                mask = mask * 1_000_003  # large instance ids
            mask = mask.astype(dtype)
            for width in (1, 2, 4):
                for mode in ("thick", "inner", "outer", "touching"):
                    np.testing.assert_array_equal(boundary_map(mask, width=width, mode=mode),
                                                  _boundary_oracle(mask, width, mode))


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


class TestInstanceBoundary:
    # Two touching objects (ids 4 and 9) and a separate one (id 2), hand-drawn:
    #   row 1..3: 4 4 9 9 . 2
    IDS = np.array([[[0, 0, 0, 0, 0, 0, 0],
                     [0, 4, 4, 9, 9, 0, 2],
                     [0, 4, 4, 9, 9, 0, 2],
                     [0, 4, 4, 9, 9, 0, 2],
                     [0, 0, 0, 0, 0, 0, 0]]])

    def test_touching_is_the_line_between_objects(self):
        expected = np.zeros((5, 7), np.uint8)
        expected[1:4, 2:4] = 1  # the columns where 4 meets 9; object 2 touches no object
        np.testing.assert_array_equal(boundary_map(self.IDS, mode="touching")[0], expected)

    def test_inner_separates_touching_objects(self):
        inner = boundary_map(self.IDS, mode="inner")[0]
        semantic = boundary_map((self.IDS > 0).astype(np.uint8), mode="inner")[0]
        # From the semantic mask the shared edge (columns 2, 3 of row 2) is inside one blob;
        # from instance ids it is a boundary.
        assert inner[2, 2] == 1 and inner[2, 3] == 1
        assert semantic[2, 2] == 0 and semantic[2, 3] == 0
        # Everything else agrees: every object pixel here is at an edge of its object.
        np.testing.assert_array_equal(inner, self.IDS[0] > 0)

    def test_touching_between_semantic_classes(self):
        mask = np.array([[[1, 1, 2, 2, 0, 0, 3]]])
        np.testing.assert_array_equal(boundary_map(mask, mode="touching")[0],
                                      [[0, 1, 1, 0, 0, 0, 0]])


class TestImageLabels:
    MASKS = np.zeros((3, 4, 4), np.uint8)
    MASKS[0, 0, :2] = 1  # 2 px of class 1
    MASKS[0, 3, :] = 3  # 4 px of class 3
    MASKS[1, :, :] = 2  # all class 2

    def test_presence_multi_hot(self):
        # Channels are classes 1, 2, 3; sample 2 is empty.
        np.testing.assert_array_equal(presence_labels(self.MASKS, classes=4),
                                      [[1, 0, 1], [0, 1, 0], [0, 0, 0]])

    def test_presence_binary_is_any_foreground(self):
        np.testing.assert_array_equal(presence_labels((self.MASKS > 0).astype(np.uint8),
                                                      classes=1), [1, 1, 0])

    def test_coverage(self):
        # Foreground fractions 6/16, 16/16, 0 with bins [0.25, 0.5]: classes 1, 2, 0.
        np.testing.assert_array_equal(coverage_label(self.MASKS, bins=[0.25, 0.5]), [1, 2, 0])

    @pytest.mark.parametrize("bins,expected", [([2], [1, 0, 0]), ([1, 3], [2, 1, 0]),
                                               ([4], [0, 0, 0])])
    def test_count(self, bins, expected):
        ids = np.zeros((3, 4, 4), np.int32)
        ids[0, 0, 0], ids[0, 1, 1], ids[0, 3, 3] = 5, 6, 7  # 3 objects
        ids[1, :2] = 8  # 1 object
        np.testing.assert_array_equal(count_label(ids, bins=bins), expected)


def _blocks(n=6, size=32, seed=0):
    """Masks of a few labelled rectangles: large uniform regions, so interiors exist."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        for label in (1, 2, 3):
            y, x = rng.integers(0, size - 10, size=2)
            masks[i, y : y + 10, x : x + 12] = label
    return masks


def _interior(mask, radius=2):
    """Pixels whose (2r+1)^2 neighbourhood holds a single label, away from the image border
    (beyond it the mirrored content is not visible to this check)."""
    inside = boundary_map(mask, width=radius) == 0
    inside[:, :radius], inside[:, -radius:] = False, False
    inside[:, :, :radius], inside[:, :, -radius:] = False, False
    return inside


def _centroids(mask, label):
    yy, xx = np.nonzero(mask == label)
    return np.array([yy.mean(), xx.mean()]) if yy.size else None


# One geometric transform at a time, then all of them together.
GEOMETRIC = [{"flip": True}, {"rotate90": True}, {"rotate": 30.0}, {"scale": 0.2},
             {"shift": 0.2}, {"crop": 0.4},
             {"flip": True, "rotate90": True, "rotate": 15.0, "scale": 0.15, "shift": 0.1,
              "crop": 0.2}]


class TestAugment:
    @pytest.mark.parametrize("options", GEOMETRIC, ids=lambda o: "+".join(o))
    def test_geometric_keeps_image_mask_and_instances_aligned(self, options):
        masks = _blocks()
        ids = (masks * 10 + 1) * (masks > 0)  # instance ids that encode the class
        # The image encodes its own mask: channel k is 1 where the mask is k.
        image = (masks[..., None] == np.arange(4)).astype(np.float32)
        rng = np.random.default_rng(0)
        out_image, out = augment_batch(rng, image, {"mask": masks, "instances": ids},
                                       **options)
        mask = out["mask"]
        assert not np.array_equal(mask, masks)  # something did change
        # Masks are resampled by nearest neighbour: labels stay labels, ids follow the mask.
        assert set(np.unique(mask)) <= {0, 1, 2, 3}
        np.testing.assert_array_equal(out["instances"], (mask * 10 + 1) * (mask > 0))
        # Inside uniform regions the (bilinear) image equals its mask exactly.
        inside = _interior(mask)
        expected = (mask[..., None] == np.arange(4)).astype(np.float32)
        np.testing.assert_allclose(out_image[inside], expected[inside], atol=1e-5)
        # Near edges interpolation blends, but the strongest channel still gives the mask
        # almost everywhere (a shift by one pixel would break about 13% of these pixels).
        agree = np.mean(np.argmax(out_image, axis=-1) == mask)
        assert agree > 0.97, agree
        # And every region sits where its mask says: centroids agree to a fraction of a pixel.
        for n in range(len(masks)):
            for label in (1, 2, 3):
                if (mask[n] == label).sum() > 20:
                    a = _centroids((out_image[n, ..., label] > 0.5).astype(np.uint8), 1)
                    b = _centroids(mask[n], label)
                    assert np.abs(a - b).max() < 0.5, (n, label, a, b)

    @pytest.mark.parametrize("options", GEOMETRIC[:2], ids=lambda o: "+".join(o))
    def test_flips_and_turns_are_exact(self, options):
        masks = _blocks()
        image = masks[..., None].astype(np.float32)
        out_image, out = augment_batch(np.random.default_rng(3), image, {"m": masks}, **options)
        np.testing.assert_array_equal(out_image[..., 0], out["m"])

    @pytest.mark.parametrize("channels", [1, 3, 5])
    @pytest.mark.parametrize("brightness", [0.0, 0.2], ids=["alone", "then-brightness"])
    def test_flips_and_turns_match_numpy_sample_by_sample(self, channels, brightness):
        # Whole pixels are moved, not floats: the oracle draws the same numbers in the same
        # order and moves the floats themselves with NumPy's flips and turns.
        rng = np.random.default_rng(0)
        image = rng.random((48, 6, 6, channels), dtype=np.float32)
        masks = rng.integers(0, 5, (48, 6, 6)).astype(np.uint8)
        out_image, out = augment_batch(np.random.default_rng(4), image, {"m": masks},
                                       flip=True, rotate90=True, brightness=brightness)
        assert out_image.dtype == np.float32 and out_image.flags.c_contiguous
        draws = np.random.default_rng(4)
        seen, results = set(), set()
        corner = np.arange(4).reshape(2, 2)  # tells the 8 flips and turns of a square apart
        for x, m, got_x, got_m in zip(image, masks, out_image, out["m"], strict=True):
            rows, cols = draws.random() < 0.5, draws.random() < 0.5
            turns = int(draws.integers(0, 4))
            x, m = (x[::-1], m[::-1]) if rows else (x, m)
            x, m = (x[:, ::-1], m[:, ::-1]) if cols else (x, m)
            x, m = np.rot90(x, turns), np.rot90(m, turns)
            if brightness:
                x = x + draws.uniform(-brightness, brightness)
            np.testing.assert_array_equal(got_x, x)
            np.testing.assert_array_equal(got_m, m)
            seen.add((rows, cols, turns))
            moved = corner[::-1] if rows else corner
            moved = moved[:, ::-1] if cols else moved
            results.add(np.rot90(moved, turns).tobytes())
        assert len(seen) >= 12  # most of the 16 draws
        assert len(results) == 8  # every distinct flip and turn of a square was checked

    def test_warp_nearest_and_bilinear_agree_on_identity(self):
        mask = _blocks(1)[0]
        matrix, offset = np.eye(2), np.zeros(2)
        np.testing.assert_array_equal(warp(mask, matrix, offset, order=0), mask)
        np.testing.assert_allclose(warp(mask.astype(np.float32), matrix, offset, order=1), mask)

    def test_warp_matches_brute_force(self):
        # Nearest neighbour exactly; bilinear to 1e-6 (scipy interpolates in float64, the
        # oracle in float32, on images in [0, 1]).
        rng = np.random.default_rng(0)
        for trial in range(60):
            h, w = (int(v) for v in rng.integers(2, 40, 2))
            seeded = np.random.default_rng(trial)
            matrix, offset = random_affine(seeded, (h, w), rotate=180.0, scale=0.9, shift=0.8,
                                           crop=0.5)
            if trial % 4 == 0:
                matrix = 3 * matrix  # reaches far outside: several reflections
            for mask in (rng.integers(0, 7, (h, w)).astype(np.uint8),
                         rng.integers(0, 10**6, (h, w)).astype(np.int32)):
                np.testing.assert_array_equal(warp(mask, matrix, offset, order=0),
                                              _warp_oracle(mask, matrix, offset, 0))
            for image in (rng.random((h, w, 3)).astype(np.float32),
                          rng.random((h, w)).astype(np.float32)):
                got = warp(image, matrix, offset, order=1)
                assert got.dtype == image.dtype and got.shape == image.shape
                np.testing.assert_allclose(got, _warp_oracle(image, matrix, offset, 1),
                                           rtol=0, atol=1e-6)

    def test_affine_is_about_the_centre(self):
        # A rotation by 0 with zoom 1 and no shift or crop maps every pixel to itself.
        matrix, offset = random_affine(np.random.default_rng(0), (9, 9), rotate=0.0)
        np.testing.assert_allclose(matrix, np.eye(2))
        np.testing.assert_allclose(offset, 0.0, atol=1e-12)

    @pytest.mark.parametrize("options", [{"brightness": 0.3}, {"contrast": 0.5},
                                         {"gamma": 0.5}, {"noise": 0.1}],
                             ids=lambda o: next(iter(o)))
    def test_photometric_leaves_masks_alone(self, options):
        masks = _blocks()
        image = np.random.default_rng(1).random((6, 32, 32, 1)).astype(np.float32)
        out_image, out = augment_batch(np.random.default_rng(2), image, {"m": masks}, **options)
        np.testing.assert_array_equal(out["m"], masks)
        assert not np.allclose(out_image, image)
        assert out_image.dtype == np.float32

    def test_seeded(self):
        masks = _blocks()
        image = masks[..., None].astype(np.float32)
        everything = {k: (True if isinstance(v, bool) else 0.2) for k, v in OPTIONS.items()}
        a = augment_batch(np.random.default_rng(5), image, {"m": masks}, **everything)
        b = augment_batch(np.random.default_rng(5), image, {"m": masks}, **everything)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1]["m"], b[1]["m"])

    def test_inputs_not_modified(self):
        masks = _blocks()
        image = masks[..., None].astype(np.float32)
        before = image.copy(), masks.copy()
        augment_batch(np.random.default_rng(0), image, {"m": masks}, flip=True, rotate=10.0,
                      noise=0.1)
        np.testing.assert_array_equal(image, before[0])
        np.testing.assert_array_equal(masks, before[1])

    def test_bad_options(self):
        image = np.zeros((1, 4, 6, 1), np.float32)
        with pytest.raises(ValueError, match="unknown augmentation option"):
            augment_batch(np.random.default_rng(0), image, {}, flop=True)
        with pytest.raises(ValueError, match="rotate90 needs square images"):
            augment_batch(np.random.default_rng(0), image, {}, rotate90=True)

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

    @pytest.mark.parametrize(("cores", "threads"), [(1, 2), (2, 2), (5, 2), (6, 3),
                                                     (16, 8), (96, 8)])
    def test_batch_threads_follow_the_cores(self, monkeypatch, cores, threads):
        monkeypatch.setattr(pipeline.os, "sched_getaffinity", lambda pid: set(range(cores)),
                            raising=False)
        assert pipeline.default_workers() == threads
        batches = Batches({"image": np.zeros((4, 8, 8, 1), np.float32)}, [], batch_size=2,
                          shuffle=False, augment=None, seed=0)
        assert batches.workers == threads
        assert Batches({"image": np.zeros((4, 8, 8, 1), np.float32)}, [], batch_size=2,
                       shuffle=False, augment=None, seed=0, workers=3).workers == 3

    def test_batch_threads_without_affinity(self, monkeypatch):
        monkeypatch.delattr(pipeline.os, "sched_getaffinity", raising=False)
        monkeypatch.setattr(pipeline.os, "cpu_count", lambda: 12)
        assert pipeline.default_workers() == 6

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
