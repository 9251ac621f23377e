"""Check a recipe's data without training: ``python -m multiseg.data RECIPE [--set k=v ...]``.

Reads and validates every file (the same pass training starts with), then prints the counts,
the skipped files, notes and the class frequencies of every head's target. Exit code 0 when the
data is usable, 2 with ``error: <file>: <problem>`` when it is not.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m multiseg.data",
                                     description="Validate a recipe's data and report on it.")
    parser.add_argument("recipe", help="recipe YAML file")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY.PATH=VALUE", help="override a recipe field (repeatable)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="also show the backend's start-up messages (TensorFlow, CUDA)")
    args = parser.parse_args(argv)

    from multiseg import recipe as recipe_lib
    from multiseg.data import build_data
    from multiseg.errors import UserError, report
    from multiseg.startup import import_keras

    try:
        recipe_lib.load(args.recipe, args.overrides, build=False)  # before Keras starts
        import_keras(verbose=args.verbose)  # the whole recipe is checked: losses, metrics
        recipe = recipe_lib.load(args.recipe, args.overrides)
        data = build_data(recipe, log_report=False)  # printed below, once
    except UserError as exc:
        print(report(exc), file=sys.stderr)
        return exc.exit_code
    print(data.report.text(max_listed=20))
    return 0


if __name__ == "__main__":
    sys.exit(main())
