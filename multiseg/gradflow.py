"""Gradient-flow reports: how each head's loss propagates through shared and branch layers.

Builds on :mod:`multiseg.gradients` (the measurements) and writes what people read:

- ``gradflow.json``: everything measured (fields in ``docs/gradflow.md``);
- ``gradflow.txt``: the text table the tool prints (per layer and head: gradient norm, exact 0
  where a head does not reach; cosines between heads on the shared trunk, conflicts named);
- ``gradflow_norms.png/.svg``: gradient norm per layer and head, layers in forward order, shared
  and branch layers shaded apart, log scale, exact zeros on their own row;
- ``gradflow_network.png/.svg``: the network's layers and connections once per head, coloured
  by that head's gradient norm: the backward path of each head's loss and how strongly it
  arrives;
- ``gradflow_conflict.png/.svg``: the head-by-head cosine matrix on the shared trunk and the
  cosine of each pair per shared layer.

During training, :class:`GradflowLogger` writes the same measurements to TensorBoard every N
steps (``train.gradflow.every`` in the recipe).

Charts use Matplotlib's object API (``matplotlib.figure.Figure``), not ``pyplot``: no global
state, no GUI backend, safe inside a training process.
"""

from __future__ import annotations

import io
import json
import math
import os
import time
from collections.abc import Iterable, Mapping
from typing import Any

import keras
import numpy as np

from multiseg.gradients import SHARED, GradientProbe, HeadGradients, summarise

FORMATS = ("png", "svg", "json", "txt")
FIGURES = ("norms", "network", "conflict")
# Colour of each head, in head order (Matplotlib's tab10, which prints and projects well).
_HEAD_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                 "#7f7f7f", "#bcbd22", "#17becf"]


def head_colour(report: Mapping, head: str) -> str:
    return _HEAD_COLOURS[report["heads"].index(head) % len(_HEAD_COLOURS)]


def _fmt(value: float | None, width: int = 9) -> str:
    """Exact zeros print as ``0``: they mean "does not reach", not "small"."""
    if value is None:
        return "n/a".rjust(width)
    if value == 0.0:
        return "0".rjust(width)
    return f"{value:.3g}".rjust(width)


def _head_label(report: Mapping, head: str) -> str:
    extra = ""
    if report["grad_scale"].get(head, 1.0) != 1.0:
        extra = f", grad_scale {report['grad_scale'][head]:g}"
    return f"{head} (w {report['loss_weights'][head]:g}{extra})"


# ---------------------------------------------------------------------------------------------
# Text.


