"""Faults: killed runs resume, Ctrl-C checkpoints, non-finite losses are attributed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import yaml

from multiseg.callbacks import (
    AtomicCheckpoint,
    NonFiniteLoss,
    latest_checkpoint,
    nonfinite_culprits,
)
from multiseg.recipe import from_dict
from multiseg.train import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs training in a child process; FAULT picks where the child kills itself with SIGKILL (or
# interrupts itself with SIGINT), as a crash, an OOM kill or a user would.
DRIVER = textwrap.dedent('''
    import os, signal, sys
    import keras
    from multiseg import recipe as recipe_lib
    from multiseg.train import main

    fault, epoch_at, batch_at = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])

    class Fault(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            if (self.epoch, batch) == (epoch_at, batch_at):
                os.kill(os.getpid(), signal.SIGKILL if fault == "kill" else signal.SIGINT)

    if fault == "kill-in-checkpoint":
        real_replace = os.replace
        def replace(src, dst):
            # Dies after the weights are written, before they are renamed into place.
            if dst.endswith(f"epoch-{epoch_at:04d}.weights.h5"):
                os.kill(os.getpid(), signal.SIGKILL)
            return real_replace(src, dst)
        os.replace = replace

    import multiseg.trainer as train_module
    real = train_module.gradflow_callbacks
    if fault in ("kill", "interrupt"):
        train_module.gradflow_callbacks = lambda *a: [*real(*a), Fault()]
    sys.exit(main([sys.argv[1], "--quiet"]))
''')


def _run(tmp_path, recipe_path, fault="none", epoch=0, batch=0):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    return subprocess.run([sys.executable, str(driver), str(recipe_path), fault, str(epoch),
                           str(batch)], capture_output=True, text=True, cwd=REPO, timeout=600)


@pytest.fixture
def fault_recipe(tmp_path, tiny_raw):
    tiny_raw["train"].update(epochs=3, deterministic=True)
    tiny_raw["model"]["dropout"] = 0.3  # the dropout RNG must resume too
    tiny_raw["data"]["train"] = 48  # 6 steps per epoch
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tiny_raw, sort_keys=False))
    return path, tiny_raw


def _state(run_dir):
    with open(os.path.join(run_dir, "checkpoints", "state.json")) as handle:
        return json.load(handle)


def _val(run_dir):
    with open(os.path.join(run_dir, "metrics.json")) as handle:
        return json.load(handle)["val"]


# The uninterrupted runs' validation figures, by recipe: the tests of one recipe share one run.
# How many steps a call runs is left out of the key: it does not change what is trained (each
# test that varies it compares against a run with another count).
_UNINTERRUPTED: dict[str, dict] = {}


def _uninterrupted_val(tmp_path, raw) -> dict:
    """Trained here, in the test's process: a seeded, deterministic run computes the same in
    any process, and the resumed runs it is compared with are the ones that need a fresh
    process (their state comes from the files alone)."""
    train_options = {k: v for k, v in raw["train"].items() if k != "steps_per_execution"}
    key = json.dumps({**raw, "train": train_options, "output": None}, sort_keys=True)
    if key not in _UNINTERRUPTED:
        straight = from_dict({**raw, "output": str(tmp_path / "straight")})
        _UNINTERRUPTED[key] = train(straight, verbose=0).metrics["val"]
    return _UNINTERRUPTED[key]


def _assert_matches_uninterrupted_run(tmp_path, raw, resumed, figures=("loss",)) -> None:
    """Compares each head's ``figures`` with those of the same recipe trained without
    interruption (once per recipe, ``_uninterrupted_val``).

    Same batches (a function of seed, epoch and step), same restored weights, optimizer and
    dropout generator state, op determinism on: the results agree to float32 round-off.
    """
    assert_same_figures(resumed, _uninterrupted_val(tmp_path, raw), figures)


def assert_same_figures(resumed: dict, straight: dict, figures=("loss",)) -> None:
    """Each head's validation ``figures`` of a resumed run against an uninterrupted one's."""
    for head in ("mask", "boundary", "shape"):
        for figure in figures:
            assert resumed[head][figure] == pytest.approx(straight[head][figure], rel=1e-4), (
                head, figure)


class TestKillAndResume:
    def test_killed_runs_resume_and_match_an_uninterrupted_run(self, tmp_path, fault_recipe):
        path, raw = fault_recipe
        run_dir = raw["output"]
        # 1. SIGKILL in the middle of the second epoch: epoch 1 is the last checkpoint.
        proc = _run(tmp_path, path, "kill", epoch=1, batch=1)
        assert proc.returncode == -9, proc.stderr[-2000:]
        state = _state(run_dir)
        assert {k: state[k] for k in ("epoch", "step", "weights")} == {
            "epoch": 1, "step": 0, "weights": "epoch-0001.weights.h5"}
        assert state["rng"], "the dropout generator state is saved with the weights"
        assert not os.path.exists(os.path.join(run_dir, "metrics.json"))
        # 2. Resumed, then SIGKILL while the epoch-3 checkpoint is being written.
        proc = _run(tmp_path, path, "kill-in-checkpoint", epoch=3)
        assert proc.returncode == -9, proc.stderr[-2000:]
        assert _state(run_dir)["epoch"] == 2  # the half-written epoch 3 is never referenced
        # 3. Resumed again: it finishes.
        proc = _run(tmp_path, path)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert _state(run_dir)["epoch"] == 3
        files = os.listdir(os.path.join(run_dir, "checkpoints"))
        assert not [f for f in files if "tmp" in f], files
        _assert_matches_uninterrupted_run(tmp_path, raw, _val(run_dir))

    def test_interrupt_checkpoints_the_step_and_resumes_mid_epoch(self, tmp_path, fault_recipe):
        path, raw = fault_recipe
        proc = _run(tmp_path, path, "interrupt", epoch=1, batch=0)
        assert proc.returncode == 130, proc.stderr[-2000:]
        assert "run the same command to resume" in proc.stderr
        # The signal arrives after the guard's check of step 1, so step 2 is the last one run.
        state = _state(raw["output"])
        assert (state["epoch"], state["step"], state["weights"]) == (
            1, 2, "epoch-0001-step-000002.weights.h5")
        proc = _run(tmp_path, path)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert _state(raw["output"])["epoch"] == 3
        _assert_matches_uninterrupted_run(tmp_path, raw, _val(raw["output"]))

    def test_several_steps_per_call_resume_with_another_count(self, tmp_path, fault_recipe):
        path, raw = fault_recipe
        raw["train"]["steps_per_execution"] = 2  # 6 steps per epoch, in calls of 2
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        proc = _run(tmp_path, path, "interrupt", epoch=1, batch=1)
        assert proc.returncode == 130, proc.stderr[-2000:]
        # The guard checkpoints at the end of the call after the signal's.
        state = _state(raw["output"])
        assert (state["epoch"], state["step"]) == (1, 4)
        # How steps are dispatched is not part of the run: 4 per call now, so the 2 steps
        # left of epoch 2 run in one call and epoch 3 in calls of 3.
        raw["train"]["steps_per_execution"] = 4
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        proc = _run(tmp_path, path)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert _state(raw["output"])["epoch"] == 3
        _assert_matches_uninterrupted_run(tmp_path, raw, _val(raw["output"]))


class _PoisonHead(keras.callbacks.Callback):
    """Sets one layer's kernel to NaN at the start of a given step (after the guard's
    snapshot, since it runs later in the callback list)."""

    def __init__(self, layer: str, epoch: int, batch: int):
        super().__init__()
        self.layer, self.at = layer, (epoch, batch)
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            kernel = self.model.get_layer(self.layer).kernel
            kernel.assign(np.full(kernel.shape, np.nan, np.float32))


class TestNonFinite:
    def test_stop_names_head_terms_and_step(self, tiny_raw):
        tiny_raw["train"]["epochs"] = 3
        recipe = from_dict(tiny_raw)
        with pytest.raises(NonFiniteLoss) as info:
            train(recipe, verbose=0, extra_callbacks=[_PoisonHead("mask-logits", 1, 1)])
        message = str(info.value)
        assert "epoch 2, step 2 (global step 4)" in message
        assert "head 'mask' (term" in message and "crossentropy" in message
        assert "'boundary'" not in message and "'shape'" not in message
        assert "epoch-0001.weights.h5" in message
        # The cut epoch was not recorded: resuming starts from the good epoch-1 weights.
        epoch, step, path = latest_checkpoint(os.path.join(recipe.output, "checkpoints"))
        assert (epoch, step) == (1, 0)
        assert not os.path.exists(os.path.join(recipe.output, "metrics.json"))

    def test_stop_reads_a_step_at_the_next_one_and_names_it(self, tiny_raw):
        # 3 steps an epoch: a bad first step of epoch 2 is read at the end of the second
        # (multiseg.callbacks.dispatch), which is the last one trained.
        tiny_raw["data"]["train"] = 24
        tiny_raw["train"]["epochs"] = 3
        recipe = from_dict(tiny_raw)

        class Trained(keras.callbacks.Callback):
            def on_train_end(self, logs=None):
                self.steps = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

        trained = Trained()
        with pytest.raises(NonFiniteLoss) as info:
            train(recipe, verbose=0,
                  extra_callbacks=[_PoisonHead("mask-logits", 1, 0), trained])
        assert "epoch 2, step 1 (global step 4)" in str(info.value)
        assert trained.steps == 5
        epoch, step, _ = latest_checkpoint(os.path.join(recipe.output, "checkpoints"))
        assert (epoch, step) == (1, 0)

    def test_skip_restores_and_continues(self, tiny_raw):
        tiny_raw["train"].update(epochs=2, on_nonfinite="skip")
        recipe = from_dict(tiny_raw)
        result = train(recipe, verbose=0, extra_callbacks=[_PoisonHead("mask-logits", 1, 0)])
        assert result.epochs_run == 2
        assert all(np.isfinite(w).all() for w in result.model.get_weights())
        assert np.isfinite(result.metrics["val"]["total"]["loss"])

    def test_skip_gives_up_after_limit(self, tiny_raw):
        tiny_raw["train"].update(epochs=2, on_nonfinite="skip", max_skipped_steps=1)
        with pytest.raises(NonFiniteLoss, match="1 steps in a row were skipped"):
            train(from_dict(tiny_raw), verbose=0,
                  extra_callbacks=[_PoisonHead("mask-logits", 0, 1)])

    def test_culprits_from_logs(self):
        logs = {"loss": float("nan"), "mask_loss": 0.5, "mask_fine_loss": float("inf"),
                "mask_fine_dice_term": float("inf"), "mask_fine_crossentropy_term": 0.1}
        assert nonfinite_culprits(logs, ["mask", "mask_fine"]) == [
            "'mask_fine' (term dice): inf"]


class TestCheckpointFiles:
    def test_state_json_missing_falls_back_to_newest_complete(self, tmp_path):
        directory = tmp_path / "checkpoints"
        directory.mkdir()
        for name in ("epoch-0001.weights.h5", "epoch-0003.weights.h5",
                     "tmp-99-epoch-0004.weights.h5"):
            (directory / name).write_bytes(b"x")
        assert latest_checkpoint(str(directory)) == (3, 0, str(directory /
                                                               "epoch-0003.weights.h5"))

    def test_unwritable_directory_is_named(self, tmp_path, tiny_recipe):
        from multiseg.callbacks import CheckpointWriteError
        from multiseg.models import build_model

        target = tmp_path / "blocked"
        target.write_text("a file where a directory should be")
        checkpoint = AtomicCheckpoint(str(target / "checkpoints"))
        checkpoint.set_model(build_model(tiny_recipe, channels=3))
        with pytest.raises((CheckpointWriteError, OSError), match="blocked"):
            checkpoint.save(1)

    def test_run_dir_unwritable_reported(self, tmp_path, tiny_raw):
        from multiseg.runs import RunDirError

        blocker = tmp_path / "file"
        blocker.write_text("x")
        tiny_raw["output"] = str(blocker / "run")
        with pytest.raises(RunDirError, match="cannot write the run directory .*file/run"):
            train(from_dict(tiny_raw), verbose=0)
