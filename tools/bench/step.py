"""Training throughput: multiseg's full training loop against a hand-written Keras baseline.

Both train the same network on the same data for the same number of steps. The baseline is
what a user would write by hand: the model compiled with the heads' losses only, ``fit`` on
in-memory arrays, no callbacks. multiseg adds its batch pipeline (augmentation, derived
targets), per-head metrics and loss-term metrics, TensorBoard logs and atomic checkpoints.
The first epoch (tracing, warm-up) is excluded from both.

    python tools/bench/step.py [RECIPE] [--epochs N] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
import multiseg  # noqa: E402, F401  (first: it quiets TensorFlow before Keras loads)

# isort: split
import keras  # noqa: E402
import numpy as np  # noqa: E402
from timers import EpochTimer  # noqa: E402  (tools/bench/timers.py)

from multiseg import recipe as recipe_lib  # noqa: E402
from multiseg.data import build_data  # noqa: E402
from multiseg.models.build import build_model, head_losses  # noqa: E402
from multiseg.train import train  # noqa: E402


def baseline(recipe, epochs: int) -> list[float]:
    data = build_data(recipe)
    images, targets = [], {h: [] for h in recipe.heads}
    for i in range(len(data.train)):
        x, y = data.train[i]
        images.append(x)
        for head in y:
            targets[head].append(y[head])
    x = np.concatenate(images)
    y = {h: np.concatenate(v) for h, v in targets.items()}
    keras.utils.set_random_seed(recipe.seed)
    model = build_model(recipe, channels=data.channels)
    model.compile(optimizer=keras.optimizers.Adam(recipe.train.optimizer.learning_rate),
                  loss=head_losses(recipe),
                  loss_weights={h: s.loss_weight for h, s in recipe.heads.items()})
    timer = EpochTimer()
    model.fit(x, y, batch_size=recipe.train.batch_size, epochs=epochs, verbose=0,
              callbacks=[timer], validation_data=data.val.dataset())
    return timer.times


def framework(recipe, epochs: int) -> list[float]:
    timer = EpochTimer()
    with tempfile.TemporaryDirectory() as out:
        import dataclasses

        run = dataclasses.replace(recipe, output=os.path.join(out, "run"),
                                  train=dataclasses.replace(recipe.train, epochs=epochs))
        train(run, verbose=0, extra_callbacks=[timer])
    return timer.times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", nargs="?", default="recipes/shapes.yaml")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    recipe = recipe_lib.load(args.recipe, args.overrides)
    images_per_epoch = recipe.train.batch_size * len(build_data(recipe).train)
    base = baseline(recipe, args.epochs)[1:]
    ours = framework(recipe, args.epochs)[1:]
    b, o = float(np.median(base)), float(np.median(ours))
    print(f"recipe {args.recipe}: {images_per_epoch} images/epoch, median of"
          f" {len(base)} epochs after the first (epoch time includes validation)")
    print(f"  hand-written keras fit: {b:.2f} s/epoch, {images_per_epoch / b:.0f} images/s")
    print(f"  multiseg train:         {o:.2f} s/epoch, {images_per_epoch / o:.0f} images/s")
    print(f"  ratio multiseg / baseline epoch time: {o / b:.2f}")


if __name__ == "__main__":
    main()
