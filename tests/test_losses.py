"""Tests of multiseg.losses: hand-computed cases, NumPy references, gradients, properties."""

from __future__ import annotations

import ast
import math
import re
from pathlib import Path

import keras
import numpy as np
import pytest
import reference_np as ref  # tests/ is on sys.path (pytest rootdir-less conftest layout)
from hypothesis import given, settings
from hypothesis import strategies as st

from multiseg import losses
from multiseg.losses import (
    LOSSES,
    CombinedLoss,
    Crossentropy,
    Dice,
    Focal,
    FocalTversky,
    GeneralizedDice,
    Jaccard,
    Tversky,
    WeightedCrossentropy,
    build,
    check_channels,
    check_targets,
    loss_options,
)
from multiseg.options import OptionError

TOL = 1e-6
REF_TOL = 1e-5  # float32 library vs float64 reference on random inputs

# ------------------------------------------------------------------------------ fixtures


def value(loss: keras.losses.Loss, y_true, y_pred, sample_weight=None) -> float:
    return float(keras.ops.convert_to_numpy(loss(y_true, y_pred, sample_weight)))


def f32(x) -> np.ndarray:
    return np.asarray(x, dtype="float32")


def random_case(seed: int, classes: int, *, logits: bool, onehot: bool = False,
                shape=(3, 5, 4)):
    """Random targets and predictions: labels as floats (as Keras delivers them) or one-hot."""
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=2.0, size=shape + (classes,))
    if classes == 1:
        y = (rng.random(shape + (1,)) > 0.6).astype("float32")
    else:
        y = rng.integers(0, classes, size=shape).astype("float32")
        if onehot:
            y = np.eye(classes, dtype="float32")[y.astype(int)]
    pred = z if logits else (ref.sigmoid(z) if classes == 1 else ref.softmax(z))
    return y, f32(pred)


