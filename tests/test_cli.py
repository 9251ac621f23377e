"""The command line as a user meets it, through real processes: a recipe mistake is answered
before Keras starts, the backend's start-up notices stay out of the output, training shows a
compact progress display with the real epochs, and ``--quiet`` prints only the answer."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

BACKENDS = ("keras", "tensorflow", "jax", "torch")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python(code: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600,
                          env={k: v for k, v in {**os.environ, **(env or {})}.items()
                               if v is not None})


def _command(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=900)


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
