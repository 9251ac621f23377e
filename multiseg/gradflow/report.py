"""The gradient-flow report of a recipe (what ``tools/gradflow`` runs) and its files."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

import keras

from multiseg.data import build_data
from multiseg.errors import UserError
from multiseg.gradflow.figures import FIGURE_MAKERS
from multiseg.gradflow.table import format_table
from multiseg.gradients import GradientProbe, summarise
from multiseg.models.build import build_model, head_losses
from multiseg.runs import WeightsMismatch, load_weights
from multiseg.startup import set_random_seed
from multiseg.weighting.model import current_weights

FORMATS = ("png", "svg", "json", "txt")


class GradflowError(ValueError, UserError):
    """The tool cannot run as asked (a run directory without weights, too many batches...)."""


def parse_formats(text: str | Iterable[str]) -> tuple[str, ...]:
    """``"png,json"`` -> ("png", "json"); unknown names are a ValueError naming the choices."""
    items = [t.strip() for t in (text.split(",") if isinstance(text, str) else text)]
    items = [t for t in items if t]
    unknown = [t for t in items if t not in FORMATS]
    if unknown or not items:
        raise ValueError(f"unknown output format{'s' if len(unknown) > 1 else ''}"
                         f" {', '.join(unknown) or '(none given)'}; expected a comma-separated"
                         f" list of {', '.join(FORMATS)}")
    return tuple(dict.fromkeys(items))


def write_report(report: Mapping[str, Any], out: str | os.PathLike,
                 formats: Iterable[str] = FORMATS, *, prefix: str = "gradflow") -> list[str]:
    """Writes the report's files into ``out`` and returns their paths."""
    out = os.fspath(out)
    os.makedirs(out, exist_ok=True)
    formats = parse_formats(formats)
    written = []
    if "json" in formats:
        path = os.path.join(out, f"{prefix}.json")
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=1)
        written.append(path)
    if "txt" in formats:
        path = os.path.join(out, f"{prefix}.txt")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(format_table(report) + "\n")
        written.append(path)
    images = [f for f in ("png", "svg") if f in formats]
    if images:
        for name, make in FIGURE_MAKERS.items():
            fig = make(report)
            for ext in images:
                path = os.path.join(out, f"{prefix}_{name}.{ext}")
                fig.savefig(path, dpi=120)
                written.append(path)
    return written


def recipe_report(recipe, *, run_dir: str | None = None, batches: int = 1,
                  mode: str = "weighted", data=None) -> dict[str, Any]:
    """Builds the recipe's model (with a run's weights if ``run_dir``) and measures each head's
    gradients on the first ``batches`` training batches (epoch 0, augmented as in training).

    Raises:
        GradflowError: ``batches`` out of range, or a run whose weights do not fit the model.
        RunNotFound: ``run_dir`` holds neither ``model.keras`` nor a checkpoint.
    """
    if batches < 1:
        raise GradflowError(f"--batches must be at least 1, got {batches}")
    set_random_seed(recipe.seed)
    if data is None:
        data = build_data(recipe, frequencies=False)
    if batches > len(data.train):
        raise GradflowError(f"--batches {batches}: the training set has only"
                            f" {len(data.train)} batches of {recipe.train.batch_size}")
    model = build_model(recipe, channels=data.channels)
    if run_dir is not None:
        try:
            load_weights(model, recipe, run_dir)
        except (WeightsMismatch, OSError) as exc:
            detail = exc.detail if isinstance(exc, WeightsMismatch) else exc
            raise GradflowError(f"{run_dir}: its weights do not fit this recipe's model"
                                f" ({detail}); give the run's own recipe (or no recipe: the"
                                " run's recipe.yaml is used)") from None
    # A learned weighting's effective weights: those of the run's end, or the starting ones.
    weights = current_weights(model) or {h: s.loss_weight for h, s in recipe.heads.items()}
    probe = GradientProbe(model, head_losses(recipe), weights)
    grads = probe.mean_gradients(data.train.batch(0, i) for i in range(batches))
    return summarise(grads, learning_rate=recipe.train.optimizer.learning_rate, mode=mode,
                     optimizer=recipe.train.optimizer.name, recipe=recipe.name)
