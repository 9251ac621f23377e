"""Tests of multiseg.metrics: hand-computed counts, streaming, NumPy references, properties."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import reference_np as ref  # tests/ is on sys.path (pytest rootdir-less conftest layout)
from hypothesis import given, settings
from hypothesis import strategies as st

from multiseg.losses import Dice, build
from multiseg.metrics import (
    METRICS,
    Accuracy,
    BoundaryF1,
    DiceScore,
    IoUScore,
    LossTerm,
    Precision,
    Recall,
    TopKAccuracy,
    build_metric,
    metric_options,
)
from multiseg.metrics.base import argmax_one_hot
from multiseg.models.build import build_model, compile_model, head_losses, head_metrics

TOL = 1e-6


def f32(x) -> np.ndarray:
    return np.asarray(x, dtype="float32")


def result(metric: keras.metrics.Metric, *batches, sample_weight=None) -> float:
    for y_true, y_pred in batches:
        metric.update_state(y_true, y_pred, sample_weight)
    return float(keras.ops.convert_to_numpy(metric.result()))


def random_batches(seed: int, classes: int, count: int = 3, shape=(2, 6, 5)):
    """Batches of (labels as floats or binary masks, logits)."""
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(count):
        z = f32(rng.normal(size=shape + (classes,)))
        if classes == 1:
            y = (rng.random(shape + (1,)) > 0.6).astype("float32")
        else:
            y = rng.integers(0, classes, size=shape).astype("float32")
        batches.append((y, z))
    return batches


# Binary example, shape (1, 6, 1):
#   target         [1,   1,    0,   0,    1,   0]
#   logits         [2,  -1,  0.5,  -3,  0.1,   0]  -> sigmoid > 0.5 (z > 0): [1, 0, 1, 0, 1, 0]
#   TP = 2 (pixels 0, 4), FP = 1 (pixel 2), FN = 1 (pixel 1), TN = 2
YB = f32([[[1], [1], [0], [0], [1], [0]]])
ZB = f32([[[2], [-1], [0.5], [-3], [0.1], [0]]])
#   probabilities  [0.9, 0.4, 0.6, 0.1, 0.5, 0.2] -> > 0.5: [1, 0, 1, 0, 0, 0]
#   TP = 1, FP = 1, FN = 2 (0.5 is not above the threshold)
PB = f32([[[0.9], [0.4], [0.6], [0.1], [0.5], [0.2]]])

# Multi-class example, C = 3, shape (1, 6, 3):
#   labels  [0, 1, 2, 2, 1, 0]
#   argmax  [0, 2, 2, 1, 1, 0]
#   class 0: TP 2, FP 0, FN 0;  class 1: TP 1, FP 1, FN 1;  class 2: TP 1, FP 1, FN 1
YM = f32([[0, 1, 2, 2, 1, 0]])
ZM = f32(np.eye(3)[[0, 2, 2, 1, 1, 0]][None] * 3.0 - 1.0)

# Thresholds are probabilities, for logits too. Shape (1, 4, 1):
#   target         [0,    1,    0,   1]
#   probabilities  [0.69, 0.71, 0.2, 0.4]
#   threshold 0.7: [0, 1, 0, 0] -> TP 1, FP 0, FN 1: Dice 2/3, accuracy 3/4
#   threshold 0.3: [1, 1, 0, 1] -> TP 2, FP 1, FN 0: Dice 4/5, accuracy 3/4
#   default 0.5:   [1, 1, 0, 0] -> TP 1, FP 1, FN 1: Dice 1/2, accuracy 2/4
# (Cutting the logits [0.80, 0.90, -1.39, -0.41] at 0.7 would make pixel 0 positive.)
YT = f32([[[0], [1], [0], [1]]])
PT = f32([[[0.69], [0.71], [0.2], [0.4]]])
ZT = f32(np.log(PT / (1 - PT)))


class TestArgmaxOneHot:
    """The hard decision of a softmax output: one_hot(argmax) written as a comparison chain up
    to 8 channels, NumPy's argmax beyond."""

    @pytest.mark.parametrize("channels", [2, 3, 4, 8, 9, 12])
    def test_equals_numpy_argmax_with_ties(self, channels):
        rng = np.random.default_rng(channels)
        # Values from a few levels: many pixels have ties, where the first channel wins.
        x = rng.integers(0, 3, size=(3, 7, 5, channels)).astype("float32")
        got = keras.ops.convert_to_numpy(argmax_one_hot(keras.ops.convert_to_tensor(x)))
        assert np.array_equal(got, np.eye(channels, dtype="float32")[np.argmax(x, axis=-1)])

    def test_labels_and_one_hot_targets_give_the_same_counts(self):
        rng = np.random.default_rng(3)
        labels = rng.integers(0, 4, size=(2, 6, 5))
        logits = f32(rng.normal(size=(2, 6, 5, 4)))
        soft = np.eye(4)[labels] * 0.9 + 0.025  # label-smoothed one-hot: argmax is the label
        from_labels, from_soft = DiceScore(4), DiceScore(4)
        from_labels.update_state(f32(labels), logits)
        from_soft.update_state(f32(soft), logits)
        for name in ("tp", "fp", "fn"):
            assert np.array_equal(keras.ops.convert_to_numpy(getattr(from_labels, name)),
                                  keras.ops.convert_to_numpy(getattr(from_soft, name)))