def gradient(loss: keras.losses.Loss, y_true, y_pred) -> tuple[float, np.ndarray]:
    """Loss value and d loss / d y_pred, with the current backend's autodiff."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        x = tf.Variable(f32(y_pred))
        with tf.GradientTape() as tape:
            out = loss(y_true, x)
        return float(out), tape.gradient(out, x).numpy()
    if backend == "jax":
        import jax

        out, grad = jax.value_and_grad(lambda x: loss(y_true, x))(f32(y_pred))
        return float(out), np.asarray(grad)
    raise NotImplementedError(f"no gradient helper for backend {backend}")


# The 1-D binary example used by the region-loss tables: shape (1, 4, 1).
#   target       g = [1,   1,   0,   0]
#   probability  p = [0.9, 0.4, 0.2, 0.0]
#   I = sum(p g) = 1.3, sum(p) = 1.5, sum(g) = 2, sum(p^2) = 0.81 + 0.16 + 0.04 = 1.01
#   TP = 1.3, FP = sum(p (1 - g)) = 0.2, FN = sum((1 - p) g) = 0.1 + 0.6 = 0.7
G1 = f32([[[1], [1], [0], [0]]])
P1 = f32([[[0.9], [0.4], [0.2], [0.0]]])

# The multi-class example: N=2 samples, 2 pixels, C=3, labels given as floats.
#   sample 0: labels [0, 1], p = [1, 0, 0], [0, 1, 0]              (perfect)
#   sample 1: labels [2, 2], p = [0, 0, 1], [0, 0.5, 0.5]
GM = f32([[0, 1], [2, 2]])
PM = f32([[[1, 0, 0], [0, 1, 0]], [[0, 0, 1], [0, 0.5, 0.5]]])


# ---------------------------------------------------------------------------------- Dice


class TestDice:
    CASES = [
        # (options, expected, where the value comes from)
        ({"smooth": 0.0}, 1 - 2.6 / 3.5, "2 I / (sum p + sum g) = 2.6 / 3.5"),
        ({"smooth": 1.0}, 1 - 3.6 / 4.5, "(2.6 + 1) / (3.5 + 1) = 0.8"),
        ({}, 1 - (2.6 + 1e-5) / (3.5 + 1e-5), "default smoothing 1e-5 on both"),
        ({"smooth_nr": 0.0, "smooth_dr": 0.5}, 1 - 2.6 / 4.0, "denominator only"),
        ({"smooth": 0.0, "squared": True}, 1 - 2.6 / (1.01 + 2), "V-Net: sum p^2 + sum g^2"),
        ({"smooth": 0.0, "include_background": False}, 1 - 2.6 / 3.5,
         "binary: the only channel is foreground, the option has no effect"),
    ]

    @pytest.mark.parametrize("options, expected, why", CASES)
    def test_binary_hand_computed(self, options, expected, why):
        assert value(Dice(**options), G1, P1) == pytest.approx(expected, abs=TOL), why

    MULTI_CASES = [
        # ignore_empty=False, per sample, smooth 0; an empty class (absent in target and
        # prediction) scores 1, a class absent from the target but predicted scores 0.
        # sample 0: all classes 1 (class 2 empty) -> loss 0
        # sample 1: class 0 empty -> 1; class 1: I = 0 -> 0; class 2: 2 * 1.5 / (1.5 + 2) = 6/7
        #           loss 1 - (1 + 0 + 6/7) / 3 = 8/21;  mean over samples 4/21
        ({"ignore_empty": False}, 4 / 21),
        # over the batch: class 0: 2 * 1 / (1 + 1) = 1; class 1: 2 * 1 / (1.5 + 1) = 0.8;
        # class 2: 2 * 1.5 / (1.5 + 2) = 6/7 -> loss 1 - (1 + 0.8 + 6/7) / 3
        ({"per_sample": False, "ignore_empty": False}, 1 - (1 + 0.8 + 6 / 7) / 3),
        # no background: sample 0 -> 0; sample 1: 1 - (0 + 6/7) / 2 = 4/7; mean 2/7
        ({"include_background": False, "ignore_empty": False}, 2 / 7),
        # class weights [0, 1, 3]: sample 1: 1 - (0 + 3 * 6/7) / 4 = 5/14; mean 5/28
        ({"class_weights": [0, 1, 3], "ignore_empty": False}, 5 / 28),
        # ignore_empty (default): only classes present in the sample's target count.
        # sample 0: classes 0, 1 -> loss 0; sample 1: class 2 only -> 1 - 6/7; mean 1/14
        ({}, 1 / 14),
        # over the batch every class is present: as with ignore_empty=False
        ({"per_sample": False}, 1 - (1 + 0.8 + 6 / 7) / 3),
        # no background: sample 0: class 1 -> 0; sample 1: class 2 -> 1/7; mean 1/14
        ({"include_background": False}, 1 / 14),
        # class weights [0, 1, 3]: sample 0: class 1 (w 1) -> 0; sample 1: class 2 -> 1/7
        ({"class_weights": [0, 1, 3]}, 1 / 14),
    ]

    @pytest.mark.parametrize("options, expected", MULTI_CASES)
    def test_multiclass_hand_computed(self, options, expected):
        assert value(Dice(smooth=0.0, **options), GM, PM) == pytest.approx(expected, abs=TOL)

    # A near-perfect softmax prediction on an 8 x 8 sample with 4 classes, of which only 0
    # (rows 0-3) and 1 (rows 4-7) occur: p = 0.97 on the true class, 0.01 on each other.
    # Classes 0, 1: I = 0.97 * 32 = 31.04, sum p = 31.04 + 0.01 * 32 = 31.36, sum g = 32
    #   D = 62.08 / 63.36; classes 2, 3: I = 0, sum p = 0.64, sum g = 0 -> D = 0 (smooth 0).
    FLOOR_Y = f32(np.repeat([0, 1], 32).reshape(1, 8, 8))
    FLOOR_P = f32(np.where(np.eye(4)[np.repeat([0, 1], 32)] > 0, 0.97, 0.01).reshape(1, 8, 8, 4))

    def test_absent_classes_floor_without_ignore_empty(self):
        # ignore_empty=False: 1 - (2 D + 0 + 0) / 4, about 0.5 = absent / classes
        got = value(Dice(smooth=0.0, ignore_empty=False), self.FLOOR_Y, self.FLOOR_P)
        assert got == pytest.approx(1 - 2 * (62.08 / 63.36) / 4, abs=TOL)

    def test_ignore_empty_removes_the_floor(self):
        # only classes 0 and 1 count: 1 - D
        got = value(Dice(smooth=0.0), self.FLOOR_Y, self.FLOOR_P)
        assert got == pytest.approx(1 - 62.08 / 63.36, abs=TOL)
        # with the default smoothing 1e-5 the absent classes score 1e-5 / 0.64: no change
        assert value(Dice(), self.FLOOR_Y, self.FLOOR_P) == pytest.approx(1 - 62.08 / 63.36,
                                                                           abs=1e-5)

    @pytest.mark.parametrize("ignore_empty, expected", [(True, 0.0), (False, 1.0)])
    def test_sample_with_nothing_present(self, ignore_empty, expected):
        # Binary head, empty target, p = 0.3 everywhere: nothing to segment scores loss 0
        # with ignore_empty; without, D = 0 / (16 * 0.3) = 0 and the loss is 1.
        empty, p = np.zeros((1, 4, 4, 1), "float32"), np.full((1, 4, 4, 1), 0.3, "float32")
        got = value(Dice(smooth=0.0, ignore_empty=ignore_empty), empty, p)
        assert got == pytest.approx(expected, abs=TOL)

    def test_label_encodings_agree(self):
        # Labels (N, L), (N, L, 1), float or int, and one-hot all give the same loss.
        onehot = np.eye(3, dtype="float32")[GM.astype(int)]
        expected = value(Dice(), GM, PM)
        for y in (GM, GM[..., None], GM.astype("int32"), onehot):
            assert value(Dice(), y, PM) == pytest.approx(expected, abs=TOL)

    def test_binary_target_without_channel_axis(self):
        assert value(Dice(), G1[..., 0], P1) == pytest.approx(value(Dice(), G1, P1), abs=TOL)

    @pytest.mark.parametrize("classes", [1, 4])
    @pytest.mark.parametrize("logits", [True, False])
    @pytest.mark.parametrize("per_sample", [True, False])
    @pytest.mark.parametrize("include_background", [True, False])
    def test_matches_reference(self, classes, logits, per_sample, include_background):
        y, p = random_case(classes * 10 + logits, classes, logits=logits)
        options = {"per_sample": per_sample, "include_background": include_background,
                   "ignore_empty": False}
        got = value(Dice(from_logits=logits, **options), y, p)
        want = ref.dice_loss(y, p, from_logits=logits, **options)
        assert got == pytest.approx(want, abs=REF_TOL)

    @pytest.mark.parametrize("classes", [1, 4])
    def test_options_match_reference(self, classes):
        y, p = random_case(7, classes, logits=True, onehot=True)
        weights = [1.0] if classes == 1 else [0.5, 1.0, 2.0, 0.0]
        options = {"squared": True, "smooth_nr": 0.5, "smooth_dr": 1.0,
                   "class_weights": weights}
        got = value(Dice(from_logits=True, **options), y, p)
        want = ref.dice_loss(y, p, from_logits=True, **options)
        assert got == pytest.approx(want, abs=REF_TOL)

    def test_multilabel_matches_reference(self):
        rng = np.random.default_rng(3)
        y = (rng.random((2, 4, 4, 3)) > 0.5).astype("float32")
        z = f32(rng.normal(size=(2, 4, 4, 3)))
        got = value(Dice(from_logits=True, multilabel=True), y, z)
        assert got == pytest.approx(ref.dice_loss(y, z, from_logits=True, multilabel=True),
                                    abs=REF_TOL)

    def test_multilabel_has_no_background_channel(self):
        rng = np.random.default_rng(5)
        y = (rng.random((2, 3, 3, 3)) > 0.5).astype("float32")
        z = f32(rng.normal(size=(2, 3, 3, 3)))
        assert value(Dice(multilabel=True, include_background=False, from_logits=True), y,
                     z) == pytest.approx(value(Dice(multilabel=True, from_logits=True), y, z),
                                         abs=TOL)

    EMPTY = [({}, 0.0), ({"smooth": 1.0}, 0.0), ({"smooth": 0.0}, 0.0)]

    @pytest.mark.parametrize("options, expected", EMPTY)
    def test_two_empty_masks_give_zero_loss(self, options, expected):
        # Dice of two empty masks is 1: (0 + s) / (0 + s) with smoothing, 0 / 0 := 1 without.
        empty = np.zeros((2, 4, 4, 1), "float32")
        assert value(Dice(**options), empty, empty) == pytest.approx(expected, abs=TOL)

    def test_empty_target_full_prediction(self):
        # ignore_empty=False: I = 0, so D = s / (16 + s) ~ 0 and the loss ~ 1 (the worst).
        empty, full = np.zeros((1, 4, 4, 1), "float32"), np.ones((1, 4, 4, 1), "float32")
        assert value(Dice(ignore_empty=False), empty, full) == pytest.approx(
            1 - 1e-5 / (16 + 1e-5), abs=TOL)
        # ignore_empty (default): nothing is present, the sample scores 0; only a pixel loss
        # (crossentropy) sees the false positives of an empty image
        assert value(Dice(), empty, full) == pytest.approx(0.0, abs=TOL)

    def test_perfect_multiclass_prediction_is_zero(self):
        # Guards against the "1 - 1 - dice" bug: loss(y, y) must be 0, not -1.
        y = np.eye(4, dtype="float32")[np.arange(16).reshape(1, 4, 4) % 4]
        assert value(Dice(), y, y) == pytest.approx(0.0, abs=TOL)

    def test_smoothing_differs_from_keras_pooled_dice(self):
        # keras.losses.Dice pools classes; ours is a per-class mean: on the multi-class
        # example they differ (LOSS-NOTES: about 0.04 on random 4-class data).
        ours = value(Dice(smooth=0.0), GM, PM)
        onehot = np.eye(3, dtype="float32")[GM.astype(int)]
        pooled = 1 - 2 * np.sum(onehot * PM) / (np.sum(onehot) + np.sum(PM))
        assert abs(ours - pooled) > 0.05

    def test_returns_one_value_per_sample(self):
        out = Dice(reduction=None)(GM, PM)
        assert tuple(out.shape) == (2,)
        out = Dice(reduction=None, per_sample=False)(GM, PM)
        assert tuple(out.shape) == (2,)

    def test_sample_weights(self):
        # Per-sample losses are 0 and 1/7 (see MULTI_CASES); weights [1, 3] give
        # (0 * 1 + 1/7 * 3) / 2 (Keras divides by the batch size).
        loss = Dice(smooth=0.0)
        assert value(loss, GM, PM, f32([1, 3])) == pytest.approx(3 / 14, abs=TOL)
        # a pixel weight map is averaged to one weight per sample: [1, 3] again
        pixel = f32([[1, 1], [2, 4]])
        assert value(loss, GM, PM, pixel) == pytest.approx(3 / 14, abs=TOL)

    def test_float16_loss_computes_in_float32(self):
        # dtype="float16" makes Keras cast the inputs to float16 before `call` (mixed
        # precision): only the loss's own casts keep the sums below from overflowing.
        # p = 0.5, g = 1 on 512 x 512: 2 * 131072 / (131072 + 262144) = 2/3, loss 1/3.
        # 1e-3: the reduced value is returned in float16 (1/3 -> 0.33325).
        g, p = np.ones((1, 512, 512, 1), "float32"), np.full((1, 512, 512, 1), 0.5, "float32")
        assert value(Dice(dtype="float16"), g, p) == pytest.approx(1 / 3, abs=1e-3)

    INVALID = [
        ({"smooth": -1.0}, r"invalid `smooth`=-1.0; expected a finite number >= 0"),
        ({"smooth_nr": float("nan")}, r"`smooth_nr`=nan"),
        ({"smooth": 1.0, "smooth_nr": 0.5}, r"either `smooth` .* or `smooth_nr`"),
        ({"smooth_nr": 1.0, "smooth_dr": 0.0}, r"`smooth_dr`=0.0; expected a positive"),
        ({"squared": "yes"}, r"`squared`='yes'; expected True or False"),
        ({"per_sample": 1}, r"`per_sample`=1; expected True or False"),
        ({"class_weights": [1, -1]}, r"`class_weights\[1\]`=-1"),
        ({"class_weights": [0, 0]}, r"at least one positive weight"),
        ({"class_weights": "1,2"}, r"`class_weights`='1,2'"),
        ({"from_logits": None}, r"`from_logits`=None"),
    ]

    @pytest.mark.parametrize("options, match", INVALID)
    def test_invalid_arguments(self, options, match):
        with pytest.raises(ValueError, match=match):
            Dice(**options)


# float16 inputs straight into the pure functions (no Keras cast in between): 512 x 512
# pixels with p = 0.5 and g = 1, so sum(p) = 131072 and sum(g) = 262144 exceed float16's
# maximum (65504); without the float32 casts inside, the sums are inf and the loss NaN.
#   I = TP = 131072, FP = 0, FN = 131072
HALF_CASES = [
    (losses.dice, {}, 1 - 2 * 131072 / (131072 + 262144)),                # 1/3
    (losses.jaccard, {}, 1 - 131072 / 262144),                             # 1/2
    (losses.tversky, {}, 1 - 131072 / (131072 + 0.7 * 131072)),            # 0.7 / 1.7
    (losses.dice, {"per_sample": False, "ignore_empty": False}, 1 / 3),
]


@pytest.mark.parametrize("fn, options, expected", HALF_CASES)
def test_region_functions_reduce_float16_in_float32(fn, options, expected):
    g = np.ones((2, 512, 512, 1), "float16")
    p = np.full((2, 512, 512, 1), 0.5, "float16")
    out = keras.ops.convert_to_numpy(fn(g, p, **options))
    assert out.dtype == np.float32
    # 1e-6 relative: float32 sums of exact halves and ones are exact; the ratio rounds
    np.testing.assert_allclose(out, [expected, expected], rtol=1e-6)


def test_crossentropy_function_clips_float16_in_float32():
    # y = [1, 0], p = [0, 1] in float16. The probabilities are clipped to [1e-7, 1 - 1e-7] in
    # float32: -log(1e-7) = 16.118 and -log(1 - float32(1 - 1e-7)) = -log(2^-23) = 15.942.
    # In float16, 1 - 1e-7 rounds to 1 and log(1 - 1) is -inf.
    y = np.array([[[1], [0]]], "float16")
    p = np.array([[[0.0], [1.0]]], "float16")
    out = keras.ops.convert_to_numpy(losses.crossentropy(y, p))
    # 1e-6 relative: float32 logs
    np.testing.assert_allclose(out, [[-math.log(1e-7), 23 * math.log(2)]], rtol=1e-6)


# ------------------------------------------------------------------------------- Jaccard


class TestJaccard:
    CASES = [
        # I = 1.3, U = sum p + sum g - I = 2.2
        ({"smooth": 0.0}, 1 - 1.3 / 2.2),
        ({"smooth": 1.0}, 1 - 2.3 / 3.2),
        # squared: U = sum p^2 + sum g^2 - I = 1.01 + 2 - 1.3 = 1.71
        ({"smooth": 0.0, "squared": True}, 1 - 1.3 / 1.71),
    ]

    @pytest.mark.parametrize("options, expected", CASES)
    def test_binary_hand_computed(self, options, expected):
        assert value(Jaccard(**options), G1, P1) == pytest.approx(expected, abs=TOL)

    def test_multiclass_hand_computed(self):
        # sample 1: class 0 empty -> 1; class 1: I = 0 -> 0; class 2: 1.5 / (3.5 - 1.5) = 0.75
        # loss (0 + 1 - 1.75 / 3) / 2
        got = value(Jaccard(smooth=0.0, ignore_empty=False), GM, PM)
        assert got == pytest.approx((1 - 1.75 / 3) / 2, abs=TOL)
        # ignore_empty: sample 1 counts class 2 only: (0 + 1 - 0.75) / 2
        assert value(Jaccard(smooth=0.0), GM, PM) == pytest.approx(0.25 / 2, abs=TOL)

    def test_iou_is_an_alias(self):
        assert LOSSES["iou"] is LOSSES["jaccard"] is Jaccard

    @pytest.mark.parametrize("classes", [1, 4])
    @pytest.mark.parametrize("logits", [True, False])
    @pytest.mark.parametrize("per_sample", [True, False])
    def test_matches_reference(self, classes, logits, per_sample):
        y, p = random_case(classes + 20 + logits, classes, logits=logits)
        got = value(Jaccard(from_logits=logits, per_sample=per_sample), y, p)
        want = ref.jaccard_loss(y, p, from_logits=logits, per_sample=per_sample)
        assert got == pytest.approx(want, abs=REF_TOL)


# Targets where classes are missing: 4 classes, sample 0 holds only labels 0 and 1,
# sample 1 only label 3, sample 2 only label 0 (background only).
def absent_case(seed: int, *, binary: bool = False):
    rng = np.random.default_rng(seed)
    y = np.zeros((3, 4, 5), "float32")
    y[0] = rng.integers(0, 2, size=(4, 5))
    y[1] = 3
    z = f32(rng.normal(scale=2.0, size=(3, 4, 5, 1 if binary else 4)))
    if binary:  # sample 2 is then an image with nothing to segment
        y = (y > 0).astype("float32")[..., None]
    return y, z


class TestIgnoreEmpty:
    """``ignore_empty`` on every region loss that takes a class mean, against the NumPy
    reference on targets with absent classes (and samples with nothing present)."""

    LOSSES_AND_REFERENCES = [
        ("dice", ref.dice_loss, {}),
        ("jaccard", ref.jaccard_loss, {}),
        ("tversky", ref.tversky_loss, {}),
        ("focal_tversky", ref.tversky_loss, {"gamma": 0.75}),
    ]

    @pytest.mark.parametrize("name, reference, extra", LOSSES_AND_REFERENCES)
    @pytest.mark.parametrize("ignore_empty", [True, False])
    @pytest.mark.parametrize("per_sample", [True, False])
    @pytest.mark.parametrize("include_background", [True, False])
    def test_matches_reference(self, name, reference, extra, ignore_empty, per_sample,
                               include_background):
        y, z = absent_case(1)
        options = {"ignore_empty": ignore_empty, "per_sample": per_sample,
                   "include_background": include_background}
        got = value(build({"name": name, **options}, from_logits=True), y, z)
        assert got == pytest.approx(reference(y, z, from_logits=True, **options, **extra),
                                    abs=REF_TOL)

    @pytest.mark.parametrize("name, reference, extra", LOSSES_AND_REFERENCES)
    @pytest.mark.parametrize("ignore_empty", [True, False])
    def test_binary_with_an_empty_sample_matches_reference(self, name, reference, extra,
                                                           ignore_empty):
        y, z = absent_case(2, binary=True)
        got = value(build({"name": name, "ignore_empty": ignore_empty}, from_logits=True), y, z)
        assert got == pytest.approx(reference(y, z, from_logits=True, ignore_empty=ignore_empty,
                                              **extra), abs=REF_TOL)

    @pytest.mark.parametrize("name", ["dice", "jaccard", "tversky", "focal_tversky"])
    def test_floor_of_a_near_perfect_prediction(self, name):
        # Logits 6 on the true class (softmax about 0.99): every present class is about
        # right, every absent one scores about 0. The absent classes are 2 of 4 in sample 0
        # and 3 of 4 in samples 1 and 2, so the floor is (2/4 + 3/4 + 3/4) / 3 = 2/3.
        y, _ = absent_case(3)
        z = f32(6.0 * np.eye(4)[y.astype(int)])
        off = value(build({"name": name, "ignore_empty": False}, from_logits=True), y, z)
        on = value(build({"name": name}, from_logits=True), y, z)
        assert on < 0.05
        assert off == pytest.approx(2 / 3 + on, abs=0.03)

    @pytest.mark.parametrize("name", ["dice", "jaccard", "tversky", "focal_tversky"])
    def test_invalid(self, name):
        with pytest.raises(ValueError, match=r"invalid `ignore_empty`='no'; expected True or"):
            LOSSES[name](ignore_empty="no")
        # build checks option types first, as the recipe reader does (multiseg.options)
        with pytest.raises(ValueError, match=r"ignore_empty: expected a boolean, got a string"):
            build({"name": name, "ignore_empty": "no"})

    def test_empty_masks(self):
        empty = np.zeros((2, 3, 3, 1), "float32")
        assert value(Jaccard(), empty, empty) == pytest.approx(0.0, abs=TOL)
        assert value(Jaccard(smooth=0.0), empty, empty) == pytest.approx(0.0, abs=TOL)

    def test_hard_masks_relation_to_dice(self):
        # For hard masks J = D / (2 - D).
        y = f32([[[1], [1], [0], [0], [1]]])
        p = f32([[[1], [0], [1], [0], [1]]])
        d = 1 - value(Dice(smooth=0.0), y, p)
        j = 1 - value(Jaccard(smooth=0.0), y, p)
        assert j == pytest.approx(d / (2 - d), abs=TOL)


# ---------------------------------------------------------------------- GeneralizedDice


# Example for generalized Dice: 4 pixels, C = 2, labels [0, 0, 0, 1]
#   p(class 1) = [0.1, 0.2, 0.3, 0.6], p(class 0) = 1 - p(class 1)
#   G0 = 3, G1 = 1; I0 = 0.9 + 0.8 + 0.7 = 2.4, S0 = 2.8 + 3 = 5.8; I1 = 0.6, S1 = 1.2 + 1 = 2.2
GG = f32([[0, 0, 0, 1]])
_p1 = np.array([0.1, 0.2, 0.3, 0.6])
PG = f32(np.stack([1 - _p1, _p1], axis=-1)[None])


class TestGeneralizedDice:
    CASES = [
        # w = 1/9, 1: 2 (2.4/9 + 0.6) / (5.8/9 + 2.2) = 78/128
        ("square", 1 - 2 * (2.4 / 9 + 0.6) / (5.8 / 9 + 2.2)),
        # w = 1/3, 1: 2 (0.8 + 0.6) / (5.8/3 + 2.2)
        ("simple", 1 - 2 * (2.4 / 3 + 0.6) / (5.8 / 3 + 2.2)),
        # w = 1, 1: 2 (3.0) / 8.0
        ("uniform", 1 - 6.0 / 8.0),
    ]

    @pytest.mark.parametrize("weight_type, expected", CASES)
    def test_hand_computed(self, weight_type, expected):
        got = value(GeneralizedDice(weight_type=weight_type, smooth=0.0), GG, PG)
        assert got == pytest.approx(expected, abs=TOL)

    def test_absent_class_takes_largest_weight(self):
        # C = 3, class 2 absent: weights (1/9, 1, max = 1).
        # I0 = 0.8 + 0.7 + 0.6 = 2.1, S0 = 2.4 + 3; I1 = 0.6, S1 = 1.1 + 1; I2 = 0, S2 = 0.5
        p = f32([[[0.8, 0.1, 0.1], [0.7, 0.2, 0.1], [0.6, 0.2, 0.2], [0.3, 0.6, 0.1]]])
        got = value(GeneralizedDice(smooth=0.0), GG, p)
        expected = 1 - 2 * (2.1 / 9 + 0.6) / (5.4 / 9 + 2.1 + 0.5)
        assert got == pytest.approx(expected, abs=TOL)

    def test_no_included_class_present_is_finite(self):
        # Background only, background excluded: every weight would be inf; all weigh 1.
        y = np.zeros((1, 4), "float32")
        p = f32([[[0.9, 0.1, 0.0]] * 4])
        got = value(GeneralizedDice(include_background=False, smooth=0.0), y, p)
        # classes 1, 2 weigh 1: 1 - 2 * 0 / (0.4 + 0) = 1
        assert got == pytest.approx(1.0, abs=TOL)
        perfect = f32([[[1.0, 0.0, 0.0]] * 4])
        assert value(GeneralizedDice(include_background=False), y, perfect) == pytest.approx(
            0.0, abs=TOL)

    @pytest.mark.parametrize("classes", [1, 4])
    @pytest.mark.parametrize("logits", [True, False])
    @pytest.mark.parametrize("per_sample", [True, False])
    @pytest.mark.parametrize("weight_type", ["square", "simple", "uniform"])
    def test_matches_reference(self, classes, logits, per_sample, weight_type):
        y, p = random_case(classes + 30 + logits, classes, logits=logits, shape=(3, 3, 3))
        options = {"per_sample": per_sample, "weight_type": weight_type,
                   "include_background": classes == 1}
        got = value(GeneralizedDice(from_logits=logits, **options), y, p)
        want = ref.generalized_dice_loss(y, p, from_logits=logits, **options)
        assert got == pytest.approx(want, abs=REF_TOL)

    def test_invalid_weight_type(self):
        with pytest.raises(ValueError, match=r"`weight_type`='cube'; expected one of square"):
            GeneralizedDice(weight_type="cube")


# ------------------------------------------------------------------------------- Tversky


class TestTversky:
    CASES = [
        # TP = 1.3, FP = 0.2, FN = 0.7 (example G1/P1), smooth 0
        ({}, 1 - 1.3 / (1.3 + 0.3 * 0.2 + 0.7 * 0.7), "defaults alpha 0.3, beta 0.7"),
        ({"alpha": 0.7, "beta": 0.3}, 1 - 1.3 / (1.3 + 0.7 * 0.2 + 0.3 * 0.7), "swapped"),
        ({"alpha": 0.5, "beta": 0.5}, 1 - 2.6 / 3.5, "alpha = beta = 0.5 is Dice"),
        ({"alpha": 1.0, "beta": 0.0}, 1 - 1.3 / 1.5, "alpha alone: 1 - precision"),
        ({"alpha": 0.0, "beta": 1.0}, 1 - 1.3 / 2.0, "beta alone: 1 - recall"),
    ]

    @pytest.mark.parametrize("options, expected, why", CASES)
    def test_hand_computed(self, options, expected, why):
        assert value(Tversky(smooth=0.0, **options), G1, P1) == pytest.approx(
            expected, abs=TOL), why

    def test_alpha_weights_false_positives(self):
        # Salehi 2017 (not keras 3.15): only false positives -> only alpha matters.
        y = f32([[[1], [0]]])
        p = f32([[[1], [1]]])  # TP = 1, FP = 1, FN = 0
        assert value(Tversky(alpha=0.2, beta=0.9, smooth=0.0), y, p) == pytest.approx(
            1 - 1 / 1.2, abs=TOL)
        assert value(Tversky(alpha=0.2, beta=0.0, smooth=0.0), y, p) == pytest.approx(
            1 - 1 / 1.2, abs=TOL)

    @pytest.mark.parametrize("ignore_empty, expected", [
        # GM/PM, smooth 0, alpha 0.3, beta 0.7. Sample 0 is perfect (loss 0). Sample 1:
        # class 2: TP = 1.5, FP = 0, FN = 0.5 -> 1 - 1.5 / (1.5 + 0.7 * 0.5) = 0.35 / 1.85;
        # class 0 (empty in target and prediction): TI = 0 / 0 := 1 -> 0;
        # class 1 (absent, predicted 0.5): TP = 0, FP = 0.5 -> TI = 0 -> 1.
        (True, 0.35 / 1.85 / 2),
        (False, (0 + 1 + 0.35 / 1.85) / 3 / 2),
    ])
    def test_multiclass_hand_computed(self, ignore_empty, expected):
        got = value(Tversky(smooth=0.0, ignore_empty=ignore_empty), GM, PM)
        assert got == pytest.approx(expected, abs=TOL)

    def test_per_class_so_alpha_beta_matter_with_softmax(self):
        # Pooled over softmax classes total FP == total FN and alpha/beta would not matter.
        a = value(Tversky(alpha=0.1, beta=0.9), GM, PM)
        b = value(Tversky(alpha=0.9, beta=0.1), GM, PM)
        assert abs(a - b) > 0.01

    @pytest.mark.parametrize("classes", [1, 4])
    @pytest.mark.parametrize("logits", [True, False])
    @pytest.mark.parametrize("per_sample", [True, False])
    def test_matches_reference(self, classes, logits, per_sample):
        y, p = random_case(classes + 40 + logits, classes, logits=logits, onehot=True)
        options = {"per_sample": per_sample, "alpha": 0.4, "beta": 0.8,
                   "include_background": False, "ignore_empty": False}
        got = value(Tversky(from_logits=logits, **options), y, p)
        want = ref.tversky_loss(y, p, from_logits=logits, **options)
        assert got == pytest.approx(want, abs=REF_TOL)

    def test_empty_masks(self):
        empty = np.zeros((1, 3, 3, 1), "float32")
        assert value(Tversky(), empty, empty) == pytest.approx(0.0, abs=TOL)

    @pytest.mark.parametrize("options, match", [
        ({"alpha": -0.1}, r"`alpha`=-0.1; expected a finite number >= 0"),
        ({"beta": "high"}, r"`beta`='high'; expected a number"),
        ({"alpha": 0, "beta": 0, "smooth": 0.0}, r"alpha \+ beta > 0"),
    ])
    def test_invalid_arguments(self, options, match):
        with pytest.raises(ValueError, match=match):
            Tversky(**options)


class TestFocalTversky:
    def test_hand_computed(self):
        # Tversky loss of the example with defaults: 1 - 1.3 / 1.85; then ** 0.75
        got = value(FocalTversky(smooth=0.0), G1, P1)
        assert got == pytest.approx((1 - 1.3 / 1.85) ** 0.75, abs=TOL)

    def test_gamma_one_is_tversky(self):
        # the hand-computed Tversky value of GM/PM (TestTversky), smooth 0
        assert value(FocalTversky(gamma=1.0, smooth=0.0), GM, PM) == pytest.approx(
            0.35 / 1.85 / 2, abs=TOL)

    def test_gamma_below_one_raises_the_loss(self):
        # (1 - TI)^gamma > 1 - TI for 0 < 1 - TI < 1 and gamma < 1
        assert value(FocalTversky(gamma=0.5), G1, P1) > value(Tversky(), G1, P1)

    @pytest.mark.parametrize("classes", [1, 4])
    @pytest.mark.parametrize("per_sample", [True, False])
    def test_matches_reference(self, classes, per_sample):
        y, p = random_case(classes + 50, classes, logits=True)
        got = value(FocalTversky(from_logits=True, gamma=1.5, per_sample=per_sample), y, p)
        want = ref.tversky_loss(y, p, from_logits=True, gamma=1.5, per_sample=per_sample)
        assert got == pytest.approx(want, abs=REF_TOL)

    def test_invalid_gamma(self):
        with pytest.raises(ValueError, match=r"`gamma`=0.0; expected a finite number > 0"):
            FocalTversky(gamma=0.0)


# --------------------------------------------------------------------------------- Focal


# Pixel-loss examples. Binary: y = [1, 0], p = [0.8, 0.3], shape (1, 2, 1).
GB = f32([[[1], [0]]])
PB = f32([[[0.8], [0.3]]])
# Multi-class: labels [0, 2], p = [0.7, 0.2, 0.1], [0.2, 0.2, 0.6], shape (1, 2, 3).
GC = f32([[0, 2]])
PC = f32([[[0.7, 0.2, 0.1], [0.2, 0.2, 0.6]]])


class TestFocal:
    CASES = [
        # binary: -(1 - 0.8)^2 log 0.8 and -(0.3)^2 log(1 - 0.3), mean over pixels
        (GB, PB, {}, -(0.2**2 * math.log(0.8) + 0.3**2 * math.log(0.7)) / 2),
        # alpha 0.25: positives x 0.25, negatives x 0.75 (Lin et al.)
        (GB, PB, {"alpha": 0.25},
         -(0.25 * 0.2**2 * math.log(0.8) + 0.75 * 0.3**2 * math.log(0.7)) / 2),
        # gamma 0: plain binary crossentropy
        (GB, PB, {"gamma": 0.0}, -(math.log(0.8) + math.log(0.7)) / 2),
        # multi-class: -(1 - p_true)^2 log p_true
        (GC, PC, {}, -(0.3**2 * math.log(0.7) + 0.4**2 * math.log(0.6)) / 2),
        # per-class alpha [0.5, 1, 2]
        (GC, PC, {"alpha": [0.5, 1.0, 2.0]},
         -(0.5 * 0.3**2 * math.log(0.7) + 2.0 * 0.4**2 * math.log(0.6)) / 2),
        (GC, PC, {"gamma": 1.0}, -(0.3 * math.log(0.7) + 0.4 * math.log(0.6)) / 2),
    ]

    @pytest.mark.parametrize("y, p, options, expected", CASES)
    def test_hand_computed(self, y, p, options, expected):
        assert value(Focal(**options), y, p) == pytest.approx(expected, abs=TOL)

    @pytest.mark.parametrize("classes", [1, 4])
    @pytest.mark.parametrize("logits", [True, False])
    @pytest.mark.parametrize("alpha", [None, "given"])
    def test_matches_reference(self, classes, logits, alpha):
        y, p = random_case(classes + 60 + logits, classes, logits=logits)
        a = None if alpha is None else (0.3 if classes == 1 else [0.1, 0.5, 1.0, 2.0])
        got = value(Focal(from_logits=logits, gamma=1.5, alpha=a), y, p)
        want = ref.focal_loss(y, p, from_logits=logits, gamma=1.5, alpha=a)
        assert got == pytest.approx(want, abs=REF_TOL)

    def test_multilabel_matches_reference(self):
        rng = np.random.default_rng(4)
        y = (rng.random((2, 3, 3, 2)) > 0.5).astype("float32")
        z = f32(rng.normal(size=(2, 3, 3, 2)))
        got = value(Focal(from_logits=True, multilabel=True, alpha=[0.25, 0.75]), y, z)
        want = ref.focal_loss(y, z, from_logits=True, multilabel=True, alpha=[0.25, 0.75])
        assert got == pytest.approx(want, abs=REF_TOL)

    def test_image_level_labels(self):
        # Classification head: logits (N, C), labels (N,).
        z = f32([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
        y = f32([0, 2])
        p = ref.softmax(z)
        expected = -((1 - p[0, 0]) ** 2 * np.log(p[0, 0])
                     + (1 - p[1, 2]) ** 2 * np.log(p[1, 2])) / 2
        assert value(Focal(from_logits=True), y, z) == pytest.approx(expected, abs=TOL)

    def test_scalar_alpha_refused_for_multiclass(self):
        with pytest.raises(ValueError, match=r"scalar alpha=0.25 is ambiguous .* \(3 classes\)"):
            Focal(alpha=0.25)(GC, PC)

    def test_list_alpha_refused_for_binary(self):
        with pytest.raises(ValueError, match=r"binary head takes a scalar alpha"):
            Focal(alpha=[0.25, 0.75])(GB, PB)

    @pytest.mark.parametrize("options, match", [
        ({"gamma": -1}, r"`gamma`=-1.0; expected a finite number >= 0"),
        ({"alpha": 1.5}, r"`alpha`=1.5; expected a finite number >= 0 and <= 1"),
        ({"alpha": [0.1, -0.2]}, r"`alpha\[1\]`=-0.2"),
    ])
    def test_invalid_arguments(self, options, match):
        with pytest.raises(ValueError, match=match):
            Focal(**options)


# -------------------------------------------------------------------------- Crossentropy


class TestCrossentropy:
    CASES = [
        (GB, PB, {}, -(math.log(0.8) + math.log(0.7)) / 2),
        # label smoothing 0.2 (binary): targets 0.9 and 0.1
        (GB, PB, {"label_smoothing": 0.2},
         -(0.9 * math.log(0.8) + 0.1 * math.log(0.2)
           + 0.1 * math.log(0.3) + 0.9 * math.log(0.7)) / 2),
        # binary class weights [background 1, foreground 3]
        (GB, PB, {"class_weights": [1.0, 3.0]}, -(3 * math.log(0.8) + math.log(0.7)) / 2),
        (GC, PC, {}, -(math.log(0.7) + math.log(0.6)) / 2),
        # class weights [2, 1, 1]: pixel 0 (class 0) counts twice
        (GC, PC, {"class_weights": [2.0, 1.0, 1.0]}, -(2 * math.log(0.7) + math.log(0.6)) / 2),
        # label smoothing 0.3 over C = 3: targets y * 0.7 + 0.1
        (GC, PC, {"label_smoothing": 0.3},
         -(0.8 * math.log(0.7) + 0.1 * math.log(0.2) + 0.1 * math.log(0.1)
           + 0.1 * math.log(0.2) + 0.1 * math.log(0.2) + 0.8 * math.log(0.6)) / 2),
    ]

    @pytest.mark.parametrize("y, p, options, expected", CASES)
    def test_hand_computed(self, y, p, options, expected):
        assert value(Crossentropy(**options), y, p) == pytest.approx(expected, abs=TOL)

    @pytest.mark.parametrize("classes", [1, 4])
    @pytest.mark.parametrize("logits", [True, False])
    @pytest.mark.parametrize("onehot", [True, False])
    def test_matches_reference(self, classes, logits, onehot):
        y, p = random_case(classes + 70 + logits, classes, logits=logits, onehot=onehot)
        options = {"label_smoothing": 0.1,
                   "class_weights": [1.0, 2.0] if classes == 1 else [0.5, 1.0, 1.5, 2.0]}
        got = value(Crossentropy(from_logits=logits, **options), y, p)
        want = ref.crossentropy_loss(y, p, from_logits=logits, **options)
        assert got == pytest.approx(want, abs=REF_TOL)

    @pytest.mark.parametrize("labels", [f32([0, 2]), f32([[0], [2]]), f32([[1, 0, 0], [0, 0, 1]])])
    def test_image_level_targets(self, labels):
        # (N, C) logits with labels (N,), (N, 1) or one-hot (N, C): log-softmax by hand.
        z = f32([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
        lse0, lse1 = np.log(np.exp([2.0, 0.0, -1.0]).sum()), np.log(np.exp([0, 1, 0]).sum())
        expected = ((lse0 - 2.0) + (lse1 - 0.0)) / 2
        assert value(Crossentropy(from_logits=True), labels, z) == pytest.approx(expected,
                                                                                  abs=TOL)

    def test_binary_image_level(self):
        # Binary classification: (N, 1) logits, (N,) labels; BCE from logits by hand.
        z = f32([[1.0], [-2.0]])
        y = f32([1, 1])
        expected = (np.log1p(np.exp(-1.0)) + np.log1p(np.exp(2.0))) / 2
        assert value(Crossentropy(from_logits=True), y, z) == pytest.approx(expected, abs=TOL)

    def test_logits_applied_once(self):
        # Softmax inside the loss exactly once: logits z and probabilities softmax(z) agree.
        y, z = random_case(5, 4, logits=True)
        p = f32(ref.softmax(z))
        assert value(Crossentropy(from_logits=True), y, z) == pytest.approx(
            value(Crossentropy(), y, p), abs=1e-5)

    def test_extreme_logits_are_stable(self):
        z = f32([[[80.0, -80.0]], [[-80.0, 80.0]]])
        y = f32([[1], [1]])
        # pixel 0 is wrong by 160 nats, pixel 1 right: mean 80
        assert value(Crossentropy(from_logits=True), y, z) == pytest.approx(80.0, rel=1e-6)

    def test_binary_class_weights_need_two_entries(self):
        with pytest.raises(ValueError, match=r"binary head takes class_weights \[background,"):
            Crossentropy(class_weights=[1.0, 2.0, 3.0])(GB, PB)

    def test_class_weights_length_must_match_channels(self):
        with pytest.raises(ValueError, match=r"class_weights has 2 entries but y_pred has 3"):
            Crossentropy(class_weights=[1.0, 2.0])(GC, PC)

    def test_pixel_and_sample_weights(self):
        # per-pixel losses l0 = -log 0.8, l1 = -log 0.7 (binary example)
        l0, l1 = -math.log(0.8), -math.log(0.7)
        loss = Crossentropy()
        assert value(loss, GB, PB, f32([[2.0, 0.0]])) == pytest.approx(2 * l0 / 2, abs=TOL)
        # a per-sample weight (N,) broadcasts over the pixels
        assert value(loss, GB, PB, f32([3.0])) == pytest.approx(3 * (l0 + l1) / 2, abs=TOL)

    def test_invalid_label_smoothing(self):
        with pytest.raises(ValueError, match=r"`label_smoothing`=1.0; expected .* < 1"):
            Crossentropy(label_smoothing=1.0)


class TestWeightedCrossentropy:
    # y = [1, 0, 0, 0], p = [0.6, 0.2, 0.1, 0.3]: one positive in four pixels, f = 0.25
    Y = f32([[[1], [0], [0], [0]]])
    P = f32([[[0.6], [0.2], [0.1], [0.3]]])

    def test_balanced_hand_computed(self):
        # w_pos = 0.5 / 0.25 = 2, w_neg = 0.5 / 0.75 = 2/3
        neg = -(math.log(0.8) + math.log(0.9) + math.log(0.7))
        expected = (2 * -math.log(0.6) + 2 / 3 * neg) / 4
        assert value(WeightedCrossentropy(), self.Y, self.P) == pytest.approx(expected, abs=TOL)

    def test_balanced_is_half_positives_half_negatives(self):
        # same value written as 0.5 * mean BCE over positives + 0.5 * mean over negatives
        neg = -(math.log(0.8) + math.log(0.9) + math.log(0.7)) / 3
        assert value(WeightedCrossentropy(), self.Y, self.P) == pytest.approx(
            0.5 * -math.log(0.6) + 0.5 * neg, abs=TOL)

    def test_fixed_pos_weight(self):
        neg = -(math.log(0.8) + math.log(0.9) + math.log(0.7))
        expected = (3 * -math.log(0.6) + neg) / 4
        got = value(WeightedCrossentropy(pos_weight=3.0), self.Y, self.P)
        assert got == pytest.approx(expected, abs=TOL)

    def test_empty_mask(self):
        # no positives: negatives weigh 0.5 / 1
        y = np.zeros_like(self.Y)
        expected = 0.5 * -(math.log(0.4) + math.log(0.8) + math.log(0.9) + math.log(0.7)) / 4
        assert value(WeightedCrossentropy(), y, self.P) == pytest.approx(expected, abs=TOL)

    @pytest.mark.parametrize("logits", [True, False])
    @pytest.mark.parametrize("pos_weight", ["balanced", 5.0])
    def test_matches_reference(self, logits, pos_weight):
        y, p = random_case(80 + logits, 1, logits=logits)
        got = value(WeightedCrossentropy(from_logits=logits, pos_weight=pos_weight), y, p)
        want = ref.weighted_crossentropy_loss(y, p, from_logits=logits, pos_weight=pos_weight)
        assert got == pytest.approx(want, abs=REF_TOL)

    def test_refuses_softmax_head(self):
        with pytest.raises(ValueError, match=r"per-channel sigmoid loss; y_pred has 3"):
            WeightedCrossentropy()(GC, PC)

    @pytest.mark.parametrize("pos_weight, match", [
        (0.0, r"`pos_weight`=0.0; expected a finite number > 0"),
        ("auto", r"`pos_weight`='auto'; expected 'balanced' or a positive number"),
    ])
    def test_invalid_pos_weight(self, pos_weight, match):
        with pytest.raises(ValueError, match=match):
            WeightedCrossentropy(pos_weight=pos_weight)


# ----------------------------------------------------------- oracle outside the project


def keras_value(loss: keras.losses.Loss, y_true, y_pred, sample_weight=None) -> float:
    return float(keras.ops.convert_to_numpy(loss(y_true, y_pred, sample_weight)))


# Relative tolerance against Keras: both compute in float32 with different op orders.
KERAS_RTOL = 1e-5


class TestAgainstKeras:
    """Crossentropy and focal against Keras's own losses on random inputs. Keras reduces the
    same way (a mean over channels for its binary losses, then the mean over pixels and
    samples) and clips probabilities to [1e-7, 1 - 1e-7] like multiseg. Differences of
    convention are noted where they matter."""

    @staticmethod
    def case(seed: int, classes: int, *, logits: bool, multilabel: bool = False):
        """(labels or multi-hot / binary mask, one-hot or the same, predictions)."""
        rng = np.random.default_rng(seed)
        z = rng.normal(scale=2.0, size=(3, 5, 4, classes))
        if classes == 1 or multilabel:
            y = (rng.random(z.shape) > 0.6).astype("float32")
            p = ref.sigmoid(z)
            return y, y, f32(z if logits else p)
        labels = rng.integers(0, classes, size=z.shape[:-1])
        onehot = np.eye(classes, dtype="float32")[labels]
        return labels.astype("float32"), onehot, f32(z if logits else ref.softmax(z))

    @pytest.mark.parametrize("logits", [True, False])
    @pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
    @pytest.mark.parametrize("channels, multilabel", [(1, False), (3, True)])
    def test_binary_crossentropy(self, logits, label_smoothing, channels, multilabel):
        # Keras: y * (1 - ls) + 0.5 * ls, then the mean over the last axis, as ours
        y, _, p = self.case(1, channels, logits=logits, multilabel=multilabel)
        ours = value(Crossentropy(from_logits=logits, label_smoothing=label_smoothing,
                                  multilabel=multilabel), y, p)
        oracle = keras_value(keras.losses.BinaryCrossentropy(
            from_logits=logits, label_smoothing=label_smoothing), y, p)
        assert ours == pytest.approx(oracle, rel=KERAS_RTOL)

    @pytest.mark.parametrize("logits", [True, False])
    @pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
    def test_categorical_crossentropy(self, logits, label_smoothing):
        # Keras: y * (1 - ls) + ls / C, as ours; with probabilities Keras divides by their
        # sum first (softmax outputs sum to 1 within float32 rounding)
        labels, onehot, p = self.case(2, 4, logits=logits)
        oracle = keras_value(keras.losses.CategoricalCrossentropy(
            from_logits=logits, label_smoothing=label_smoothing), onehot, p)
        for y in (labels, onehot):
            ours = value(Crossentropy(from_logits=logits, label_smoothing=label_smoothing), y, p)
            assert ours == pytest.approx(oracle, rel=KERAS_RTOL)

    @pytest.mark.parametrize("logits", [True, False])
    def test_sparse_categorical_crossentropy(self, logits):
        labels, _, p = self.case(3, 5, logits=logits)
        oracle = keras_value(keras.losses.SparseCategoricalCrossentropy(from_logits=logits),
                             labels, p)
        assert value(Crossentropy(from_logits=logits), labels, p) == pytest.approx(
            oracle, rel=KERAS_RTOL)

    def test_class_weights_are_per_pixel_weights(self):
        # Ours multiplies each pixel's loss by the weight of its true class and keeps the
        # plain mean; Keras with that weight as a pixel sample weight does the same
        # (sum_over_batch_size divides by the pixel count, not by the sum of the weights).
        labels, onehot, z = self.case(4, 3, logits=True)
        weights = np.array([0.5, 2.0, 1.5], "float32")
        oracle = keras_value(keras.losses.CategoricalCrossentropy(from_logits=True), onehot, z,
                             weights[labels.astype(int)])
        ours = value(Crossentropy(from_logits=True, class_weights=list(weights)), labels, z)
        assert ours == pytest.approx(oracle, rel=KERAS_RTOL)

    @pytest.mark.parametrize("logits", [True, False])
    @pytest.mark.parametrize("gamma", [0.0, 2.0, 0.5])
    @pytest.mark.parametrize("channels, multilabel", [(1, False), (3, True)])
    def test_binary_focal(self, logits, gamma, channels, multilabel):
        # Without alpha: Keras's BinaryFocalCrossentropy without class balancing.
        y, _, p = self.case(5, channels, logits=logits, multilabel=multilabel)
        ours = value(Focal(from_logits=logits, gamma=gamma, multilabel=multilabel), y, p)
        oracle = keras_value(keras.losses.BinaryFocalCrossentropy(
            gamma=gamma, from_logits=logits), y, p)
        assert ours == pytest.approx(oracle, rel=KERAS_RTOL)

    @pytest.mark.parametrize("logits", [True, False])
    @pytest.mark.parametrize("alpha", [0.25, 0.8])
    def test_binary_focal_alpha(self, logits, alpha):
        # Same convention as Lin et al.: positives weigh alpha, negatives 1 - alpha; in
        # Keras only with apply_class_balancing=True (otherwise alpha is ignored).
        y, _, p = self.case(6, 1, logits=logits)
        ours = value(Focal(from_logits=logits, gamma=2.0, alpha=alpha), y, p)
        oracle = keras_value(keras.losses.BinaryFocalCrossentropy(
            apply_class_balancing=True, alpha=alpha, gamma=2.0, from_logits=logits), y, p)
        assert ours == pytest.approx(oracle, rel=KERAS_RTOL)

    @pytest.mark.parametrize("logits", [True, False])
    @pytest.mark.parametrize("alpha", [None, 0.25])
    def test_categorical_focal(self, logits, alpha):
        # Conventions differ for alpha: Keras's CategoricalFocalCrossentropy applies a scalar
        # alpha (default 0.25) to every class; ours takes one weight per class and none by
        # default. So ours alpha=None is Keras alpha=1.0, ours [a] * C is Keras alpha=a.
        labels, onehot, p = self.case(7, 4, logits=logits)
        ours = value(Focal(from_logits=logits, gamma=2.0,
                           alpha=None if alpha is None else [alpha] * 4), labels, p)
        oracle = keras_value(keras.losses.CategoricalFocalCrossentropy(
            alpha=1.0 if alpha is None else alpha, gamma=2.0, from_logits=logits), onehot, p)
        assert ours == pytest.approx(oracle, rel=KERAS_RTOL)


# ------------------------------------------------------------------ target/shape checks


class TestTargetShapes:
    """Classic mistakes caught at call time from static shapes, for every loss."""

    @pytest.mark.parametrize("name", sorted(set(LOSSES) - {"weighted_crossentropy"}))
    def test_onehot_with_wrong_channel_count(self, name):
        y = np.eye(4, dtype="float32")[np.zeros((1, 2, 2), int)]
        p = np.full((1, 2, 2, 3), 1 / 3, "float32")
        with pytest.raises(ValueError, match=r"looks one-hot with 4 channels but y_pred .* has"
                                             r" 3 classes"):
            build(name)(y, p)

    @pytest.mark.parametrize("name", sorted(LOSSES))
    def test_onehot_target_for_binary_head(self, name):
        y = np.eye(2, dtype="float32")[np.zeros((1, 2, 2), int)]
        p = np.full((1, 2, 2, 1), 0.5, "float32")
        with pytest.raises(ValueError, match=r"has 1 channel\(s\), so y_true must be a binary"
                                             r" mask .* needs a head with one channel per"):
            build(name)(y, p)

    def test_wrong_rank(self):
        with pytest.raises(ValueError, match=r"neither integer labels shaped \(1, 2\) nor"):
            Dice()(np.zeros((1,), "float32"), np.full((1, 2, 3), 1 / 3, "float32"))

    def test_spatial_mismatch(self):
        with pytest.raises(ValueError, match=r"y_true shape \(1, 3\) does not match y_pred"):
            Dice()(np.zeros((1, 3), "float32"), np.full((1, 2, 3), 1 / 3, "float32"))

    def test_multilabel_needs_multi_hot(self):
        with pytest.raises(ValueError, match=r"Integer labels need a softmax head"):
            Dice(multilabel=True)(GM, PM)

    def test_prediction_needs_channels(self):
        with pytest.raises(ValueError, match=r"rank >= 2"):
            Dice()(np.zeros((3,), "float32"), np.zeros((3,), "float32"))


# ------------------------------------------------------------------------------ gradients


# Predictions that break naive code: probabilities exactly 0 or 1, huge logits.
GRADIENT_CASES = [
    ("empty mask, all-0 probabilities", 0.0, False, 0.0),
    ("empty mask, all-1 probabilities", 0.0, False, 1.0),
    ("full mask, all-1 probabilities", 1.0, False, 1.0),
    ("full mask, all-0 probabilities", 1.0, False, 0.0),
    ("empty mask, logits -100", 0.0, True, -100.0),
    ("full mask, logits +100", 1.0, True, 100.0),
]


class TestGradients:
    @pytest.mark.parametrize("name", sorted(LOSSES))
    @pytest.mark.parametrize("why, target, logits, pred", GRADIENT_CASES)
    @pytest.mark.parametrize("smooth", [None, 0.0])
    def test_binary_gradients_are_finite(self, name, why, target, logits, pred, smooth):
        options = {} if smooth is None or "smooth" not in loss_options(name) else {
            "smooth": smooth}
        if name == "focal_tversky":
            options["gamma"] = 0.5  # fractional power: infinite slope at 0 if done naively
        loss = build({"name": name, **options}, from_logits=logits)
        y = np.full((2, 3, 3, 1), target, "float32")
        out, grad = gradient(loss, y, np.full((2, 3, 3, 1), pred, "float32"))
        assert math.isfinite(out), why
        assert np.all(np.isfinite(grad)), why

    @pytest.mark.parametrize("name", sorted(set(LOSSES) - {"weighted_crossentropy"}))
    @pytest.mark.parametrize("logits", [True, False])
    def test_multiclass_gradients_are_finite(self, name, logits):
        # one-hot predictions equal to the target, background only (classes 1, 2 empty)
        y = np.zeros((1, 3, 3), "float32")
        p = np.zeros((1, 3, 3, 3), "float32")
        p[..., 0] = 100.0 if logits else 1.0
        options = {"gamma": 0.5} if name in ("focal", "focal_tversky") else {}
        out, grad = gradient(build({"name": name, **options}, from_logits=logits), y, p)
        assert math.isfinite(out) and np.all(np.isfinite(grad))

    def test_dice_gradient_sign(self):
        # Raising the probability of a foreground pixel lowers the Dice loss.
        _, grad = gradient(Dice(), G1, P1)
        assert grad[0, 1, 0] < 0 and grad[0, 3, 0] > 0


class TestNonFinite:
    """A NaN from the model must show in every loss (non-finite detection relies on it);
    zero-denominator guards and clips must not turn it into a finite number."""

    # weighted_crossentropy refuses softmax heads (tested in TestWeightedCrossentropy)
    @pytest.mark.parametrize("name, classes", [(n, c) for n in sorted(LOSSES) for c in (1, 3)
                                               if not (n == "weighted_crossentropy" and c > 1)])
    @pytest.mark.parametrize("logits", [True, False])
    def test_nan_prediction_gives_nan_loss(self, name, logits, classes):
        y = np.zeros((2, 3, 3, 1) if classes == 1 else (2, 3, 3), "float32")
        p = np.full((2, 3, 3, classes), 1.0 if logits else 1 / classes, "float32")
        p[1, 1, 1, 0] = np.nan  # one pixel of one sample
        assert math.isnan(value(build(name, from_logits=logits), y, p))


# ---------------------------------------------------------------------- property tests


def _masks(draw, shape):
    bits = draw(st.lists(st.booleans(), min_size=int(np.prod(shape)),
                         max_size=int(np.prod(shape))))
    return np.asarray(bits, "float32").reshape(shape)


@st.composite
def binary_case(draw):
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 4)), 1)
    y = _masks(draw, shape)
    p = np.asarray(draw(st.lists(st.floats(0, 1, width=32), min_size=y.size,
                                 max_size=y.size)), "float32").reshape(shape)
    return y, p


@st.composite
def multiclass_case(draw):
    classes = draw(st.integers(2, 4))
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 3)))
    size = int(np.prod(shape))
    labels = np.asarray(draw(st.lists(st.integers(0, classes - 1), min_size=size,
                                      max_size=size)), "float32").reshape(shape)
    z = np.asarray(draw(st.lists(st.floats(-8, 8, width=32), min_size=size * classes,
                                 max_size=size * classes)), "float32")
    return labels, z.reshape(shape + (classes,))


REGION = ["dice", "jaccard", "generalized_dice", "tversky", "focal_tversky"]
PIXEL = ["focal", "crossentropy", "weighted_crossentropy"]
PROPERTY = settings(max_examples=25, deadline=None)


class TestProperties:
    @PROPERTY
    @given(case=binary_case(), name=st.sampled_from(REGION),
           per_sample=st.booleans())
    def test_region_losses_in_unit_interval(self, case, name, per_sample):
        y, p = case
        out = value(build({"name": name, "per_sample": per_sample}), y, p)
        assert -TOL <= out <= 1 + TOL

    @PROPERTY
    @given(case=multiclass_case(), name=st.sampled_from(REGION),
           background=st.booleans())
    def test_multiclass_region_losses_in_unit_interval(self, case, name, background):
        y, z = case
        loss = build({"name": name, "include_background": background}, from_logits=True)
        assert -TOL <= value(loss, y, z) <= 1 + TOL

    @PROPERTY
    @given(case=binary_case(), name=st.sampled_from(PIXEL))
    def test_pixel_losses_non_negative(self, case, name):
        y, p = case
        assert value(build(name), y, p) >= 0

    @PROPERTY
    @given(case=multiclass_case(), name=st.sampled_from(["dice", "jaccard", "tversky",
                                                          "focal_tversky", "generalized_dice",
                                                          "focal", "crossentropy"]))
    def test_perfect_prediction_is_minimal(self, case, name):
        # One-hot probabilities equal to the target: 0 for every loss (crossentropy and
        # focal up to the 1e-7 clipping of probabilities).
        y, z = case
        onehot = np.eye(z.shape[-1], dtype="float32")[y.astype(int)]
        assert value(build(name), y, onehot) == pytest.approx(0.0, abs=1e-5)

    @PROPERTY
    @given(a=binary_case(), name=st.sampled_from(["dice", "jaccard"]))
    def test_symmetric_on_hard_masks(self, a, name):
        # ignore_empty off: it looks at the target only, so swapping roles would change it
        y, p = a
        hard = (p > 0.5).astype("float32")
        loss = build({"name": name, "ignore_empty": False})
        assert value(loss, y, hard) == pytest.approx(value(loss, hard, y), abs=TOL)

    @PROPERTY
    @given(a=binary_case(), alpha=st.floats(0.05, 1), beta=st.floats(0.05, 1))
    def test_tversky_swaps_alpha_beta_with_roles(self, a, alpha, beta):
        # Swapping target and prediction turns FP into FN: TI(g, p; a, b) = TI(p, g; b, a).
        # ignore_empty off: it looks at the target only, so swapping roles would change it
        y, p = a
        hard = (p > 0.5).astype("float32")
        one = value(Tversky(alpha=alpha, beta=beta, ignore_empty=False), y, hard)
        two = value(Tversky(alpha=beta, beta=alpha, ignore_empty=False), hard, y)
        assert one == pytest.approx(two, abs=1e-5)

    @PROPERTY
    @given(case=multiclass_case(), seed=st.integers(0, 1000),
           name=st.sampled_from(REGION + ["focal", "crossentropy"]))
    def test_invariant_to_pixel_and_class_permutations(self, case, seed, name):
        y, z = case
        rng = np.random.default_rng(seed)
        loss = build(name, from_logits=True)
        base = value(loss, y, z)
        n, h, w = y.shape
        order = rng.permutation(h * w)
        y2 = y.reshape(n, -1)[:, order].reshape(n, h, w)
        z2 = z.reshape(n, h * w, -1)[:, order].reshape(z.shape)
        assert value(loss, y2, z2) == pytest.approx(base, abs=1e-5)
        classes = rng.permutation(z.shape[-1])  # relabel: class c becomes classes[c]
        y3 = classes[y.astype(int)].astype("float32")
        z3 = np.empty_like(z)
        z3[..., classes] = z
        assert value(loss, y3, z3) == pytest.approx(base, abs=1e-5)

    @PROPERTY
    @given(case=binary_case(), name=st.sampled_from(REGION + PIXEL))
    def test_matches_reference(self, case, name):
        # Keep away from the 1e-7 clip: 1 - 1e-7 rounds to 1 - 1.19e-7 in float32, so at the
        # clip the float32 and float64 logs differ by ~1% (a precision limit, not a formula).
        y, p = case
        p = np.clip(p, 1e-3, 1 - 1e-3)
        reference = {"dice": ref.dice_loss, "jaccard": ref.jaccard_loss,
                     "generalized_dice": ref.generalized_dice_loss,
                     "tversky": ref.tversky_loss,
                     "focal_tversky": lambda *a: ref.tversky_loss(*a, gamma=0.75),
                     "focal": ref.focal_loss, "crossentropy": ref.crossentropy_loss,
                     "weighted_crossentropy": ref.weighted_crossentropy_loss}[name]
        assert value(build(name), y, p) == pytest.approx(reference(y, p), abs=REF_TOL)


# ------------------------------------------------------------------------------ registry


class TestLosses:
    def test_every_name_builds_its_class(self):
        for name, cls in LOSSES.items():
            loss = build(name)
            assert type(loss) is cls and loss.name == name

    def test_required_names(self):
        required = {"dice", "jaccard", "iou", "generalized_dice", "tversky", "focal_tversky",
                    "focal", "crossentropy", "weighted_crossentropy"}
        assert required <= set(LOSSES)

    @pytest.mark.parametrize("name", sorted(LOSSES))
    def test_docstrings_have_required_sections(self, name):
        doc = LOSSES[name].__doc__
        for section in ("Formula", "Args:", "Shape:", "Raises:", "Example:", "Reference:"):
            assert section in doc, f"{name} docstring lacks {section}"


class TestLossOptions:
    def test_dice(self):
        assert loss_options("dice") == {
            "smooth": None, "smooth_nr": 1e-5, "smooth_dr": 1e-5, "squared": False,
            "per_sample": True, "include_background": True, "class_weights": None,
            "ignore_empty": True, "multilabel": False}

    @pytest.mark.parametrize("name", sorted(LOSSES))
    def test_excludes_head_decided_arguments(self, name):
        options = loss_options(name)
        assert not {"from_logits", "name", "reduction", "dtype"} & set(options)
        assert type(build({"name": name, **options})) is LOSSES[name]

    def test_option_names_from_the_issue(self):
        assert {"alpha", "beta"} <= set(loss_options("tversky"))
        assert {"alpha", "beta", "gamma"} <= set(loss_options("focal_tversky"))
        assert {"alpha", "gamma"} <= set(loss_options("focal"))
        assert {"label_smoothing", "class_weights"} <= set(loss_options("crossentropy"))
        assert loss_options("generalized_dice")["weight_type"] == "square"
        for name in ("dice", "jaccard", "tversky", "focal_tversky"):
            assert loss_options(name)["ignore_empty"] is True

    def test_unknown_name(self):
        with pytest.raises(ValueError, match=r"unknown loss 'dise' \(did you mean 'dice'\?\)"):
            loss_options("dise")


class TestCheckChannels:
    """Per-channel options against the head's channels, named by key for the recipe reader."""

    @pytest.mark.parametrize("name, options, classes, multilabel, key", [
        ("crossentropy", {"class_weights": [1.0, 2.0, 3.0]}, 1, False, "class_weights"),
        ("dice", {"class_weights": [1.0, 2.0]}, 3, False, "class_weights"),
        ("focal", {"alpha": [0.2, 0.8]}, 1, False, "alpha"),
        ("focal", {"alpha": [0.2, 0.8]}, 3, False, "alpha"),
        ("focal", {"alpha": 0.25}, 3, False, "alpha"),
        ("weighted_crossentropy", {}, 3, False, "name"),
    ])
    def test_refused(self, name, options, classes, multilabel, key):
        with pytest.raises(OptionError) as caught:
            check_channels(name, options, classes=classes, multilabel=multilabel)
        assert caught.value.key == key

    @pytest.mark.parametrize("name, options, classes, multilabel", [
        ("crossentropy", {"class_weights": [1.0, 2.0]}, 1, False),  # [background, foreground]
        ("dice", {"class_weights": [1.0, 2.0, 3.0]}, 3, False),
        ("focal", {"alpha": [0.2, 0.3, 0.5]}, 3, False),
        ("focal", {"alpha": 0.25}, 3, True),  # independent sigmoids take one number
        ("weighted_crossentropy", {}, 3, True),
    ])
    def test_accepted(self, name, options, classes, multilabel):
        check_channels(name, options, classes=classes, multilabel=multilabel)


