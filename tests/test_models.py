"""Model building: trunk sizes, attach points, head naming and ownership, the output dict."""

from __future__ import annotations

import copy
import json
import os
import string
import subprocess
import sys

import keras
import numpy as np
import pytest

from multiseg.models import build_model, layer_owner, naming, parameter_counts
from multiseg.models.initial import initialized_together, values_from_the_file
from multiseg.models.layers import (
    CropToMatch,
    GradientScale,
    PadToMultiple,
    ValidAveragePooling,
)
from multiseg.recipe import from_dict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
            # Each output comes out of the layer named exactly after its head.
            assert model.output[head]._keras_history.operation is model.get_layer(head)

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


class TestDropout:
    def test_seeded_from_the_recipe(self, tiny_raw):
        # Unseeded, Keras's torch backend draws dropout masks from torch's global generator,
        # which checkpoints do not hold: a resumed run would differ from an uninterrupted one.
        def seeds(seed):
            raw = copy.deepcopy(tiny_raw)
            raw["seed"] = seed
            raw["model"].update(filters=[4, 8, 8], dropout=0.2)
            model = build_model(from_dict(raw), channels=3)
            return [layer.seed for layer in model.layers
                    if isinstance(layer, keras.layers.Dropout)]

        first = seeds(1)
        assert len(first) == 3 and len(set(first)) == 3  # bottleneck, dec2, dec1
        assert all(isinstance(s, int) for s in first)
        assert seeds(1) == first and seeds(2) != first


class TestOwnership:
    def test_every_layer_is_shared_or_one_heads(self, tiny_recipe):
        model = build_model(tiny_recipe, channels=3)
        owners = {layer.name: layer_owner(layer.name, tiny_recipe.heads)
                  for layer in model.layers}
        assert set(owners.values()) == {"shared", "mask", "boundary", "shape"}
        assert owners["mask-conv0"] == "mask"
        assert owners["trunk-bottleneck-conv0"] == "shared"

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
            layer_owner("stray-conv", ["mask"])

    def test_parameter_counts_add_up(self, tiny_recipe):
        model = build_model(tiny_recipe, channels=3)
        counts = parameter_counts(model, tiny_recipe.heads)
        assert sum(counts.values()) == model.count_params()
        # Boundary head: 1x1 conv from 4 decoder channels to 1 = 4 + 1 parameters.
        assert counts["boundary"] == 5
        # Shape head: Dense 16 -> 3 from the bottleneck (2 * 8 channels) = 16*3 + 3.
        assert counts["shape"] == 51


