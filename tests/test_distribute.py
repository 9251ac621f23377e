"""``train.distribute``: the recipe's checks, and one step on two replicas against one device.

The device setups must be made before the backend starts (TensorFlow's logical devices, JAX's
``--xla_force_host_platform_device_count``), so the training comparisons run in child
processes. Each child trains the tiny recipe one step without distribution and one step on two
replicas of the same global batch, then resumes both runs from their checkpoints for a second
step; the parent compares losses, metrics and weights. JAX's ``data_parallel`` over two
processes (127.0.0.1) is compared the same way with a one-device run, through the command.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_RAW, prediction_images

from multiseg.recipe import RecipeError, from_dict, load

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# argv: the recipe (JSON), the distribution, an output folder. Trains the recipe one epoch of
# one step with and without the distribution, then resumes each run for a second epoch; writes
# each run's metrics.json figures and its weights (.npz) after each epoch.
CHILD = textwrap.dedent("""
    import copy, json, os, sys
    import numpy as np
    {setup}
    from multiseg.recipe import from_dict
    from multiseg.train import train

    raw, name, out = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3]
    figures = {{}}
    for distribute in ("none", name):
        for epochs in (1, 2):  # the second call resumes from the first one's checkpoint
            recipe = copy.deepcopy(raw)
            recipe["train"].update(distribute=distribute, epochs=epochs)
            recipe["output"] = os.path.join(out, distribute)
            result = train(from_dict(recipe), verbose=0)
            key = f"{{distribute}}-{{epochs}}"
            figures[key] = {{"train": result.metrics["train"], "val": result.metrics["val"],
                            "epochs_run": result.epochs_run}}
            np.savez(os.path.join(out, key + ".npz"),
                     *[np.asarray(v) for v in result.model.weights])
    json.dump(figures, open(os.path.join(out, "figures.json"), "w"))