class TestBuild:
    def test_string_and_mapping(self):
        loss = build({"name": "dice", "smooth": 1.0})
        assert isinstance(loss, keras.losses.Loss) and isinstance(loss, Dice)
        assert loss.smooth_nr == loss.smooth_dr == 1.0
        assert isinstance(build("focal"), Focal)

    def test_weight_one_is_plain_weight_other_is_combined(self):
        assert isinstance(build({"name": "dice", "weight": 1.0}), Dice)
        combined = build({"name": "dice", "weight": 0.5})
        assert isinstance(combined, CombinedLoss)
        assert [(label, w) for label, w, _ in combined.terms] == [("dice", 0.5)]

    def test_list_is_combined_with_unique_labels(self):
        loss = build(["dice", {"name": "crossentropy", "weight": 2.0}, {"name": "dice"}])
        assert [(label, w) for label, w, _ in loss.terms] == [
            ("dice", 1.0), ("crossentropy", 2.0), ("dice_2", 1.0)]

    def test_from_logits_injected(self):
        loss = build(["dice", "focal"], from_logits=True)
        assert all(term.from_logits for _, _, term in loss.terms)
        assert build("dice").from_logits is False

    def test_from_logits_conflict(self):
        with pytest.raises(ValueError, match=r"loss 'dice': entry has from_logits=False but"
                                             r" the head declares from_logits=True"):
            build({"name": "dice", "from_logits": False}, from_logits=True)
        # agreeing values are fine
        assert build({"name": "dice", "from_logits": True}, from_logits=True).from_logits

    ERRORS = [
        ("dise", r"unknown loss 'dise' \(did you mean 'dice'\?\)\. Expected one of: dice,"),
        ("zzz", r"unknown loss 'zzz'\. Expected one of: dice, jaccard"),
        ({"name": "dice", "smoth": 1.0},
         r"smoth: unknown option of loss 'dice' \(did you mean 'smooth'\?\)\. Options:"),
        ({"name": "focal", "beta": 1.0}, r"beta: unknown option of loss 'focal'"),
        ({"name": "dice", "squared": 1}, r"squared: expected a boolean, got an integer \(1\)"),
        ({"smooth": 1.0}, r"has no 'name'"),
        ({"name": "dice", "weight": -1.0}, r"`weight`=-1.0"),
        ({"name": "dice", "smooth": -2.0}, r"Dice: invalid `smooth`=-2.0"),
        ([], r"empty list of loss terms"),
        (3, r"a loss entry is a name or a mapping"),
        ({"name": 3}, r"loss name must be a string; got 3"),
    ]

    @pytest.mark.parametrize("entry, match", ERRORS)
    def test_errors(self, entry, match):
        with pytest.raises(ValueError, match=match):
            build(entry)