class TestDiceScore:
    CASES = [
        # (metric, y, y_pred, expected, where it comes from)
        (lambda: DiceScore(1, from_logits=True), YB, ZB, 4 / 6, "2TP / (2TP + FP + FN)"),
        (lambda: DiceScore(1), YB, PB, 2 / 5, "probabilities, threshold 0.5: 2 / (2 + 1 + 2)"),
        (lambda: DiceScore(1, threshold=0.45), YB, PB, 4 / 6, "0.5 > 0.45 counts now"),
        (lambda: DiceScore(3, from_logits=True), YM, ZM, 0.5, "classes 1, 2: 2 / 4 each"),
        (lambda: DiceScore(3, from_logits=True, include_background=True), YM, ZM,
         (1 + 0.5 + 0.5) / 3, "class 0 is perfect"),
        (lambda: DiceScore(3, from_logits=True, class_id=0), YM, ZM, 1.0, "class 0 only"),
        (lambda: DiceScore(3, from_logits=True, class_id=2), YM, ZM, 0.5, "class 2 only"),
    ]

    @pytest.mark.parametrize("make, y, p, expected, why", CASES)
    def test_hand_computed(self, make, y, p, expected, why):
        assert result(make(), (y, p)) == pytest.approx(expected, abs=TOL), why

    @pytest.mark.parametrize("logits", [True, False])
    @pytest.mark.parametrize("threshold, expected", [(0.7, 2 / 3), (0.3, 4 / 5),
                                                     (None, 1 / 2)])
    def test_threshold_is_a_probability(self, logits, threshold, expected):
        metric = DiceScore(1, from_logits=logits, threshold=threshold)
        assert result(metric, (YT, ZT if logits else PT)) == pytest.approx(expected, abs=TOL)

    def test_threshold_on_multilabel_logits(self):
        # two channels, each the example above: both score 2/3 at threshold 0.7
        y, z = np.concatenate([YT, YT], -1), np.concatenate([ZT, ZT], -1)
        metric = DiceScore(2, from_logits=True, threshold=0.7, multilabel=True)
        assert result(metric, (y, z)) == pytest.approx(2 / 3, abs=TOL)

    def test_threshold_near_one_on_large_logits(self):
        # sigmoid(20) rounds to 1.0 in float32; the cut is made on the logit, log(t / (1 - t))
        # = 18.4 for t = 1 - 1e-8, so 20 is positive and 18 is not.
        y, z = f32([[[1], [0]]]), f32([[[20.0], [18.0]]])
        metric = DiceScore(1, from_logits=True, threshold=1 - 1e-8)
        assert result(metric, (y, z)) == pytest.approx(1.0, abs=TOL)

    def test_multilabel_channels_all_count(self):
        # channel 0 of a multilabel head is a label like the others: Dice 1 and 0 -> 0.5
        y = f32([[[1, 1], [0, 1]]])
        z = f32([[[3, -3], [-3, -3]]])  # channel 0: TP 1; channel 1: FN 2
        assert result(DiceScore(2, from_logits=True, multilabel=True), (y, z)) == 0.5

    def test_streams_counts_not_batch_means(self):
        # batch 1: TP 4; batch 2: one missed pixel, FN 1.
        # streamed: 8 / (8 + 0 + 1) = 8/9; the mean of batch Dice values would be (1 + 0) / 2
        one = (f32([[[1], [1], [1], [1]]]), f32([[[1], [1], [1], [1]]]))
        two = (f32([[[1], [0], [0], [0]]]), f32([[[0], [0], [0], [0]]]))
        assert result(DiceScore(1), one, two) == pytest.approx(8 / 9, abs=TOL)

    def test_empty_masks_score_one(self):
        empty = np.zeros((2, 3, 3, 1), "float32")
        assert result(DiceScore(1), (empty, empty)) == 1.0
        # a class never present nor predicted counts as 1 in the mean
        labels = np.zeros((1, 4), "float32")
        probabilities = f32(np.eye(3)[[0, 0, 0, 0]][None])
        assert result(DiceScore(3), (labels, probabilities)) == 1.0

    def test_onehot_and_label_encodings_agree(self):
        # the hand-computed 0.5 of CASES, whatever the encoding of the labels
        onehot = f32(np.eye(3)[YM.astype(int)])
        for y in (onehot, YM[..., None], YM):
            assert result(DiceScore(3, from_logits=True), (y, ZM)) == pytest.approx(0.5,
                                                                                   abs=TOL)

    def test_sample_weight(self):
        # two samples: sample 0 is the binary example (TP 2, FP 1, FN 1), sample 1 perfect
        # with 2 foreground pixels (TP 2); weights [0, 1] keep sample 1 only -> 1.0
        y = np.concatenate([YB, f32([[[1], [1], [0], [0], [0], [0]]])])
        z = np.concatenate([ZB, f32([[[1], [1], [-1], [-1], [-1], [-1]]])])
        assert result(DiceScore(1, from_logits=True), (y, z),
                      sample_weight=f32([0, 1])) == pytest.approx(1.0, abs=TOL)
        # weights [1, 1]: TP 4, FP 1, FN 1 -> 8 / 10
        assert result(DiceScore(1, from_logits=True), (y, z),
                      sample_weight=f32([1, 1])) == pytest.approx(0.8, abs=TOL)

    @pytest.mark.parametrize("classes", [1, 4])
    @pytest.mark.parametrize("include_background", [True, False])
    def test_matches_reference(self, classes, include_background):
        batches = random_batches(classes, classes)
        metric = DiceScore(classes, from_logits=True, include_background=include_background)
        assert result(metric, *batches) == pytest.approx(ref.count_metric(
            "dice", batches, from_logits=True, include_background=include_background),
            abs=1e-5)

    def test_reset(self):
        metric = DiceScore(1, from_logits=True)
        result(metric, (YB, ZB))
        metric.reset_state()
        # -ZB > 0 at pixels 1 and 3: TP 1, FP 1, FN 2 -> 2 / 5 (the first batch is gone)
        assert result(metric, (YB, -ZB)) == pytest.approx(2 / 5, abs=TOL)

    ERRORS = [
        (lambda: DiceScore(0), r"`classes`=0; expected an integer >= 1"),
        (lambda: DiceScore(3, class_id=3), r"`class_id`=3; expected an integer >= 0 and < 3"),
        (lambda: DiceScore(3, threshold="half"), r"`threshold`='half'; expected a number"),
        (lambda: DiceScore(1, threshold=1.5),
         r"`threshold`=1.5; expected a probability in \(0, 1\) \(a logit goes through its"
         r" sigmoid"),
        (lambda: DiceScore(1, threshold=0), r"`threshold`=0; expected a probability"),
        (lambda: Accuracy(1, threshold=-0.2), r"`threshold`=-0.2; expected a probability"),
        (lambda: DiceScore(3, include_background=None), r"`include_background`=None"),
    ]

    @pytest.mark.parametrize("make, match", ERRORS)
    def test_invalid_arguments(self, make, match):
        with pytest.raises(ValueError, match=match):
            make()

    def test_channel_count_must_match_classes(self):
        with pytest.raises(ValueError, match=r"built for classes=4 but y_pred has 3 channels"):
            DiceScore(4).update_state(YM, ZM)

    def test_onehot_with_wrong_channels(self):
        with pytest.raises(ValueError, match=r"looks one-hot with 4 channels"):
            DiceScore(3).update_state(np.zeros((1, 6, 4), "float32"), ZM)


