"""tools/bench/step.py: the hand-written networks are multiseg's (the same layers and weight
shapes, parameter counts, outputs and losses on copied weights), the figures come out of the
workers' measurements as documented, and the race runs end to end at a tiny size."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools", "bench"))

import handmade  # noqa: E402
import step  # noqa: E402

from multiseg import recipe as recipe_lib  # noqa: E402
from tests.conftest import unimportable  # noqa: E402

SHAPES = os.path.join(REPO, "recipes", "shapes.yaml")
SMALL = ["data.image_size=[32, 32]", "data.train=8", "data.val=4", "train.batch_size=4"]
# The default recipe, and a variant: other filters, one conv per level, other branches, a
# single-term boundary loss with other Tversky weights.
VARIANTS = {
    "default": [],
    "variant": ["model.filters=[8, 16]", "model.convs_per_level=1", "heads.mask.branch=[]",
                "heads.boundary.branch=[8, 4]", "heads.shape.branch=[]",
                "heads.boundary.loss=[{name: tversky, alpha: 0.5, beta: 0.5}]"],
}


def _recipe(overrides=()):
    return recipe_lib.load(SHAPES, [*SMALL, *overrides], build=False)


def _multiseg(recipe):
    from multiseg.models.build import build_model

    return build_model(recipe, channels=3)


def _layer_weights(model) -> dict[str, list[np.ndarray]]:
    return {layer.name: [np.asarray(w) for w in layer.get_weights()]
            for layer in model.layers if layer.weights}


def _batch(recipe):
    """multiseg's own first training batch, with one sample made empty (background only, no
    boundary) so that the losses' handling of absent classes is compared too."""
    from multiseg.data import build_data

    images, targets = build_data(recipe, frequencies=False, log_report=False).train.batch(0, 0)
    targets = {k: np.array(v) for k, v in targets.items()}
    targets["mask"][0] = 0
    targets["boundary"][0] = 0
    return np.asarray(images), targets


def _numpy(x):
    import keras

    if hasattr(x, "detach"):  # a PyTorch tensor (Keras's torch backend) that tracks gradients
        x = x.detach()
    return np.asarray(keras.ops.convert_to_numpy(x))


def _multiseg_loss(recipe, outputs, targets) -> float:
    """The loss multiseg trains with: sum over heads of loss_weight * the head's loss."""
    from multiseg.models.build import head_losses

    losses = head_losses(recipe)
    return sum(recipe.heads[h].loss_weight * float(_numpy(losses[h](targets[h], outputs[h])))
               for h in recipe.heads)


class TestNetworkSpec:
    def test_default_recipe(self):
        spec = handmade.network_spec(_recipe(), channels=3)
        assert spec["filters"] == [16, 32, 64] and spec["convs_per_level"] == 2
        assert spec["heads"]["boundary"]["terms"] == [
            {"name": "tversky", "weight": 1.0, "alpha": 0.3, "beta": 0.7},
            {"name": "crossentropy", "weight": 0.5}]
        assert {h["name"]: h["loss_weight"] for h in spec["heads"].values()} == {
            "mask": 1.0, "boundary": 0.5, "shape": 0.2}

    @pytest.mark.parametrize("override, words", [
        ("model.norm=group", "model.norm is 'group'"),
        ("heads.mask.loss=focal", "heads.mask.loss has focal"),
        ("heads.shape.attach=decoder", "heads.shape.attach is 'decoder'"),
        ("train.optimizer.name=sgd", "not a plain adam"),
    ])
    def test_refuses_what_it_does_not_mirror(self, override, words):
        with pytest.raises(ValueError, match=words):
            handmade.network_spec(_recipe([override]), channels=3)


