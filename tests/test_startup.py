"""Backend start-up: JAX's compilation cache and seeding without TensorFlow."""

from __future__ import annotations

import json
import os
import random
import stat
import subprocess
import sys

import numpy as np
import pytest

from multiseg import startup

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JAX_CACHE_OPTIONS = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
                     "jax_compilation_cache_max_size")


@pytest.fixture
def jax_config():
    """JAX's cache options and the process's choice, restored after the test."""
    jax = pytest.importorskip("jax")
    saved = {name: getattr(jax.config, name) for name in JAX_CACHE_OPTIONS}
    startup._chosen.clear()
    jax.config.update("jax_compilation_cache_dir", None)
    yield jax.config
    for name, value in saved.items():
        jax.config.update(name, value)
    startup._chosen.clear()


def test_compile_cache_is_off_on_a_cpu_unless_asked(jax_config):
    assert startup.compile_cache(backend="jax", platform="cpu", environ={}) is None
    assert jax_config.jax_compilation_cache_dir is None


def test_compile_cache_in_the_folder_given(jax_config, tmp_path):
    folder = tmp_path / "cache"
    path = startup.compile_cache(backend="jax", platform="cpu",
                                 environ={"MULTISEG_COMPILE_CACHE": str(folder)})
    assert path == str(folder)
    assert jax_config.jax_compilation_cache_dir == str(folder)
    assert jax_config.jax_persistent_cache_min_compile_time_secs == 0.0
    assert stat.S_IMODE(os.stat(folder).st_mode) & 0o077 == 0  # only its owner writes there
    # Decided once: a later call reports the same folder whatever it is asked.
    assert startup.compile_cache(backend="jax", environ={"MULTISEG_COMPILE_CACHE": "off"}) \
        == str(folder)


def test_compile_cache_by_default_on_a_gpu(jax_config, tmp_path):
    path = startup.compile_cache(backend="jax", platform="gpu",
                                 environ={"XDG_CACHE_HOME": str(tmp_path)})
    assert path == startup.default_cache_dir({"XDG_CACHE_HOME": str(tmp_path)})
    assert os.path.dirname(path) == str(tmp_path / "multiseg" / "jax")
    assert os.path.isdir(path) and jax_config.jax_compilation_cache_dir == path


@pytest.mark.parametrize("word", ["off", "OFF", "0", "false", "no"])
def test_compile_cache_turned_off(jax_config, tmp_path, word):
    environ = {"XDG_CACHE_HOME": str(tmp_path), "MULTISEG_COMPILE_CACHE": word}
    assert startup.compile_cache(backend="jax", platform="gpu", environ=environ) is None
    assert jax_config.jax_compilation_cache_dir is None
    assert not (tmp_path / "multiseg").exists()


def test_compile_cache_keeps_jaxs_own_folder(jax_config, tmp_path):
    jax_config.update("jax_compilation_cache_dir", str(tmp_path / "own"))
    path = startup.compile_cache(backend="jax", platform="gpu",
                                 environ={"MULTISEG_COMPILE_CACHE": str(tmp_path / "ours")})
    assert path == str(tmp_path / "own")
    assert not (tmp_path / "ours").exists()


def test_compile_cache_that_cannot_be_made_is_reported(jax_config, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    folder = blocker / "cache"
    assert startup.compile_cache(backend="jax", platform="gpu",
                                 environ={"MULTISEG_COMPILE_CACHE": str(folder)}) is None
    err = capsys.readouterr().err
    assert str(folder) in err and "MULTISEG_COMPILE_CACHE" in err
    assert jax_config.jax_compilation_cache_dir is None


def test_no_compile_cache_on_other_backends(jax_config, tmp_path):
    for backend in ("tensorflow", "torch"):
        assert startup.compile_cache(backend=backend, platform="gpu",
                                     environ={"MULTISEG_COMPILE_CACHE": str(tmp_path)}) is None
    assert jax_config.jax_compilation_cache_dir is None


# A JAX process that builds a small multiseg model and trains one step, then prints the
# persistent cache's hits and misses.
_CACHED_RUN = """
import json, sys
import jax.monitoring
counts = {"hits": 0, "misses": 0}
def listen(event, **kwargs):
    for name in counts:
        if event == f"/jax/compilation_cache/cache_{name}":
            counts[name] += 1
jax.monitoring.register_event_listener(listen)
sys.path.insert(0, sys.argv[1])
from tests.conftest import TINY_RAW
from multiseg.startup import import_keras
import_keras()
from multiseg.recipe import from_dict
from multiseg.data import build_data
from multiseg.models.build import build_model, compile_model
recipe = from_dict(TINY_RAW)
data = build_data(recipe, frequencies=False, log_report=False)
model = compile_model(build_model(recipe, channels=data.channels), recipe)
model.train_on_batch(*data.train.global_batch(0))
print(json.dumps({**counts, "tensorflow": "tensorflow" in sys.modules}))
"""


def test_a_second_jax_process_loads_what_the_first_compiled(tmp_path):
    pytest.importorskip("jax")
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu",
           "MULTISEG_COMPILE_CACHE": str(tmp_path / "cache")}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    runs = []
    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", _CACHED_RUN, ROOT], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    first, second = runs
    assert first["hits"] == 0 and first["misses"] > 10  # initializers, the training step
    assert second["hits"] >= first["misses"] - 2 and second["misses"] <= 2, runs


def test_a_jax_run_imports_no_tensorflow(tmp_path):
    """Training on JAX (seeding, TensorBoard logs, checkpoints, model.keras) leaves an
    installed TensorFlow unimported, and its notices out of the output."""
    pytest.importorskip("jax")
    import yaml

    from tests.conftest import TINY_RAW

    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump({**TINY_RAW, "output": str(tmp_path / "run")}))
    script = ("import sys; sys.path.insert(0, sys.argv[1]); from multiseg.train import main;"
              " code = main([sys.argv[2], '--quiet']);"
              " print('tensorflow' in sys.modules, code)")
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # as a user's shell has it
    done = subprocess.run([sys.executable, "-c", script, ROOT, str(recipe)], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "False 0", done.stdout[-2000:]
    assert (tmp_path / "run" / "model.keras").is_file()
    assert list((tmp_path / "run" / "logs" / "train").glob("events.out.tfevents.*"))
    notices = [line for line in done.stderr.splitlines() if startup.is_startup_notice(line)]
    assert not notices, notices


def test_set_random_seed_seeds_as_keras_does():
    import keras

    def draws():
        return (random.random(), np.random.rand(), np.asarray(keras.random.normal((4,))),
                np.asarray(keras.initializers.GlorotUniform()((3, 3))))

    keras.utils.set_random_seed(11)
    expected = draws()
    startup.set_random_seed(11)
    got = draws()
    startup.set_random_seed(12)
    other = draws()
    for want, have, different in zip(expected, got, other, strict=True):
        np.testing.assert_array_equal(have, want)
        assert not np.array_equal(different, want)