class TestIoUScore:
    CASES = [
        (lambda: IoUScore(1, from_logits=True), YB, ZB, 2 / 4, "TP / (TP + FP + FN)"),
        (lambda: IoUScore(3, from_logits=True), YM, ZM, 1 / 3, "classes 1, 2: 1 / 3 each"),
        (lambda: IoUScore(3, from_logits=True, include_background=True), YM, ZM,
         (1 + 1 / 3 + 1 / 3) / 3, "with class 0"),
    ]

    @pytest.mark.parametrize("make, y, p, expected, why", CASES)
    def test_hand_computed(self, make, y, p, expected, why):
        assert result(make(), (y, p)) == pytest.approx(expected, abs=TOL), why

    @pytest.mark.parametrize("classes", [1, 3])
    def test_matches_reference(self, classes):
        batches = random_batches(10 + classes, classes)
        assert result(IoUScore(classes, from_logits=True), *batches) == pytest.approx(
            ref.count_metric("iou", batches, from_logits=True), abs=1e-5)

    def test_empty(self):
        empty = np.zeros((1, 2, 2, 1), "float32")
        assert result(IoUScore(1), (empty, empty)) == 1.0


class TestPrecision:
    def test_hand_computed(self):
        assert result(Precision(1, from_logits=True), (YB, ZB)) == pytest.approx(2 / 3, abs=TOL)
        # classes 1 and 2: TP 1, FP 1 each
        assert result(Precision(3, from_logits=True), (YM, ZM)) == pytest.approx(0.5, abs=TOL)

    def test_nothing_predicted(self):
        # target present, nothing predicted: 0 (not 1); nothing anywhere: 1
        y, none = f32([[[1], [0]]]), f32([[[0], [0]]])
        assert result(Precision(1), (y, none)) == 0.0
        assert result(Precision(1), (none, none)) == 1.0

    def test_matches_reference(self):
        batches = random_batches(21, 4)
        assert result(Precision(4, from_logits=True), *batches) == pytest.approx(
            ref.count_metric("precision", batches, from_logits=True), abs=1e-5)


class TestRecall:
    def test_hand_computed(self):
        assert result(Recall(1, from_logits=True), (YB, ZB)) == pytest.approx(2 / 3, abs=TOL)
        assert result(Recall(1), (YB, PB)) == pytest.approx(1 / 3, abs=TOL)

    def test_predicted_but_absent(self):
        y, p = f32([[[0], [0]]]), f32([[[1], [0]]])
        assert result(Recall(1), (y, p)) == 0.0

    def test_matches_reference(self):
        batches = random_batches(22, 4)
        metric = Recall(4, from_logits=True, include_background=True)
        assert result(metric, *batches) == pytest.approx(ref.count_metric(
            "recall", batches, from_logits=True, include_background=True), abs=1e-5)