class TestCombinedLoss:
    def test_weighted_sum(self):
        # Dice of G1/P1 (TestDice): 1 - 2.6 / 3.5. BCE by hand over its 4 pixels: -log 0.9,
        # -log 0.4, -log 0.8 and -log(1 - 0) (p = 0 is clipped to 1e-7: about 1e-7, below TOL).
        loss = CombinedLoss([("dice", 1.0, Dice(smooth=0.0)), ("ce", 0.5, Crossentropy())])
        bce = -(math.log(0.9) + math.log(0.4) + math.log(0.8)) / 4
        assert value(loss, G1, P1) == pytest.approx((1 - 2.6 / 3.5) + 0.5 * bce, abs=TOL)

    def test_mixes_per_sample_and_per_pixel_terms_with_sample_weights(self):
        # Each term is reduced by its own rules, then weighted. Sample weights [1, 3].
        # Dice (smooth 0, ignore_empty) per sample: 0 and 1/7 (TestDice MULTI_CASES), so
        # (1 * 0 + 3 * 1/7) / 2. Crossentropy per pixel: sample 0 is one-hot right (0, up to
        # the 1e-7 clip), sample 1: -log 1 and -log 0.5, weighted 3: 3 * log 2 / 4 pixels.
        sw = f32([1.0, 3.0])
        loss = build([{"name": "dice", "smooth": 0.0}, {"name": "crossentropy", "weight": 0.25}])
        expected = 3 / 7 / 2 + 0.25 * 3 * math.log(2) / 4
        assert value(loss, GM, PM, sw) == pytest.approx(expected, abs=TOL)

    def test_pairs_take_the_loss_name(self):
        loss = CombinedLoss([(1.0, Dice()), (1.0, Dice()), (2.0, Focal())])
        assert [label for label, _, _ in loss.terms] == ["dice", "dice_2", "focal"]

    def test_invalid(self):
        with pytest.raises(ValueError, match=r"`terms`=\[\]; expected a non-empty list"):
            CombinedLoss([])
        with pytest.raises(ValueError, match=r"`terms\[0\] loss`='dice'; expected a keras"):
            CombinedLoss([("dice", 1.0, "dice")])
        with pytest.raises(ValueError, match=r"`terms\[0\] weight`=-1"):
            CombinedLoss([("dice", -1, Dice())])