class TestHandmadeKeras:
    @pytest.mark.parametrize("variant", VARIANTS)
    def test_same_layers_and_parameters(self, variant):
        import handmade_keras

        recipe = _recipe(VARIANTS[variant])
        ours = _multiseg(recipe)
        theirs = handmade_keras.build_model(handmade.network_spec(recipe, channels=3), size=32)
        shapes = {n: [w.shape for w in ws] for n, ws in _layer_weights(ours).items()}
        assert {n: [w.shape for w in ws] for n, ws in _layer_weights(theirs).items()} == shapes
        assert theirs.count_params() == ours.count_params()
        if variant == "default":
            assert ours.count_params() == 493_176  # the figure docs/performance.md quotes

    @pytest.mark.parametrize("variant", VARIANTS)
    def test_same_outputs_and_loss_on_copied_weights(self, variant):
        import handmade_keras

        recipe = _recipe(VARIANTS[variant])
        spec = handmade.network_spec(recipe, channels=3)
        ours = _multiseg(recipe)
        theirs = handmade_keras.build_model(spec, size=32)
        for name, weights in _layer_weights(ours).items():
            theirs.get_layer(name).set_weights(weights)
        images, targets = _batch(recipe)
        for training in (False, True):  # moving statistics, then the batch's
            a, b = ours(images, training=training), theirs(images, training=training)
            for head in recipe.heads:
                # The same operations in the same order: equal up to the backend's kernels.
                np.testing.assert_allclose(_numpy(b[head]), _numpy(a[head]), rtol=1e-5,
                                           atol=1e-6, err_msg=f"{head}, training={training}")
        kinds = {h["name"]: (kind, h) for kind, h in spec["heads"].items()}
        hand = sum(kinds[h][1]["loss_weight"] * float(np.mean(_numpy(
            handmade_keras.head_loss(*kinds[h])(targets[h], b[h])))) for h in recipe.heads)
        np.testing.assert_allclose(hand, _multiseg_loss(recipe, b, targets), rtol=1e-6)

    def test_trains_a_step(self):
        import handmade_keras

        spec = handmade.network_spec(_recipe(VARIANTS["variant"]), channels=3)
        model = handmade_keras.compile_model(handmade_keras.build_model(spec, size=16), spec)
        images, targets = handmade.synthetic_batches(spec, size=16, batch=2, count=1)[0]
        assert np.isfinite(model.train_on_batch(images, targets)).all()


class TestHandmadeTorch:
    @pytest.mark.parametrize("variant", VARIANTS)
    def test_same_parameter_count(self, variant):
        pytest.importorskip("torch")
        import handmade_torch

        recipe = _recipe(VARIANTS[variant])
        model = handmade_torch.UNet(handmade.network_spec(recipe, channels=3))
        assert handmade_torch.parameter_count(model) == _multiseg(recipe).count_params()

    @pytest.mark.parametrize("variant", VARIANTS)
    def test_same_outputs_and_loss_on_copied_weights(self, variant):
        torch = pytest.importorskip("torch")
        import handmade_torch

        recipe = _recipe(VARIANTS[variant])
        spec = handmade.network_spec(recipe, channels=3)
        ours = _multiseg(recipe)
        model = handmade_torch.UNet(spec)
        handmade_torch.load_keras_weights(model, _layer_weights(ours))
        images, targets = _batch(recipe)
        x, y = handmade_torch.to_torch((images, targets), spec, "cpu")
        for training in (False, True):
            a = ours(images, training=training)
            model.train(training)
            with torch.no_grad():
                b = model(x)
            for head in recipe.heads:
                theirs = b[head].numpy()
                theirs = theirs.transpose(0, 2, 3, 1) if theirs.ndim == 4 else theirs
                # Other convolution kernels, other summation orders: float32 rounding, which
                # the batch's statistics (training) carry further than the moving ones.
                np.testing.assert_allclose(theirs, _numpy(a[head]), rtol=1e-4, atol=1e-4,
                                           err_msg=f"{head}, training={training}")
            ours_loss = _multiseg_loss(recipe, a, targets)
            with torch.no_grad():
                theirs_loss = float(handmade_torch.make_loss(spec)(b, y))
            np.testing.assert_allclose(theirs_loss, ours_loss, rtol=1e-5)

    def test_refuses_weights_of_another_network(self):
        pytest.importorskip("torch")
        import handmade_torch

        model = handmade_torch.UNet(handmade.network_spec(_recipe(), channels=3))
        weights = _layer_weights(_multiseg(_recipe(VARIANTS["variant"])))
        with pytest.raises(KeyError, match="only here"):
            handmade_torch.load_keras_weights(model, weights)

    def test_trains_a_step(self):
        torch = pytest.importorskip("torch")
        import handmade_torch

        spec = handmade.network_spec(_recipe(VARIANTS["variant"]), channels=3)
        model = handmade_torch.UNet(spec)
        x, y = handmade_torch.to_torch(
            handmade.synthetic_batches(spec, size=16, batch=2, count=1)[0], spec, "cpu")
        outputs = model(x)
        assert outputs["mask"].shape == (2, 4, 16, 16) and outputs["shape"].shape == (2, 3)
        loss = handmade_torch.make_loss(spec)(outputs, y)
        loss.backward()
        assert torch.isfinite(loss)