class TestAccuracy:
    def test_hand_computed(self):
        # binary: pixels 0, 3, 4, 5 right; multi-class: pixels 0, 2, 4, 5 right
        assert result(Accuracy(1, from_logits=True), (YB, ZB)) == pytest.approx(4 / 6, abs=TOL)
        assert result(Accuracy(3, from_logits=True), (YM, ZM)) == pytest.approx(4 / 6, abs=TOL)

    @pytest.mark.parametrize("labels", [f32([0, 2, 1]), f32([[0], [2], [1]]),
                                        f32(np.eye(3)[[0, 2, 1]])])
    def test_image_level(self, labels):
        # argmax of the logits: 0, 1, 1 -> samples 0 and 2 right
        z = f32([[3, 1, 0], [0, 2, 1], [0, 5, 1]])
        assert result(Accuracy(3, from_logits=True), (labels, z)) == pytest.approx(2 / 3,
                                                                                  abs=TOL)

    @pytest.mark.parametrize("logits", [True, False])
    @pytest.mark.parametrize("threshold, expected", [(0.7, 3 / 4), (0.3, 3 / 4),
                                                     (None, 2 / 4)])
    def test_threshold_is_a_probability(self, logits, threshold, expected):
        # YT/PT: right at pixels 0, 1, 2 (threshold 0.7); 1, 2, 3 (0.3); 1, 2 (0.5)
        metric = Accuracy(1, from_logits=logits, threshold=threshold)
        assert result(metric, (YT, ZT if logits else PT)) == pytest.approx(expected, abs=TOL)

    def test_binary_image_level(self):
        # (N, 1) logits with labels (N,): > 0 gives 1, 0, 1 vs labels 1, 1, 1
        z = f32([[0.3], [-0.2], [4.0]])
        assert result(Accuracy(1, from_logits=True), (f32([1, 1, 1]), z)) == pytest.approx(
            2 / 3, abs=TOL)

    def test_streams_over_batches(self):
        # batch 1: 4 of 6 right; batch 2: 1 pixel, right -> 5 / 7 (not (4/6 + 1) / 2)
        two = (f32([[[1]]]), f32([[[5.0]]]))
        assert result(Accuracy(1, from_logits=True), (YB, ZB), two) == pytest.approx(5 / 7,
                                                                                    abs=TOL)

    @pytest.mark.parametrize("classes", [1, 4])
    def test_matches_reference(self, classes):
        batches = random_batches(30 + classes, classes)
        assert result(Accuracy(classes, from_logits=True), *batches) == pytest.approx(
            ref.accuracy(batches, from_logits=True), abs=1e-5)


class TestTopKAccuracy:
    # rows: label 2 with one higher score; label 3 with three higher; a four-way tie
    Z = f32([[0.1, 0.5, 0.3, 0.2], [0.4, 0.3, 0.2, 0.1], [0.25, 0.25, 0.25, 0.25]])
    Y = f32([2, 3, 0])

    @pytest.mark.parametrize("k, expected", [(1, 1 / 3), (2, 2 / 3), (3, 2 / 3)])
    def test_hand_computed(self, k, expected):
        # correct when fewer than k classes score strictly higher (ties count as correct)
        assert result(TopKAccuracy(4, k=k), (self.Y, self.Z)) == pytest.approx(expected,
                                                                               abs=TOL)

    def test_matches_reference(self):
        batches = random_batches(40, 5)
        assert result(TopKAccuracy(5, k=2), *batches) == pytest.approx(
            ref.top_k_accuracy(batches, k=2), abs=1e-5)

    @pytest.mark.parametrize("classes, k, match", [
        (3, 5, r"`k`=5; expected an integer in \[1, 3\) for classes=3"),
        (4, 0, r"`k`=0"),
        (1, 1, r"`classes`=1; expected an integer >= 2"),
    ])
    def test_invalid(self, classes, k, match):
        with pytest.raises(ValueError, match=match):
            TopKAccuracy(classes, k=k)


def square(rows: slice, cols: slice, size: int = 6) -> np.ndarray:
    mask = np.zeros((1, size, size, 1), "float32")
    mask[0, rows, cols, 0] = 1
    return mask


