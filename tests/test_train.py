"""End to end: a tiny recipe trains into a complete run directory, and the CLI behaves."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import multiseg
from multiseg.callbacks import HeadLogs, TensorBoardLogs, nest_logs
from multiseg.data import DataError, build_data
from multiseg.models.build import build_model, compile_model, head_losses
from multiseg.recipe import from_dict, load
from multiseg.runs import RunDirError, load_run
from multiseg.train import main, train
from tests.conftest import TINY_RAW, prediction_images

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _scalars(logdir: str) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in a TensorBoard run, read back with TensorBoard's own reader."""
    acc = EventAccumulator(logdir, size_guidance={"tensors": 0})
    acc.Reload()
    out = {}
    for tag in acc.Tags()["tensors"]:
        events = acc.Tensors(tag)
        proto = events[0].tensor_proto if events else None
        if proto is not None and proto.dtype == 1 and not proto.tensor_shape.dim:  # float32 scalar
            out[tag] = [(e.step, float(np.asarray(e.tensor_proto.float_val)[0])) for e in events]
    return out


class TestRunDirectory:
    def test_files(self, trained_tiny):
        run = trained_tiny.run_dir
        for name in ("recipe.yaml", "metrics.json", "model.keras", "checkpoints/state.json"):
            assert os.path.isfile(os.path.join(run, name)), name
        assert os.listdir(os.path.join(run, "logs", "train"))
        assert os.listdir(os.path.join(run, "logs", "validation"))
        # No temporary files are left behind by the atomic writes.
        leftovers = [f for _, _, files in os.walk(run) for f in files if "tmp" in f]
        assert leftovers == []

    def test_resolved_recipe_reloads_equal(self, trained_tiny):
        saved = load(os.path.join(trained_tiny.run_dir, "recipe.yaml"))
        with open(os.path.join(trained_tiny.run_dir, "recipe.yaml")) as handle:
            assert yaml.safe_load(handle)["train"]["epochs"] == 2
        assert list(saved.heads) == ["mask", "boundary", "shape"]

    def test_metrics_json(self, trained_tiny):
        with open(os.path.join(trained_tiny.run_dir, "metrics.json")) as handle:
            metrics = json.load(handle)
        assert metrics["epochs"] == 2
        # Validation losses recomputed outside Keras's evaluate: the reloaded model's
        # predictions, each head's loss object, a mean over samples.
        recipe = load(os.path.join(trained_tiny.run_dir, "recipe.yaml"))
        data = build_data(recipe, frequencies=False, log_report=False)
        model = multiseg.load_model(os.path.join(trained_tiny.run_dir, "model.keras"))
        losses = head_losses(recipe)
        sums, count = dict.fromkeys(recipe.heads, 0.0), 0
        for i in range(len(data.val)):
            images, targets = data.val[i]
            outputs = model.predict_on_batch(images)
            for head in recipe.heads:
                sums[head] += float(losses[head](targets[head], outputs[head])) * len(images)
            count += len(images)
        total = 0.0
        for head, w in (("mask", 1.0), ("boundary", 0.5), ("shape", 0.2)):
            raw = sums[head] / count
            total += w * raw
            # float32 sums over batches: 1e-4 relative.
            assert metrics["val"][head]["loss"] == pytest.approx(raw, rel=1e-4)
            assert metrics["val"][head]["weighted_loss"] == pytest.approx(w * raw, rel=1e-4)
        assert metrics["val"]["total"]["loss"] == pytest.approx(total, rel=1e-4)
        for split in ("train", "val"):
            assert all(np.isfinite(metrics[split][h]["loss"]) for h in recipe.heads)
            assert 0.0 <= metrics[split]["mask"]["dice"] <= 1.0
            assert 0.0 <= metrics[split]["shape"]["accuracy"] <= 1.0
            assert set(metrics[split]["mask"]) >= {"dice_term", "crossentropy_term", "iou"}

    def test_saved_model_reloads_and_predicts_the_same(self, trained_tiny):
        path = os.path.join(trained_tiny.run_dir, "model.keras")
        reloaded = multiseg.load_model(path)
        x = np.random.default_rng(0).random((2, 40, 28, 3)).astype(np.float32)
        before = trained_tiny.model.predict(x, verbose=0)
        after = reloaded.predict(x, verbose=0)
        assert set(after) == set(before) == {"mask", "boundary", "shape"}
        for head in before:
            np.testing.assert_allclose(after[head], before[head], rtol=1e-5, atol=1e-5)

    def test_tensorboard_tags(self, trained_tiny):
        logs = os.path.join(trained_tiny.run_dir, "logs")
        train_tags = _scalars(os.path.join(logs, "train"))
        val_tags = _scalars(os.path.join(logs, "validation"))
        for head in ("mask", "boundary", "shape"):
            for name in ("loss", "weighted_loss"):
                assert f"{head}/{name}" in train_tags and f"{head}/{name}" in val_tags
            assert f"{head}/loss_weight" in train_tags
        for tag in ("mask/dice_term", "mask/crossentropy_term", "mask/dice", "mask/iou",
                    "boundary/dice", "shape/accuracy"):
            assert tag in train_tags and tag in val_tags, tag
        assert "total/loss" in train_tags and "total/loss" in val_tags
        assert "optimizer/learning_rate" in train_tags
        # One point per epoch, and the weighted value is the weight times the raw one.
        assert [step for step, _ in train_tags["mask/loss"]] == [1, 2]
        raw = dict(train_tags["boundary/loss"])
        weighted = dict(train_tags["boundary/weighted_loss"])
        for step in raw:
            assert weighted[step] == pytest.approx(0.5 * raw[step], rel=1e-5)
        assert dict(train_tags["shape/loss_weight"]) == {1: pytest.approx(0.2),
                                                          2: pytest.approx(0.2)}


    def test_prediction_images_show_the_models_predictions(self, trained_tiny):
        from multiseg.callbacks.pictures import colour_prediction

        tag, pictures = prediction_images(trained_tiny.run_dir)
        assert tag == ("predictions/image | mask target | mask pred"
                       " | boundary target | boundary pred")
        assert max(pictures) == 2
        picture = pictures[2][..., :3]
        # 4 of the first validation batch's images, a row each; 32x32 tiles in 5 columns.
        assert picture.shape == (4 * 32, 5 * 32, 3)
        _, data, _ = load_run(trained_tiny.run_dir)
        images = data.val[0][0]
        # Drawn after the last epoch's batch-norm statistics: the trained model's output.
        predicted = trained_tiny.model.predict_on_batch(images)
        for row in range(4):
            expected = (colour_prediction(np.asarray(predicted["mask"][row])) * 255).round()
            tile = picture[row * 32:(row + 1) * 32, 2 * 32:3 * 32]
            np.testing.assert_array_equal(tile, expected.astype(np.uint8))