""")

TF_SETUP = """
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
"""


def _recipe(tmp_path) -> dict:
    raw = copy.deepcopy(TINY_RAW)
    raw["output"] = str(tmp_path / "unused")
    # One step of 8 samples per epoch. SGD: a gradient difference shows in the weights as it
    # is (Adam's first step is lr * sign(g), which hides or magnifies tiny differences).
    raw["train"].update(steps_per_epoch=1, precise_bn=0,
                        optimizer={"name": "sgd", "learning_rate": 0.1})
    return raw


def _run_child(tmp_path, name: str, setup: str, env: dict) -> dict:
    (tmp_path / "recipe.json").write_text(json.dumps(_recipe(tmp_path)))
    child_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **env}
    done = subprocess.run(
        [sys.executable, "-c", CHILD.format(setup=setup), str(tmp_path / "recipe.json"), name,
         str(tmp_path)], cwd=ROOT, env=child_env, capture_output=True, text=True, timeout=420)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((tmp_path / "figures.json").read_text())


def _flat(figures: dict, prefix: str = "") -> dict[str, float]:
    flat = {}
    for key, value in figures.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float)):
            flat[prefix + key] = float(value)
    return flat


def _weights(tmp_path, key: str) -> list[np.ndarray]:
    with np.load(tmp_path / f"{key}.npz") as stored:
        return [stored[f"arr_{i}"] for i in range(len(stored.files))]


def _assert_same_training(tmp_path, figures: dict, name: str) -> None:
    for epochs in (1, 2):
        single, split = figures[f"none-{epochs}"], figures[f"{name}-{epochs}"]
        assert split["epochs_run"] == single["epochs_run"] == 1  # epoch 2 resumed
        one, two = _flat({"train": single["train"], "val": single["val"]}), \
            _flat({"train": split["train"], "val": split["val"]})
        assert one.keys() == two.keys()
        # Per-head losses, loss terms, metrics: float32 sums over 8 x 32 x 32 pixels in
        # another order (per replica, then across) differ by a few ulps; 1e-5 relative.
        for key in one:
            assert two[key] == pytest.approx(one[key], rel=1e-5, abs=1e-6), (epochs, key)
        # Weights after one and two SGD steps (lr 0.1): 1e-5 absolute, the loss's tolerance
        # carried through the gradient.
        for a, b in zip(_weights(tmp_path, f"none-{epochs}"),
                        _weights(tmp_path, f"{name}-{epochs}"), strict=True):
            np.testing.assert_allclose(b, a, atol=1e-5, rtol=0)
    # Not trivially equal: the second step moved the weights.
    moved = [np.max(np.abs(a - b)) for a, b in zip(_weights(tmp_path, f"{name}-1"),
                                                  _weights(tmp_path, f"{name}-2"), strict=True)]
    assert max(moved) > 1e-3


def _on_jax() -> bool:
    import keras

    return keras.backend.backend() == "jax"


def _own_engine() -> str:
    """The distribution engine of the backend the suite runs on."""
    return "data_parallel" if _on_jax() else "mirrored"


def _refused_under_a_tensorflow_strategy(raw: dict, field: str, message: str) -> None:
    """``mirrored`` refuses what it cannot split; on JAX, ``data_parallel`` (one program over
    the global batch) takes the same recipe."""
    raw["train"]["distribute"] = _own_engine()
    if _on_jax():
        assert from_dict(raw).train.distribute == "data_parallel"
        return
    with pytest.raises(RecipeError, match=rf"^{field}: {message}"):
        from_dict(raw)


class TestRecipe:
    def test_default_is_none_and_round_trips(self, tiny_raw):
        recipe = from_dict(tiny_raw)
        assert recipe.train.distribute == "none"
        raw = copy.deepcopy(tiny_raw)
        raw["train"]["distribute"] = _own_engine()
        again = from_dict(from_dict(raw).to_dict())
        assert again.train.distribute == _own_engine()

    def test_unknown_choice_names_the_field(self, tiny_raw):
        tiny_raw["train"]["distribute"] = "mirored"
        with pytest.raises(RecipeError, match=r"^train\.distribute: .*mirrored"):
            from_dict(tiny_raw)

    def test_engine_of_another_backend_is_refused_before_training(self, tiny_raw):
        other, needs, runs, own = (("mirrored", "tensorflow", "jax", "data_parallel")
                                   if _on_jax() else
                                   ("data_parallel", "jax", "tensorflow", "mirrored"))
        tiny_raw["train"]["distribute"] = other
        with pytest.raises(RecipeError, match=rf"^train\.distribute: {other} .*needs the"
                           rf" {needs} backend, and Keras runs on {runs}; on {runs} use"
                           rf" {own}"):
            from_dict(tiny_raw)

    def test_multi_worker_is_refused_with_the_reason(self, tiny_raw):
        tiny_raw["train"]["distribute"] = "multi_worker"
        with pytest.raises(RecipeError, match=r"^train\.distribute: Keras 3's fit does not"
                           r" train under MultiWorkerMirroredStrategy.*keras-team/keras#20585"):
            from_dict(tiny_raw)

    def test_whole_batch_loss_is_refused_under_a_strategy(self, tiny_raw):
        tiny_raw["heads"]["mask"]["loss"][0]["per_sample"] = False
        _refused_under_a_tensorflow_strategy(
            tiny_raw, r"heads\.mask\.loss\[0\]\.per_sample",
            "per_sample: false computes dice over the whole batch")

    def test_gradflow_is_refused_under_a_strategy(self, tiny_raw):
        tiny_raw["train"]["gradflow"] = {"every": 5}
        _refused_under_a_tensorflow_strategy(tiny_raw, r"train\.gradflow\.every",
                                             "gradflow snapshots")

    def test_several_steps_per_call_are_refused_under_a_strategy(self, tiny_raw):
        tiny_raw["train"]["steps_per_execution"] = 4
        _refused_under_a_tensorflow_strategy(
            tiny_raw, r"train\.steps_per_execution",
            r"Keras runs one step per call under train\.distribute: mirrored")

    def test_learned_weighting_is_refused_under_a_strategy(self, tiny_raw):
        tiny_raw["train"]["weighting"] = "dwa"
        _refused_under_a_tensorflow_strategy(tiny_raw, r"train\.weighting",
                                             "dwa updates its state")

    def test_refused_without_keras_too(self, tmp_path):
        # The command's first, Keras-free read already answers.
        raw = copy.deepcopy(TINY_RAW)
        raw["train"]["distribute"] = "multi_worker"
        path = tmp_path / "recipe.json"
        path.write_text(json.dumps(raw))
        with pytest.raises(RecipeError, match=r"^train\.distribute: "):
            load(str(path), build=False)


class TestReplicas:
    def test_uneven_global_batch_names_the_field(self, tiny_raw):
        from multiseg.distribute.engines import DistributionError, check_replicas

        tiny_raw["train"]["batch_size"] = 6
        recipe = from_dict(tiny_raw)
        check_replicas(recipe, 2)
        with pytest.raises(DistributionError, match=r"^train\.batch_size: 6 does not split"
                           r" across the 4 replicas .* such as 4 or 8$"):
            check_replicas(recipe, 4)


def test_mirrored_two_devices_equal_one_device(tmp_path):
    figures = _run_child(tmp_path, "mirrored", TF_SETUP, {"KERAS_BACKEND": "tensorflow"})
    _assert_same_training(tmp_path, figures, "mirrored")


@pytest.mark.skipif(not __import__("importlib").util.find_spec("jax"), reason="needs JAX")
def test_data_parallel_two_devices_equal_one_device(tmp_path):
    figures = _run_child(tmp_path, "data_parallel", "",
                         {"KERAS_BACKEND": "jax",
                          "XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
    _assert_same_training(tmp_path, figures, "data_parallel")


# argv: the recipe file, the run directory, a folder for the records, then --set options.
# Runs the command's main twice in this process: one epoch, then two (resuming from the first
# one's checkpoint). The writing process keeps each run's metrics.json and last checkpoint;
# every process records the rows it fed and the global arrays Keras made of them (equal
# figures cannot tell a process's half from the whole batch fed twice).
COMMAND_CHILD = textwrap.dedent("""
    import json, os, shutil, sys
    import keras  # quiet on JAX, and starts no device: the processes still join first
    from keras.src.backend.jax import distribution_lib
    from multiseg.train import main

    recipe, run, kept, *options = sys.argv[1:]
    fed, make = set(), distribution_lib.distribute_data_input

    def record(rows, layout, batch_dim_name):
        made = make(rows, layout, batch_dim_name)
        fed.add((rows.shape[0], made.shape[0]))
        return made

    distribution_lib.distribute_data_input = record
    for epochs in (1, 2):
        code = main([recipe, "--output", run, "--quiet", "--set", f"train.epochs={epochs}",
                     *options])
        if code:
            sys.exit(code)
        if os.environ.get("KERAS_DISTRIBUTION_PROCESS_ID", "0") == "0":
            shutil.copy(os.path.join(run, "metrics.json"),
                        os.path.join(kept, f"metrics-{epochs}.json"))
            shutil.copy(os.path.join(run, "checkpoints", f"epoch-{epochs:04d}.weights.h5"),
                        os.path.join(kept, f"weights-{epochs}.h5"))
    json.dump(sorted(fed), open(os.path.join(kept, "fed.json"), "w"))
    json.dump("tensorflow" in sys.modules, open(os.path.join(kept, "tensorflow.json"), "w"))