class TestBoundaryF1:
    # Target: a 4 x 4 square at rows 1-4, cols 1-4; its boundary is a ring of 12 pixels.
    # Prediction: the same square shifted right by one (cols 2-5), touching the image edge.
    # The image edge is not a boundary, so the predicted boundary is the top and bottom rows
    # (4 + 4) and the left column (rows 2, 3): 10 pixels.
    G = square(slice(1, 5), slice(1, 5))
    P = square(slice(1, 5), slice(2, 6))

    CASES = [
        # tolerance 0: shared pixels: top and bottom rows at cols 2-4 = 6
        # P = 6 / 10, R = 6 / 12, F = 2 P R / (P + R)
        (0, 2 * 0.6 * 0.5 / 1.1),
        # tolerance 1: every boundary pixel has a partner within one pixel: P = R = 1
        (1, 1.0),
    ]

    @pytest.mark.parametrize("tolerance, expected", CASES)
    def test_hand_computed(self, tolerance, expected):
        metric = BoundaryF1(1, tolerance=tolerance)
        assert result(metric, (self.G, self.P)) == pytest.approx(expected, abs=TOL)

    def test_identical_and_empty(self):
        assert result(BoundaryF1(1, tolerance=0), (self.G, self.G)) == 1.0
        empty = np.zeros_like(self.G)
        assert result(BoundaryF1(1), (empty, empty)) == 1.0
        assert result(BoundaryF1(1), (self.G, empty)) == 0.0

    @pytest.mark.parametrize("classes", [1, 3])
    @pytest.mark.parametrize("tolerance", [0, 1, 2])
    def test_matches_reference(self, classes, tolerance):
        batches = random_batches(50 + classes, classes, count=2, shape=(2, 7, 6))
        metric = BoundaryF1(classes, from_logits=True, tolerance=tolerance)
        assert result(metric, *batches) == pytest.approx(ref.boundary_f1(
            batches, from_logits=True, tolerance=tolerance), abs=1e-5)

    @pytest.mark.parametrize("classes", [1, 3])
    @pytest.mark.parametrize("tolerance", [0, 2])
    def test_outlines_match_reference(self, classes, tolerance):
        batches = random_batches(60 + classes, classes, count=2, shape=(2, 7, 6))
        metric = BoundaryF1(classes, from_logits=True, tolerance=tolerance, outlines=True)
        assert result(metric, *batches) == pytest.approx(ref.boundary_f1(
            batches, from_logits=True, tolerance=tolerance, outlines=True), abs=1e-5)

    def test_needs_spatial_axes(self):
        with pytest.raises(ValueError, match=r"needs 1 to 3 spatial axes"):
            BoundaryF1(3).update_state(f32([0, 1]), f32([[1, 0, 0], [0, 1, 0]]))

    def test_invalid_tolerance(self):
        with pytest.raises(ValueError, match=r"`tolerance`=-1; expected an integer >= 0"):
            BoundaryF1(1, tolerance=-1)

    def test_invalid_outlines(self):
        with pytest.raises(ValueError, match=r"`outlines`='yes'; expected True or False"):
            BoundaryF1(1, outlines="yes")


def outline_case():
    """A filled 12 x 12 square (rows and cols 2-13 of a 16 x 16 image) and its 1-pixel
    outline, the target of a boundary head: 12 * 4 - 4 = 44 pixels."""
    filled = square(slice(2, 14), slice(2, 14), size=16)
    outline = filled.copy()
    outline[0, 3:13, 3:13, 0] = 0
    return filled, outline


class TestBoundaryF1OnOutlines:
    """A boundary head's target is an outline map: boundary_f1 compares the maps themselves.

    Filled square vs its outline, tolerance 2: a predicted pixel matches when within
    Chebyshev distance 2 of the outline, i.e. in the square's 3 outer rings: 144 - 6 * 6 = 108
    of 144 -> P = 0.75; every outline pixel is predicted -> R = 1; F = 1.5 / 1.75 = 6/7.
    """

    def test_filled_blob_against_outline(self):
        filled, outline = outline_case()
        metric = BoundaryF1(1, outlines=True)
        assert result(metric, (outline, filled)) == pytest.approx(6 / 7, abs=TOL)

    def test_outline_against_outline(self):
        _, outline = outline_case()
        assert result(BoundaryF1(1, outlines=True), (outline, outline)) == 1.0

    def test_without_outlines_a_blob_matches_its_outline(self):
        # why the head must say so: the inner boundary of the filled square is the outline
        filled, outline = outline_case()
        assert result(BoundaryF1(1), (outline, filled)) == 1.0

    @staticmethod
    def built(tiny_raw):
        from multiseg.recipe import from_dict

        tiny_raw["heads"]["boundary"]["metrics"] = ["dice", {"name": "boundary_f1"}]
        tiny_raw["heads"]["mask"]["metrics"] = ["dice", "boundary_f1"]
        recipe = from_dict(tiny_raw)
        built = head_metrics(recipe, head_losses(recipe))
        return {head: next(m for m in metrics if isinstance(m, BoundaryF1))
                for head, metrics in built.items() if head in ("boundary", "mask")}

    def test_boundary_head_sets_outlines(self, tiny_raw):
        metrics = self.built(tiny_raw)
        assert metrics["boundary"].outlines is True
        assert metrics["mask"].outlines is False  # a segmentation head's target is regions

    def test_boundary_head_scores_a_blob_below_one(self, tiny_raw):
        # the head outputs logits: +-5 from the hard maps
        metric = self.built(tiny_raw)["boundary"]
        filled, outline = outline_case()
        assert result(metric, (outline, 10 * filled - 5)) == pytest.approx(6 / 7, abs=TOL)
        metric.reset_state()
        assert result(metric, (outline, 10 * outline - 5)) == 1.0


