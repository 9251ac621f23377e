"""Runs saved with the old layer names (``trunk.enc0.conv0``; today ``trunk-enc0-conv0``):
their ``model.keras`` and checkpoints load into today's models, on every backend.

The old run is made here by training with the old separator (``naming.SEPARATOR`` patched to
``.``): every builder names its layers through ``naming.layer_name``, so that builds exactly
what the builders built before (``OLD_NAMES``, listed from the previous builders' model).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile

import keras
import numpy as np
import pytest
from conftest import TINY_RAW

import multiseg
from multiseg import runs
from multiseg.graph import model_graph
from multiseg.models import build_model, layer_owner, naming, parameter_counts
from multiseg.models.build import compile_model
from multiseg.models.legacy import current_names, renamed_config
from multiseg.recipe import from_dict
from multiseg.train import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The tiny recipe's layers (shape with grad_scale 0.5), as the builders named them before.
OLD_NAMES = [
    "image", "trunk.pad", "trunk.enc0.conv0", "trunk.enc0.norm0", "trunk.enc0.act0",
    "trunk.enc0.conv1", "trunk.enc0.norm1", "trunk.enc0.act1", "trunk.enc0.pool",
    "trunk.enc1.conv0", "trunk.enc1.norm0", "trunk.enc1.act0", "trunk.enc1.conv1",
    "trunk.enc1.norm1", "trunk.enc1.act1", "trunk.enc1.pool", "trunk.bottleneck.conv0",
    "trunk.bottleneck.norm0", "trunk.bottleneck.act0", "trunk.bottleneck.conv1",
    "trunk.bottleneck.norm1", "trunk.bottleneck.act1", "trunk.dec1.up", "trunk.dec1.concat",
    "trunk.dec1.conv0", "trunk.dec1.norm0", "trunk.dec1.act0", "trunk.dec1.conv1",
    "trunk.dec1.norm1", "trunk.dec1.act1", "trunk.dec0.up", "trunk.dec0.concat",
    "trunk.dec0.conv0", "trunk.dec0.norm0", "trunk.dec0.act0", "trunk.dec0.conv1",
    "trunk.dec0.norm1", "trunk.dec0.act1", "mask.conv0", "mask.norm0", "mask.act0",
    "shape.grad_scale", "boundary.logits", "mask.logits", "shape.pool", "boundary", "mask",
    "shape",
]


def _raw(output) -> dict:
    raw = copy.deepcopy(TINY_RAW)
    raw["output"] = str(output)
    raw["train"]["lr_schedule"] = "constant"  # so that the run can be resumed with more epochs
    raw["heads"]["shape"]["grad_scale"] = 0.5
    return raw


def _predict(model, images) -> dict[str, np.ndarray]:
    return {k: keras.ops.convert_to_numpy(v) for k, v in model(images, training=False).items()}


@pytest.fixture(scope="module")
def old_run(tmp_path_factory):
    """(run directory, images, the old model's predictions on them) of a run trained with the
    old names: one epoch of two steps, a checkpoint and model.keras."""
    if keras.backend.backend() == "torch":
        pytest.skip("old names cannot be built on torch; the torch leg runs in a child process"
                    " of the TensorFlow or JAX suite")
    tmp = tmp_path_factory.mktemp("old")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(naming, "SEPARATOR", naming.LEGACY_SEPARATOR)
        train(from_dict(_raw(tmp / "run")), verbose=0)
    images = np.random.default_rng(0).random((2, 32, 32, 3)).astype(np.float32)
    model = keras.saving.load_model(str(tmp / "run" / "model.keras"))  # names as saved
    assert [layer.name for layer in model.layers] == OLD_NAMES
    predictions = _predict(model, images)
    np.savez(tmp / "reference.npz", images=images, **predictions)
    return tmp / "run", images, predictions


class TestModelFile:
    def test_loads_with_todays_names(self, old_run):
        run, images, expected = old_run
        with current_names(run / "model.keras") as path:
            assert path != str(run / "model.keras")  # a renamed copy
            model = multiseg.load_model(path)
        assert not os.path.exists(path)  # the copy lasts as long as the with block
        names = [layer.name for layer in model.layers]
        assert names == [naming.current_name(n) for n in OLD_NAMES]
        today = build_model(runs.run_recipe(str(run)), channels=3)
        assert names == [layer.name for layer in today.layers]
        # The same weights on the same backend: the same numbers.
        for head, values in _predict(model, images).items():
            np.testing.assert_array_equal(values, expected[head])
        assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 2

    def test_load_model_renames(self, old_run):
        run, images, expected = old_run
        model = multiseg.load_model(str(run / "model.keras"))
        assert [layer.name for layer in model.layers] == [
            naming.current_name(n) for n in OLD_NAMES]
        for head, values in _predict(model, images).items():
            np.testing.assert_array_equal(values, expected[head])

    def test_old_names_still_say_who_owns_a_layer(self, old_run):
        # Loaded by Keras alone (TensorFlow and JAX accept "."), the model keeps its old names.
        run, _, _ = old_run
        model = keras.saving.load_model(str(run / "model.keras"), compile=False)
        heads = ("mask", "boundary", "shape")
        graph = model_graph(model, heads)
        for name, owner in graph.owners().items():
            assert layer_owner(name, heads) == owner, name
        counts = parameter_counts(model, heads)
        assert sum(counts.values()) == model.count_params() and counts["boundary"] == 5

    def test_todays_file_is_used_as_it_is(self, tmp_path, tiny_recipe):
        path = str(tmp_path / "model.keras")
        build_model(tiny_recipe, channels=3).save(path)
        with current_names(path) as same:
            assert same == path

    def test_other_files_are_left_to_keras(self, tmp_path):
        path = tmp_path / "model.keras"
        path.write_text("not a zip")
        with current_names(path) as same:
            assert same == str(path)


class TestCheckpoint:
    def test_loads_by_position_into_todays_model(self, old_run):
        # .weights.h5 stores weights by layer class and position, not by name.
        run, images, expected = old_run
        with zipfile.ZipFile(run / "model.keras") as archive:
            assert "model.weights.h5" in archive.namelist()
        recipe = runs.run_recipe(str(run))
        model = build_model(recipe, channels=3)
        compile_model(model, recipe)
        source = runs.load_weights(model, recipe, str(run), checkpoint=True)
        assert source.endswith("epoch-0001.weights.h5")
        for head, values in _predict(model, images).items():
            np.testing.assert_array_equal(values, expected[head])
        # The optimizer state too: that of the saved model, which ended at the checkpoint.
        with current_names(run / "model.keras") as path:
            saved = multiseg.load_model(path).optimizer.variables
        assert len(saved) == len(model.optimizer.variables) > 2
        for a, b in zip(saved, model.optimizer.variables, strict=True):
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(a),
                                          keras.ops.convert_to_numpy(b))

    def test_old_run_resumes(self, old_run, tmp_path):
        run = tmp_path / "run"
        shutil.copytree(old_run[0], run)
        raw = _raw(run)
        raw["train"]["epochs"] = 2
        result = train(from_dict(raw), verbose=0)
        assert sorted(os.listdir(run / "checkpoints"))[:2] == ["epoch-0001.weights.h5",
                                                               "epoch-0002.weights.h5"]
        assert [layer.name for layer in result.model.layers] == [
            naming.current_name(n) for n in OLD_NAMES]


class TestRenamedConfig:
    @staticmethod
    def _config(names: list[str], outputs: list[str]) -> dict:
        layers = [{"class_name": "Dense", "name": n, "config": {"name": n, "units": 1},
                   "inbound_nodes": [] if i == 0 else [{"args": [{
                       "class_name": "__keras_tensor__",
                       "config": {"keras_history": [names[i - 1], 0, 0]}}], "kwargs": {}}]}
                  for i, n in enumerate(names)]
        return {"class_name": "Functional", "config": {
            "name": "m", "layers": layers, "input_layers": [names[0], 0, 0],
            "output_layers": {o: [o, 0, 0] for o in outputs}}}

    def test_renames_names_and_connections(self):
        old = self._config(["image", "trunk.conv", "mask.conv", "mask"], ["mask"])
        new, count = renamed_config(old)
        assert count == 2
        layers = new["config"]["layers"]
        assert [(x["name"], x["config"]["name"]) for x in layers] == [
            ("image", "image"), ("trunk-conv", "trunk-conv"), ("mask-conv", "mask-conv"),
            ("mask", "mask")]
        assert [x["inbound_nodes"][0]["args"][0]["config"]["keras_history"][0]
                for x in layers[1:]] == ["image", "trunk-conv", "mask-conv"]
        assert new["config"]["output_layers"] == {"mask": ["mask", 0, 0]}
        assert old["config"]["layers"][1]["name"] == "trunk.conv"  # the original is untouched

    def test_other_models_are_left_alone(self):
        # Not multiseg's: "block1" is neither the trunk nor an output.
        config = self._config(["input", "block1.conv", "out"], ["out"])
        assert renamed_config(config) == (config, 0)

    def test_a_taken_name_is_an_error(self):
        config = self._config(["image", "trunk.conv", "trunk-conv", "mask"], ["mask"])
        with pytest.raises(ValueError, match=r"\['trunk-conv'\] are taken"):
            renamed_config(config)


# The torch leg: the old files, made above with TensorFlow or JAX, in a PyTorch process.
TORCH_CHILD = textwrap.dedent("""
    import json, sys
    import keras, numpy as np
    import multiseg
    from multiseg import runs
    from multiseg.models.build import build_model, compile_model
    from multiseg.models.legacy import current_names

    run, reference = sys.argv[1], np.load(sys.argv[2])
    result = {"backend": keras.backend.backend()}
    try:  # as Keras alone loads it
        keras.saving.load_model(run + "/model.keras")
        result["plain"] = "loaded"
    except KeyError as exc:
        result["plain"] = exc.args[0]

    def differences(model):
        out = model(reference["images"], training=False)
        return {h: float(np.abs(keras.ops.convert_to_numpy(out[h]) - reference[h]).max())
                for h in out}

    with current_names(run + "/model.keras") as path:
        model = multiseg.load_model(path)
    result["names"] = [layer.name for layer in model.layers]
    result["model"] = differences(model)
    recipe = runs.run_recipe(run)
    model = build_model(recipe, channels=3)
    compile_model(model, recipe)
    runs.load_weights(model, recipe, run, checkpoint=True)
    result["checkpoint"] = differences(model)
    print(json.dumps(result))
""")


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch not installed")
def test_old_run_loads_on_torch(old_run):
    run, _, _ = old_run
    env = {**os.environ, "KERAS_BACKEND": "torch"}
    out = subprocess.run([sys.executable, "-c", TORCH_CHILD, str(run),
                          str(run.parent / "reference.npz")], capture_output=True, text=True,
                         env=env, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    child = json.loads(out.stdout.strip().splitlines()[-1])
    assert child["backend"] == "torch"
    # Why the renaming: PyTorch refuses the old names.
    assert "can't contain" in child["plain"]
    assert child["names"] == [naming.current_name(n) for n in OLD_NAMES]
    # Another backend's convolutions: float32 rounding, 1e-4 absolute on logits of order 1.
    for where in ("model", "checkpoint"):
        assert max(child[where].values()) < 1e-4, (where, child[where])
