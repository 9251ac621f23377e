"""Batch normalisation after short runs: PreciseBN statistics and the inference-mode check."""

from __future__ import annotations

import copy
import json
import os

import keras
import numpy as np
import pytest
from conftest import TINY_RAW

import multiseg
from multiseg.batchnorm import (
    MODE_GAP_MARGIN,
    ModeGap,
    batch_norm_layers,
    mode_gap_warning,
    recompute_statistics,
)
from multiseg.data import build_data
from multiseg.models.unet import norm_layer
from multiseg.recipe import RecipeError, from_dict
from multiseg.train import train

EPSILON = 1e-3  # Keras BatchNormalization's default


def _two_norm_model() -> keras.Model:
    """BN -> x*2 + 1 -> BN: the second layer's statistics depend on the first's output."""
    x = keras.Input((4, 4, 3))
    first = keras.layers.BatchNormalization(momentum=0.99, name="first")(x)
    shifted = keras.layers.Rescaling(2.0, offset=1.0)(first)
    second = keras.layers.BatchNormalization(momentum=0.99, name="second")(shifted)
    return keras.Model(x, second)


class TestRecomputeStatistics:
    def test_moving_statistics_are_the_mean_of_batch_statistics(self):
        rng = np.random.default_rng(0)
        batches = [rng.normal(loc, scale, (5, 4, 4, 3)).astype("float32")
                   for loc, scale in ((3.0, 2.0), (-1.0, 0.5), (0.5, 1.0))]
        model = _two_norm_model()
        assert recompute_statistics(model, batches) == 3

        # Independent NumPy: per-batch biased moments; the second layer sees the first layer's
        # training-mode output (normalised by its own batch, gamma 1, beta 0), times 2 plus 1.
        axes = (0, 1, 2)
        means = [b.mean(axes) for b in batches]
        variances = [b.var(axes) for b in batches]
        shifted = [2 * (b - m) / np.sqrt(v + EPSILON) + 1
                   for b, m, v in zip(batches, means, variances, strict=True)]
        first, second = model.get_layer("first"), model.get_layer("second")
        # float32 sums over 80 values: 1e-5 relative.
        np.testing.assert_allclose(first.moving_mean.numpy(), np.mean(means, 0), rtol=1e-5,
                                   atol=1e-6)
        np.testing.assert_allclose(first.moving_variance.numpy(), np.mean(variances, 0),
                                   rtol=1e-5)
        np.testing.assert_allclose(second.moving_mean.numpy(),
                                   np.mean([s.mean(axes) for s in shifted], 0), rtol=1e-5)
        np.testing.assert_allclose(second.moving_variance.numpy(),
                                   np.mean([s.var(axes) for s in shifted], 0), rtol=1e-4)
        # The layers keep the momentum training uses.
        assert [layer.momentum for layer in batch_norm_layers(model)] == [0.99, 0.99]

    def test_earlier_statistics_are_forgotten(self):
        rng = np.random.default_rng(1)
        batch = rng.normal(7.0, 1.0, (5, 4, 4, 3)).astype("float32")
        model = _two_norm_model()
        first = model.get_layer("first")
        first.moving_mean.assign(np.full(3, -100.0, "float32"))
        recompute_statistics(model, [batch])
        np.testing.assert_allclose(first.moving_mean.numpy(), batch.mean((0, 1, 2)), rtol=1e-5)

    def test_dropout_generators_are_left_where_they_were(self):
        x = keras.Input((4, 4, 3))
        y = keras.layers.Dropout(0.5, seed=3)(keras.layers.BatchNormalization()(x))
        model = keras.Model(x, y)
        states = [v for v in model.non_trainable_variables if "seed_generator_state" in v.path]
        assert states, "the dropout layer should own a random generator"
        before = [np.asarray(v).copy() for v in states]
        recompute_statistics(model, [np.ones((2, 4, 4, 3), "float32")] * 2)
        for variable, value in zip(states, before, strict=True):
            np.testing.assert_array_equal(np.asarray(variable), value)

    def test_the_probe_runs_compiled_without_a_first_eager_call(self):
        # Keras's JAX predict_on_batch calls a model with an unbuilt layer eagerly first,
        # compiling each operation of the network on its own.
        from multiseg.batchnorm import statistics_probe

        probe = statistics_probe(_two_norm_model())
        assert all(layer.built for layer in probe._flatten_layers())
        calls = []
        inner = probe.inner
        probe.inner = lambda inputs, training: calls.append(training) or inner(
            inputs, training=training)
        probe.predict_on_batch(np.ones((2, 4, 4, 3), "float32"))
        assert calls == [True]  # traced once, in training mode; never called eagerly

    def test_model_without_batch_norm_is_untouched(self):
        x = keras.Input((4, 4, 3))
        model = keras.Model(x, keras.layers.GroupNormalization(groups=-1)(x))
        before = [w.copy() for w in model.get_weights()]
        assert recompute_statistics(model, [np.ones((2, 4, 4, 3), "float32")]) == 0
        for w, b in zip(model.get_weights(), before, strict=True):
            np.testing.assert_array_equal(w, b)


class TestInstanceNorm:
    def test_normalises_each_channel_of_each_sample(self):
        layer = norm_layer("instance", 3, groups=8, name="n")
        x = np.random.default_rng(2).normal(4.0, 3.0, (2, 5, 5, 3)).astype("float32")
        y = keras.ops.convert_to_numpy(layer(x))
        # Hand formula: (x - mean_hw) / sqrt(var_hw + eps) per sample and channel; Keras's
        # GroupNormalization epsilon is 1e-3.
        mean, var = x.mean((1, 2), keepdims=True), x.var((1, 2), keepdims=True)
        np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-3), atol=1e-4)

    def test_batch_norm_takes_the_recipe_momentum(self):
        assert norm_layer("batch", 3, groups=8, name="n", momentum=0.8).momentum == 0.8


