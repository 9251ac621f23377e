"""Model building: trunk sizes, attach points, head naming and ownership, the output dict."""

from __future__ import annotations

import copy

import keras
import numpy as np
import pytest

from multiseg.models import build_model, layer_owner, parameter_counts
from multiseg.models.layers import CropToMatch, GradientScale, PadToMultiple
from multiseg.recipe import from_dict


def _recipe(raw, **model):
    raw = copy.deepcopy(raw)
    raw["model"].update(model)
    return from_dict(raw)


class TestOutputs:
    @pytest.mark.parametrize("size", [(32, 32), (30, 45), (17, 9), (64, 40)])
    def test_any_input_size(self, tiny_recipe, size):
        model = build_model(tiny_recipe, channels=3)
        out = model(np.zeros((2, *size, 3), np.float32), training=False)
        assert set(out) == {"mask", "boundary", "shape"}
        assert tuple(out["mask"].shape) == (2, *size, 4)
        assert tuple(out["boundary"].shape) == (2, *size, 1)
        assert tuple(out["shape"].shape) == (2, 3)

    @pytest.mark.parametrize("model_options", [
        {"norm": "group", "upsample": "resize"},
        {"norm": "none", "activation": "gelu", "dropout": 0.2},
        {"filters": [4, 8, 8, 16], "convs_per_level": 1},
        {"filters": [6]},
    ])
    def test_trunk_options(self, tiny_raw, model_options):
        model = build_model(_recipe(tiny_raw, **model_options), channels=3)
        out = model(np.zeros((1, 36, 20, 3), np.float32), training=False)
        assert tuple(out["mask"].shape) == (1, 36, 20, 4)

    def test_output_names_are_head_names(self, tiny_recipe):
        model = build_model(tiny_recipe, channels=3)
        assert set(model.output) == set(tiny_recipe.heads)
        for head in tiny_recipe.heads:
            assert model.get_layer(head) is not None

    def test_two_heads_of_same_kind_and_deep_supervision(self, tiny_raw):
        raw = copy.deepcopy(tiny_raw)
        raw["model"]["filters"] = [4, 8, 8]
        raw["heads"]["mask_coarse"] = {"kind": "segmentation", "target": "mask",
                                       "attach": "decoder.2", "branch": [4]}
        raw["heads"]["shape_dec"] = {"kind": "classification", "target": "label",
                                     "attach": "decoder"}
        model = build_model(from_dict(raw), channels=3)
        out = model(np.zeros((1, 30, 30, 3), np.float32), training=False)
        assert tuple(out["mask_coarse"].shape) == (1, 30, 30, 4)
        assert tuple(out["shape_dec"].shape) == (1, 3)


class TestOwnership:
    def test_every_layer_is_shared_or_one_heads(self, tiny_recipe):
        model = build_model(tiny_recipe, channels=3)
        owners = {layer.name: layer_owner(layer.name, tiny_recipe.heads)
                  for layer in model.layers}
        assert set(owners.values()) == {"shared", "mask", "boundary", "shape"}
        assert owners["mask.conv0"] == "mask"
        assert owners["trunk.bottleneck.conv0"] == "shared"

    def test_ownership_matches_graph(self, tiny_recipe):
        # Walking back from one head's output must reach only shared layers and its own.
        model = build_model(tiny_recipe, channels=3)
        for head in tiny_recipe.heads:
            seen, stack = set(), [model.output[head]]
            while stack:
                tensor = stack.pop()
                layer = tensor._keras_history.operation
                if layer.name in seen:
                    continue
                seen.add(layer.name)
                for node in layer._inbound_nodes:
                    stack.extend(node.input_tensors)
            owners = {layer_owner(name, tiny_recipe.heads) for name in seen}
            assert owners == {"shared", head}

    def test_head_prefix_collision(self, tiny_raw):
        raw = copy.deepcopy(tiny_raw)
        raw["heads"]["mask_b"] = copy.deepcopy(raw["heads"]["mask"])
        recipe = from_dict(raw)
        model = build_model(recipe, channels=3)
        owners = {layer_owner(layer.name, recipe.heads) for layer in model.layers
                  if layer.name.startswith("mask_b")}
        assert owners == {"mask_b"}

    def test_unknown_layer(self):
        with pytest.raises(ValueError, match="neither shared"):
            layer_owner("stray.conv", ["mask"])

    def test_parameter_counts_add_up(self, tiny_recipe):
        model = build_model(tiny_recipe, channels=3)
        counts = parameter_counts(model, tiny_recipe.heads)
        assert sum(counts.values()) == model.count_params()
        # Boundary head: 1x1 conv from 4 decoder channels to 1 = 4 + 1 parameters.
        assert counts["boundary"] == 5
        # Shape head: Dense 16 -> 3 from the bottleneck (2 * 8 channels) = 16*3 + 3.
        assert counts["shape"] == 51


class TestLayers:
    def test_pad_and_crop(self):
        x = np.arange(2 * 5 * 7 * 1, dtype=np.float32).reshape(2, 5, 7, 1)
        padded = keras.ops.convert_to_numpy(PadToMultiple(4)(x))
        assert padded.shape == (2, 8, 8, 1)
        np.testing.assert_array_equal(padded[:, :5, :7], x)
        assert padded[:, 5:].sum() == 0 and padded[:, :, 7:].sum() == 0
        cropped = keras.ops.convert_to_numpy(CropToMatch()(padded, x))
        np.testing.assert_array_equal(cropped, x)

    @pytest.mark.parametrize("scale", [0.0, 0.1, 1.0, 2.5])
    def test_gradient_scale(self, scale):
        x = np.array([[1.0, -2.0, 3.0]], dtype=np.float32)
        layer = GradientScale(scale)
        if keras.backend.backend() == "jax":
            import jax

            y = layer(x)
            grad = jax.grad(lambda v: keras.ops.sum(layer(v) ** 2))(x)
        else:
            import tensorflow as tf

            x_tf = tf.constant(x)
            with tf.GradientTape() as tape:
                tape.watch(x_tf)
                y = layer(x_tf)
                loss = tf.reduce_sum(y * y)
            grad = tape.gradient(loss, x_tf, unconnected_gradients="zero")  # stop-gradient: None
        np.testing.assert_allclose(keras.ops.convert_to_numpy(y), x)  # identity forward
        # d/dx sum(y^2) = 2x, scaled on the way back.
        np.testing.assert_allclose(keras.ops.convert_to_numpy(grad), scale * 2 * x, rtol=1e-6)

    def test_layer_configs_round_trip(self):
        for layer in (PadToMultiple(8), GradientScale(0.3), CropToMatch()):
            clone = type(layer).from_config(layer.get_config())
            assert clone.get_config() == layer.get_config()
