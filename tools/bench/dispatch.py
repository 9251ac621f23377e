"""What multiseg's callback list saves: training with it against training with Keras's, which
reads every step's logs as numbers (waiting for the device) before it calls a callback.

    python tools/bench/dispatch.py [RECIPE] [--set key=value ...] [--repeats 3] [--json FILE]

Each repetition trains one epoch of ``RECIPE`` (default: the default recipe) twice, each in a
new process, in turn: through ``multiseg.train`` as it is, and with Keras's ``CallbackList``
put in place of ``multiseg.callbacks.DeviceLogCallbacks``; nothing else differs. The clock
runs from the end of the ``--warmup``-th step to the end of the epoch's last step but one,
whose loss it reads, so that both times hold all the device's work (the last step's end
recomputes the batch-norm statistics). It prints each variant's median
steps per second and their ratio.

On a CPU, TensorFlow computes a step before the call returns and JAX computes on the cores the
host shares: expect little. The saving is the host's per-step work overlapping the device's,
which a GPU shows. ``XLA_FLAGS="--xla_cpu_multi_thread_eigen=false
intra_op_parallelism_threads=1"`` with ``KERAS_BACKEND=jax`` and a tiny step
(``--set data.image_size=[16,16] --set train.batch_size=2``) stands in for a device here:
XLA computes on one core while Python runs on the other.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
DEFAULT_RECIPE = os.path.join(ROOT, "recipes", "shapes.yaml")
VARIANTS = ("multiseg", "keras")
PREFIX = "@dispatch "


def worker(variant: str, recipe_path: str, overrides: list[str], warmup: int) -> None:
    sys.path.insert(0, ROOT)
    import multiseg  # noqa: F401  (first: it quiets TensorFlow before Keras loads)
    from multiseg.startup import import_keras

    keras = import_keras()
    from multiseg import recipe as recipe_lib
    from multiseg import trainer

    if variant == "keras":
        def keras_list(callbacks, *, model, epochs, steps):
            return keras.callbacks.CallbackList(callbacks, add_history=True, model=model,
                                                verbose=0, epochs=epochs, steps=steps)

        trainer.DeviceLogCallbacks = keras_list

    class Clock(keras.callbacks.Callback):
        takes_device_logs = True

        def on_train_begin(self, logs=None):
            if self.params["steps"] < warmup + 2:
                raise SystemExit(f"an epoch of {self.params['steps']} steps is too short for"
                                 f" --warmup {warmup}: it needs at least {warmup + 2}")

        def on_train_batch_end(self, batch, logs=None):
            if batch + 1 == warmup:
                float(logs["loss"])  # both variants start with the device idle
                self.start = time.perf_counter()
            elif batch + 2 == self.params["steps"]:
                # Keras's list hands this clock numbers too; multiseg's, the device's arrays.
                self.numbers = isinstance(logs["loss"], float)
                float(logs["loss"])  # waits for the step
                self.seconds = time.perf_counter() - self.start
                self.steps = batch + 1 - warmup

    clock = Clock()
    recipe = recipe_lib.load(recipe_path, [*overrides, "train.epochs=1"])
    with tempfile.TemporaryDirectory() as output:
        recipe = dataclasses.replace(recipe, output=os.path.join(output, "run"))
        trainer.train(recipe, verbose=0, extra_callbacks=[clock])
    print(PREFIX + json.dumps({"variant": variant, "steps": clock.steps,
                               "seconds": clock.seconds, "numbers": clock.numbers}), flush=True)


def _run(variant: str, args) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--worker", variant,
               "--warmup", str(args.warmup), args.recipe]
    for override in args.overrides:
        command += ["--set", override]
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith(PREFIX):
            return json.loads(line[len(PREFIX):])
    raise SystemExit(f"the {variant} run failed:\n{(proc.stderr or proc.stdout)[-3000:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe", nargs="?", default=DEFAULT_RECIPE)
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY.PATH=VALUE")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=10,
                        help="steps before the clock starts (default 10)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.recipe, args.overrides, args.warmup)
        return 0
    if args.repeats < 1 or args.warmup < 1:
        parser.error("--repeats and --warmup must be at least 1")

    rates = {variant: [] for variant in VARIANTS}
    numbers = {}
    for repeat in range(args.repeats):
        for variant in VARIANTS:
            result = _run(variant, args)
            rates[variant].append(result["steps"] / result["seconds"])
            numbers[variant] = result["numbers"]
        print(f"repetition {repeat + 1}/{args.repeats} done", flush=True)
    medians = {variant: statistics.median(values) for variant, values in rates.items()}
    ratio = medians["multiseg"] / medians["keras"]
    print(f"steps per second, median of {args.repeats} (one epoch each, after {args.warmup}"
          f" steps; backend {os.environ.get('KERAS_BACKEND', 'tensorflow')}):")
    print(f"  multiseg's callback list  {medians['multiseg']:8.1f}")
    print(f"  Keras's callback list     {medians['keras']:8.1f}")
    print(f"  multiseg's against Keras's: {ratio:.2f}x (per repetition: "
          + ", ".join(f"{a / b:.2f}" for a, b in zip(rates["multiseg"], rates["keras"],
                                                       strict=True)) + ")")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"steps_per_second": rates, "medians": medians, "ratio": ratio,
                       "logs_as_numbers": numbers,
                       "recipe": args.recipe, "overrides": args.overrides,
                       "backend": os.environ.get("KERAS_BACKEND", "tensorflow")}, handle,
                      indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