def format_table(report: Mapping[str, Any]) -> str:
    """The terminal table: per layer and head the gradient norm, then trunk norms and cosines.

    Negative cosines on the shared trunk are labelled ``CONFLICT``: there the heads' gradients
    point in opposing directions and partly cancel in the total.
    """
    heads = report["heads"]
    what = ("weighted gradients w_h * dL_h/dθ" if report["mode"] == "weighted"
            else "raw gradients dL_h/dθ")
    step = f", step {report['step']}" if report.get("step") is not None else ""
    lines = [f"gradflow: {report.get('recipe') or 'model'}{step}: {what}, mean over"
             f" {report['batches']} batch{'es' if report['batches'] != 1 else ''}"
             f" ({report['samples']} samples), backend {report['backend']}"]
    lines.append("heads: " + "; ".join(
        f"{_head_label(report, h)} loss {report['loss'][h]['raw']:.4g}" for h in heads))
    name_width = max([len("layer"), *(len(e["name"]) for e in report["layers"])])
    owner_width = max([len("owner"), *(len(e["owner"]) for e in report["layers"])])
    col = max(9, *(len(h) for h in heads))
    lines.append("")
    lines.append(f"{'layer':<{name_width}}  {'owner':<{owner_width}}  {'params':>8}  "
                 + "  ".join(h.rjust(col) for h in heads) + "  " + "total".rjust(col))
    for entry in report["layers"]:
        mark = ""
        if entry.get("named_owner") not in (None, entry["owner"]):
            mark = f"  (named {entry['named_owner']}; used by {entry['owner']} only)"
        lines.append(f"{entry['name']:<{name_width}}  {entry['owner']:<{owner_width}}  "
                     f"{entry['params']:>8}  "
                     + "  ".join(_fmt(entry["grad_norm"][h], col) for h in heads) + "  "
                     + _fmt(entry["grad_norm_total"], col) + mark)
    lines.append("0 = exactly zero: that head's loss does not reach the layer (computed, not"
                 " assumed). total = norm of the summed weighted gradient.")
    lines.append("")
    lines.append(f"{'':<{name_width + owner_width + 14}}"
                 + "  ".join(h.rjust(col) for h in heads))
    rows = [("shared trunk, grad norm", [report["trunk"]["grad_norm"][h] for h in heads]),
            ("own branch, grad norm", [report["branch"][h]["grad_norm"] for h in heads]),
            ("at attach (last shared layer on path)",
             [report["attach"][h]["grad_norm"] for h in heads])]
    last = report["last_shared"]
    if last["layer"]:
        rows.append((f"at {last['layer']} (last shared)",
                     [last["grad_norm"][h] for h in heads]))
    for label, values in rows:
        lines.append(f"{label:<{name_width + owner_width + 14}}"
                     + "  ".join(_fmt(v, col) for v in values))
    lines.append("attach layers: " + ", ".join(
        f"{h} {report['attach'][h]['layer']}" for h in heads))
    if len(heads) > 1:
        lines.append("")
        lines.append("cosine between heads' gradients on the shared trunk"
                     " (all shared layers | the shared layers both reach):")
        for key, value in report["cosine"].items():
            common = report["cosine_common"][key]
            verdict = ("undefined: one head sends no gradient into the trunk"
                       if value is None else
                       "CONFLICT (opposing directions)" if value <= -0.1 else
                       "CONFLICT (weak: nearly orthogonal)" if value < 0 else
                       "nearly orthogonal" if value < 0.1 else "agree")
            value_text = "n/a" if value is None else f"{value:+.3f}"
            common_text = "n/a" if common is None else f"{common:+.3f}"
            lines.append(f"  {key:<{2 * col + 1}}  {value_text:>7} | {common_text:>7}  {verdict}")
        layer_conflicts = {}
        for entry in report["layers"]:
            for key, value in entry["cosine"].items():
                if value is not None and value < 0:
                    layer_conflicts.setdefault(key, []).append(entry["name"])
        for key in report["cosine"]:
            names = layer_conflicts.get(key, [])
            shared = sum(1 for e in report["layers"] if e["cosine"].get(key) is not None)
            if names:
                worst = min(names, key=lambda name: next(
                    e["cosine"][key] for e in report["layers"] if e["name"] == name))
                lines.append(f"  {key}: conflict (negative cosine) on {len(names)} of {shared}"
                             f" shared layers, most at {worst}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Charts.


def _figure(width: float, height: float, *, layout: str | None = "constrained"):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout=layout)


def _shade_owners(ax, report: Mapping, x0: float = -0.5) -> None:
    """Light background per branch, in the owning head's colour; shared layers unshaded."""
    layers = report["layers"]
    start = 0
    for i in range(1, len(layers) + 1):
        if i == len(layers) or layers[i]["owner"] != layers[start]["owner"]:
            owner = layers[start]["owner"]
            if owner != SHARED and owner in report["heads"]:
                ax.axvspan(start + x0, i + x0, color=head_colour(report, owner), alpha=0.09,
                           lw=0)
                ax.text((start + i - 1) / 2, 1.0, owner, transform=ax.get_xaxis_transform(),
                        ha="center", va="bottom", fontsize=7, color=head_colour(report, owner))
            elif owner == SHARED:
                ax.text((start + i - 1) / 2, 1.0, "shared trunk",
                        transform=ax.get_xaxis_transform(), ha="center", va="bottom", fontsize=7,
                        color="0.3")
            start = i


