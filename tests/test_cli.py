"""The command line as a user meets it, through real processes: a recipe mistake is answered
before Keras starts, the backend's start-up notices stay out of the output, training shows a
compact progress display with the real epochs, and ``--quiet`` prints only the answer."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap

import pytest
import yaml

from tests.conftest import TINY_RAW, unimportable

BACKENDS = ("keras", "tensorflow", "jax", "torch")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python(code: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600,
                          env={k: v for k, v in {**os.environ, **(env or {})}.items()
                               if v is not None})


def _command(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=900, env={**os.environ, **(env or {})})


def test_reading_recipes_and_runs_imports_no_backend():
    out = _python(f"""
        import importlib, sys
        for name in ("multiseg.train", "multiseg.evaluate", "multiseg.predict",
                     "multiseg.data.__main__", "multiseg.recipe", "multiseg.runs",
                     "multiseg.catalog", "multiseg.data"):
            importlib.import_module(name)
        from multiseg import recipe
        import glob
        for path in sorted(glob.glob("recipes/*.yaml")):
            recipe.load(path, build=False)
        print(sorted({{n.split(".")[0] for n in sys.modules}} & set({BACKENDS!r})))
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("command,args,message", [
    ("multiseg.train", ["recipes/shapes.yaml", "--set", "heads.masks.loss_weight=0.5"],
     "error: --set heads.masks.loss_weight: the recipe has no head 'masks' (did you mean"
     " 'mask'?)"),
    ("multiseg.train", ["recipes/shapes.yaml", "--set", "heads.mask.loss[0].smoth=1"],
     "error: heads.mask.loss[0].smoth:"),
    ("multiseg.data.__main__", ["recipes/shapes.yaml", "--set", "train.epochs=-1"],
     "error: train.epochs:"),
    ("multiseg.evaluate", ["no/such/run"], "error: no/such/run: no recipe.yaml here"),
    ("multiseg.predict", ["no/such/run", "x.png", "--out", "o"],
     "error: no/such/run: no recipe.yaml here"),
])
def test_mistakes_are_answered_before_keras_starts(command, args, message):
    out = _python(f"""
        import sys
        from {command} import main
        code = main(sys.argv[1:])
        print(code, sorted({{n.split(".")[0] for n in sys.modules}} & set({BACKENDS!r})))
    """, *args)
    assert out.stdout.strip() == "2 []", out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), out.stderr


def test_startup_notices_are_dropped_and_real_errors_kept():
    # What native code writes to file descriptor 2 while Keras starts: the known notices go,
    # anything else is written back.
    out = _python("""
        import os
        from multiseg import startup
        with startup._filtered_stderr():
            os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called"
                        b" are written to STDERR\\n")
            os.write(2, b"I0000 00:00:17.1 8162 cudart_stub.cc:31] Could not find cuda drivers"
                        b" on your machine, GPU will not be used.\\n")
            os.write(2, b"E0000 00:00:17.2 8329 cuda_platform.cc:52] failed call to cuInit:"
                        b" INTERNAL: CUDA error\\n")
            os.write(2, b"E0000 00:00:17.3 8329 real_problem.cc:1] out of memory\\n")
        os.write(2, b"after\\n")
    """)
    assert out.returncode == 0
    assert out.stderr.splitlines() == ["E0000 00:00:17.3 8329 real_problem.cc:1] out of memory",
                                       "after"]


def test_keras_starts_quietly_unless_verbose():
    code = """
        import os, sys
        from multiseg.startup import import_keras
        import_keras(verbose=len(sys.argv) > 1)
        print(os.environ["TF_CPP_MIN_LOG_LEVEL"])
    """
    quiet = _python(code)
    assert quiet.returncode == 0 and quiet.stdout.strip() == "2"
    assert quiet.stderr == ""
    # --verbose lets TensorFlow's logging through when the user chose no level.
    loud = _python(code, "--verbose", env={"TF_CPP_MIN_LOG_LEVEL": None})
    assert loud.returncode == 0 and loud.stdout.strip() == "0"


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory):
    """The tiny recipe trained through the command: 2 epochs, then resumed to 3, then asked
    again with --quiet and without (complete: nothing to train), where Keras and the backends
    cannot be imported: a finished run is answered from its records."""
    folder = tmp_path_factory.mktemp("cli")
    raw = copy.deepcopy(TINY_RAW)
    raw["output"] = str(folder / "run")
    recipe = folder / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(raw, sort_keys=False))
    first = _command("multiseg.train", str(recipe), "--set", "train.epochs=2")
    first.metrics = json.loads((folder / "run" / "metrics.json").read_text())
    resumed = _command("multiseg.train", str(recipe), "--set", "train.epochs=3")
    blocked = unimportable(folder, BACKENDS)
    quiet = _command("multiseg.train", str(recipe), "--set", "train.epochs=3", "--quiet",
                     env=blocked)
    again = _command("multiseg.train", str(recipe), "--set", "train.epochs=3", env=blocked)
    return first, resumed, quiet, raw["output"], again


