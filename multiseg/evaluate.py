"""Evaluate a finished (or checkpointed) run: ``python -m multiseg.evaluate RUN_DIR``.

Rebuilds the run's data from its resolved ``recipe.yaml`` and reports every head's losses and
metrics on the validation (or training) set, from ``model.keras`` or the latest checkpoint.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402

import keras  # noqa: E402

from multiseg import recipe as recipe_lib  # noqa: E402
from multiseg.callbacks import HeadLogs, latest_checkpoint  # noqa: E402
from multiseg.data import DataError, build_data  # noqa: E402
from multiseg.models.build import build_model, compile_model  # noqa: E402
from multiseg.train import format_metrics, nest_logs  # noqa: E402


class RunNotFound(ValueError):
    """The directory holds no run that can be evaluated."""


class WeightsMismatch(RunNotFound):
    """The run's saved weights do not fit the model built for the data at hand."""


def load_run_model(run_dir: str, recipe, *, channels: int, checkpoint: bool = False):
    """The run's compiled model with its trained weights: ``model.keras``, or the latest
    checkpoint when asked or when the run has not finished."""
    model = build_model(recipe, channels=channels)
    compile_model(model, recipe)
    model_path = os.path.join(run_dir, "model.keras")
    if checkpoint or not os.path.isfile(model_path):
        found = latest_checkpoint(os.path.join(run_dir, "checkpoints"))
        if found is None:
            raise RunNotFound(f"{run_dir}: neither model.keras nor a checkpoint to use")
        model.optimizer.build(model.trainable_variables)
        load = lambda: model.load_weights(found[2])  # noqa: E731
    else:
        # Same architecture, same layer names: the weights load into the fresh model.
        load = lambda: model.set_weights(  # noqa: E731
            keras.saving.load_model(model_path, compile=False).get_weights())
    try:
        # Keras warns about every layer it could not fill before it gives up on a mismatch:
        # noise beside the error; kept when the load succeeds.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            load()
    except ValueError as exc:
        raise WeightsMismatch(f"{run_dir}: its weights do not fit the model the recipe builds for"
                          f" {channels}-channel images ({exc})") from None
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return model


def load_run(run_dir: str, *, checkpoint: bool = False):
    """(recipe, data, compiled model with the run's weights) of a run directory."""
    recipe_path = os.path.join(run_dir, "recipe.yaml")
    if not os.path.isfile(recipe_path):
        raise RunNotFound(f"{run_dir}: no recipe.yaml here; is this a multiseg run directory?")
    recipe = recipe_lib.load(recipe_path)
    data = build_data(recipe, frequencies=False, log_report=False)
    model = load_run_model(run_dir, recipe, channels=data.channels, checkpoint=checkpoint)
    return recipe, data, model


def evaluate(run_dir: str, *, split: str = "val", checkpoint: bool = False) -> dict:
    recipe, data, model = load_run(run_dir, checkpoint=checkpoint)
    batches = data.val if split == "val" else data.train
    logs = model.evaluate(batches.dataset(), verbose=0, return_dict=True)
    HeadLogs({n: h.loss_weight for n, h in recipe.heads.items()})._add(logs)
    return nest_logs(logs, recipe.heads)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m multiseg.evaluate",
                                     description="Report each head's losses and metrics.")
    parser.add_argument("run_dir", help="a run directory written by multiseg.train")
    parser.add_argument("--split", choices=("val", "train"), default="val")
    parser.add_argument("--checkpoint", action="store_true",
                        help="use the latest checkpoint instead of model.keras")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    import multiseg  # noqa: F401  (registers custom objects for load_model)
    import multiseg.losses  # noqa: F401
    import multiseg.metrics  # noqa: F401

    try:
        figures = evaluate(args.run_dir, split=args.split, checkpoint=args.checkpoint)
    except (RunNotFound, recipe_lib.RecipeError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_metrics(figures, f"{args.split} ({args.run_dir})"))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(figures, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