""")

# XLA's cheapest CPU code generation: the same programs, compiled in a third of the time (the
# threefry initialisers dominate this test); both sides of the comparison use it.
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _h5_arrays(path: str) -> dict[str, np.ndarray]:
    """Every array of a Keras weights file (weights and optimizer state), by path."""
    import h5py

    found = {}
    with h5py.File(path, "r") as stored:
        stored.visititems(lambda name, item: found.__setitem__(name, np.asarray(item))
                          if isinstance(item, h5py.Dataset) else None)
    return found


def _run_files(run_dir: str) -> list[str]:
    """A run directory's files, event files by folder only (their names hold the time)."""
    return sorted(os.path.relpath(os.path.join(folder, name), run_dir).split(".tfevents.")[0]
                  for folder, _, names in os.walk(run_dir) for name in names)


@pytest.mark.skipif(not __import__("importlib").util.find_spec("jax"), reason="needs JAX")
def test_data_parallel_two_processes_equal_one_device():
    work = tempfile.mkdtemp(prefix="multiseg-two-processes-")
    jobs: dict[str, subprocess.Popen] = {}
    logs: dict[str, object] = {}
    try:
        recipe = os.path.join(work, "recipe.json")
        with open(recipe, "w") as handle:
            json.dump(_recipe(Path(work)), handle)
        scratch = os.path.join(work, "tmp")  # where process 1 keeps its scratch run
        os.makedirs(scratch)
        env = {k: v for k, v in os.environ.items() if not k.startswith("KERAS_DISTRIBUTION_")}
        env.update(KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3", TMPDIR=scratch,
                   XLA_FLAGS=FAST_COMPILE)
        cluster = {"KERAS_DISTRIBUTION_JOB_ADDRESSES": f"127.0.0.1:{_free_port()}",
                   "KERAS_DISTRIBUTION_NUM_PROCESSES": "2"}
        parallel = ["--set", "train.distribute=data_parallel"]
        runs = {"single": ({}, []),  # one process, one device: distribute none
                "process-0": ({**cluster, "KERAS_DISTRIBUTION_PROCESS_ID": "0"}, parallel),
                "process-1": ({**cluster, "KERAS_DISTRIBUTION_PROCESS_ID": "1"}, parallel)}
        for name, (extra, options) in runs.items():
            run_dir = os.path.join(work, "single" if name == "single" else "parallel")
            kept = os.path.join(work, f"kept-{name}")
            os.makedirs(kept)
            logs[name] = open(os.path.join(work, f"{name}.log"), "w+")
            jobs[name] = subprocess.Popen(
                [sys.executable, "-c", COMMAND_CHILD, recipe, run_dir, kept, *options],
                cwd=ROOT, env={**env, **extra}, stdout=logs[name], stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 360  # a hung collective must not hang the suite
        for name, job in jobs.items():
            try:
                job.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pytest.fail(f"{name} still running after the time limit:\n{_tail(logs[name])}")
        for name, job in jobs.items():
            assert job.returncode == 0, f"{name} exited {job.returncode}:\n{_tail(logs[name])}"
        _assert_same_command_runs(work)
        # TensorBoard's prediction images, which every process computes together and process
        # 0 draws: the one-device run's, epoch by epoch.
        single, split = (prediction_images(os.path.join(work, name))[1]
                         for name in ("single", "parallel"))
        assert sorted(split) == sorted(single) == [1, 2]
        for step, picture in single.items():  # to one level of 255 (colours rounded)
            np.testing.assert_allclose(split[step].astype(int), picture.astype(int), atol=1)
        # Joining the processes (Keras seeds every generator there) left TensorFlow out too.
        for name in jobs:
            assert json.loads(Path(work, f"kept-{name}", "tensorflow.json").read_text()) \
                is False, name
        # Each process fed 4 rows of each global batch of 8 (training and validation alike).
        for name in ("process-0", "process-1"):
            fed = json.loads(Path(work, f"kept-{name}", "fed.json").read_text())
            assert fed == [[4, 8]], name
        # Process 0 alone wrote the run directory: what one process writes, no more (two
        # event files per folder: one per run); process 1's scratch copy is gone.
        assert _run_files(os.path.join(work, "parallel")) == \
            _run_files(os.path.join(work, "single"))
        assert os.listdir(scratch) == []
        printed = {name: _tail(logs[name], 100_000) for name in jobs}
        assert printed["process-0"].count("run directory: ") == 2
        assert "run directory: " not in printed["process-1"]
    finally:
        for job in jobs.values():
            if job.poll() is None:
                job.kill()
                job.wait()
        for handle in logs.values():
            handle.close()
        shutil.rmtree(work, ignore_errors=True)


def _tail(handle, size: int = 3000) -> str:
    handle.flush()
    handle.seek(0)
    return handle.read()[-size:]


def _assert_same_command_runs(work: str) -> None:
    """The records of the one-device run and of process 0, after one epoch and after the
    resumed second: figures to 1e-5 relative, weights and optimizer state to 1e-5 absolute,
    as in ``_assert_same_training``."""
    for epochs in (1, 2):
        single, split = (json.loads(Path(work, f"kept-{name}", f"metrics-{epochs}.json")
                                    .read_text()) for name in ("single", "process-0"))
        assert single["epochs"] == split["epochs"] == epochs
        one = _flat({"train": single["train"], "val": single["val"]})
        two = _flat({"train": split["train"], "val": split["val"]})
        assert one.keys() == two.keys() and len(one) > 20
        for key in one:
            assert two[key] == pytest.approx(one[key], rel=1e-5, abs=1e-6), (epochs, key)
        a, b = (_h5_arrays(os.path.join(work, f"kept-{name}", f"weights-{epochs}.h5"))
                for name in ("single", "process-0"))
        assert a.keys() == b.keys() and len(a) > 50
        for key in a:
            np.testing.assert_allclose(b[key], a[key], atol=1e-5, rtol=0, err_msg=key)
    # Not trivially equal: the resumed step moved the weights.
    first, second = (_h5_arrays(os.path.join(work, "kept-process-0", f"weights-{epochs}.h5"))
                     for epochs in (1, 2))
    assert max(float(np.max(np.abs(first[k] - second[k]))) for k in first if first[k].size) > 1e-3
