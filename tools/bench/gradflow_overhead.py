"""What per-head gradient snapshots cost: one snapshot against one training step, and the
training-time overhead of ``train.gradflow.every`` (default 100) on a recipe.

1. Snapshot cost, in training steps (medians over repeats, after warm-up; batches in memory):
   - step: one ``fit`` step of the compiled model (forward, backward, Adam update);
   - gradients: the probe alone (one forward, one backward per head: k heads);
   - snapshot: gradients + statistics (``summarise``);
   - logged: what ``GradflowLogger`` does each time (snapshot + TensorBoard scalars,
     histograms, chart image, table, JSON line).
   The issue's bound: a snapshot costs at most k + 1 training steps.
2. Training overhead: the recipe trained twice through ``multiseg.train.train``, without and
   with a ``GradflowLogger`` at ``every`` steps. Reported: the logger's own time (probe
   tracing included) as a share of the run without it (the direct figure), and the difference
   in wall time between the two runs (noisier: it includes run-to-run jitter).

    python tools/bench/gradflow_overhead.py [RECIPE] [--every N] [--skip-training]
                                            [--set key=value ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
import multiseg  # noqa: E402, F401  (first: it quiets TensorFlow before Keras loads)

# isort: split
import keras  # noqa: E402
import numpy as np  # noqa: E402
from timers import StepTimer, median_time  # noqa: E402  (tools/bench/timers.py)

from multiseg import recipe as recipe_lib  # noqa: E402
from multiseg.callbacks import GradflowLogger  # noqa: E402
from multiseg.data import build_data  # noqa: E402
from multiseg.gradients import GradientProbe, summarise  # noqa: E402
from multiseg.models.build import build_model, compile_model, head_losses  # noqa: E402
from multiseg.startup import set_random_seed  # noqa: E402
from multiseg.train import train  # noqa: E402


def snapshot_cost(recipe, data, repeats: int) -> dict[str, float]:
    """Seconds per training step and per snapshot (gradients, statistics, logging)."""
    set_random_seed(recipe.seed)
    model = build_model(recipe, channels=data.channels)
    compile_model(model, recipe, total_steps=1000)
    steps = min(len(data.train), 24)
    batches = [data.train.batch(0, i) for i in range(steps)]
    x = np.concatenate([b[0] for b in batches])
    y = {h: np.concatenate([b[1][h] for b in batches]) for h in recipe.heads}
    timer = StepTimer()
    model.fit(x, y, batch_size=recipe.train.batch_size, epochs=1, verbose=0)  # trace
    model.fit(x, y, batch_size=recipe.train.batch_size, epochs=3, verbose=0, callbacks=[timer])
    step = statistics.median(timer.times)
    return {"step": step, **probe_costs(recipe, model, data, repeats)}


def probe_costs(recipe, model, data, repeats: int) -> dict[str, float]:
    """Seconds of the first probe (tracing), then medians of the probe's gradients alone, of
    a snapshot (gradients + statistics) and of a logged one (what ``GradflowLogger`` does)."""
    weights = {h: s.loss_weight for h, s in recipe.heads.items()}
    probe = GradientProbe(model, head_losses(recipe), weights)
    images, targets = data.train.batch(0, 0)
    started = time.perf_counter()
    probe.gradients(images, targets)
    trace = time.perf_counter() - started
    gradients = median_time(lambda: probe.gradients(images, targets), repeats)
    lr = recipe.train.optimizer.learning_rate
    snapshot = median_time(lambda: summarise(probe.gradients(images, targets),
                                              learning_rate=lr), repeats)
    with tempfile.TemporaryDirectory() as logdir:
        logger = GradflowLogger.from_recipe(recipe, data=data, logdir=logdir, every=1)
        logger.set_model(model)
        logger.on_train_begin()
        logger.snapshot()
        logged = median_time(logger.snapshot, repeats)
        logger.close()
    return {"trace": trace, "gradients": gradients, "snapshot": snapshot, "logged": logged}


def _with_every(recipe, every: int, output: str):
    gradflow = dataclasses.replace(recipe.train.gradflow, every=every)
    return dataclasses.replace(recipe, output=output,
                               train=dataclasses.replace(recipe.train, gradflow=gradflow))


def training_overhead(recipe, every: int) -> dict[str, float]:
    """Wall seconds of training without and with a GradflowLogger, and the logger's own time."""
    with tempfile.TemporaryDirectory() as tmp:
        plain = _with_every(recipe, 0, os.path.join(tmp, "plain"))
        started = time.perf_counter()
        train(plain, verbose=0)
        without = time.perf_counter() - started

        # The logger train() adds for train.gradflow.every, made here to read its timings;
        # the recipe says every=0 so that train() adds no second one.
        probed = _with_every(recipe, 0, os.path.join(tmp, "probed"))
        logger = GradflowLogger.from_recipe(probed, data=build_data(probed, frequencies=False),
                                            logdir=os.path.join(probed.output, "logs"),
                                            every=every)
        started = time.perf_counter()
        train(probed, verbose=0, extra_callbacks=[logger])
        with_logger = time.perf_counter() - started
    return {"without": without, "with": with_logger, "logger": logger.seconds,
            "snapshots": len(logger.reports)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe", nargs="?", default=os.path.join(
        os.path.dirname(__file__), "..", "..", "recipes", "shapes.yaml"))
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--skip-training", action="store_true",
                        help="only the snapshot cost (part 1)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    recipe = recipe_lib.load(args.recipe, args.overrides)
    data = build_data(recipe, frequencies=False)
    k = len(recipe.heads)
    print(f"recipe {recipe.name}: {k} heads, batch {recipe.train.batch_size},"
          f" {recipe.data.image_size[0]}x{recipe.data.image_size[1]}, filters"
          f" {list(recipe.model.filters)}; backend {keras.backend.backend()}")

    cost = snapshot_cost(recipe, data, args.repeats)
    step = cost["step"]
    print(f"1. one training step: {1000 * step:.1f} ms (median)")
    print(f"   probe gradients (1 forward + {k} backward): {cost['gradients'] / step:.2f} steps")
    print(f"   snapshot (gradients + statistics):          {cost['snapshot'] / step:.2f} steps"
          f"   (bound: k + 1 = {k + 1})")
    print(f"   logged snapshot (+ TensorBoard, chart):     {cost['logged'] / step:.2f} steps")
    print(f"   first snapshot's one-off tracing:           {cost['trace'] / step:.1f} steps"
          f" ({cost['trace']:.1f} s)")
    if args.skip_training:
        return 0

    steps = len(data.train) * recipe.train.epochs
    print(f"2. training {recipe.train.epochs} epochs x {len(data.train)} steps = {steps} steps,"
          f" gradflow every {args.every} (validation and checkpoints included) ...", flush=True)
    run = training_overhead(recipe, args.every)
    print(f"   without gradflow: {run['without']:.1f} s; with: {run['with']:.1f} s;"
          f" {run['snapshots']} snapshots took {run['logger']:.2f} s")
    print(f"   overhead (the logger's own time / training time): "
          f"{100 * run['logger'] / run['without']:.1f}%")
    print(f"   overhead (wall-time difference between the runs): "
          f"{100 * (run['with'] - run['without']) / run['without']:+.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