class TestLossTerm:
    def test_running_mean_of_batch_losses(self):
        # batch 1: Dice loss of YB vs > 0 predictions as probabilities: 1 - 4/6;
        # batch 2: perfect -> 0. The term logs the mean of the two batch losses.
        hard = (ZB > 0).astype("float32")
        term = LossTerm(Dice(smooth=0.0), name="dice")
        assert result(term, (YB, hard), (YB, YB)) == pytest.approx((1 - 4 / 6) / 2, abs=TOL)
        assert term.name == "dice"

    def test_follows_combined_term(self):
        # The term logs the crossentropy itself, without the 0.5 weight of the head's sum:
        # Keras's own sparse categorical crossentropy on the same logits is the oracle
        # (1e-6: both float32).
        loss = build(["dice", {"name": "crossentropy", "weight": 0.5}], from_logits=True)
        _, _, ce = loss.terms[1]
        term = LossTerm(ce, name="crossentropy")
        oracle = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(YM, ZM)
        assert result(term, (YM, ZM)) == pytest.approx(float(oracle), abs=TOL)
        # by hand: logits 2 on one class and -1 on two: -log(e^2 / (e^2 + 2 e^-1)) per pixel;
        # pixels 1 and 3 are wrong: -log(e^-1 / (e^2 + 2 e^-1))
        right = math.log(1 + 2 * math.exp(-3))
        wrong = 3 + math.log(1 + 2 * math.exp(-3))
        assert result(term) == pytest.approx((4 * right + 2 * wrong) / 6, abs=TOL)

    def test_round_trip(self):
        term = LossTerm(Dice(from_logits=True, smooth=1.0), name="mask_dice")
        again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(term))
        assert again.name == "mask_dice" and again.loss.get_config() == term.loss.get_config()

    def test_invalid(self):
        with pytest.raises(ValueError, match=r"`loss`='dice'; expected a keras.losses.Loss"):
            LossTerm("dice", name="dice")


class TestLossTermsComputedOnce:
    """A head with several loss terms logs each term from the loss's own computation."""

    @staticmethod
    def step_case(tiny_recipe):
        model = build_model(tiny_recipe, channels=3)
        compile_model(model, tiny_recipe)
        rng = np.random.default_rng(0)
        x = f32(rng.normal(size=(2, 16, 16, 3)))
        y = {"mask": rng.integers(0, 4, size=(2, 16, 16)).astype("float32"),
             "boundary": (rng.random((2, 16, 16, 1)) > 0.8).astype("float32"),
             "shape": rng.integers(0, 3, size=(2,)).astype("float32")}
        return model, x, y

    def test_each_term_runs_once_per_step_and_logs_its_value(self, tiny_recipe):
        model, x, y = self.step_case(tiny_recipe)
        combined = model.loss["mask"]
        assert [label for label, _, _ in combined.terms] == ["dice", "crossentropy"]
        calls = {}
        for label, _, term in combined.terms:
            calls[label] = 0

            def counted(y_true, y_pred, _call=term.call, _label=label):
                calls[_label] += 1
                return _call(y_true, y_pred)

            term.call = counted
        # A first step builds what Keras compiles, then the counted step starts from fresh
        # metrics, in a step function made anew: its one trace holds each call that every
        # step runs (counted eagerly instead, JAX would compile each operation on its own).
        model.train_on_batch(x, y)
        model.reset_metrics()
        # The step's forward pass in training mode (batch statistics): the same logits as
        # the ones the step's loss sees, taken before the step changes the weights.
        logits = model(x, training=True)["mask"]
        calls.update(dict.fromkeys(calls, 0))
        model.make_train_function(force=True)
        logs = model.train_on_batch(x, y, return_dict=True)
        assert calls == {"dice": 1, "crossentropy": 1}
        # The logged term is the unweighted term on the batch (crossentropy weighs 0.5 in the
        # sum); by hand with fresh losses. 1e-5: float32 sums over 2 x 16 x 16 x 4 values.
        by_hand = {"dice": build("dice", from_logits=True),
                   "crossentropy": build("crossentropy", from_logits=True)}
        for label, loss in by_hand.items():
            want = float(keras.ops.convert_to_numpy(loss(y["mask"], logits)))
            assert logs[f"mask_{label}_term"] == pytest.approx(want, abs=1e-5), label

    def test_losses_built_separately_touch_no_metric(self, tiny_recipe):
        model, x, y = self.step_case(tiny_recipe)
        model.train_on_batch(x, y)
        compiled = [m for group in model.metrics for m in getattr(group, "metrics", [group])]
        terms = [m for m in compiled if isinstance(m, LossTerm)]
        before = [float(keras.ops.convert_to_numpy(m.result())) for m in terms]
        assert terms and all(m.linked for m in terms)
        separate = head_losses(tiny_recipe)["mask"]  # as gradient reports build them
        separate(y["mask"], model(x, training=False)["mask"])
        assert [float(keras.ops.convert_to_numpy(m.result())) for m in terms] == before

    def test_unlinked_term_computes_its_loss(self):
        # linked, update_state leaves the recording to the loss; unlinked it computes
        loss = build(["dice", "crossentropy"], from_logits=True)
        terms = {label: LossTerm(term, name=f"{label}_term") for label, _, term in loss.terms}
        loss.record_terms(terms)
        terms["dice"].update_state(YM, ZM)
        assert result(terms["dice"]) == 0.0
        loss(YM, ZM)
        want = float(keras.ops.convert_to_numpy(loss.terms[0][2](YM, ZM)))
        assert result(terms["dice"]) == pytest.approx(want, abs=TOL)
        again = keras.saving.deserialize_keras_object(
            keras.saving.serialize_keras_object(terms["dice"]))
        assert again.linked is False and result(again, (YM, ZM)) == pytest.approx(want, abs=TOL)

    def test_record_terms_refuses_unknown_labels(self):
        loss = build(["dice", "crossentropy"], from_logits=True)
        with pytest.raises(ValueError, match=r"no term labelled 'focal'; terms: dice,"):
            loss.record_terms({"focal": LossTerm(build("focal"), name="focal_term")})