class TestTotalLoss:
    def test_total_is_weighted_sum_of_heads(self, tiny_recipe):
        data = build_data(tiny_recipe)
        model = build_model(tiny_recipe, channels=data.channels)
        compile_model(model, tiny_recipe)
        images, targets = data.val[0]
        logs = model.evaluate(images, targets, verbose=0, return_dict=True,
                              batch_size=len(images))
        predictions = model(images, training=False)
        # Independent: each head's loss object on the model's own predictions.
        expected = 0.0
        for name, loss in head_losses(tiny_recipe).items():
            value = float(loss(targets[name], predictions[name]))
            assert logs[f"{name}_loss"] == pytest.approx(value, rel=1e-5)
            expected += tiny_recipe.heads[name].loss_weight * value
        assert logs["loss"] == pytest.approx(expected, rel=1e-5)

    def test_loss_weight_key_mismatch_refused(self, tiny_recipe):
        model = build_model(tiny_recipe, channels=3)
        broken = copy.copy(tiny_recipe)
        object.__setattr__(broken, "heads", {k: v for k, v in tiny_recipe.heads.items()
                                             if k != "shape"})
        with pytest.raises(ValueError, match="do not match the model outputs"):
            compile_model(model, broken)


def test_logs_nest_in_the_recipe_order():
    # Keras sorts its logs by name; summaries and metrics.json list heads as the recipe does.
    logs = {"boundary_dice": 0.5, "loss": 1.0, "mask_dice": 0.9, "shape_accuracy": 0.7,
            "learning_rate": 1e-3}
    nested = nest_logs(logs, ["shape", "mask", "boundary"])
    assert list(nested) == ["shape", "mask", "boundary", "total", "optimizer"]
    assert nested["mask"] == {"dice": 0.9} and nested["total"] == {"loss": 1.0}


@pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                    reason="TensorFlow's warning about retraced step functions")
def test_runs_in_one_process_do_not_warn_of_retracing(tiny_raw, one_epoch_run):
    # Every run builds a new model whose step functions TensorFlow traces once each; counted
    # across models, the second run in a process (after one_epoch_run's) used to warn of
    # "frequent retracing".
    import logging

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("tensorflow")
    logger.addHandler(handler)
    try:
        train(from_dict(tiny_raw), verbose=0)
    finally:
        logger.removeHandler(handler)
    assert [r.getMessage() for r in records if "retracing" in r.getMessage()] == []


class TestCallbackOrder:
    def test_head_logs_and_tensorboard_in_either_order(self, tiny_recipe, tmp_path):
        # HeadLogs adds the weighted losses and the learning rate to the epoch's logs;
        # TensorBoardLogs computes them itself, so neither depends on running first. fit
        # appends History and the progress bar after these callbacks: the history holds what
        # the progress bar prints.
        model = build_model(tiny_recipe, channels=3)
        compile_model(model, tiny_recipe, total_steps=10)
        weights = {name: head.loss_weight for name, head in tiny_recipe.heads.items()}
        epoch_logs = {"loss": 1.5, "val_loss": 1.75, "mask_dice": 0.25, "val_mask_dice": 0.125}
        for i, head in enumerate(weights):
            epoch_logs |= {f"{head}_loss": 0.5 + i, f"val_{head}_loss": 0.75 + i}
        results = {}
        for order in ("heads_first", "tensorboard_first"):
            logdir = str(tmp_path / order)
            head_logs = HeadLogs(weights)
            tensorboard = TensorBoardLogs(logdir, tiny_recipe.heads, weights)
            history = keras.callbacks.History()
            ordered = [head_logs, tensorboard][:: 1 if order == "heads_first" else -1]
            callbacks = keras.callbacks.CallbackList([*ordered, history], model=model)
            callbacks.on_train_begin()
            for epoch in range(2):
                callbacks.on_epoch_end(epoch, dict(epoch_logs))
            tensorboard.close()
            results[order] = (history.history, {run: _scalars(os.path.join(logdir, run))
                                                for run in ("train", "validation")})
        assert results["heads_first"] == results["tensorboard_first"]
        printed, scalars = results["heads_first"]
        assert printed["boundary_weighted_loss"] == [pytest.approx(0.5 * 1.5)] * 2
        assert "learning_rate" in printed
        assert dict(scalars["train"]["boundary/weighted_loss"]) == {
            1: pytest.approx(0.5 * 1.5), 2: pytest.approx(0.5 * 1.5)}
        assert "optimizer/learning_rate" in scalars["train"]
        assert "boundary/weighted_loss" in scalars["validation"]


class TestShippedRecipes:
    # The synthetic recipes besides the default (CI's smoke run) and nuclei (test_data_pipeline),
    # cut to a few small batches: their heads, losses and sources still fit the code.
    @pytest.mark.parametrize("name", ["cells", "cardiac"])
    def test_trains_a_few_steps(self, tmp_path, name):
        recipe = load(os.path.join(REPO, "recipes", f"{name}.yaml"), [
            "train.epochs=1", "data.train=8", "data.val=4", "train.batch_size=4",
            f"output={tmp_path / name}"])
        result = train(recipe, verbose=0)
        assert set(result.metrics["val"]) == {*recipe.heads, "total"}
        assert np.isfinite(result.metrics["val"]["total"]["loss"])
        assert (tmp_path / name / "model.keras").is_file()


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory) -> str:
    """The tiny recipe on 8 training samples, trained 1 epoch: one finished run that the
    tests copy (``finished_run``) instead of each training its own."""
    raw = copy.deepcopy(TINY_RAW)
    raw["data"]["train"] = 8
    raw["output"] = str(tmp_path_factory.mktemp("finished") / "run")
    assert train(from_dict(raw), verbose=0).epochs_run == 1
    return raw["output"]


@pytest.fixture
def finished_run(tiny_raw, one_epoch_run) -> dict:
    """``tiny_raw`` on 8 training samples, with a finished 1-epoch run of it in its output
    directory; returns that run's metrics.json."""
    tiny_raw["data"]["train"] = 8
    shutil.copytree(one_epoch_run, tiny_raw["output"])
    with open(os.path.join(tiny_raw["output"], "metrics.json")) as handle:
        return json.load(handle)


def _saved_weights(run_dir: str) -> list[np.ndarray]:
    return multiseg.load_model(os.path.join(run_dir, "model.keras")).get_weights()


