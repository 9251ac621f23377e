"""What ``train.precise_bn`` costs: recomputing the batch-norm statistics once per epoch,
against the epoch's training steps.

Measured in one process, medians over repeats after warm-up:
- step: one ``fit`` step of the compiled model (batches in memory);
- recompute: ``recompute_statistics`` over ``precise_bn`` batches already in memory;
- batches: making those batches again (``global_batch``: crops, augmentation, targets).
Overhead per epoch = (recompute + batches) / (steps per epoch x step).

    python tools/bench/precise_bn.py [RECIPE] [--repeats N] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
import multiseg  # noqa: E402, F401  (first: it quiets TensorFlow before Keras loads)

# isort: split
import keras  # noqa: E402
import numpy as np  # noqa: E402
from timers import StepTimer, median_time  # noqa: E402  (tools/bench/timers.py)

from multiseg import recipe as recipe_lib  # noqa: E402
from multiseg.batchnorm import recompute_statistics  # noqa: E402
from multiseg.data import build_data  # noqa: E402
from multiseg.models.build import build_model, compile_model  # noqa: E402
from multiseg.startup import set_random_seed  # noqa: E402


def measure(recipe, repeats: int) -> dict[str, float]:
    set_random_seed(recipe.seed)
    data = build_data(recipe, frequencies=False, log_report=False)
    model = build_model(recipe, channels=data.channels)
    steps = len(data.train)
    compile_model(model, recipe, total_steps=steps * recipe.train.epochs)
    count = min(recipe.train.precise_bn, steps)
    batches = [data.train.global_batch(i) for i in range(steps)]
    x = np.concatenate([b[0] for b in batches])
    y = {h: np.concatenate([b[1][h] for b in batches]) for h in recipe.heads}
    timer = StepTimer()
    model.fit(x, y, batch_size=recipe.train.batch_size, epochs=1, verbose=0)  # trace
    model.fit(x, y, batch_size=recipe.train.batch_size, epochs=2, verbose=0, callbacks=[timer])
    images = [b[0] for b in batches[:count]]
    recompute_statistics(model, images)  # warm-up
    recompute = median_time(lambda: recompute_statistics(model, images), repeats)
    making = median_time(lambda: [data.train.global_batch(i) for i in range(count)], repeats)
    step = statistics.median(timer.times)
    return {"steps_per_epoch": steps, "precise_bn_batches": count, "step_s": step,
            "recompute_s": recompute, "batches_s": making,
            "overhead_per_epoch": (recompute + making) / (steps * step)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", nargs="?", default="recipes/shapes.yaml")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    recipe = recipe_lib.load(args.recipe, args.overrides)
    figures = measure(recipe, args.repeats)
    print(f"{args.recipe} on {keras.backend.backend()}: {figures['steps_per_epoch']} steps/epoch,"
          f" precise_bn {figures['precise_bn_batches']} batches")
    print(f"  training step       {figures['step_s'] * 1000:8.1f} ms")
    print(f"  recompute           {figures['recompute_s'] * 1000:8.1f} ms"
          f" ({figures['recompute_s'] / figures['step_s']:.1f} steps)")
    print(f"  making the batches  {figures['batches_s'] * 1000:8.1f} ms")
    print(f"  overhead per epoch  {figures['overhead_per_epoch']:.1%}")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
