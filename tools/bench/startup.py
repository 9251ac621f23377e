"""Where a training run's start-up goes: from the interpreter's start to the second training
step, stage by stage, in this process, through ``multiseg.train``'s own code.

    python tools/bench/startup.py [RECIPE] [--set key=value ...] [--json FILE]

Stages: the command's Keras-free imports and the recipe check; importing Keras (and its
backend); multiseg's own modules; then, inside the training call, each step of
``multiseg.trainer`` (run directory, seeding, data, first-batch check, model, compile,
summary), the first training step (tracing, compilation, the first batch), the steady step
it is compared with, the first validation (the test step's tracing) and what follows the last
epoch (final evaluation, inference-mode check, saving). One epoch is trained, into a temporary
run directory. Run it on an idle machine: the figures are absolute times.
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()

# isort: split
import argparse  # noqa: E402
import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
sys.path.insert(0, ROOT)
DEFAULT_RECIPE = os.path.join(ROOT, "recipes", "shapes.yaml")

# The trainer's steps timed by wrapping the names it calls, in the order they run.
TRAINER_STAGES = (
    ("check_run_dir", "run directory check"),
    ("set_random_seed", "seeding"),
    ("build_data", "data (sources, splits, report)"),
    ("_check_first_batch", "first-batch check"),
    ("prepare_run_dir", "run directory written"),
    ("build_model", "model build"),
    ("compile_model", "compile"),
    ("build_training_variables", "loss, metric and optimizer variables"),
    ("describe", "start-up summary"),
    ("TensorBoardLogs", "TensorBoard writers, preview"),
    ("check_inference_mode", "inference-mode check"),
    ("save_model_atomic", "model.keras saved"),
)


TRAINER_LABELS = {label for _, label in TRAINER_STAGES}
FIT_STAGES = ("first validation", "the epoch's other", "rest of the training call",
              "inference-mode check", "model.keras saved")


def before_second_step(rows) -> float:
    """Seconds from the interpreter's start to the end of the second training step."""
    return sum(seconds for label, seconds in rows if not label.startswith(FIT_STAGES))


class Clock:
    def __init__(self):
        self.stages: list[tuple[str, float]] = []

    def add(self, label: str, seconds: float) -> None:
        self.stages.append((label, seconds))

    def wrap(self, fn, label: str):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(label, time.perf_counter() - start)
        return timed


def step_clock(keras, clock: Clock):
    """A callback timing the first training steps, the steady ones and the validations."""

    class StepClock(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.steps: list[float] = []
            self.validations: list[float] = []

        def on_train_begin(self, logs=None):
            self.last = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            now = time.perf_counter()
            self.steps.append(now - self.last)
            self.last = now

        def on_test_begin(self, logs=None):
            self.test_start = time.perf_counter()

        def on_test_end(self, logs=None):
            self.validations.append(time.perf_counter() - self.test_start)

        def on_epoch_begin(self, epoch, logs=None):
            self.last = time.perf_counter()

    return StepClock()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe", nargs="?", default=DEFAULT_RECIPE)
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY.PATH=VALUE")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    clock = Clock()
    clock.add("interpreter, then this script's imports", time.perf_counter() - STARTED)
    start = time.perf_counter()
    from multiseg import recipe as recipe_lib
    from multiseg.train import main as _command  # noqa: F401  (the command's own imports)
    clock.add("multiseg.train (Keras-free)", time.perf_counter() - start)

    start = time.perf_counter()
    recipe = recipe_lib.load(args.recipe, args.overrides,
                             build=False)
    clock.add("recipe read and checked", time.perf_counter() - start)

    start = time.perf_counter()
    from multiseg.startup import import_keras

    keras = import_keras()
    clock.add(f"Keras and {keras.backend.backend()} imported, devices found",
              time.perf_counter() - start)

    start = time.perf_counter()
    from multiseg import trainer
    clock.add("multiseg's modules (trainer, models, losses, callbacks)",
              time.perf_counter() - start)

    start = time.perf_counter()
    recipe = recipe_lib.load(args.recipe,
                             [*args.overrides, "train.epochs=1"])
    clock.add("recipe built (losses, metrics)", time.perf_counter() - start)

    for name, label in TRAINER_STAGES:
        setattr(trainer, name, clock.wrap(getattr(trainer, name), label))
    steps = step_clock(keras, clock)
    fit_clock = {}
    fit = keras.Model.fit

    def timed_fit(model, *fit_args, **kwargs):
        fit_clock["start"] = time.perf_counter()
        try:
            return fit(model, *fit_args, **kwargs)
        finally:
            fit_clock["end"] = time.perf_counter()

    keras.Model.fit = timed_fit
    with tempfile.TemporaryDirectory() as output:
        recipe = dataclasses.replace(recipe, output=os.path.join(output, "run"))
        start = time.perf_counter()
        # verbose as the command is (the summary and the progress display), printed nowhere.
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
            trainer.train(recipe, verbose=1, extra_callbacks=[steps])
        total = time.perf_counter() - start
    keras.Model.fit = fit

    steady = statistics.median(steps.steps[2:]) if len(steps.steps) > 2 else float("nan")
    in_trainer = sum(seconds for label, seconds in clock.stages if label in TRAINER_LABELS)
    fit_seconds = fit_clock["end"] - fit_clock["start"]
    clock.add("first training step (tracing, compilation, first batch)", steps.steps[0])
    clock.add("second training step", steps.steps[1])
    clock.add("first validation (test step traced)", steps.validations[0])
    clock.add(f"the epoch's other {len(steps.steps) - 2} steps and callbacks",
              fit_seconds - steps.steps[0] - steps.steps[1] - steps.validations[0])
    clock.add("rest of the training call (final evaluation, records)",
              total - in_trainer - fit_seconds)
    rows = clock.stages
    print(f"start-up of {recipe.name!r} on {keras.backend.backend()}, "
          f"{'x'.join(map(str, recipe.data.image_size))}, batch {recipe.train.batch_size}:")
    width = max(len(label) for label, _ in rows)
    for label, seconds in rows:
        print(f"  {label:<{width}}  {seconds:7.2f} s")
    print(f"  {'a steady training step (median)':<{width}}  {steady:7.3f} s")
    print(f"first step = {steps.steps[0] / steady:.0f} steady steps; from the interpreter's"
          f" start to the second step's end: {before_second_step(rows):.1f} s")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"recipe": recipe.name, "backend": keras.backend.backend(),
                       "stages": dict(rows), "steady_step": steady,
                       "training_call": total,
                       "to_second_step": before_second_step(rows)}, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
