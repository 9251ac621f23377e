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

Modules: ``table`` (the text), ``figures`` (the charts), ``report`` (a recipe's report and its
files: what ``tools/gradflow`` runs). During training, ``multiseg.callbacks.GradflowLogger``
writes the same measurements to TensorBoard every N steps (``train.gradflow.every``).
"""

from multiseg.gradflow.figures import (
    FIGURES,
    conflict_figure,
    figure_png,
    head_colour,
    network_figure,
    norms_figure,
)
from multiseg.gradflow.report import (
    FORMATS,
    GradflowError,
    parse_formats,
    recipe_report,
    write_report,
)
from multiseg.gradflow.table import format_table

__all__ = [
    "FIGURES", "FORMATS", "GradflowError", "conflict_figure", "figure_png", "format_table",
    "head_colour", "network_figure", "norms_figure", "parse_formats", "recipe_report",
    "write_report",
]
