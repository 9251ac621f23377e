"""The gradient-flow logger: per-head gradient snapshots into TensorBoard during training
(``train.gradflow.every`` in the recipe; what they show: ``docs/gradflow.md``)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from typing import Any

import keras
import numpy as np

from multiseg.callbacks.logs import current_learning_rate
from multiseg.callbacks.steps import StepCounting, crossed
from multiseg.gradflow.figures import figure_png, norms_figure
from multiseg.gradflow.table import format_table
from multiseg.gradients import GradientProbe, HeadGradients, summarise
from multiseg.models.build import head_losses
from multiseg.tblog import SummaryWriter
from multiseg.weighting.model import current_weights


class GradflowLogger(StepCounting):
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

    takes_device_logs = True  # it reads no logs (multiseg.callbacks.dispatch)

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
        images, targets = data.train.batch(0, 0)
        return cls(losses=head_losses(recipe),
                   loss_weights={h: s.loss_weight for h, s in recipe.heads.items()},
                   batch=(np.asarray(images), {h: np.asarray(targets[h]) for h in recipe.heads}),
                   every=recipe.train.gradflow.every if every is None else every,
                   logdir=logdir, recipe=recipe.name, optimizer=recipe.train.optimizer.name,
                   **options)

    def _get_writer(self):
        if self._writer is None:
            self._writer = SummaryWriter(self.logdir)
        return self._writer

    def on_train_begin(self, logs=None):
        self.step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        if self._probe is None or self._probe.model is not self.model:
            self._probe = GradientProbe(self.model, self.losses, self.loss_weights)

    def on_train_batch_end(self, batch, logs=None):
        before, self.step = self.step, self.step + self.steps_in_call(batch)
        if crossed(before, self.step, self.every):
            self.snapshot()

    def snapshot(self) -> dict[str, Any]:
        """Measures now, writes to TensorBoard, returns the report."""
        started = time.perf_counter()
        if self._probe is None:
            self._probe = GradientProbe(self.model, self.losses, self.loss_weights)
        effective = current_weights(self.model)
        if effective is not None:
            # A learned weighting: the weighted norms are those of the weights in force now.
            self._probe.loss_weights = {h: effective[h] for h in self._probe.loss_weights}
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