class TestNaming:
    # (layer name, owner): today's names, the old "." names of saved models, and heads whose
    # names share a prefix with another head or with "trunk".
    OWNERS = [
        ("trunk-enc0-conv0", "shared"), ("trunk-dec1-up", "shared"), ("image", "shared"),
        ("mask-conv0", "mask"), ("mask", "mask"), ("mask_b-logits", "mask_b"),
        ("mask_b", "mask_b"), ("trunk_x-conv0", "trunk_x"), ("trunk_x", "trunk_x"),
        ("trunk.enc0.conv0", "shared"), ("mask.grad_scale", "mask"), ("mask_b.pool", "mask_b"),
    ]

    @pytest.mark.parametrize("name,owner", OWNERS)
    def test_owner(self, name, owner):
        assert layer_owner(name, ["mask", "mask_b", "trunk_x"]) == owner

    @pytest.mark.parametrize("name", ["trunk", "stray-conv", "conv0", "mask:conv0"])
    def test_not_owned(self, name):
        with pytest.raises(ValueError, match=f"layer '{name}' is neither shared"):
            layer_owner(name, ("mask",))

    def test_layer_name(self):
        assert naming.layer_name("trunk", "enc0", "conv1") == "trunk-enc0-conv1"
        assert naming.layer_name(naming.layer_name("mask"), "logits") == "mask-logits"
        assert naming.current_name("trunk.dec2.norm0") == "trunk-dec2-norm0"
        assert naming.current_name("mask_b-conv0") == "mask_b-conv0"

    def test_no_head_name_holds_a_separator(self):
        # The owner is what comes before the first separator: only if no head name can hold
        # one (nor the old one) is that unambiguous. Every printable ASCII character inside a
        # head name, as the recipe checks it.
        from multiseg.recipe.heads import head_name_problem

        allowed = {c for c in map(chr, range(32, 127)) if head_name_problem(f"a{c}b") is None}
        assert naming.SEPARATOR not in allowed and naming.LEGACY_SEPARATOR not in allowed
        assert allowed == set(string.ascii_letters + string.digits + "_")
        assert head_name_problem(naming.TRUNK) is not None

    @pytest.mark.parametrize("model_options,heads", [
        ({}, {}),
        ({"filters": [4, 8, 8], "dropout": 0.2, "upsample": "resize", "norm": "group"},
         {"coarse": {"kind": "segmentation", "classes": 4, "target": "mask",
                     "attach": "decoder.2", "branch": [4], "grad_scale": 0.5},
          "shape": {"branch": [5], "grad_scale": 0.0}}),
    ])
    def test_names_and_paths_suit_every_backend(self, tiny_raw, model_options, heads):
        # PyTorch refuses "." in parameter names, Keras "/" in layer names; every variable is
        # registered under its path, <layer>/<variable>.
        raw = copy.deepcopy(tiny_raw)
        raw["model"].update(model_options)
        for head, changes in heads.items():
            raw["heads"][head] = {**raw["heads"].get(head, {}), **changes}
        recipe = from_dict(raw)
        model = build_model(recipe, channels=3)
        for layer in model.layers:
            assert "." not in layer.name and "/" not in layer.name, layer.name
            owner = layer_owner(layer.name, recipe.heads)
            assert layer.name in ("image", owner) or layer.name.startswith(
                naming.layer_name("trunk" if owner == "shared" else owner, "")), layer.name
        assert all("." not in v.path for v in model.variables)


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
        elif keras.backend.backend() == "torch":
            import torch

            x_torch = torch.tensor(x, requires_grad=True)
            y = layer(x_torch)
            loss = torch.sum(y * y)
            # scale 0: y is detached, the loss has no graph back to x (its gradient is 0).
            grad = (torch.autograd.grad(loss, x_torch)[0] if loss.requires_grad
                    else torch.zeros_like(x_torch))
            y = y.detach()
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
        for layer in (PadToMultiple(8), GradientScale(0.3), CropToMatch(),
                      ValidAveragePooling(8)):
            clone = type(layer).from_config(layer.get_config())
            assert clone.get_config() == layer.get_config()
        assert ValidAveragePooling.from_config(ValidAveragePooling(8).get_config()).multiple == 8

    # A 9x11 image padded to a multiple of 4 is 12x12. Features of stride s (12/s cells a
    # side) hold 0, 1, 2, ... row by row; the cells that see the image are the first
    # ceil(9/s) rows and ceil(11/s) columns.
    VALID_CASES = [
        # (stride, expected mean): stride 1, 12x12 cells, rows 0-8 and columns 0-10 valid:
        # the mean of 12 r + c over them is 12 * 4 + 5 = 53.
        (1, 53.0),
        # Stride 2, 6x6 cells, rows 0-4 and all 6 columns: 6 * 2 + 2.5 = 14.5.
        (2, 14.5),
        # Stride 4, 3x3 cells, every cell touches the image: the mean of 0..8 is 4.
        (4, 4.0),
    ]

    @pytest.mark.parametrize("stride,expected", VALID_CASES)
    def test_valid_average_by_hand(self, stride, expected):
        cells = 12 // stride
        x = np.arange(cells * cells, dtype=np.float32).reshape(1, cells, cells, 1)
        image = np.zeros((1, 9, 11, 3), np.float32)
        got = keras.ops.convert_to_numpy(ValidAveragePooling(4)(x, image))
        np.testing.assert_allclose(got, [[expected]], rtol=1e-6)

    def test_valid_average_without_padding_is_the_plain_mean(self):
        x = np.random.default_rng(0).normal(size=(2, 5, 7, 3)).astype(np.float32)
        got = keras.ops.convert_to_numpy(ValidAveragePooling()(x, np.zeros((2, 5, 7, 1))))
        np.testing.assert_allclose(got, x.mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)

    @pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                        reason="unknown sizes inside a traced function: TensorFlow's tracing")
    def test_valid_average_with_unknown_sizes(self):
        import tensorflow as tf

        layer = ValidAveragePooling(4)
        pool = tf.function(layer, input_signature=[tf.TensorSpec((None, None, None, 1)),
                                                   tf.TensorSpec((None, None, None, 3))])
        x = np.arange(36, dtype=np.float32).reshape(1, 6, 6, 1)
        got = pool(x, np.zeros((1, 9, 11, 3), np.float32)).numpy()
        np.testing.assert_allclose(got, [[14.5]], rtol=1e-6)  # as in VALID_CASES, stride 2

    def test_bad_multiple(self):
        with pytest.raises(ValueError, match="multiple must be >= 1, got 0"):
            ValidAveragePooling(0)


def _classification_model(tiny_raw, attach):
    """Three levels (padding to multiples of 8), one classification head on ``attach``, every
    weight random so that features over the padding differ from those over the image."""
    raw = copy.deepcopy(tiny_raw)
    raw["model"].update(filters=[4, 8, 8], norm="none")
    raw["heads"] = {"shape": {**raw["heads"]["shape"], "attach": attach}}
    model = build_model(from_dict(raw), channels=3)
    rng = np.random.default_rng(0)
    model.set_weights([0.5 * rng.normal(size=w.shape).astype(np.float32)
                       for w in model.get_weights()])
    return model


