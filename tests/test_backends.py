"""The JAX backend without TensorFlow, as on the team's GPU machines: a tiny training run with
a gradflow snapshot, its run directory and TensorBoard files, and per-head gradients. And the
PyTorch backend (without TensorFlow too): train, resume, a gradflow snapshot, save and reload.

The suite itself runs on TensorFlow (the default backend); these tests run the JAX and PyTorch
paths once each, in a child process where ``import tensorflow`` fails. The whole suite also
runs on JAX: ``KERAS_BACKEND=jax python -m pytest``. The three backends' per-head gradients are
compared in ``tests/test_backend_gradients.py``.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
from conftest import TINY_RAW

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The child trains the recipe in argv[1], noting which training steps the pipeline made; then
# measures every head's gradient with the run's weights, as ``tools/gradflow --run`` does, and
# reads the TensorBoard files back.
CHILD = textwrap.dedent("""
    import json, os, sys
    sys.modules["tensorflow"] = None  # any import of TensorFlow now fails
    import keras
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from multiseg.data.pipeline import Batches
    from multiseg.gradflow import recipe_report, write_report
    from multiseg.recipe import from_dict
    from multiseg.train import train

    from multiseg.batchnorm import PreciseBatchNorm

    # Training batches made by the pipeline for fit, and those made again for PreciseBN.
    made, remade, make = [], [], Batches.global_batch
    def global_batch(self, step):
        if self.shuffle:  # the training batches
            (remade if precise[0] else made).append(int(step))
        return make(self, step)
    Batches.global_batch = global_batch
    precise, recompute = [False], PreciseBatchNorm.on_train_batch_end
    def on_train_batch_end(self, batch, logs=None):
        precise[0] = True
        try:
            recompute(self, batch, logs)
        finally:
            precise[0] = False
    PreciseBatchNorm.on_train_batch_end = on_train_batch_end

    recipe = from_dict(json.load(open(sys.argv[1])))
    train(recipe, verbose=0)
    report = recipe_report(recipe, run_dir=recipe.output, mode="raw")
    write_report(report, sys.argv[2], ["json"])
    tags = {}
    for run in ("train", "validation", "gradflow"):
        events = EventAccumulator(os.path.join(recipe.output, "logs", run))
        events.Reload()
        tags[run] = sorted(events.Tags()["tensors"]) + sorted(events.Tags()["images"])
    print(json.dumps({"backend": keras.backend.backend(), "tags": tags, "made": made,
                      "remade": remade}))
""")


@pytest.fixture(scope="module")
def jax_run(tmp_path_factory):
    """(run directory, gradflow directory, the child's report) of one JAX training run."""
    tmp = tmp_path_factory.mktemp("jax")
    raw = copy.deepcopy(TINY_RAW)
    raw["output"] = str(tmp / "run")
    raw["train"]["epochs"] = 2  # 2 steps each
    raw["train"]["gradflow"] = {"every": 3}  # one snapshot, in the middle of epoch 2
    (tmp / "recipe.json").write_text(json.dumps(raw))
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", CHILD, str(tmp / "recipe.json"),
                          str(tmp / "gradflow")], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    child = json.loads(out.stdout.strip().splitlines()[-1])
    assert child["backend"] == "jax"
    return tmp / "run", tmp / "gradflow", child


def check_exact_zeros(report: dict, key: str) -> None:
    """A head's gradient is exactly 0.0 on another head's branch and, for the bottleneck head
    ``shape``, on the decoder; nonzero wherever its loss reaches."""
    heads = report["heads"]
    for layer in report["layers"]:
        norms = layer[key]
        where = f"{layer['name']} ({key})"
        assert set(layer["reach"]) == {h for h in heads if norms[h] != 0.0}, where
        if layer["owner"] != "shared":
            assert norms[layer["owner"]] > 0, where
            assert all(norms[h] == 0.0 for h in heads if h != layer["owner"]), where
        elif layer["name"].startswith("trunk-dec"):
            assert norms["shape"] == 0.0 and norms["mask"] > 0 and norms["boundary"] > 0, where
        else:
            assert all(norms[h] > 0 for h in heads), where