class TestBuildMetric:
    def test_required_names(self):
        assert {"dice", "iou", "accuracy", "top_k_accuracy", "precision", "recall",
                "boundary_f1"} <= set(METRICS)

    @pytest.mark.parametrize("name", sorted(METRICS))
    def test_name_is_the_entry_name(self, name):
        metric = build_metric(name, classes=6, from_logits=True)
        assert type(metric) is METRICS[name] and metric.name == name
        assert metric.from_logits is True

    def test_options_and_class_id_name(self):
        metric = build_metric({"name": "iou", "class_id": 2, "include_background": True},
                              classes=3, from_logits=False)
        assert isinstance(metric, IoUScore) and metric.class_id == 2
        assert metric.name == "iou_class2"

    ERRORS = [
        ("dise", r"unknown metric 'dise' \(did you mean 'dice'\?\)\. Expected one of: dice,"),
        ({"name": "dice", "clas_id": 1},
         r"clas_id: unknown option of metric 'dice' \(did you mean 'class_id'\?\)"),
        ({"name": "dice", "from_logits": True}, r"from_logits: is decided by the head"),
        ({"name": "dice", "classes": 3}, r"classes: is decided by the head"),
        ({"name": "boundary_f1", "outlines": True}, r"outlines: is decided by the head"),
        ({"name": "boundary_f1", "tolerance": 1.5},
         r"tolerance: expected an integer, got a number \(1.5\)"),
        ({"class_id": 1}, r"a metric entry is a name or a mapping"),
        ({"name": "top_k_accuracy", "k": 9}, r"`k`=9; expected an integer in \[1, 6\)"),
    ]

    @pytest.mark.parametrize("entry, match", ERRORS)
    def test_errors(self, entry, match):
        with pytest.raises(ValueError, match=match):
            build_metric(entry, classes=6, from_logits=True)


class TestMetricOptions:
    def test_values(self):
        assert metric_options("dice") == {"include_background": False, "class_id": None,
                                          "threshold": None, "multilabel": False}
        assert metric_options("top_k_accuracy") == {"k": 5}
        assert metric_options("boundary_f1")["tolerance"] == 2

    @pytest.mark.parametrize("name", sorted(METRICS))
    def test_excludes_head_decided_arguments(self, name):
        assert not {"classes", "from_logits", "outlines", "name", "dtype"} & set(
            metric_options(name))

    def test_unknown(self):
        with pytest.raises(ValueError, match=r"unknown metric 'accuracyy' \(did you mean"):
            metric_options("accuracyy")


NON_DEFAULT = {
    "dice": {"include_background": True, "class_id": 1, "threshold": 0.2},
    "iou": {"multilabel": True},
    "jaccard": {"class_id": 0},
    "accuracy": {"threshold": 0.3},
    "top_k_accuracy": {"k": 2},
    "precision": {"include_background": True},
    "recall": {"class_id": 2},
    "boundary_f1": {"tolerance": 3, "class_id": 1},
}


class TestSerialization:
    def test_covers_every_metric(self):
        assert set(NON_DEFAULT) == set(METRICS)

    @pytest.mark.parametrize("name", sorted(NON_DEFAULT))
    def test_round_trip(self, name):
        metric = build_metric({"name": name, **NON_DEFAULT[name]}, classes=3, from_logits=True)
        config = keras.saving.serialize_keras_object(metric)
        assert config["registered_name"].startswith("multiseg>")
        again = keras.saving.deserialize_keras_object(config)
        assert type(again) is type(metric) and again.get_config() == metric.get_config()

    def test_outlines_round_trip(self):
        metric = build_metric("boundary_f1", classes=1, from_logits=True, outlines=True)
        again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(metric))
        assert again.outlines is True and again.get_config() == metric.get_config()
        # metrics without the notion ignore it
        assert not hasattr(build_metric("dice", classes=1, from_logits=True, outlines=True),
                           "outlines")

    def test_model_evaluate_streams_and_reloads(self, tmp_path):
        # Keras's loop feeds 3 batches; the result equals the reference over all pixels.
        inputs = keras.Input((5, 4, 2))
        outputs = keras.layers.Conv2D(3, 1, name="mask")(inputs)
        model = keras.Model(inputs, outputs)
        names = ["dice", "iou", "precision", "recall", "accuracy", "boundary_f1"]
        metrics = [build_metric(n, classes=3, from_logits=True) for n in names]
        model.compile(optimizer="sgd", loss=build("crossentropy", from_logits=True),
                      metrics=metrics + [LossTerm(build("dice", from_logits=True), "term")])
        rng = np.random.default_rng(1)
        x = f32(rng.normal(size=(6, 5, 4, 2)))
        y = rng.integers(0, 3, size=(6, 5, 4)).astype("float32")
        logs = model.evaluate(x, y, batch_size=2, verbose=0, return_dict=True)
        z = model.predict(x, verbose=0)
        batches = [(y[i:i + 2], z[i:i + 2]) for i in range(0, 6, 2)]
        for kind in ("dice", "iou", "precision", "recall"):
            assert logs[kind] == pytest.approx(ref.count_metric(kind, batches,
                                                                from_logits=True), abs=1e-5)
        assert logs["accuracy"] == pytest.approx(ref.accuracy(batches, from_logits=True),
                                                 abs=1e-5)
        assert logs["boundary_f1"] == pytest.approx(ref.boundary_f1(batches, from_logits=True),
                                                    abs=1e-5)
        model.save(tmp_path / "model.keras")
        again = keras.models.load_model(tmp_path / "model.keras")
        assert again.evaluate(x, y, batch_size=2, verbose=0, return_dict=True)["dice"] == (
            pytest.approx(logs["dice"], abs=1e-5))


