"""Input pipeline throughput against the rate at which training consumes images.

The pipeline figure is images per second delivered by ``data.train.dataset(...)`` alone
(augmentation and derived targets included, nothing else running): the tf.data pipeline on the
TensorFlow backend, the thread pipeline (no TensorFlow needed), and plain sequential
``batches[i]`` for reference. The training figure is images per second that ``fit`` consumes
when the batches cost nothing (they are made beforehand and held in memory), validation off,
first epoch (tracing) excluded. The pipeline keeps training fed when its rate is well above
the training rate; the project asks for at least 3x on a 2-core CPU.

    python tools/bench/pipeline.py [RECIPE] [--epochs N] [--set key=value ...]
    python tools/bench/pipeline.py --set data.augment.rotate=15 --set data.augment.noise=0.05
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from timers import EpochTimer  # noqa: E402  (tools/bench/timers.py)

from multiseg import recipe as recipe_lib  # noqa: E402
from multiseg.data import build_data  # noqa: E402
from multiseg.models.build import build_model, compile_model  # noqa: E402
from multiseg.startup import set_random_seed  # noqa: E402


def pipeline_rate(data, steps: int, pipeline: str) -> float:
    """Images per second over ``steps`` batches, after one warm-up batch."""
    if pipeline == "sequential":
        data.train[0]
        start, images = time.perf_counter(), 0
        for g in range(steps):
            images += len(data.train.global_batch(g)[0])
        return images / (time.perf_counter() - start)
    dataset = data.train.dataset(0, steps + 1, pipeline=pipeline)
    if pipeline == "tf.data":
        iterator = iter(dataset)
        next(iterator)  # builds the pipeline and fills the first buffers
        start, images = time.perf_counter(), 0
        for image, _ in iterator:
            images += int(image.shape[0])
    else:
        adapter = keras.src.trainers.data_adapters.get_data_adapter(dataset)
        iterator = iter(adapter.get_numpy_iterator())
        next(iterator)
        start, images = time.perf_counter(), 0
        for image, _ in iterator:
            images += len(image)
        adapter.on_epoch_end()
    return images / (time.perf_counter() - start)



def training_rate(recipe, data, epochs: int) -> float:
    """Images per second consumed by ``fit`` on batches made beforehand (median epoch)."""
    steps = len(data.train)
    batches = [data.train.global_batch(g) for g in range(steps)]
    x = np.concatenate([b[0] for b in batches])
    y = {h: np.concatenate([b[1][h] for b in batches]) for h in recipe.heads}
    set_random_seed(recipe.seed)
    model = build_model(recipe, channels=data.channels)
    compile_model(model, recipe, total_steps=steps * epochs)
    timer = EpochTimer()
    model.fit(x, y, batch_size=recipe.train.batch_size, epochs=epochs, shuffle=False, verbose=0,
              callbacks=[timer])
    return len(x) / float(np.median(timer.times[1:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", nargs="?", default="recipes/shapes.yaml")
    parser.add_argument("--epochs", type=int, default=4, help="training epochs timed (+1)")
    parser.add_argument("--steps", type=int, default=0,
                        help="pipeline batches timed (default: 4 epochs' worth)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    recipe = recipe_lib.load(args.recipe, args.overrides)
    data = build_data(recipe, frequencies=False)
    steps = args.steps or 4 * len(data.train)
    augment = {k: v for k, v in vars(recipe.data.augment).items() if v}
    print(f"recipe {args.recipe}: {recipe.data.image_size[0]}x{recipe.data.image_size[1]}x"
          f"{data.channels}, batch {recipe.train.batch_size}, {len(recipe.heads)} heads,"
          f" augment {augment or 'off'}; backend {keras.backend.backend()},"
          f" {os.cpu_count()} CPU cores, {data.train.workers} batch threads")
    pipelines = ["sequential", "threads"]
    if keras.backend.backend() == "tensorflow":
        pipelines.append("tf.data")
    rates = {}
    for pipeline in pipelines:
        rates[pipeline] = pipeline_rate(data, steps, pipeline)
        print(f"  pipeline {pipeline:10s} {rates[pipeline]:8.0f} images/s ({steps} batches)")
    train = training_rate(recipe, data, args.epochs + 1)
    print(f"  training (fit, batches free) {train:8.0f} images/s")
    best = "tf.data" if "tf.data" in rates else "threads"
    print(f"  ratio pipeline ({best}) / training: {rates[best] / train:.1f}x")


if __name__ == "__main__":
    main()
