"""The gradient-flow report as charts: gradient norms per layer, the backward path of each
head through the network, and the heads' agreement (cosines) on the shared trunk.

Charts use Matplotlib's object API (``matplotlib.figure.Figure``), not ``pyplot``: no global
state, no GUI backend, safe inside a training process.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from multiseg.gradflow.table import UNRELATED_BELOW, fmt_value, head_label
from multiseg.models.naming import SHARED

FIGURES = ("norms", "network", "conflict")
# Colour of each head, in head order (Matplotlib's tab10, which prints and projects well).
_HEAD_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                 "#7f7f7f", "#bcbd22", "#17becf"]


def head_colour(report: Mapping, head: str) -> str:
    return _HEAD_COLOURS[report["heads"].index(head) % len(_HEAD_COLOURS)]


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
        ax.plot(x, shown, "-o", color=colour, ms=3.5, lw=1.2, label=head_label(report, head))
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
        ax.set_title(f"{head_label(report, head)}: reaches {len(reached)} of {n} layers;"
                     f" trunk norm {fmt_value(trunk, 0).strip()}, own branch"
                     f" {fmt_value(report['branch'][head]['grad_norm'], 0).strip()}",
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
            if not np.isnan(value) and value <= -UNRELATED_BELOW:
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


FIGURE_MAKERS = {"norms": norms_figure, "network": network_figure,
                  "conflict": conflict_figure}


def figure_png(fig, *, dpi: int = 100) -> tuple[bytes, int, int]:
    """(PNG bytes, height, width) of a figure."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    data = buffer.getvalue()
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return data, height, width
