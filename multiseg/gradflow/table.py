"""The gradient-flow report as text: the table ``tools/gradflow`` prints and writes to
``gradflow.txt``, which the training logger also shows in TensorBoard's text tab."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def fmt_value(value: float | None, width: int = 9) -> str:
    """Exact zeros print as ``0``: they mean "does not reach", not "small"."""
    if value is None:
        return "n/a".rjust(width)
    if value == 0.0:
        return "0".rjust(width)
    return f"{value:.3g}".rjust(width)


def head_label(report: Mapping, head: str) -> str:
    extra = ""
    if report["grad_scale"].get(head, 1.0) != 1.0:
        extra = f", grad_scale {report['grad_scale'][head]:g}"
    return f"{head} (w {report['loss_weights'][head]:g}{extra})"


# |cosine| below this: the heads' gradients are unrelated. With gradients of equal norms, a
# cosine c makes their sum sqrt(1 + c) times as long as orthogonal ones would: within +-0.1
# that is within 5%, too little to say that one head helps or hinders the other. (PCGrad-style
# methods act on any negative cosine; this threshold is for reading a report.)
UNRELATED_BELOW = 0.1


def cosine_verdict(value: float | None) -> str:
    """``agree`` (>= 0.1), ``unrelated`` (within +-0.1) or ``CONFLICT`` (<= -0.1)."""
    if value is None:
        return "undefined: one head sends no gradient into the trunk"
    if value <= -UNRELATED_BELOW:
        return "CONFLICT (opposing directions)"
    if value < UNRELATED_BELOW:
        return "unrelated (nearly orthogonal)"
    return "agree"


def format_table(report: Mapping[str, Any]) -> str:
    """The terminal table: per layer and head the gradient norm, then trunk norms and cosines.

    Cosines on the shared trunk are labelled with ``cosine_verdict``.
    """
    heads = report["heads"]
    what = ("weighted gradients w_h * dL_h/dθ" if report["mode"] == "weighted"
            else "raw gradients dL_h/dθ")
    step = f", step {report['step']}" if report.get("step") is not None else ""
    lines = [f"gradflow: {report.get('recipe') or 'model'}{step}: {what}, mean over"
             f" {report['batches']} batch{'es' if report['batches'] != 1 else ''}"
             f" ({report['samples']} samples), backend {report['backend']}"]
    lines.append("heads: " + "; ".join(
        f"{head_label(report, h)} loss {report['loss'][h]['raw']:.4g}" for h in heads))
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
                     + "  ".join(fmt_value(entry["grad_norm"][h], col) for h in heads) + "  "
                     + fmt_value(entry["grad_norm_total"], col) + mark)
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
                     + "  ".join(fmt_value(v, col) for v in values))
    lines.append("attach layers: " + ", ".join(
        f"{h} {report['attach'][h]['layer']}" for h in heads))
    if len(heads) > 1:
        lines.append("")
        lines.append("cosine between heads' gradients on the shared trunk"
                     " (all shared layers | the shared layers both reach):")
        for key, value in report["cosine"].items():
            common = report["cosine_common"][key]
            verdict = cosine_verdict(value)
            value_text = "n/a" if value is None else f"{value:+.3f}"
            common_text = "n/a" if common is None else f"{common:+.3f}"
            lines.append(f"  {key:<{2 * col + 1}}  {value_text:>7} | {common_text:>7}  {verdict}")
        layer_conflicts = {}
        for entry in report["layers"]:
            for key, value in entry["cosine"].items():
                if value is not None and value <= -UNRELATED_BELOW:
                    layer_conflicts.setdefault(key, []).append(entry["name"])
        for key in report["cosine"]:
            names = layer_conflicts.get(key, [])
            shared = sum(1 for e in report["layers"] if e["cosine"].get(key) is not None)
            if names:
                worst = min(names, key=lambda name: next(
                    e["cosine"][key] for e in report["layers"] if e["name"] == name))
                lines.append(f"  {key}: conflict (cosine <= -{UNRELATED_BELOW:g}) on {len(names)}"
                             f" of {shared}"
                             f" shared layers, most at {worst}")
    return "\n".join(lines)
