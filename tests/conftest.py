"""Shared fixtures: tiny recipes that build and train in seconds on a CPU."""

from __future__ import annotations

import copy
import getpass
import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# On JAX many tests compile the same small programs (tiny models' initializers and steps):
# JAX's persistent cache keeps them across tests, workers and runs of the suite.
try:
    _user = getpass.getuser()
except (KeyError, OSError):  # no name for this uid (some containers)
    _user = str(os.getuid())
os.environ.setdefault("MULTISEG_COMPILE_CACHE", os.path.join(
    tempfile.gettempdir(), f"multiseg-tests-compile-cache-{_user}"))

import pytest  # noqa: E402

# The files that take longest, longest first (per-file totals of `pytest --durations=0` on
# 2 cores: 130 s down to 20 s). With `--dist loadfile` a free worker takes the next file in
# collection order (`--no-loadscope-reorder`, pyproject.toml), so the long files start first
# and the short ones fill in at the end, instead of one long file keeping a worker busy
# while the other idles.
SLOW_FILES_FIRST = (
    "test_faults.py", "test_weighting.py", "test_train.py", "test_bench.py",
    "test_faults_weighting.py", "test_distribute.py", "test_precision.py", "test_gradflow.py",
    "test_cli.py", "test_models.py", "test_startup.py", "test_gradients.py",
    "test_data_pipeline.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOW_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's order

TINY_RAW = {
    "version": 1,
    "name": "tiny",
    "seed": 1,
    "data": {"source": {"kind": "shapes", "max_objects": 2}, "image_size": [32, 32],
             "train": 16, "val": 8, "augment": {"flip": True, "rotate90": True}},
    "model": {"filters": [4, 8], "norm": "batch"},
    "heads": {
        "mask": {"kind": "segmentation", "classes": 4, "target": "mask", "branch": [4],
                 "loss": [{"name": "dice", "weight": 1.0},
                          {"name": "crossentropy", "weight": 0.5}],
                 "loss_weight": 1.0, "metrics": ["dice", "iou"]},
        "boundary": {"kind": "boundary", "target": {"derive": "boundary", "from": "mask"},
                     "loss": {"name": "tversky", "alpha": 0.3, "beta": 0.7},
                     "loss_weight": 0.5},
        "shape": {"kind": "classification", "classes": 3, "attach": "bottleneck",
                  "target": "label", "loss": "crossentropy", "loss_weight": 0.2,
                  "metrics": ["accuracy"]},
    },
    "train": {"epochs": 1, "batch_size": 8, "optimizer": {"name": "adam",
                                                          "learning_rate": 0.01}},
    "output": "runs/tiny",
}


@pytest.fixture
def tiny_raw(tmp_path):
    """Raw data of a three-head recipe whose output lies in a fresh temporary folder."""
    raw = copy.deepcopy(TINY_RAW)
    raw["output"] = str(tmp_path / "run")
    return raw


@pytest.fixture
def tiny_recipe(tiny_raw):
    from multiseg.recipe import from_dict

    return from_dict(tiny_raw)


@pytest.fixture(scope="session")
def trained_tiny(tmp_path_factory):
    """One short training run shared by the tests that inspect a run directory."""
    from multiseg.recipe import from_dict
    from multiseg.train import train

    raw = copy.deepcopy(TINY_RAW)
    raw["output"] = str(tmp_path_factory.mktemp("trained") / "run")
    raw["train"]["epochs"] = 2
    result = train(from_dict(raw), verbose=0)
    return result


@pytest.fixture(scope="session", autouse=True)
def compile_cache():
    """The suite's compilation cache on JAX, from the first test on (not only in training)."""
    if os.environ.get("KERAS_BACKEND") == "jax":
        from multiseg.startup import compile_cache

        compile_cache()


def copy_run_after(run_dir: str, epochs: int, to: str):
    """A callback that copies the run directory as it stands after epoch ``epochs``'s
    checkpoint (the callbacks of ``extra_callbacks`` run after the trainer's own): the files of
    a run stopped there, to resume while the run itself goes on as the uninterrupted one."""
    import shutil

    import keras

    class CopyRun(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch + 1 == epochs:
                shutil.copytree(run_dir, to)

    return CopyRun()


def unimportable(folder, names) -> dict:
    """Environment variables under which a child process fails to import each of ``names``
    (``PYTHONPATH`` puts packages that raise ImportError before the installed ones)."""
    for name in names:
        package = folder / "blocked" / name
        package.mkdir(parents=True)
        (package / "__init__.py").write_text(f"raise ImportError('no {name} here')\n")
    return {"PYTHONPATH": os.pathsep.join(
        [str(folder / "blocked"), *filter(None, [os.environ.get("PYTHONPATH")])])}


def prediction_images(run_dir: str) -> tuple[str, dict]:
    """TensorBoard's prediction images of a run: their tag, and the pictures (RGB or RGBA
    uint8 arrays) by step."""
    import io

    import numpy as np
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(os.path.join(run_dir, "logs", "validation"),
                           size_guidance={"images": 0})
    acc.Reload()
    [tag] = [t for t in acc.Tags()["images"] if t.startswith("predictions/")]
    return tag, {event.step: np.asarray(Image.open(io.BytesIO(event.encoded_image_string)))
                 for event in acc.Images(tag)}