def norms_figure(report: Mapping[str, Any], *, compact: bool = False):
    """Gradient norm per layer (forward order) and head; log scale; exact zeros on a 0 row."""
    layers = report["layers"]
    heads = report["heads"]
    n = len(layers)
    values = [v for e in layers for v in e["grad_norm"].values() if v > 0]
    low = min(values) if values else 1e-8
    high = max(values) if values else 1.0
    floor = 10 ** (math.floor(math.log10(low)) - 1)
    if compact:  # fixed margins: constrained layout would be most of the drawing time
        fig = _figure(8.0, 3.4, layout=None)
        fig.subplots_adjust(left=0.12, right=0.98, bottom=0.1, top=0.86)
    else:
        fig = _figure(max(6.0, 0.16 * n + 2.5), 4.2)
    ax = fig.add_subplot()
    _shade_owners(ax, report)
    x = np.arange(n)
    for k, head in enumerate(heads):
        colour = head_colour(report, head)
        y = np.array([e["grad_norm"][head] for e in layers], dtype=float)
        shown = np.where(y > 0, y, np.nan)
        ax.plot(x, shown, "-o", color=colour, ms=3.5, lw=1.2, label=_head_label(report, head))
        zeros = x[y == 0]
        # Side by side, so every head's zeros stay visible where several heads have one.
        offset = (k - (len(heads) - 1) / 2) * min(0.22, 0.8 / max(len(heads), 1))
        ax.plot(zeros + offset, np.full(len(zeros), floor), "x", color=colour, ms=4, mew=1.2)
    ax.set_yscale("log")
    ax.set_ylim(floor / 2, high * 3)
    ax.axhline(floor * 1.6, color="0.6", lw=0.6, ls=":")
    ticks = [t for t in ax.get_yticks() if floor * 2 < t <= high * 3]
    ax.set_yticks([floor, *ticks])
    ax.set_yticklabels(["0 (exact)", *(f"$10^{{{int(round(math.log10(t)))}}}$" for t in ticks)])
    ax.set_xlim(-0.5, n - 0.5)
    what = "w·dL/dθ" if report["mode"] == "weighted" else "dL/dθ"
    ax.set_ylabel(f"L2 norm of {what}" if compact else
                  f"L2 norm of {what} over the layer's weights")
    step = f", step {report['step']}" if report.get("step") is not None else ""
    ax.set_title(f"{report.get('recipe') or 'model'}{step}: each head's gradient per layer"
                 f" ({report['mode']}); x = not reached", fontsize=10, pad=14)
    if compact:
        ax.set_xticks([])
        ax.set_xlabel("layers in forward order (shared trunk, then each head's branch)")
    else:
        ax.set_xticks(x)
        ax.set_xticklabels([e["name"] for e in layers], rotation=90, fontsize=7)
    ax.legend(fontsize=8, loc="best", framealpha=0.85)
    ax.grid(axis="y", which="major", color="0.9", lw=0.6)
    return fig


def _weighted_edges(report: Mapping[str, Any]) -> list[tuple[int, int]]:
    """Edges between layers with weights, through the weightless layers in between."""
    index = {e["name"]: i for i, e in enumerate(report["layers"])}
    parents: dict[str, list[str]] = {}
    for a, b in report["graph"]["edges"]:
        parents.setdefault(b, []).append(a)
    memo: dict[str, set[str]] = {}

    def weighted_ancestors(name: str) -> set[str]:
        if name in memo:
            return memo[name]
        found: set[str] = set()
        stack, seen = list(parents.get(name, [])), set()
        while stack:
            p = stack.pop()
            if p in seen:
                continue
            seen.add(p)
            if p in index:
                found.add(p)
            else:
                stack.extend(parents.get(p, []))
        memo[name] = found
        return found

    return sorted({(index[a], index[b]) for b in index for a in weighted_ancestors(b)})