class TestClassificationPooling:
    # A 33x41 image is padded to 40x48. At stride s the features have 40/s x 48/s cells, of
    # which ceil(33/s) x ceil(41/s) cover the image.
    CASES = [("decoder", (40, 48), (33, 41)), ("decoder.1", (20, 24), (17, 21)),
             ("decoder.2", (10, 12), (9, 11)), ("bottleneck", (5, 6), (5, 6))]
    # The trunk layer whose output each attach point is.
    LAYERS = {"decoder": "trunk-dec0-act1", "decoder.1": "trunk-dec1-act1",
              "decoder.2": "trunk-dec2-act1", "bottleneck": "trunk-bottleneck-act1"}

    @pytest.mark.parametrize("attach,cells,valid", CASES, ids=[c[0] for c in CASES])
    def test_logits_average_only_the_cells_over_the_image(self, tiny_raw, attach, cells,
                                                          valid):
        model = _classification_model(tiny_raw, attach)
        probe = keras.Model(model.input, [model.get_layer(self.LAYERS[attach]).output,
                                          model.output["shape"]])
        image = np.random.default_rng(1).random((2, 33, 41, 3)).astype(np.float32)
        features, logits = (keras.ops.convert_to_numpy(t) for t in probe(image))
        assert features.shape[1:3] == cells
        mean = features[:, : valid[0], : valid[1]].astype(np.float64).mean(axis=(1, 2))
        if valid != cells:  # the padding's features differ: averaging them would show
            assert np.abs(features.mean(axis=(1, 2)) - mean).max() > 1e-2
        kernel, bias = model.get_layer("shape").get_weights()
        # float32 sums over up to 1320 cells: 1e-5 relative.
        np.testing.assert_allclose(logits, mean @ kernel + bias, rtol=1e-5, atol=1e-5)

    def test_image_size_multiple_of_the_padding_averages_everything(self, tiny_raw):
        model = _classification_model(tiny_raw, "decoder.1")
        probe = keras.Model(model.input, [model.get_layer(self.LAYERS["decoder.1"]).output,
                                          model.get_layer("shape-pool").output])
        image = np.random.default_rng(2).random((1, 32, 40, 3)).astype(np.float32)
        features, pooled = (keras.ops.convert_to_numpy(t) for t in probe(image))
        np.testing.assert_allclose(pooled, features.mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)

    def test_save_and_reload(self, tiny_raw, tmp_path):
        model = _classification_model(tiny_raw, "decoder.1")
        path = str(tmp_path / "model.keras")
        model.save(path)
        loaded = keras.models.load_model(path)
        layer = loaded.get_layer("shape-pool")
        assert isinstance(layer, ValidAveragePooling) and layer.multiple == 8
        image = np.random.default_rng(3).random((1, 33, 41, 3)).astype(np.float32)
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded(image)["shape"]),
                                      keras.ops.convert_to_numpy(model(image)["shape"]))


class TestHeadKinds:
    def test_every_kind_names_a_builder(self):
        from multiseg.headkinds import HEAD_KINDS
        from multiseg.models import heads

        for kind in HEAD_KINDS.values():
            assert callable(getattr(heads, kind.builder)), kind.name

    def test_models_do_not_import_the_recipe(self):
        import ast
        from pathlib import Path

        import multiseg.models

        for path in Path(multiseg.models.__file__).parent.glob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom):
                    assert not (node.module or "").startswith("multiseg.recipe"), path.name


_INITIAL_WEIGHTS_CHILD = """
import json, sys
sys.path.insert(0, sys.argv[1])
from multiseg.startup import import_keras, set_random_seed
keras = import_keras()
import numpy as np
from keras.src.backend.common import global_state
from multiseg.models import initial
from multiseg.models.build import build_model
from multiseg.recipe import from_dict
from tests.conftest import TINY_RAW

recipe = from_dict({**TINY_RAW, "model": {**TINY_RAW["model"], "dropout": 0.1}})
sizes = []
deferred = initial._initialize
initial._initialize = lambda variables: (sizes.append(len(variables)), deferred(variables))
set_random_seed(3)
together = build_model(recipe, channels=3)
applies = initial._applies
initial._applies = lambda: False  # Keras's own eager initialisation, variable by variable
set_random_seed(3)
plain = build_model(recipe, channels=3)
initial._applies = applies
pairs = list(zip(together.weights, plain.weights, strict=True))
x = np.random.default_rng(0).random((2, 32, 32, 3)).astype("float32")
outputs = [float(np.abs(np.asarray(together(x)[h]) - np.asarray(plain(x)[h])).max())
           for h in recipe.heads]
try:
    with initial.initialized_together():
        keras.layers.Dense(3)(keras.Input((4,)))
        raise RuntimeError("a mistake while building")
except RuntimeError:
    pass
print(json.dumps({
    "programs": sizes, "weights": len(pairs),
    "paths": [a.path == b.path for a, b in pairs],
    "float_diff": max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in pairs
                      if np.asarray(a).dtype.kind == "f"),
    "seed_states": [np.asarray(a.seed_generator.state).tolist() == np.asarray(
        b.seed_generator.state).tolist() for a, b in zip(together.layers, plain.layers)
        if hasattr(a, "seed_generator")],
    "output_diff": max(outputs),
    "left_pending": len(global_state.get_global_attribute("uninitialized_variables") or []),
}))
"""