# ------------------------------------------------------------------------- serialisation


NON_DEFAULT = {
    "dice": {"smooth_nr": 0.5, "smooth_dr": 2.0, "squared": True, "per_sample": False,
             "include_background": False, "class_weights": [1.0, 2.0, 3.0],
             "ignore_empty": False},
    "jaccard": {"smooth": 1.0, "squared": True, "class_weights": [1.0, 2.0, 3.0]},
    "iou": {"per_sample": False},
    "generalized_dice": {"weight_type": "simple", "per_sample": False,
                         "include_background": False},
    "tversky": {"alpha": 0.1, "beta": 0.9, "smooth": 0.0, "class_weights": [1.0, 1.0, 2.0],
                "ignore_empty": False},
    "focal_tversky": {"gamma": 1.5, "alpha": 0.6, "per_sample": False, "ignore_empty": False},
    "focal": {"gamma": 1.0, "alpha": [0.2, 0.3, 0.5]},
    "crossentropy": {"label_smoothing": 0.1, "class_weights": [1.0, 2.0, 3.0]},
    "weighted_crossentropy": {"pos_weight": 4.0, "multilabel": True},
}


class TestSerialization:
    def test_covers_every_loss(self):
        assert set(NON_DEFAULT) == set(LOSSES)

    @pytest.mark.parametrize("name", sorted(NON_DEFAULT))
    def test_round_trip(self, name):
        loss = build({"name": name, **NON_DEFAULT[name]}, from_logits=True)
        config = keras.saving.serialize_keras_object(loss)
        assert config["registered_name"].startswith("multiseg>")
        again = keras.saving.deserialize_keras_object(config)
        assert type(again) is type(loss) and again.get_config() == loss.get_config()
        y, z = random_case(1, 3, logits=True, onehot=name == "weighted_crossentropy")
        assert value(again, y, z) == pytest.approx(value(loss, y, z), abs=TOL)

    def test_combined_round_trip(self):
        loss = build(["dice", {"name": "focal", "weight": 0.5, "gamma": 1.0}, "dice"],
                     from_logits=True)
        again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
        assert [(label, w) for label, w, _ in again.terms] == [
            (label, w) for label, w, _ in loss.terms]
        y, z = random_case(2, 3, logits=True)
        assert value(again, y, z) == pytest.approx(value(loss, y, z), abs=TOL)

    def test_model_fit_save_and_reload(self, tmp_path):
        # a symbolic batch size (fit) with per-sample and batch reductions, then model.keras
        inputs = keras.Input((4, 4, 2))
        outputs = keras.layers.Conv2D(3, 1, name="mask")(inputs)
        model = keras.Model(inputs, outputs)
        loss = build(["dice", {"name": "tversky", "per_sample": False}, "crossentropy",
                      "generalized_dice"], from_logits=True)
        model.compile(optimizer="sgd", loss=loss)
        rng = np.random.default_rng(0)
        x = f32(rng.normal(size=(4, 4, 4, 2)))
        y = rng.integers(0, 3, size=(4, 4, 4)).astype("float32")
        history = model.fit(x, y, batch_size=2, epochs=1, verbose=0)
        assert np.isfinite(history.history["loss"][0])
        model.save(tmp_path / "model.keras")
        again = keras.models.load_model(tmp_path / "model.keras")
        assert [label for label, _, _ in again.loss.terms] == [
            "dice", "tversky", "crossentropy", "generalized_dice"]
        assert value(again.loss, y, model.predict(x, verbose=0)) == pytest.approx(
            value(loss, y, model.predict(x, verbose=0)), abs=1e-5)