def network_figure(report: Mapping[str, Any]):
    """The network once per head: nodes are layers with weights (shared trunk on the top lane,
    each branch on its own lane, x in forward order), edges their connections. A node's colour
    is that head's gradient norm there (log scale, one colour scale for all panels); hollow
    nodes get exactly zero. Edges on the head's backward path are drawn in the head's colour."""
    from matplotlib import colormaps
    from matplotlib.colors import LogNorm
    from matplotlib.patches import FancyArrowPatch

    layers = report["layers"]
    heads = report["heads"]
    n = len(layers)
    top = 0.6
    lanes = {SHARED: 0.0, **{h: -1.0 - i for i, h in enumerate(heads)}}
    pos = [(i, lanes.get(e["owner"], -1.0 - len(heads))) for i, e in enumerate(layers)]
    edges = _weighted_edges(report)
    values = [v for e in layers for v in e["grad_norm"].values() if v > 0]
    norm = LogNorm(vmin=min(values) if values else 1e-8, vmax=max(values) if values else 1.0)
    cmap = colormaps["viridis"]
    fig = _figure(max(7.0, 0.2 * n + 3.0), 1.1 + (0.55 * len(heads) + 0.9) * len(heads))
    axes = fig.subplots(len(heads), 1, sharex=True, squeeze=False)[:, 0]
    for ax, head in zip(axes, heads, strict=True):
        colour = head_colour(report, head)
        reached = {i for i, e in enumerate(layers) if e["grad_norm"][head] > 0}
        for a, b in edges:
            (xa, ya), (xb, yb) = pos[a], pos[b]
            on_path = a in reached and b in reached
            rad = 0.0
            if ya == yb and xb - xa > 1:  # a skip connection: an arc over the lane
                span = xb - xa
                height = 0.25 + 0.2 * math.log2(span)
                top = max(top, ya + height)
                rad = -2 * height / span
            ax.add_patch(FancyArrowPatch(
                (xa, ya), (xb, yb), arrowstyle="-", connectionstyle=f"arc3,rad={rad}",
                color=colour if on_path else "0.85", lw=1.6 if on_path else 0.7,
                zorder=1 if on_path else 0, shrinkA=4, shrinkB=4))
        for i, e in enumerate(layers):
            value = e["grad_norm"][head]
            x, y = pos[i]
            if value > 0:
                ax.scatter([x], [y], s=60, color=cmap(norm(value)), edgecolors="0.2",
                           linewidths=0.5, zorder=3)
            else:
                ax.scatter([x], [y], s=60, facecolors="white", edgecolors="0.6",
                           linewidths=0.8, zorder=3)
        trunk = report["trunk"]["grad_norm"][head]
        ax.set_title(f"{_head_label(report, head)}: reaches {len(reached)} of {n} layers;"
                     f" trunk norm {_fmt(trunk, 0).strip()}, own branch"
                     f" {_fmt(report['branch'][head]['grad_norm'], 0).strip()}",
                     fontsize=9, color=colour, loc="left")
        ax.set_yticks([lanes[SHARED], *(lanes[h] for h in heads)])
        ax.set_yticklabels(["shared", *(f"{h} branch" for h in heads)], fontsize=7)
        ax.set_ylim(-0.6 - len(heads), top + 0.15)
        ax.set_xlim(-0.8, n - 0.2)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    axes[-1].set_xticks(range(n))
    axes[-1].set_xticklabels([e["name"] for e in layers], rotation=90, fontsize=7)
    from matplotlib.cm import ScalarMappable

    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=list(axes), shrink=0.6,
                       pad=0.01)
    bar.set_label(f"gradient norm ({report['mode']}); hollow = exactly 0", fontsize=8)
    fig.suptitle(f"{report.get('recipe') or 'model'}: backward path of each head's loss",
                 fontsize=10)
    return fig