class TestResume:
    def test_continue_with_more_epochs(self, tiny_raw, finished_run):
        weights = _saved_weights(tiny_raw["output"])
        tiny_raw["train"]["epochs"] = 2
        second = train(from_dict(tiny_raw), verbose=0)
        assert second.epochs_run == 1  # resumed after epoch 1
        with open(os.path.join(second.run_dir, "checkpoints", "state.json")) as handle:
            assert json.load(handle)["epoch"] == 2
        assert any(not np.array_equal(a, b) for a, b in
                   zip(weights, second.model.get_weights(), strict=False))

    def test_cosine_with_other_epochs_refused(self, tiny_raw, capsys):
        # The cosine decay spans the run's epochs: another count would make the learning rate
        # jump at the resume point, up after a finished run, down in the middle of one.
        tiny_raw["data"]["train"] = 8
        tiny_raw["train"].update(epochs=2, lr_schedule="cosine")
        run = train(from_dict(tiny_raw), verbose=0).run_dir
        before = _snapshot(run)
        tiny_raw["train"]["epochs"] = 3
        with pytest.raises(RunDirError, match="lr_schedule: cosine") as info:
            train(from_dict(tiny_raw), verbose=0)
        message = str(info.value)
        assert "2 of 2 epochs" in message and "train.epochs=2" in message
        assert "--fresh" in message and "constant" in message
        assert _snapshot(run) == before

    def test_cosine_learning_rate_continues_across_a_resume(self, tiny_raw):
        # Interrupted after epoch 1 of 2 (a checkpoint and no records), then resumed: the
        # schedule goes on from the restored step count, as in one uninterrupted run.
        tiny_raw["data"]["train"] = 8
        tiny_raw["train"].update(epochs=2, lr_schedule="cosine")
        recipe = from_dict(tiny_raw)

        class Stop(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                self.model.stop_training = True

        at_start = _StateAtStart()
        first = train(recipe, verbose=0, extra_callbacks=[Stop(), at_start])
        assert first.model.optimizer.iterations.numpy() == 1
        # Every variable existed before the first step: TensorFlow traces a step that creates
        # variables twice (multiseg.models.build.build_training_variables).
        assert at_start.count == _state_size(first.model) > len(first.model.variables)
        second = train(recipe, verbose=0)
        optimizer = second.model.optimizer
        assert optimizer.iterations.numpy() == 2
        # CosineDecay over 2 steps from 0.01, after 2 steps: 0.
        assert float(optimizer.learning_rate) == pytest.approx(0.0, abs=1e-9)

    def test_other_recipe_in_same_dir_refused(self, tiny_raw, finished_run):
        tiny_raw["heads"]["mask"]["loss_weight"] = 0.3
        with pytest.raises(RunDirError, match="different recipe"):
            train(from_dict(tiny_raw), verbose=0)
        result = train(from_dict(tiny_raw), verbose=0, fresh=True)
        assert result.epochs_run == 1


class _StateAtStart(keras.callbacks.Callback):
    """How many variables the model, its metrics and its optimizer have as training begins,
    before the training step is first traced."""

    def on_train_begin(self, logs=None):
        self.count = _state_size(self.model)


def _state_size(model) -> int:
    return (len(model.variables) + len(model.metrics_variables)
            + len(model.optimizer.variables))


def _snapshot(run_dir) -> dict:
    """Every file of a run directory with its bytes and modification time."""
    files = {}
    for root, _, names in os.walk(run_dir):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as handle:
                files[os.path.relpath(path, run_dir)] = (handle.read(), os.stat(path).st_mtime_ns)
    return files


class TestRunRecords:
    """A run's records are written by the run that produced them, and by no other."""

    def test_finished_run_with_fewer_epochs_refused(self, tmp_path, tiny_raw, capsys):
        tiny_raw["data"]["train"] = 8
        tiny_raw["train"]["epochs"] = 2
        run = train(from_dict(tiny_raw), verbose=0).run_dir
        before = _snapshot(run)
        tiny_raw["train"]["epochs"] = 1
        with pytest.raises(RunDirError, match="2 epochs done") as info:
            train(from_dict(tiny_raw), verbose=0)
        message = str(info.value)
        assert "train.epochs=1" in message and "--fresh" in message and "--output" in message
        path = tmp_path / "recipe.yaml"
        path.write_text(yaml.safe_dump(tiny_raw, sort_keys=False))
        assert main([str(path)]) == 2
        assert f"error: {message}" in capsys.readouterr().err
        assert _snapshot(run) == before

    def test_finished_run_again_is_left_as_it_is(self, tmp_path, tiny_raw, finished_run,
                                                 capsys):
        run = tiny_raw["output"]
        before = _snapshot(run)
        weights = _saved_weights(run)
        path = tmp_path / "recipe.yaml"
        path.write_text(yaml.safe_dump(tiny_raw, sort_keys=False))
        assert main([str(path)]) == 0
        out = capsys.readouterr().out
        assert f"{run} is complete: 1 of 1 epoch trained" in out
        assert "resuming" not in out
        assert _snapshot(run) == before
        # The command answers without Keras; train() in Python says the same.
        again = train(from_dict(tiny_raw), verbose=1)
        assert capsys.readouterr().out == out
        assert again.epochs_run == 0
        assert again.metrics == finished_run
        for a, b in zip(weights, again.model.get_weights(), strict=True):
            np.testing.assert_array_equal(a, b)
        assert _snapshot(run) == before

    def test_lost_records_are_rewritten_from_the_last_checkpoint(self, tiny_raw, finished_run):
        # Killed after the last checkpoint, before metrics.json: the same command finishes it.
        run = tiny_raw["output"]
        os.remove(os.path.join(run, "metrics.json"))
        again = train(from_dict(tiny_raw), verbose=0)
        assert again.epochs_run == 0
        with open(os.path.join(run, "metrics.json")) as handle:
            metrics = json.load(handle)
        assert metrics["epochs"] == 1 and metrics["seconds"] is None
        assert metrics["val"]["mask"]["loss"] == pytest.approx(
            finished_run["val"]["mask"]["loss"], rel=1e-5)


class TestChecksBeforeWriting:
    """Every mistake that can be found is found before the run directory is touched."""

    @staticmethod
    def _folder(root, count=6, size=16):
        from PIL import Image

        rng = np.random.default_rng(0)
        for i in range(count):
            mask = np.zeros((size, size), np.uint8)
            mask[4:10, 3:9] = 1
            image = (40 + 160 * mask + rng.integers(0, 20, mask.shape)).astype(np.uint8)
            os.makedirs(root / "images", exist_ok=True)
            os.makedirs(root / "masks", exist_ok=True)
            Image.fromarray(image).save(root / "images" / f"img{i}.png")
            Image.fromarray(mask * 255).save(root / "masks" / f"img{i}.png")

    def _folder_raw(self, tmp_path, tiny_raw):
        self._folder(tmp_path / "set")
        (tmp_path / "set" / "masks" / "img2.png").write_bytes(b"not a png")
        raw = {**tiny_raw, "data": {"source": {"kind": "folder", "path": str(tmp_path / "set")},
                                    "image_size": [16, 16]},
               "heads": {"mask": {"kind": "segmentation", "target": "mask"}}}
        return raw

    def test_target_check_names_the_head(self, tiny_recipe):
        # A target the head cannot learn is a DataError (exit code 2) naming the head's target.
        from multiseg.trainer import _check_first_batch

        class Data:
            images = np.zeros((2, 32, 32, 3), np.float32)
            targets = {name: np.zeros((2, 32, 32, 1), np.float32) for name in ("mask", "boundary")}
            train = [(images, {**targets, "shape": np.array([[0], [7]])})]

        with pytest.raises(DataError, match=r"^heads\.shape\.target: .*7"):
            _check_first_batch(tiny_recipe, Data())

    def test_data_error_writes_nothing(self, tmp_path, tiny_raw):
        from multiseg.data import DataError

        raw = self._folder_raw(tmp_path, tiny_raw)
        with pytest.raises(DataError, match="img2.png"):
            train(from_dict(raw), verbose=0)
        assert not os.path.exists(raw["output"])
        # The fixed recipe is the first one this directory sees, not "a different recipe".
        raw["data"]["source"]["bad_files"] = "skip"
        assert train(from_dict(raw), verbose=0).epochs_run == 1

    def test_fresh_deletes_nothing_before_a_data_error(self, tmp_path, tiny_raw, finished_run):
        from multiseg.data import DataError

        run = tiny_raw["output"]
        before = _snapshot(run)
        raw = self._folder_raw(tmp_path, tiny_raw)
        with pytest.raises(DataError, match="img2.png"):
            train(from_dict(raw), verbose=0, fresh=True)
        assert _snapshot(run) == before

    def test_other_recipe_refused_before_the_data_is_read(self, tiny_raw, finished_run,
                                                          monkeypatch):
        tiny_raw["heads"]["mask"]["loss_weight"] = 0.3
        import multiseg.trainer as train_module

        def no_data(*args, **kwargs):
            raise AssertionError("the data was read before the run directory was checked")

        monkeypatch.setattr(train_module, "build_data", no_data)
        with pytest.raises(RunDirError, match="different recipe"):
            train(from_dict(tiny_raw), verbose=0)


class TestCommandLine:
    def _write(self, tmp_path, raw):
        path = tmp_path / "recipe.yaml"
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        return str(path)

    def test_bad_recipe_exits_2_without_traceback(self, tmp_path, tiny_raw):
        tiny_raw["heads"]["mask"]["loss"][0]["name"] = "dise"
        path = self._write(tmp_path, tiny_raw)
        proc = subprocess.run([sys.executable, "-m", "multiseg.train", path],
                              capture_output=True, text=True, cwd=REPO, timeout=300)
        assert proc.returncode == 2
        assert "heads.mask.loss[0].name: unknown loss 'dise' (did you mean 'dice'?)" in proc.stderr
        assert "Traceback" not in proc.stderr

    def test_bad_override_exits_2(self, tmp_path, tiny_raw, capsys):
        path = self._write(tmp_path, tiny_raw)
        assert main([path, "--set", "train.epochs=-1"]) == 2
        assert "train.epochs: must be > 0" in capsys.readouterr().err

    def test_misspelled_head_in_override(self, tmp_path, tiny_raw, capsys):
        path = self._write(tmp_path, tiny_raw)
        assert main([path, "--set", "heads.masks.loss_weight=0.5"]) == 2
        err = capsys.readouterr().err
        assert "--set heads.masks.loss_weight: the recipe has no head 'masks'" in err
        assert "(did you mean 'mask'?)" in err and "is required" not in err

    def test_overrides_and_output(self, tmp_path, tiny_raw, capsys):
        tiny_raw["data"]["train"] = 8
        path = self._write(tmp_path, tiny_raw)
        out = tmp_path / "elsewhere"
        assert main([path, "--set", "heads.mask.loss_weight=0.25", "--output", str(out)]) == 0
        printed = capsys.readouterr().out
        assert "total loss = 0.25*mask + 0.5*boundary + 0.2*shape" in printed
        assert "mask: segmentation, 4 classes" in printed
        assert load(out / "recipe.yaml").heads["mask"].loss_weight == 0.25


class TestEvaluate:
    def test_matches_the_runs_final_metrics(self, trained_tiny, capsys):
        from multiseg.evaluate import evaluate
        from multiseg.evaluate import main as evaluate_main

        with open(os.path.join(trained_tiny.run_dir, "metrics.json")) as handle:
            saved = json.load(handle)["val"]
        figures = evaluate(trained_tiny.run_dir)
        for head in ("mask", "boundary", "shape"):
            assert figures[head]["loss"] == pytest.approx(saved[head]["loss"], rel=1e-5)
        from_checkpoint = evaluate(trained_tiny.run_dir, checkpoint=True)
        assert from_checkpoint["mask"]["dice"] == pytest.approx(saved["mask"]["dice"], rel=1e-5)
        assert evaluate_main([trained_tiny.run_dir]) == 0
        out = capsys.readouterr().out
        assert "mask: " in out and "one pass of the final model over the val set" in out

    def test_says_what_each_train_figure_is(self, trained_tiny, capsys):
        from multiseg.evaluate import main as evaluate_main
        from multiseg.runs import FIGURES_ABOUT

        with open(os.path.join(trained_tiny.run_dir, "metrics.json")) as handle:
            saved = json.load(handle)
        # metrics.json says what its figures are, and evaluate says why its own differ.
        assert saved["about"] == FIGURES_ABOUT
        assert "training mode" in saved["about"]["train"]
        assert "inference mode" in saved["about"]["val"]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert evaluate_main([trained_tiny.run_dir, "--split", "train"]) == 0
        # Every batch evaluated, and no "input ran out of data" from Keras (a generator on JAX).
        assert not [w for w in caught if "ran out of data" in str(w.message)]
        out = capsys.readouterr().out
        assert "one pass of the final model over the train set, in inference mode" in out
        assert "metrics.json's train figures differ" in out

    def test_not_a_run(self, tmp_path, capsys):
        from multiseg.evaluate import main as evaluate_main

        assert evaluate_main([str(tmp_path)]) == 2
        assert "no recipe.yaml here" in capsys.readouterr().err
