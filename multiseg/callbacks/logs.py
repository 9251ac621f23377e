"""Training logs: each head's figures grouped under its name, in the printed logs, the
history (``metrics.json``) and TensorBoard."""

from __future__ import annotations

import os

import keras
import numpy as np

from multiseg.callbacks.pictures import colour_prediction, colour_target, to_rgb
from multiseg.callbacks.steps import StepCounting, crossed
from multiseg.distribute.engines import predict_batch
from multiseg.tblog import SummaryWriter
from multiseg.weighting.model import current_trunk_weights, current_weights


def split_log_key(key: str, heads) -> tuple[str, str]:
    """Maps a Keras log key to (group, name): ``mask_dice`` -> (``mask``, ``dice``).

    The longest matching head name wins, so heads ``mask`` and ``mask_fine`` stay apart.
    """
    for head in sorted(heads, key=len, reverse=True):
        if key.startswith(f"{head}_"):
            return head, key[len(head) + 1 :]
    if key == "loss":
        return "total", "loss"
    if key == "learning_rate":
        return "optimizer", "learning_rate"
    return "other", key


def current_learning_rate(model: keras.Model) -> float:
    optimizer = model.optimizer
    lr = optimizer.learning_rate
    if isinstance(lr, keras.optimizers.schedules.LearningRateSchedule):
        return float(keras.ops.convert_to_numpy(lr(optimizer.iterations)))
    return float(keras.ops.convert_to_numpy(lr))


def nest_logs(logs: dict, heads) -> dict:
    """{"mask_dice": x, "loss": y} -> {"mask": {"dice": x}, "total": {"loss": y}}: the heads in
    the recipe's order, then the total, then the rest (Keras sorts its logs by name)."""
    nested: dict[str, dict] = {}
    for key, value in logs.items():
        group, name = split_log_key(key, heads)
        nested.setdefault(group, {})[name] = float(value)
    first = [*heads, "total"]
    return {**{g: nested[g] for g in first if g in nested},
            **{g: v for g, v in nested.items() if g not in first}}


def weighted_losses(logs: dict, loss_weights: dict[str, float]) -> dict[str, float]:
    """Each head's weighted loss ``w_i * L_i`` as ``<head>_weighted_loss`` (and
    ``val_<head>_weighted_loss``), for the heads whose raw loss ``<head>_loss`` is in ``logs``.

    Keras logs each head's raw loss; with constant weights the mean of the weighted loss is
    the weight times the mean raw loss, so it is exact. A weighting method whose weights
    change logs the exact mean itself: a weighted loss already in ``logs`` is kept.
    """
    found = {}
    for prefix in ("", "val_"):
        for head, weight in loss_weights.items():
            raw = logs.get(f"{prefix}{head}_loss")
            if raw is not None and f"{prefix}{head}_weighted_loss" not in logs:
                found[f"{prefix}{head}_weighted_loss"] = float(raw) * weight
    return found


def epoch_logs(logs: dict, loss_weights: dict[str, float], model: keras.Model) -> dict:
    """What an epoch's logs lack: the weighted losses and the learning rate."""
    return {**weighted_losses(logs, loss_weights),
            "learning_rate": current_learning_rate(model)}


class HeadLogs(keras.callbacks.Callback):
    """Adds each head's weighted loss (``w_i * L_i``) and the learning rate to the epoch's logs,
    which the history (``metrics.json``) records."""

    def __init__(self, loss_weights: dict[str, float]):
        super().__init__()
        self.loss_weights = dict(loss_weights)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs.update(epoch_logs(logs, self.loss_weights, self.model))


