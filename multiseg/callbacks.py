"""Training callbacks: per-head TensorBoard logs, atomic checkpoints."""

from __future__ import annotations

import json
import os
import re

import keras
import numpy as np

from multiseg.tblog import SummaryWriter


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


class HeadLogs(keras.callbacks.Callback):
    """Adds each head's weighted loss (``w_i * L_i``) and the learning rate to the logs.

    Keras logs each head's raw loss as ``<head>_loss``; with constant weights the mean of the
    weighted loss is the weight times the mean raw loss, so it is exact.
    """

    def __init__(self, loss_weights: dict[str, float]):
        super().__init__()
        self.loss_weights = dict(loss_weights)

    def _add(self, logs: dict) -> None:
        for prefix in ("", "val_"):
            for head, weight in self.loss_weights.items():
                raw = logs.get(f"{prefix}{head}_loss")
                if raw is not None:
                    logs[f"{prefix}{head}_weighted_loss"] = float(raw) * weight

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            self._add(logs)
            logs["learning_rate"] = current_learning_rate(self.model)


class TensorBoardLogs(keras.callbacks.Callback):
    """Writes ``logs/train`` and ``logs/validation`` with tags grouped by head.

    Tags: ``<head>/loss`` (raw), ``<head>/weighted_loss``, ``<head>/<term>_term`` (each loss
    term), ``<head>/<metric>``, ``<head>/loss_weight``, ``total/loss``,
    ``optimizer/learning_rate``. Train scalars are also written every ``every_steps`` steps
    under ``step/`` tags.
    """

    def __init__(self, logdir: str, heads, loss_weights: dict[str, float], *,
                 every_steps: int = 0, preview: tuple | None = None):
        super().__init__()
        self.logdir = logdir
        self.heads = list(heads)
        self.loss_weights = dict(loss_weights)
        self.every_steps = every_steps
        self.preview = preview  # (images, {head: kind}) drawn each epoch
        self.writers: dict[str, SummaryWriter] = {}
        self.step = 0

    def writer(self, run: str) -> SummaryWriter:
        if run not in self.writers:
            self.writers[run] = SummaryWriter(os.path.join(self.logdir, run))
        return self.writers[run]

    def on_train_begin(self, logs=None):
        self.step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self.every_steps and logs and self.step % self.every_steps == 0:
            writer = self.writer("train")
            for key, value in logs.items():
                group, name = split_log_key(key, self.heads)
                writer.scalar(f"step/{group}/{name}", float(value), self.step)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        step = epoch + 1
        train, val = self.writer("train"), self.writer("validation")
        for key, value in logs.items():
            if not np.isscalar(value) and np.ndim(value) != 0:
                continue
            target = val if key.startswith("val_") else train
            group, name = split_log_key(key.removeprefix("val_"), self.heads)
            target.scalar(f"{group}/{name}", float(value), step)
        for head, weight in self.loss_weights.items():
            train.scalar(f"{head}/loss_weight", weight, step)
        if self.preview is not None:
            self._write_preview(val, step)
        for writer in self.writers.values():
            writer.flush()

    def _write_preview(self, writer: SummaryWriter, step: int) -> None:
        images, kinds = self.preview
        outputs = self.model.predict(images, verbose=0)
        rows = []
        for i in range(images.shape[0]):
            tiles = [_to_rgb(images[i])]
            for head, kind in kinds.items():
                tiles.append(_colour_prediction(np.asarray(outputs[head][i]), kind))
            rows.append(np.concatenate(tiles, axis=1))
        writer.image("predictions/" + "|".join(["image", *kinds]), np.concatenate(rows, axis=0),
                     step)

    def on_train_end(self, logs=None):
        for writer in self.writers.values():
            writer.flush()

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()
        self.writers = {}


_PALETTE = np.array([[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200],
                     [245, 130, 48], [145, 30, 180], [70, 240, 240], [240, 50, 230],
                     [210, 245, 60]], dtype=np.float32) / 255


def _to_rgb(image: np.ndarray) -> np.ndarray:
    image = np.clip(np.asarray(image, np.float32), 0, 1)
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    return image[..., :3]


def _colour_prediction(logits: np.ndarray, kind: str) -> np.ndarray:
    """Class colours for a multi-class map, grey levels of the probability for one channel."""
    if logits.shape[-1] == 1:
        prob = 1 / (1 + np.exp(-logits[..., 0]))
        return np.repeat(prob[..., None], 3, axis=-1)
    classes = np.argmax(logits, axis=-1)
    return _PALETTE[classes % len(_PALETTE)]


CHECKPOINT_PATTERN = re.compile(r"^epoch-(\d+)\.weights\.h5$")


def write_json_atomic(path: str, data) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class AtomicCheckpoint(keras.callbacks.Callback):
    """Saves weights and optimizer state after every epoch, never leaving a half-written file.

    Weights go to a temporary file that is renamed into place; then ``state.json`` (the epoch
    and the file name) is replaced the same way. Only a checkpoint named by ``state.json`` is
    ever loaded, so a run killed mid-write resumes from the previous one.
    """

    def __init__(self, directory: str, *, keep: int = 2):
        super().__init__()
        self.directory = directory
        self.keep = keep

    def on_epoch_end(self, epoch, logs=None):
        os.makedirs(self.directory, exist_ok=True)
        name = f"epoch-{epoch + 1:04d}.weights.h5"
        final = os.path.join(self.directory, name)
        tmp = os.path.join(self.directory, f"tmp-{os.getpid()}-{name}")
        self.model.save_weights(tmp)
        os.replace(tmp, final)
        write_json_atomic(os.path.join(self.directory, "state.json"),
                          {"epoch": epoch + 1, "weights": name})
        kept = sorted((f for f in os.listdir(self.directory) if CHECKPOINT_PATTERN.match(f)),
                      reverse=True)
        for old in kept[self.keep :]:
            os.remove(os.path.join(self.directory, old))


def latest_checkpoint(directory: str) -> tuple[int, str] | None:
    """(completed epochs, weights path) named by ``state.json``, or None."""
    state_path = os.path.join(directory, "state.json")
    if not os.path.exists(state_path):
        return None
    with open(state_path, encoding="utf-8") as handle:
        state = json.load(handle)
    path = os.path.join(directory, state["weights"])
    if not os.path.exists(path):
        return None
    return int(state["epoch"]), path