# ---------------------------------------------------------------------- property tests


@st.composite
def batches_case(draw):
    classes = draw(st.integers(1, 4))
    count = draw(st.integers(1, 3))
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    seed = draw(st.integers(0, 10_000))
    return classes, random_batches(seed, classes, count=count, shape=shape)


def as_binary(batches):
    """Binary versions of multi-class batches: foreground = label > 0, first logit channel."""
    out = []
    for y, z in batches:
        if z.shape[-1] != 1:
            y, z = (y[..., None] > 0).astype("float32"), z[..., :1]
        out.append((y, z))
    return out


COUNT_KINDS = {"dice": DiceScore, "iou": IoUScore, "precision": Precision, "recall": Recall}
PROPERTY = settings(max_examples=20, deadline=None)


class TestProperties:
    @PROPERTY
    @given(case=batches_case(), name=st.sampled_from(["dice", "iou", "precision", "recall",
                                                      "accuracy", "boundary_f1"]))
    def test_bounds(self, case, name):
        classes, batches = case
        value = result(build_metric(name, classes=classes, from_logits=True), *batches)
        assert 0.0 <= value <= 1.0

    @PROPERTY
    @given(case=batches_case(), name=st.sampled_from(["dice", "iou", "precision", "recall",
                                                      "accuracy", "boundary_f1"]))
    def test_split_batches_equal_one_batch(self, case, name):
        # streaming: counts add up, so splitting the data into batches changes nothing
        classes, batches = case
        whole = (np.concatenate([y for y, _ in batches]), np.concatenate([z for _, z in batches]))
        split = result(build_metric(name, classes=classes, from_logits=True), *batches)
        once = result(build_metric(name, classes=classes, from_logits=True), whole)
        assert split == pytest.approx(once, abs=1e-6)

    @PROPERTY
    @given(case=batches_case(), kind=st.sampled_from(sorted(COUNT_KINDS)))
    def test_matches_reference(self, case, kind):
        classes, batches = case
        metric = COUNT_KINDS[kind](classes, from_logits=True)
        assert result(metric, *batches) == pytest.approx(
            ref.count_metric(kind, batches, from_logits=True), abs=1e-5)

    @PROPERTY
    @given(case=batches_case(), class_id=st.integers(0, 3))
    def test_dice_iou_relation_per_class(self, case, class_id):
        # hard counts: Dice = 2 IoU / (1 + IoU) class by class
        classes, batches = case
        class_id = min(class_id, classes - 1)
        d = result(DiceScore(classes, from_logits=True, class_id=class_id), *batches)
        j = result(IoUScore(classes, from_logits=True, class_id=class_id), *batches)
        assert d == pytest.approx(2 * j / (1 + j), abs=1e-6)

    @PROPERTY
    @given(case=batches_case())
    def test_symmetric_roles_for_dice_precision_recall(self, case):
        # swapping target and prediction: Dice unchanged, precision <-> recall
        hard = [(y, (z > 0).astype("float32")) for y, z in as_binary(case[1])]
        swapped = [(p, y) for y, p in hard]
        assert result(DiceScore(1), *hard) == pytest.approx(result(DiceScore(1), *swapped),
                                                            abs=1e-6)
        assert result(Precision(1), *hard) == pytest.approx(result(Recall(1), *swapped),
                                                            abs=1e-6)

    @PROPERTY
    @given(case=batches_case())
    def test_hard_dice_equals_one_minus_batch_dice_loss(self, case):
        # On hard 0/1 predictions the soft loss, pooled over the batch without smoothing,
        # is one minus the metric (one channel; the metric over a single batch). The metric
        # scores a class absent from the target but predicted 0, so the loss must not leave
        # it out: ignore_empty=False.
        y, z = as_binary(case[1])[0]
        hard = (z > 0).astype("float32")
        loss = float(Dice(smooth=0.0, per_sample=False, ignore_empty=False)(y, hard))
        assert result(DiceScore(1), (y, hard)) == pytest.approx(1 - loss, abs=1e-6)
