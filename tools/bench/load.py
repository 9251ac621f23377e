"""Loading a saved ``model.keras`` in a new process: ``multiseg.load_model`` against Keras's
own ``keras.saving.load_model``, turn by turn, each in a process of its own (the first load of a
process is the one a user waits for: ``multiseg.predict``, ``multiseg.evaluate``).

    python tools/bench/load.py RUN_DIR/model.keras [--repeats 3]
    KERAS_BACKEND=jax python tools/bench/load.py RUN_DIR/model.keras

JAX's compilation cache is off in the children, so the figures compare compilations, not
caches. Prints each load's seconds and the medians' ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

CHILD = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
import multiseg
from multiseg.startup import import_keras
keras = import_keras()
import multiseg.losses, multiseg.metrics, multiseg.models.layers  # noqa: F401  (registered)
load = multiseg.load_model if sys.argv[3] == "multiseg" else keras.saving.load_model
started = time.perf_counter()
model = load(sys.argv[2])
print(json.dumps({"seconds": time.perf_counter() - started,
                  "variables": len(model.variables)}))
"""


def load_seconds(path: str, loader: str) -> dict:
    env = {**os.environ, "MULTISEG_COMPILE_CACHE": "off", "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, "-c", CHILD, ROOT, path, loader], env=env,
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"{loader} failed to load {path}:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", help="a model.keras file")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    times: dict[str, list[float]] = {"multiseg": [], "keras": []}
    for _ in range(args.repeats):
        for loader in times:
            found = load_seconds(args.path, loader)
            times[loader].append(found["seconds"])
            print(f"{loader}: {found['seconds']:.2f} s ({found['variables']} variables)",
                  flush=True)
    mine, theirs = (statistics.median(times[k]) for k in ("multiseg", "keras"))
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    print(f"{backend}: median load multiseg.load_model {mine:.2f} s, keras.saving.load_model"
          f" {theirs:.2f} s; multiseg takes {mine / theirs:.2f} of Keras's time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