def conflict_figure(report: Mapping[str, Any]):
    """Left: cosine between heads' gradients over the whole shared trunk (negative = conflict).
    Right: the same cosine per shared layer, one row per pair of heads."""
    from matplotlib import colormaps

    heads = report["heads"]
    k = len(heads)
    shared = [e for e in report["layers"] if e["owner"] == SHARED]
    pairs = list(report["cosine"])
    cmap = colormaps["RdBu"].with_extremes(bad="0.85")
    fig = _figure(max(8.0, 3.5 + 0.17 * len(shared)), max(3.6, 1.2 + 0.6 * k))
    left, right = fig.subplots(1, 2, width_ratios=[max(k, 2), max(len(shared), 1) * 0.45])
    matrix = np.full((k, k), np.nan)
    for i, a in enumerate(heads):
        for j, b in enumerate(heads):
            if i == j:
                matrix[i, j] = 1.0 if report["trunk"]["grad_norm"][a] > 0 else np.nan
                continue
            key = f"{a}|{b}" if i < j else f"{b}|{a}"
            value = report["cosine"].get(key)
            matrix[i, j] = np.nan if value is None else value
    image = left.imshow(np.ma.masked_invalid(matrix), cmap=cmap, vmin=-1, vmax=1)
    for i in range(k):
        for j in range(k):
            value = matrix[i, j]
            text = ("n/a" if np.isnan(value) else
                    f"{value:+.3f}" if abs(value) < 0.01 else f"{value:+.2f}")
            if not np.isnan(value) and value < 0:
                text += "\nconflict"
            left.text(j, i, text, ha="center", va="center", fontsize=8,
                      color="white" if not np.isnan(value) and abs(value) > 0.6 else "black")
    left.set_xticks(range(k))
    left.set_xticklabels(heads, rotation=30, fontsize=8)
    left.set_yticks(range(k))
    left.set_yticklabels(heads, fontsize=8)
    left.set_title("cosine on the shared trunk", fontsize=9)
    if pairs and shared:
        strip = np.array([[np.nan if e["cosine"].get(p) is None else e["cosine"][p]
                           for e in shared] for p in pairs], dtype=float)
        right.imshow(np.ma.masked_invalid(strip), cmap=cmap, vmin=-1, vmax=1, aspect="auto")
        right.set_yticks(range(len(pairs)))
        right.set_yticklabels(pairs, fontsize=8)
        right.set_xticks(range(len(shared)))
        right.set_xticklabels([e["name"] for e in shared], rotation=90, fontsize=7)
        right.set_title("cosine per shared layer (grey: a head does not reach it)", fontsize=9)
    else:
        right.axis("off")
        right.text(0.5, 0.5, "one head only: no pairs to compare", ha="center",
                   transform=right.transAxes)
    bar = fig.colorbar(image, ax=[left, right], shrink=0.8, pad=0.01)
    bar.set_label("cosine (−1 opposing, 0 unrelated, +1 aligned)", fontsize=8)
    fig.suptitle(f"{report.get('recipe') or 'model'}: do the heads agree on the shared trunk?",
                 fontsize=10)
    return fig


_FIGURE_MAKERS = {"norms": norms_figure, "network": network_figure,
                  "conflict": conflict_figure}


def figure_png(fig, *, dpi: int = 100) -> tuple[bytes, int, int]:
    """(PNG bytes, height, width) of a figure."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    data = buffer.getvalue()
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return data, height, width


# ---------------------------------------------------------------------------------------------
# Files.


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
        for name, make in _FIGURE_MAKERS.items():
            fig = make(report)
            for ext in images:
                path = os.path.join(out, f"{prefix}_{name}.{ext}")
                fig.savefig(path, dpi=120)
                written.append(path)
    return written


# ---------------------------------------------------------------------------------------------
# From a recipe: what tools/gradflow runs.


class GradflowError(ValueError):
    """The tool cannot run as asked (a run directory without weights, too many batches...)."""


def _load_run_weights(model: keras.Model, recipe, run_dir: str) -> str:
    """Loads a run's trained weights (``model.keras``, else its latest checkpoint)."""
    from multiseg.callbacks import latest_checkpoint
    from multiseg.models.build import compile_model

    model_path = os.path.join(run_dir, "model.keras")
    try:
        if os.path.isfile(model_path):
            import multiseg

            model.set_weights(multiseg.load_model(model_path, compile=False).get_weights())
            return model_path
        found = latest_checkpoint(os.path.join(run_dir, "checkpoints"))
        if found is None:
            raise GradflowError(f"{run_dir}: neither model.keras nor a checkpoint to load")
        compile_model(model, recipe)
        model.optimizer.build(model.trainable_variables)
        model.load_weights(found[2])
        return found[2]
    except GradflowError:
        raise
    except (ValueError, OSError) as exc:
        raise GradflowError(f"{run_dir}: its weights do not fit this recipe's model ({exc});"
                            " give the run's own recipe (or no recipe: the run's recipe.yaml"
                            " is used)") from None


