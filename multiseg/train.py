"""Train a recipe: ``python -m multiseg.train RECIPE.yaml [--set key.path=value ...]``.

Writes the run directory: ``recipe.yaml`` (resolved), ``checkpoints/`` (atomic; the same
command resumes), ``logs/`` (TensorBoard), ``metrics.json`` and ``model.keras``.

The recipe and its ``--set`` overrides are read and checked before Keras is imported, so a
mistake is answered at once; the training itself is ``multiseg.trainer``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from multiseg import recipe as recipe_lib
from multiseg.distribute.choices import joins_processes
from multiseg.errors import TrainingInterrupted, UserError, report
from multiseg.runs import check_run_dir, final_summary, finished_run_text, read_json
from multiseg.startup import import_keras


def train(recipe, *, fresh: bool = False, verbose: int | str = "auto",
          recipe_path: str | None = None, extra_callbacks=()):
    """Trains ``recipe`` into its run directory, resuming from its last checkpoint if any;
    returns a ``multiseg.trainer.TrainResult`` (model, run_dir, metrics, epochs_run). See
    ``multiseg.trainer.train``."""
    from multiseg.trainer import train as run

    return run(recipe, fresh=fresh, verbose=verbose, recipe_path=recipe_path,
               extra_callbacks=extra_callbacks)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m multiseg.train",
        description="Train a multi-task segmentation recipe into a run directory.")
    parser.add_argument("recipe", help="recipe YAML file, e.g. recipes/shapes.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY.PATH=VALUE",
                        help="override a recipe field, e.g. --set train.epochs=2 "
                             "--set heads.mask.loss_weight=0.5 (repeatable)")
    parser.add_argument("--output", help="run directory (default: the recipe's output)")
    parser.add_argument("--fresh", action="store_true",
                        help="delete an existing run in the output directory and start over")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress display: only the final figures and the run directory")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="also show the backend's start-up messages (TensorFlow, CUDA)")
    args = parser.parse_args(argv)
    try:
        light = recipe_lib.load(args.recipe, args.overrides, build=False)  # before Keras starts
        if args.output:
            light = dataclasses.replace(light, output=args.output)
        if not args.fresh and not joins_processes(light.train.distribute):
            # A finished run is answered from its records: 0.3 s instead of starting Keras (5 s).
            # Over several processes each checks the run directory in turn (train()).
            if check_run_dir(light, fresh=False).complete:
                metrics = read_json(os.path.join(light.output, "metrics.json"))
                print(final_summary(metrics, light.output) if args.quiet
                      else finished_run_text(light, metrics), flush=True)
                return 0
        if joins_processes(light.train.distribute):
            # Several processes join before the backend looks for its devices, as import_keras
            # does (JAX refuses to join after that); Keras imports quietly on JAX.
            from multiseg.distribute.engines import start_processes

            start_processes(light.train.distribute)
        import_keras(verbose=args.verbose)
        recipe = recipe_lib.load(args.recipe, args.overrides)
        if args.output:
            recipe = dataclasses.replace(recipe, output=args.output)
        result = train(recipe, fresh=args.fresh, verbose=0 if args.quiet else 1,
                       recipe_path=args.recipe)
        from multiseg.distribute.engines import is_chief

        if args.quiet and is_chief():  # another process's run directory is a scratch copy
            print(final_summary(result.metrics, result.run_dir), flush=True)
    except UserError as exc:
        print(report(exc), file=sys.stderr)
        return exc.exit_code
    except TrainingInterrupted as exc:
        print(f"\n{exc}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("\ninterrupted: the last completed epoch is checkpointed; run the same command"
              " to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