class TestSummary:
    """The figures from the workers' messages: medians per repetition, paired ratios."""

    @staticmethod
    def _results():
        def ready(params):
            return {"first_step_s": 2.0, "setup_s": 1.0, "imports_s": 3.0, "rss_imports_mb": 1,
                    "params": params, "compute_dtype": "float32", "backend": "tensorflow"}

        def blocks(*reps, memory):
            return [{"times": list(r), "host_peak_mb": memory, "device_peak_mb": None,
                     "device": "cpu"} for r in reps]

        return {"multiseg": {"ready": ready(10), "blocks": blocks((1.0, 1.0, 3.0), (2.0, 2.0),
                                                                  memory=800)},
                "keras": {"ready": ready(10), "blocks": blocks((0.5, 0.5), (2.0, 2.0),
                                                               memory=400)}}

    def test_ratios_are_medians_of_paired_ratios(self):
        args = step.parse_args(["--batch", "4"])
        config = {"size": 32, "batch": 4, "steps": 2, "warmup": 1, "repeats": 2,
                  "precision": "float32", "spec": None, "output": "x", "load_average": [1, 2]}
        gradflow = {"gradients": 2.0, "snapshot": 3.0, "logged": 6.0, "trace": 30.0, "heads": 3}
        out = step.summarise(args, config, self._results(), {}, gradflow)
        ours, theirs = out["contenders"]["multiseg"], out["contenders"]["keras"]
        assert ours["step_s"] == 1.5  # the median of the repetitions' medians, 1.0 and 2.0
        assert ours["images_per_s"] == pytest.approx(4 / 1.5)
        assert theirs["fastest_step_s"] == 0.5
        # multiseg's speed relative to Keras per repetition, 0.5 / 1.0 and 2.0 / 2.0: median
        # 0.75; its peak memory, 800 MB against 400.
        assert theirs["multiseg_speed_ratio"] == 0.75
        assert theirs["multiseg_memory_ratio"] == 2.0
        assert out["gradflow"]["steps"]["logged"] == 4.0  # 6 s / 1.5 s
        assert out["gradflow"]["overhead"] == 0.04  # 4 steps every 100
        text = step.report(out)
        assert "Keras, hand-written" in text and "4.0% of training time" in text

    def test_parameter_mismatch_stops_the_contender(self):
        results = self._results()
        results["keras"]["ready"]["params"] = 11

        class Stub:
            def stop(self):
                pass

        workers, notes = {"multiseg": Stub(), "keras": Stub()}, {}
        step.check_parameters(results, workers, notes)
        assert list(workers) == ["multiseg"] and results["keras"]["blocks"] == []
        assert "11 parameters, multiseg's model has 10" in notes["keras"]