# ------------------------------------------------------------------------ check_targets


class TestCheckTargets:
    VALID = [
        (np.array([[0, 1], [1, 0]]), 1, None),
        (np.array([[[0], [1]]], dtype=bool), 1, None),
        (np.array([[0, 3], [2, 1]]), 4, None),
        (np.array([[0.0, 3.0]]), 4, "labels"),
        (np.eye(3)[np.array([[0, 1], [2, 2]])], 3, None),
        (np.eye(3)[np.array([0, 2])], 3, "onehot"),
        (np.array([0, 1, 1]), 2, None),
    ]

    @pytest.mark.parametrize("y, classes, encoding", VALID)
    def test_valid(self, y, classes, encoding):
        check_targets(y, classes=classes, where="heads.mask", encoding=encoding)

    INVALID = [
        (np.array([[0, 255]]), 1, None,
         r"heads.mask: a binary mask must hold only 0 and 1; found \[255\] in 1 pixels \(a"
         r" 0/255 image mask\? divide by 255\)"),
        (np.array([[0, 0.5]]), 1, None, r"found \[0.5\]"),
        (np.array([[0, 4], [5, -1]]), 4, None,
         r"label values must be in \[0, 4\) for classes=4; found \[-1, 4, 5\] in 3 pixels"),
        (np.array([[0.5, 1.0]]), 4, None, r"labels must be integers; found \[0.5\]"),
        (np.eye(4)[np.zeros((1, 2, 2), int)], 3, None,
         r"look one-hot with 4 channels .* classes=3"),
        (np.eye(4)[np.zeros((1, 2), int)], 3, "onehot", r"one-hot targets need a last axis of 3"),
        (np.full((1, 2, 3), 0.5), 3, "onehot", r"sum to 1"),
        (np.array([[np.nan, 1]]), 2, None, r"1 NaN or infinite values"),
        (np.array([["a", "b"]]), 2, None, r"must be numeric"),
        (np.zeros((0, 3)), 2, None, r"targets are empty"),
        (np.zeros((1, 3)), 0, None, r"invalid classes=0"),
        (np.zeros((1, 3)), 1, "onehot", r"binary head \(classes=1\) takes a 0/1 mask"),
        (np.zeros((1, 3)), 3, "binary", r"encoding='binary' needs classes=1"),
        (np.zeros((1, 3)), 3, "sparse", r"invalid encoding='sparse'"),
    ]

    @pytest.mark.parametrize("y, classes, encoding, match", INVALID)
    def test_invalid(self, y, classes, encoding, match):
        with pytest.raises(ValueError, match=match):
            check_targets(y, classes=classes, where="heads.mask", encoding=encoding)