def recipe_report(recipe, *, run_dir: str | None = None, batches: int = 1,
                  mode: str = "weighted", data=None) -> dict[str, Any]:
    """Builds the recipe's model (with a run's weights if ``run_dir``) and measures each head's
    gradients on the first ``batches`` training batches (epoch 0, augmented as in training).

    Raises:
        GradflowError: ``batches`` out of range, or a run whose weights cannot be loaded.
    """
    from multiseg.data import build_data
    from multiseg.models.build import build_model, head_losses

    if batches < 1:
        raise GradflowError(f"--batches must be at least 1, got {batches}")
    keras.utils.set_random_seed(recipe.seed)
    if data is None:
        data = build_data(recipe, frequencies=False)
    if batches > len(data.train):
        raise GradflowError(f"--batches {batches}: the training set has only"
                            f" {len(data.train)} batches of {recipe.train.batch_size}")
    model = build_model(recipe, channels=data.channels)
    if run_dir is not None:
        _load_run_weights(model, recipe, run_dir)
    probe = GradientProbe(model, head_losses(recipe),
                          {h: s.loss_weight for h, s in recipe.heads.items()})
    grads = probe.mean_gradients(data.train.batch(0, i) for i in range(batches))
    return summarise(grads, learning_rate=recipe.train.optimizer.learning_rate, mode=mode,
                     optimizer=recipe.train.optimizer.name, recipe=recipe.name)


# ---------------------------------------------------------------------------------------------
# During training.