class TestRace:
    # Each contender is a process that imports its framework and compiles a step: tens of
    # seconds on 2 cores, so the least that covers each path. torch.compile is left out (a
    # minute of compiling); on JAX the contenders cannot import TensorFlow, as on a GPU
    # machine without it (tools/bench/gpu.sh), and PyTorch and gradflow, covered on
    # TensorFlow, are left out.
    @pytest.mark.parametrize("backend", ["tensorflow", "jax"])
    def test_runs_end_to_end_and_writes_json(self, backend, tmp_path, monkeypatch, capsys):
        if backend == "jax":
            pytest.importorskip("jax")
            monkeypatch.setenv("PYTHONPATH",
                               unimportable(tmp_path, ["tensorflow"])["PYTHONPATH"])
        monkeypatch.setenv("KERAS_BACKEND", backend)  # the contenders' processes read it
        tensorflow = backend == "tensorflow"
        contenders = ("multiseg,keras" + (",multiseg-model" if tensorflow else "")
                      + (",torch" if tensorflow and _has("torch") else ""))
        path = tmp_path / "step.json"
        # On JAX, the Keras contenders run 2 steps per call (train.steps_per_execution).
        code = step.main(["--size", "16", "--batch", "2", "--steps", "2", "--repeats", "2",
                          "--warmup", "1" if tensorflow else "2", "--gradflow-repeats", "1",
                          "--contenders", contenders, "--json", str(path),
                          *([] if tensorflow else ["--no-gradflow", "--steps-per-execution",
                                                   "2"])])
        assert code == 0, capsys.readouterr().out
        out = json.loads(path.read_text())
        assert list(out["contenders"]) == contenders.split(",")
        assert out["notes"] == {} and out["machine"]["keras_backend"] == backend
        for entry in out["contenders"].values():
            assert entry["params"] == out["contenders"]["multiseg"]["params"]
            assert [len(r) for r in entry["step_times_s"]] == [2, 2]
            assert entry["images_per_s"] > 0 and entry["peak_memory_mb"] > 0
            assert entry["tensorflow_imported"] == (tensorflow and entry["backend"] != "torch")
            if entry["backend"] != "torch":
                assert entry["steps_per_execution"] == (1 if tensorflow else 2)
        assert out["contenders"]["multiseg"]["multiseg_speed_ratio"] == 1.0
        if tensorflow:
            assert out["gradflow"]["every"] == 100 and out["gradflow"]["steps"]["logged"] > 0
        else:
            assert "gradflow" not in out
        assert "images/s" in capsys.readouterr().out


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


class TestStartup:
    def test_times_every_stage_up_to_the_second_step(self, tmp_path):
        import subprocess
        import time

        path = tmp_path / "startup.json"
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, os.path.join(REPO, "tools", "bench", "startup.py"), SHAPES,
             *[arg for override in [*SMALL, "data.train=24"] for arg in ("--set", override)],
             "--json", str(path)], capture_output=True, text=True, timeout=300)
        wall = time.perf_counter() - started
        assert done.returncode == 0, done.stderr[-2000:]
        out = json.loads(path.read_text())
        import startup

        stages = out["stages"]
        # Every trainer step was wrapped and ran once (a renamed one would stop the script).
        assert {label for _, label in startup.TRAINER_STAGES} <= set(stages)
        assert all(seconds >= 0 for seconds in stages.values())
        first = stages["first training step (tracing, compilation, first batch)"]
        assert first > out["steady_step"] > 0
        assert 0 < out["to_second_step"] < sum(stages.values()) <= wall
        assert "first step =" in done.stdout


class TestLoad:
    def test_times_both_loaders_in_new_processes(self, trained_tiny, capsys):
        import load

        assert load.main([os.path.join(trained_tiny.run_dir, "model.keras"),
                          "--repeats", "1"]) == 0
        out = capsys.readouterr().out
        counts = {line.split(" (")[1] for line in out.splitlines() if " variables)" in line}
        assert len(counts) == 1  # both loaders built the same model
        assert "median load multiseg.load_model" in out and "of Keras's time" in out


class TestDispatch:
    def test_times_both_callback_lists_in_new_processes(self, tmp_path, capsys):
        import dispatch

        path = tmp_path / "dispatch.json"
        assert dispatch.main([SHAPES, *[arg for override in [*SMALL, "data.train=12"]
                                        for arg in ("--set", override)],
                              "--repeats", "1", "--warmup", "1", "--json", str(path)]) == 0
        out = json.loads(path.read_text())
        # 3 steps an epoch, the clock from the end of the first to the end of the second.
        assert set(out["steps_per_second"]) == {"multiseg", "keras"}
        # Each ran with its own list: Keras's hands every callback numbers.
        assert out["logs_as_numbers"] == {"multiseg": False, "keras": True}
        assert all(len(rates) == 1 and rates[0] > 0
                   for rates in out["steps_per_second"].values())
        assert out["ratio"] == pytest.approx(
            out["medians"]["multiseg"] / out["medians"]["keras"])
        assert "multiseg's against Keras's" in capsys.readouterr().out
