"""The cost of each ``train.weighting`` method: training-step time relative to ``static``.

    python tools/bench/weighting.py [RECIPE] [--steps 20] [--repeats 3] [--methods static,pcgrad]

One process; every method's model is built and compiled from RECIPE (default the default
recipe, ``recipes/shapes.yaml``) with ``train.weighting.method`` set, traced and warmed up on
a few steps, then the methods take turns (``--repeats`` rounds of ``--steps`` steps each on
the same fixed batch in memory, ``fit`` with Keras's loop), so that a shared machine's drift
falls on all of them alike. Reported: the median step time per method and its ratio to
``static``'s median in the same rounds. The data pipeline is left out on purpose: it costs
the same for every method.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from multiseg.startup import import_keras, set_random_seed  # noqa: E402

LOSS_LEVEL = ("static", "uncertainty", "dwa", "rlw", "famo")
# One backward pass per weighted head (gradnorm: one full, and one per head down to its layer).
GRADIENT_LEVEL = ("pcgrad", "upgrad", "gradnorm")


class _StepTimes:
    def __init__(self):
        self.times: list[float] = []
        self.started = 0.0

    def __call__(self):
        import keras

        bench = self

        class Timer(keras.callbacks.Callback):
            def on_train_batch_begin(self, batch, logs=None):
                bench.started = time.perf_counter()

            def on_train_batch_end(self, batch, logs=None):
                bench.times.append(time.perf_counter() - bench.started)

        return Timer()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", nargs="?", default="recipes/shapes.yaml")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--methods", default=",".join(LOSS_LEVEL + GRADIENT_LEVEL))
    args = parser.parse_args(argv)
    import_keras()
    import keras
    import numpy as np

    from multiseg.data import build_data
    from multiseg.models.build import build_model, compile_model
    from multiseg.recipe import load

    methods = args.methods.split(",")
    models, batch = {}, None
    for method in methods:
        override = [f"train.weighting={method}"]
        if method == "scheduled":
            first = None
            recipe = load(args.recipe, override, build=False)
            first = next(iter(recipe.heads))
            override = [f"train.weighting={{method: scheduled, heads: {{{first}: "
                        "{initial: 0.0, end: 1}}}"]
        recipe = load(args.recipe, override)
        if batch is None:
            data = build_data(recipe, frequencies=False, log_report=False)
            images, targets = data.train[0]
            batch = (np.asarray(images), {h: np.asarray(t) for h, t in targets.items()})
        set_random_seed(recipe.seed)
        model = build_model(recipe, channels=batch[0].shape[-1])
        compile_model(model, recipe, total_steps=10_000)
        images = np.repeat(batch[0][None], 4, axis=0).reshape(-1, *batch[0].shape[1:])
        targets = {h: np.repeat(t[None], 4, axis=0).reshape(-1, *t.shape[1:])
                   for h, t in batch[1].items()}
        model.fit(images, targets, batch_size=len(batch[0]), epochs=1, verbose=0)  # trace
        models[method] = (model, images, targets)
    medians: dict[str, list[float]] = {m: [] for m in methods}
    for _ in range(args.repeats):
        for method in methods:
            model, images, targets = models[method]
            timer = _StepTimes()
            reps = max(1, args.steps // 4)
            xs = np.concatenate([images] * reps)
            ys = {h: np.concatenate([t] * reps) for h, t in targets.items()}
            model.fit(xs, ys, batch_size=len(batch[0]), epochs=1, verbose=0,
                      callbacks=[timer()])
            medians[method].append(statistics.median(timer.times))
    base = medians.get("static")
    print(f"backend {keras.backend.backend()}, recipe {args.recipe}, batch {len(batch[0])},"
          f" {args.repeats} rounds of {args.steps} steps")
    print(f"{'method':<12} {'step ms':>8} {'x static':>9}")
    for method in methods:
        ms = 1000 * statistics.median(medians[method])
        ratio = (statistics.median(a / b for a, b in zip(medians[method], base, strict=True))
                 if base else float("nan"))
        print(f"{method:<12} {ms:8.1f} {ratio:9.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