class GradflowLogger(keras.callbacks.Callback):
    """Per-head gradient snapshots into TensorBoard every ``every`` training steps.

    Each snapshot probes one fixed batch (the same one every time, so snapshots compare over
    training) with the model's current weights: one forward pass, one backward pass per head,
    nothing assigned (batch-norm statistics and the random state are untouched). It writes into
    the TensorBoard run ``<logdir>/gradflow``, beside Keras's ``train`` and ``validation``:

    - scalars ``attach_norm/<head>`` (the head's gradient norm at its last shared layer: the
      shared/branch boundary, what GradNorm balances), ``trunk_norm/<head>``,
      ``branch_norm/<head>``, ``cosine/<a>|<b>`` (over the shared trunk), ``loss/<head>``
      (raw loss on the probe batch);
    - histograms ``grad_<head>/<layer>`` of the head's gradient values in every layer it
      reaches;
    - the norms chart as the image ``charts/grad_norm`` and the text table as ``table``;
    - ``gradflow.jsonl``: one ``gradflow.json`` document per snapshot, one per line.

    Args:
        losses: ``{head: keras Loss}``; loss_weights: ``{head: w}``.
        batch: the probe batch ``(images, {head: target})``.
        every: steps between snapshots (at global steps ``every``, ``2 * every``...).
        logdir: the run's TensorBoard directory (``<run>/logs``).
        mode: ``weighted`` or ``raw`` gradients in the norms and histograms.
        histograms, image: write the histograms and the chart image (the costly parts).
    """

    def __init__(self, *, losses: Mapping[str, Any], loss_weights: Mapping[str, float],
                 batch: tuple, every: int, logdir: str, mode: str = "weighted",
                 histograms: bool = True, image: bool = True, recipe: str | None = None,
                 optimizer: str | None = None):
        super().__init__()
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        if mode not in ("weighted", "raw"):
            raise ValueError(f"mode must be 'weighted' or 'raw', got '{mode}'")
        self.losses = dict(losses)
        self.loss_weights = dict(loss_weights)
        self.batch = batch
        self.every = int(every)
        self.logdir = os.path.join(os.fspath(logdir), "gradflow")
        self.mode = mode
        self.histograms = histograms
        self.image = image
        self.recipe = recipe
        self.optimizer_name = optimizer
        self.step = 0
        self.seconds = 0.0  # time spent in snapshots (for the overhead benchmark)
        self.reports: list[dict] = []  # step and trunk figures of each snapshot, kept small
        self.last_report: dict | None = None
        self._probe: GradientProbe | None = None
        self._writer = None

    @classmethod
    def from_recipe(cls, recipe, *, data, logdir: str, every: int | None = None,
                    **options) -> GradflowLogger:
        """The logger ``train.gradflow.every`` asks for (``every`` overrides it); it probes
        the first training batch of epoch 0. ``options``: ``mode``, ``histograms``, ``image``.
        """
        from multiseg.models.build import head_losses

        images, targets = data.train.batch(0, 0)
        return cls(losses=head_losses(recipe),
                   loss_weights={h: s.loss_weight for h, s in recipe.heads.items()},
                   batch=(np.asarray(images), {h: np.asarray(targets[h]) for h in recipe.heads}),
                   every=recipe.train.gradflow.every if every is None else every,
                   logdir=logdir, recipe=recipe.name, optimizer=recipe.train.optimizer.name,
                   **options)

    def _get_writer(self):
        if self._writer is None:
            from multiseg.tblog import SummaryWriter

            self._writer = SummaryWriter(self.logdir)
        return self._writer

    def on_train_begin(self, logs=None):
        self.step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        if self._probe is None or self._probe.model is not self.model:
            self._probe = GradientProbe(self.model, self.losses, self.loss_weights)

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self.step % self.every == 0:
            self.snapshot()

    def snapshot(self) -> dict[str, Any]:
        """Measures now, writes to TensorBoard, returns the report."""
        from multiseg.callbacks import current_learning_rate

        started = time.perf_counter()
        if self._probe is None:
            self._probe = GradientProbe(self.model, self.losses, self.loss_weights)
        grads = self._probe.gradients(*self.batch)
        report = summarise(grads, learning_rate=current_learning_rate(self.model),
                           mode=self.mode, optimizer=self.optimizer_name, recipe=self.recipe,
                           step=self.step)
        self._write(report, grads)
        self.last_report = report
        self.reports.append({"step": self.step, "trunk": report["trunk"],
                             "cosine": report["cosine"], "attach": report["attach"]})
        self.seconds += time.perf_counter() - started
        return report

    def _write(self, report: dict, grads: HeadGradients) -> None:
        writer = self._get_writer()
        step = self.step
        for head in report["heads"]:
            writer.scalar(f"attach_norm/{head}", report["attach"][head]["grad_norm"], step)
            writer.scalar(f"trunk_norm/{head}", report["trunk"]["grad_norm"][head], step)
            writer.scalar(f"branch_norm/{head}", report["branch"][head]["grad_norm"], step)
            writer.scalar(f"loss/{head}", report["loss"][head]["raw"], step)
        for key, value in report["cosine"].items():
            if value is not None:
                writer.scalar(f"cosine/{key}", value, step)
        if self.histograms:
            weighted = self.mode == "weighted"
            for entry in report["layers"]:
                for head in entry["reach"]:
                    writer.histogram(f"grad_{head}/{entry['name']}",
                                     grads.layer_values(head, entry["name"], weighted=weighted),
                                     step)
        if self.image:
            png, height, width = figure_png(norms_figure(report, compact=True), dpi=80)
            writer.image_png("charts/grad_norm", png, step, height=height, width=width)
        writer.text("table", "    " + format_table(report).replace("\n", "\n    "), step)
        with open(os.path.join(self.logdir, "gradflow.jsonl"), "a", encoding="utf-8") as handle:
            handle.write(json.dumps({k: v for k, v in report.items() if k != "graph"}) + "\n")
        writer.flush()

    def on_train_end(self, logs=None):
        self.close()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