class TensorBoardLogs(StepCounting):
    """Writes ``logs/train`` and ``logs/validation`` with tags grouped by head.

    Tags: ``<head>/loss`` (raw), ``<head>/weighted_loss``, ``<head>/<term>_term`` (each loss
    term), ``<head>/<metric>``, ``<head>/loss_weight``, ``total/loss``,
    ``optimizer/learning_rate``. Train scalars are also written every ``every_steps`` steps
    under ``step/`` tags.

    It computes the weighted losses and the learning rate itself (:func:`epoch_logs`) and
    leaves the logs as it found them, so it may run before or after :class:`HeadLogs`.
    """

    # The logs as device arrays (multiseg.callbacks.dispatch): read at a logged step only.
    takes_device_logs = True

    def __init__(self, logdir: str, heads, loss_weights: dict[str, float], *,
                 every_steps: int = 0, weights_every: int = 0, preview: tuple | None = None):
        super().__init__()
        self.logdir = logdir
        self.heads = list(heads)
        self.loss_weights = dict(loss_weights)
        self.every_steps = every_steps
        # A weighting method's weights (train.weighting): also every this many steps.
        self.weights_every = weights_every
        # (a validation batch, the targets of its first rows, [spatial heads]): those rows
        # drawn each epoch
        self.preview = preview
        self.writers: dict[str, SummaryWriter] = {}
        self.step = 0

    def writer(self, run: str) -> SummaryWriter:
        if run not in self.writers:
            self.writers[run] = SummaryWriter(os.path.join(self.logdir, run))
        return self.writers[run]

    def on_train_begin(self, logs=None):
        self.step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

    def on_train_batch_end(self, batch, logs=None):
        before, self.step = self.step, self.step + self.steps_in_call(batch)
        if crossed(before, self.step, self.weights_every):
            for head, weight in (current_weights(self.model) or {}).items():
                self.writer("train").scalar(f"step/{head}/loss_weight", weight, self.step)
            for head, weight in (current_trunk_weights(self.model) or {}).items():
                self.writer("train").scalar(f"step/{head}/trunk_weight", weight, self.step)
        if logs and crossed(before, self.step, self.every_steps):
            writer = self.writer("train")
            for key, value in logs.items():
                group, name = split_log_key(key, self.heads)
                writer.scalar(f"step/{group}/{name}", float(value), self.step)

    def on_epoch_end(self, epoch, logs=None):
        logs = {**(logs or {}), **epoch_logs(logs or {}, self.loss_weights, self.model)}
        step = epoch + 1
        train, val = self.writer("train"), self.writer("validation")
        for key, value in logs.items():
            if not np.isscalar(value) and np.ndim(value) != 0:
                continue
            target = val if key.startswith("val_") else train
            group, name = split_log_key(key.removeprefix("val_"), self.heads)
            target.scalar(f"{group}/{name}", float(value), step)
        for head, weight in (current_weights(self.model) or self.loss_weights).items():
            train.scalar(f"{head}/loss_weight", weight, step)
        for head, weight in (current_trunk_weights(self.model) or {}).items():
            train.scalar(f"{head}/trunk_weight", weight, step)
        if self.preview is not None:
            self._write_preview(val, step)
        for writer in self.writers.values():
            writer.flush()

    def _write_preview(self, writer: SummaryWriter, step: int) -> None:
        images, targets, kinds = self.preview
        # The whole batch, though fewer images are drawn: the inference-mode check predicts
        # batches of this shape, so the two share one compiled function.
        outputs = predict_batch(self.model, images)
        rows = []
        for i in range(len(targets[kinds[0]])):
            tiles = [to_rgb(images[i])]
            for head in kinds:
                prediction = np.asarray(outputs[head][i])
                tiles.append(colour_target(np.asarray(targets[head][i]), prediction.shape[-1]))
                tiles.append(colour_prediction(prediction))
            rows.append(np.concatenate(tiles, axis=1))
        columns = ["image"] + [f"{head} {part}" for head in kinds for part in ("target", "pred")]
        writer.image("predictions/" + " | ".join(columns), np.concatenate(rows, axis=0), step)

    def on_train_end(self, logs=None):
        for writer in self.writers.values():
            writer.flush()

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()
        self.writers = {}
