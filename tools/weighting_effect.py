"""What each ``train.weighting`` method does to a recipe's validation figures.

Trains the recipe once per method through the command line (``--fresh``, ``--quiet``), reads
each run's ``metrics.json`` (the saved model in inference mode on the validation set), and
prints a Markdown table of every head's first metric with the multi-task improvement over
``static``:

    Δm = 100 / K * sum_k (-1)^{l_k} (M_k - M_static,k) / M_static,k

(K heads, ``l_k`` = 1 where lower is better; every multiseg metric is higher-is-better.)

    python tools/weighting_effect.py recipes/shapes.yaml --methods static dwa rlw \\
        [--set train.epochs=10 ...] [--seeds 0 1] [--out runs/weighting-effect]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

from multiseg import recipe as recipe_lib  # noqa: E402  (Keras-free)
from multiseg.trainer import main_metrics  # noqa: E402

# Metrics where a smaller value is better; none of multiseg's today, kept so Δm stays right.
LOWER_IS_BETTER: frozenset[str] = frozenset()


def delta_m(figures: dict[str, float], baseline: dict[str, float]) -> float:
    """LibMTL's multi-task improvement of ``figures`` over ``baseline``, in percent."""
    terms = []
    for key, base in baseline.items():
        sign = -1.0 if key.split("/")[-1] in LOWER_IS_BETTER else 1.0
        terms.append(sign * (figures[key] - base) / base)
    return 100.0 * sum(terms) / len(terms)


def train_once(recipe_path: str, method: str, seed: int, overrides: list[str],
               out: str) -> tuple[dict, float]:
    run_dir = os.path.join(out, f"{method}-seed{seed}")
    command = [sys.executable, "-m", "multiseg.train", recipe_path, "--fresh", "--quiet",
               "--output", run_dir, "--set", f"train.weighting={method}",
               "--set", f"seed={seed}"]
    for item in overrides:
        command += ["--set", item]
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    with open(os.path.join(run_dir, "metrics.json"), encoding="utf-8") as handle:
        return json.load(handle)["val"], time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe")
    parser.add_argument("--methods", nargs="+", default=["static", "dwa", "uncertainty",
                                                          "rlw", "famo"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", default=None)
    parser.add_argument("--baseline", default=None,
                        help="an effect.json whose static runs (same recipe, seeds and --set)"
                        " to reuse instead of training static again")
    args = parser.parse_args(argv)
    baseline_runs = None
    if args.baseline:
        with open(args.baseline, encoding="utf-8") as handle:
            earlier = json.load(handle)
        if (earlier["recipe"], earlier["overrides"], earlier["seeds"]) != (
                args.recipe, args.overrides, args.seeds):
            parser.error(f"--baseline {args.baseline}: another recipe, --set or seeds")
        baseline_runs = earlier["results"]["static"]
    if "static" in args.methods:
        args.methods.remove("static")
    args.methods.insert(0, "static")
    recipe = recipe_lib.load(args.recipe, args.overrides, build=False)
    out = args.out or os.path.join("runs", f"weighting-effect-{recipe.name}")
    columns = {h: m for h, m in main_metrics(recipe).items() if m}

    results: dict[str, dict] = {}
    for method in args.methods:
        if method == "static" and baseline_runs is not None:
            results[method] = {k: baseline_runs[k] for k in ("figures", "seeds", "seconds")}
            continue
        per_seed, seconds = [], []
        for seed in args.seeds:
            val, took = train_once(args.recipe, method, seed, args.overrides, out)
            per_seed.append({f"{h}/{m}": val[h][m] for h, m in columns.items()})
            seconds.append(took)
        figures = {k: statistics.mean(s[k] for s in per_seed) for k in per_seed[0]}
        results[method] = {"figures": figures, "seeds": per_seed, "seconds": seconds}
        print(f"{method}: " + ", ".join(f"{k} {v:.4f}" for k, v in figures.items())
              + f" ({statistics.mean(seconds):.0f} s)", file=sys.stderr)
    baseline = results["static"]["figures"]
    for result in results.values():
        result["delta_m"] = delta_m(result["figures"], baseline)

    header = "| method | " + " | ".join(f"{h} {m}" for h, m in columns.items()) + " | Δm |"
    lines = [header, "|---" * (len(columns) + 2) + "|"]
    for method, result in results.items():
        cells = [f"{result['figures'][f'{h}/{m}']:.3f}" for h, m in columns.items()]
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {result['delta_m']:+.2f}% |")
    print("\n".join(lines))
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "effect.json"), "w", encoding="utf-8") as handle:
        json.dump({"recipe": args.recipe, "overrides": args.overrides, "seeds": args.seeds,
                   "results": results}, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