def _tables(out: str) -> list[list[str]]:
    """The epoch tables of the progress display: the rows under each "head" header."""
    tables, rows = [], None
    for line in out.splitlines():
        if line.split()[:1] == ["head"]:
            rows = []
            tables.append(rows)
        elif rows is not None and line.startswith("  "):
            rows.append(line.split()[0])
        else:
            rows = None
    return tables


def test_training_output_is_compact_and_plain(cli_runs):
    first, _, _, run_dir, _ = cli_runs
    assert first.returncode == 0, first.stderr
    out = first.stdout
    assert "\x1b" not in out and "\r" not in out  # not a terminal: plain lines
    assert "epoch 1/2" in out and "epoch 2/2" in out
    # What was chosen for the step: Keras's auto leaves XLA off on TensorFlow on a CPU; JAX
    # always compiles with it.
    xla = "on" if os.environ.get("KERAS_BACKEND") == "jax" else "off"
    assert f"2 epochs, float32, XLA {xla} (jit_compile: auto)" in out
    assert _tables(out) == [["mask", "boundary", "shape", "total"]] * 2
    display = out[out.index("epoch 1/2"):out.index("validation (one pass")]
    assert max(len(line) for line in display.splitlines()) < 100
    # The final figures: the heads in the recipe's order, then the total, then the run.
    final = out[out.index("validation (one pass of the final model"):].splitlines()
    assert [line.split(":")[0].strip() for line in final[1:5]] == ["mask", "boundary",
                                                                    "shape", "total"]
    assert final[5] == f"run directory: {run_dir} (tensorboard --logdir {run_dir}/logs)"
    assert f"loss {first.metrics['val']['mask']['loss']:.4f}," in final[1]


def test_no_startup_notices_reach_the_user(cli_runs):
    for run in cli_runs[:3] + cli_runs[4:]:
        for line in run.stderr.splitlines():
            assert not line[:5].rstrip().startswith(("I0000", "W0000", "E0000")), line
            assert "absl::InitializeLog" not in line and "cuda" not in line.lower(), line


def test_a_resumed_run_shows_the_real_epochs(cli_runs):
    _, resumed, _, _, _ = cli_runs
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stdout
    assert "epoch 3/3" in resumed.stdout
    assert "epoch 1/" not in resumed.stdout and "epoch 2/" not in resumed.stdout
    assert len(_tables(resumed.stdout)) == 1


def test_quiet_prints_only_the_answer(cli_runs):
    _, _, quiet, run_dir, _ = cli_runs
    assert quiet.returncode == 0, quiet.stderr
    lines = quiet.stdout.splitlines()
    assert lines[0].startswith("validation (one pass of the final model")
    assert [line.split(":")[0].strip() for line in lines[1:5]] == ["mask", "boundary",
                                                                    "shape", "total"]
    assert lines[5:] == [f"run directory: {run_dir} (tensorboard --logdir {run_dir}/logs)"]


def test_a_finished_run_answers_without_starting_keras(cli_runs):
    _, resumed, quiet, run_dir, again = cli_runs
    assert again.returncode == 0, again.stderr
    lines = again.stdout.splitlines()
    assert lines[0] == (f"{run_dir} is complete: 3 of 3 epochs trained; its metrics.json and"
                        " model.keras are left as they are. To train longer, raise"
                        " train.epochs.")
    # Then the run's final figures, as --quiet prints them and as training ended.
    assert lines[1:] == quiet.stdout.splitlines()
    assert quiet.stdout in resumed.stdout