PURE_FUNCTIONS = [
    # (function, reference, output shape on G1/P1 (1, 4, 1): (N,) or one value per pixel)
    (losses.dice, ref.dice_loss, (1,)),
    (losses.jaccard, ref.jaccard_loss, (1,)),
    (losses.generalized_dice, ref.generalized_dice_loss, (1,)),
    (losses.tversky, ref.tversky_loss, (1,)),
    (losses.focal, ref.focal_loss, (1, 4)),
    (losses.crossentropy, ref.crossentropy_loss, (1, 4)),
    (losses.weighted_crossentropy, ref.weighted_crossentropy_loss, (1, 4)),
]


@pytest.mark.parametrize("fn, reference, shape", PURE_FUNCTIONS)
def test_pure_functions(fn, reference, shape):
    # pure function + thin class, as keras's dice/Dice: the function alone gives the
    # documented shape, and its mean is the reference loss
    out = keras.ops.convert_to_numpy(fn(G1, P1))
    assert out.shape == shape
    assert float(np.mean(out)) == pytest.approx(reference(G1, P1), abs=REF_TOL)


class TestDocsTable:
    """docs/losses.md's table (made with reference_np) agrees with the library."""

    LABELS = f32([[[0, 1, 2], [2, 2, 0]]])
    PROBS = f32([[[[0.7, 0.2, 0.1], [0.3, 0.6, 0.1], [0.2, 0.2, 0.6]],
                  [[0.1, 0.3, 0.6], [0.5, 0.1, 0.4], [0.6, 0.3, 0.1]]]])
    MASK = f32([[[[0], [1], [0]], [[0], [0], [1]]]])
    FG = f32([[[[0.1], [0.7], [0.4]], [[0.2], [0.6], [0.9]]]])

    @staticmethod
    def rows():
        text = (Path(__file__).parent.parent / "docs" / "losses.md").read_text()
        section = text.split("## Values on a fixed example", 1)[1]
        pattern = re.compile(r"^\| `(\w+)` \| (.+?) \| (\S+) \| (\S+) \|$", re.M)
        out = []
        for name, shown, multi, binary in pattern.findall(section):
            options = {} if shown == "defaults" else {
                k: ast.literal_eval(v) for k, v in (o.split("=") for o in shown.split(", "))}
            out.append((name, options, multi, float(binary)))
        return out

    def test_covers_every_loss(self):
        assert {name for name, *_ in self.rows()} == set(LOSSES) - {"iou"}

    def test_values(self):
        for name, options, multi, binary in self.rows():
            loss = build({"name": name, **options})
            # 2e-6: the table is rounded to 6 decimals (5e-7) and computed in float64
            assert value(loss, self.MASK, self.FG) == pytest.approx(binary, abs=2e-6), name
            if multi != "n/a":
                got = value(loss, self.LABELS, self.PROBS)
                assert got == pytest.approx(float(multi), abs=2e-6), (name, options)