def test_jax_training_and_gradflow_without_tensorflow(jax_run):
    run, gradflow, child = jax_run
    metrics = json.loads((run / "metrics.json").read_text())
    for split in ("train", "val"):
        assert set(metrics[split]) >= {"mask", "boundary", "shape", "total"}, split
        losses = [metrics[split][group]["loss"] for group in ("mask", "boundary", "shape",
                                                               "total")]
        assert all(math.isfinite(v) and v > 0 for v in losses), (split, losses)
    assert (run / "model.keras").is_file()

    # TensorBoard files written and read back without TensorFlow, in Keras's layout.
    tags = child["tags"]
    assert {"mask/loss", "mask/dice", "total/loss", "data/report"} <= set(tags["train"])
    assert {"mask/loss", "shape/accuracy"} <= set(tags["validation"])
    assert any(t.startswith("predictions/") for t in tags["validation"])
    assert {"attach_norm/mask", "cosine/mask|boundary", "charts/grad_norm"} <= set(
        tags["gradflow"])

    # The snapshot taken during fit (live weights, from JAX's trainer state), then the one
    # taken afterwards from the run's saved weights.
    lines = (run / "logs" / "gradflow" / "gradflow.jsonl").read_text().splitlines()
    assert len(lines) == 1
    during = json.loads(lines[0])
    assert during["backend"] == "jax" and during["step"] == 3
    check_exact_zeros(during, "grad_norm")
    after = json.loads((gradflow / "gradflow.json").read_text())
    assert after["backend"] == "jax"
    check_exact_zeros(after, "grad_norm_raw")


def test_jax_fit_makes_each_training_step_once(jax_run):
    """Two epochs of two steps: global steps 0..3, each made once and none replayed; PreciseBN
    makes each epoch's batches (at most ``precise_bn``) once more, after the epoch's last step."""
    _, _, child = jax_run
    assert sorted(child["made"]) == [0, 1, 2, 3]
    assert child["remade"] == [0, 1, 2, 3]


# The torch child: one epoch, then the same recipe with two (a resume from the checkpoint), a
# gradflow snapshot in the second, then model.keras reloaded beside the trained model.
TORCH_CHILD = textwrap.dedent("""
    import json, sys
    sys.modules["tensorflow"] = None  # any import of TensorFlow now fails
    import keras, numpy as np
    import multiseg
    from multiseg.recipe import from_dict
    from multiseg.train import train

    raw = json.load(open(sys.argv[1]))
    first = train(from_dict(raw), verbose=0)
    raw["train"]["epochs"] = 2
    second = train(from_dict(raw), verbose=0)
    images = np.random.default_rng(0).random((2, 32, 32, 3)).astype("float32")
    trained = second.model(images, training=False)
    reloaded = multiseg.load_model(raw["output"] + "/model.keras")(images, training=False)
    print(json.dumps({"backend": keras.backend.backend(),
                      "epochs": [first.epochs_run, second.epochs_run],
                      "reload": max(float(np.abs(keras.ops.convert_to_numpy(trained[h])
                                                 - keras.ops.convert_to_numpy(reloaded[h])).max())
                                    for h in trained)}))
""")


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch not installed")
def test_torch_trains_resumes_and_reloads_without_tensorflow(tmp_path):
    raw = copy.deepcopy(TINY_RAW)
    raw["output"] = str(tmp_path / "run")
    raw["train"]["lr_schedule"] = "constant"  # so that the run may go on to more epochs
    raw["train"]["gradflow"] = {"every": 3}  # one snapshot, in the middle of epoch 2
    (tmp_path / "recipe.json").write_text(json.dumps(raw))
    env = {**os.environ, "KERAS_BACKEND": "torch"}
    out = subprocess.run([sys.executable, "-c", TORCH_CHILD, str(tmp_path / "recipe.json")],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    child = json.loads(out.stdout.strip().splitlines()[-1])
    assert child["backend"] == "torch"
    assert child["epochs"] == [1, 1]  # the second run trained only the epoch it lacked
    assert child["reload"] == 0.0  # the same weights, the same backend: the same numbers
    run = tmp_path / "run"
    assert sorted(os.listdir(run / "checkpoints"))[:2] == ["epoch-0001.weights.h5",
                                                           "epoch-0002.weights.h5"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert all(math.isfinite(metrics[split][g]["loss"]) for split in ("train", "val")
               for g in ("mask", "boundary", "shape", "total"))
    lines = (run / "logs" / "gradflow" / "gradflow.jsonl").read_text().splitlines()
    assert len(lines) == 1
    snapshot = json.loads(lines[0])
    assert snapshot["backend"] == "torch" and snapshot["step"] == 3
    check_exact_zeros(snapshot, "grad_norm")
