"""Evaluate a finished (or checkpointed) run: ``python -m multiseg.evaluate RUN_DIR``.

Rebuilds the run's data from its resolved ``recipe.yaml`` and reports every head's losses and
metrics on the validation (or training) set, from ``model.keras`` or the latest checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys

from multiseg.errors import UserError, report
from multiseg.runs import EVALUATED_ABOUT, FIGURES_ABOUT, format_metrics, run_recipe
from multiseg.startup import import_keras


def evaluate(run_dir: str, *, split: str = "val", checkpoint: bool = False) -> dict:
    """Every head's losses and metrics on ``split``, nested as in ``metrics.json``.

    Raises:
        RunNotFound: no run in ``run_dir``, or its weights do not fit (``WeightsMismatch``).
    """
    from multiseg.callbacks import nest_logs, weighted_losses
    from multiseg.runs import load_run

    recipe, data, model = load_run(run_dir, checkpoint=checkpoint)
    batches = data.val if split == "val" else data.train
    # The length given: a training set's batches vary and come from a generator, whose end
    # Keras would report as data running out.
    logs = model.evaluate(batches.dataset(), steps=len(batches), verbose=0, return_dict=True)
    logs.update(weighted_losses(logs, {n: h.loss_weight for n, h in recipe.heads.items()}))
    return nest_logs(logs, recipe.heads)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m multiseg.evaluate",
                                     description="Report each head's losses and metrics.")
    parser.add_argument("run_dir", help="a run directory written by multiseg.train")
    parser.add_argument("--split", choices=("val", "train"), default="val")
    parser.add_argument("--checkpoint", action="store_true",
                        help="use the latest checkpoint instead of model.keras")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="also show the backend's start-up messages (TensorFlow, CUDA)")
    args = parser.parse_args(argv)
    try:
        run_recipe(args.run_dir, build=False)  # a wrong directory is answered before Keras
        import_keras(verbose=args.verbose)
        figures = evaluate(args.run_dir, split=args.split, checkpoint=args.checkpoint)
    except UserError as exc:
        print(report(exc), file=sys.stderr)
        return exc.exit_code
    model = "latest checkpoint" if args.checkpoint else "final model"
    print(format_metrics(figures, f"{args.split} ({args.run_dir}): "
                         + EVALUATED_ABOUT.format(model=model, split=args.split)))
    if args.split == "train":
        print(f"(metrics.json's train figures differ: they are {FIGURES_ABOUT['train']})")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(figures, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