class TestInitialWeights:
    def test_jax_computes_them_in_one_program_as_keras_would(self, tmp_path):
        # Keras's own initializers and seeds, in one unoptimised program: the same values up
        # to the last bit of a scaled random number (float32 spacing at 1 is 1.2e-7).
        pytest.importorskip("jax")
        env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu",
               "MULTISEG_COMPILE_CACHE": "off"}
        done = subprocess.run([sys.executable, "-c", _INITIAL_WEIGHTS_CHILD, ROOT], env=env,
                              cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        found = json.loads(done.stdout.strip().splitlines()[-1])
        # One program for every weight (and the dropout layers' untracked seed states).
        assert len(found["programs"]) == 1 and found["programs"][0] >= found["weights"]
        assert all(found["paths"]) and found["weights"] > 40
        assert found["float_diff"] <= 1.2e-7
        assert found["seed_states"] and all(found["seed_states"])  # dropout's random state
        assert found["output_diff"] < 1e-5
        assert found["left_pending"] == 0  # a failed build leaves nothing deferred behind

    def test_a_loaded_model_holds_the_files_values_and_no_initializer_ran(
            self, tiny_recipe, tmp_path, monkeypatch):
        from multiseg import load_model
        from multiseg.models.build import compile_model

        model = build_model(tiny_recipe, channels=3)
        compile_model(model, tiny_recipe)
        rng = np.random.default_rng(0)
        images = rng.random((8, 32, 32, 3), dtype=np.float32)
        targets = {"mask": rng.integers(0, 4, (8, 32, 32, 1)).astype(np.float32),
                   "boundary": (rng.random((8, 32, 32, 1)) < 0.2).astype(np.float32),
                   "shape": rng.integers(0, 3, (8,)).astype(np.float32)}
        model.fit(images, targets, batch_size=4, epochs=1, verbose=0)  # optimizer state too
        path = str(tmp_path / "model.keras")
        model.save(path)
        if keras.backend.backend() == "jax":  # the file's values replace every random one
            def refused(*args, **kwargs):
                raise AssertionError("a random initializer ran while loading")

            monkeypatch.setattr(keras.initializers.VarianceScaling, "__call__", refused)
        loaded = load_model(path)
        saved = model.variables + model.optimizer.variables
        again = loaded.variables + loaded.optimizer.variables
        assert len(again) == len(saved) > 100
        for a, b in zip(saved, again, strict=True):
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(a),
                                          keras.ops.convert_to_numpy(b), err_msg=a.path)

    def test_a_variable_the_file_lacks_gets_its_own_initializer(self):
        glorot = keras.initializers.GlorotUniform(seed=3)
        with values_from_the_file():
            missing = keras.Variable(initializer=glorot, shape=(3, 4))
            filled = keras.Variable(initializer=keras.initializers.HeNormal(seed=4),
                                    shape=(3, 4))
            filled.assign(np.full((3, 4), 7.0, np.float32))
            constants = [keras.Variable(initializer=init, shape=(2, 5)) for init in (
                "zeros", "ones", keras.initializers.Constant(2.5))]
        expected = keras.ops.convert_to_numpy(glorot((3, 4), dtype="float32"))
        assert np.abs(expected).max() > 0
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(missing), expected)
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(filled), np.full((3, 4), 7.0))
        for variable, value in zip(constants, (0.0, 1.0, 2.5), strict=True):
            assert variable.dtype == "float32"
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable),
                                          np.full((2, 5), value))

    def test_variables_inside_have_values_once_the_block_ends(self):
        with initialized_together():
            layer = keras.layers.Dense(3)
            layer.build((None, 4))
            deferred = layer.kernel._value is None
        # Deferred only on JAX; on other backends Keras initialises as it always does.
        assert deferred == (keras.backend.backend() == "jax")
        kernel = keras.ops.convert_to_numpy(layer.kernel)
        assert kernel.shape == (4, 3) and np.isfinite(kernel).all() and np.abs(kernel).max() > 0
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer.bias), np.zeros(3))