class TestRecipeKeys:
    def test_defaults(self, tiny_raw):
        recipe = from_dict(tiny_raw)
        assert recipe.model.norm_momentum == 0.9
        assert recipe.train.precise_bn == 8

    @pytest.mark.parametrize("value", [0.0, 1.0, 1.5])
    def test_momentum_outside_the_open_unit_interval(self, tiny_raw, value):
        tiny_raw["model"]["norm_momentum"] = value
        with pytest.raises(RecipeError, match=r"model\.norm_momentum.*\(0, 1\)"):
            from_dict(tiny_raw)

    def test_instance_norm_builds_without_batch_norm_layers(self, tiny_raw):
        from multiseg.models.build import build_model

        tiny_raw["model"]["norm"] = "instance"
        model = build_model(from_dict(tiny_raw), channels=1)
        assert not batch_norm_layers(model)
        assert any(isinstance(layer, keras.layers.GroupNormalization) for layer in model.layers)


class TestWarning:
    GAPS = [ModeGap("mask", "dice", 0.12, 0.84), ModeGap("shape", "accuracy", 0.70, 0.72)]

    def test_names_the_head_the_figures_and_the_keys(self):
        text = mode_gap_warning(self.GAPS, norm="batch", norm_momentum=0.99, precise_bn=0,
                                dropout=0.0, batches=4)
        assert "mask dice 0.120 in inference mode, 0.840 in training mode" in text
        assert "shape" not in text  # within the margin
        for key in ("train.precise_bn", "model.norm_momentum: 0.9 (now 0.99)", "model.norm"):
            assert key in text

    @pytest.mark.parametrize("inference, training", [
        (0.90, 0.90 + MODE_GAP_MARGIN * 0.9),  # within the margin
        (0.90, 0.70),  # better as used than as trained: nothing to fix
    ])
    def test_silent(self, inference, training):
        gaps = [ModeGap("mask", "dice", inference, training)]
        assert mode_gap_warning(gaps, norm="batch", norm_momentum=0.9, precise_bn=8,
                                dropout=0.0, batches=4) is None


def _short_run_raw(tmp_path, name: str, **model) -> dict:
    """About 100 steps on a few dozen images, batch 8: 48 images, 24 steps (two passes) x 4
    epochs; few epochs keep validation and checkpoints from dominating the test's time."""
    raw = copy.deepcopy(TINY_RAW)
    raw["data"].update(source={"kind": "cells", "max_cells": 6}, train=48, val=16)
    raw["model"] = {"filters": [8, 16], "norm": "batch", **model}
    raw["heads"] = {"cell": {"kind": "segmentation", "classes": 1, "target": "mask",
                             "loss": ["dice", "crossentropy"], "metrics": ["dice", "iou"]}}
    raw["train"].update(epochs=4, steps_per_epoch=24, batch_size=8)
    raw["output"] = str(tmp_path / name)
    return raw


def _dice_both_modes(run_dir: str, recipe) -> tuple[float, float]:
    """Dice of the reloaded model.keras on the validation set, in inference and in training
    mode, from pixel counts in NumPy (independent of multiseg's metrics)."""
    model = multiseg.load_model(os.path.join(run_dir, "model.keras"))
    data = build_data(recipe, frequencies=False, log_report=False)
    scores = {}
    for training in (False, True):
        inter = total = 0
        for i in range(len(data.val)):
            images, targets = data.val[i]
            logits = keras.ops.convert_to_numpy(model(images, training=training)["cell"])
            pred, truth = logits > 0, np.asarray(targets["cell"]).reshape(logits.shape) > 0.5
            inter += np.sum(pred & truth)
            total += np.sum(pred) + np.sum(truth)
        scores[training] = 2 * inter / total
    return scores[False], scores[True]


class TestShortRun:
    def test_inference_mode_matches_training_mode(self, tmp_path):
        recipe = from_dict(_short_run_raw(tmp_path, "defaults"))
        result = train(recipe, verbose=0)
        inference, training = _dice_both_modes(result.run_dir, recipe)
        assert training > 0.5, "the short run should learn something"
        assert abs(inference - training) < 0.05, (inference, training)
        with open(os.path.join(result.run_dir, "metrics.json")) as handle:
            check = json.load(handle)["inference_check"]
        assert check["warning"] is None
        assert set(check["metrics"]["cell"]) == {"dice", "iou"}
        if keras.backend.backend() == "tensorflow":
            # The epochs' prediction images and the check's inference-mode pass predict
            # batches of one shape: one trace between them.
            assert result.model.predict_function.experimental_get_tracing_count() == 1

    def test_keras_defaults_are_caught_by_the_check(self, tmp_path, capsys):
        # Keras's momentum 0.99 without PreciseBN: ~100 steps leave the moving statistics
        # far from the data's, which the post-training check reports.
        raw = _short_run_raw(tmp_path, "keras-defaults", norm_momentum=0.99)
        raw["train"]["precise_bn"] = 0
        recipe = from_dict(raw)
        result = train(recipe, verbose=0)
        inference, training = _dice_both_modes(result.run_dir, recipe)
        assert training - inference > MODE_GAP_MARGIN, (inference, training)
        with open(os.path.join(result.run_dir, "metrics.json")) as handle:
            warning = json.load(handle)["inference_check"]["warning"]
        assert "cell dice" in warning and "train.precise_bn" in warning
        assert warning in capsys.readouterr().err
