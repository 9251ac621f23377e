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
        self.preview = preview  # (images, targets, [spatial heads]) drawn each epoch
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
        images, targets, kinds = self.preview
        outputs = self.model.predict(images, verbose=0)
        rows = []
        for i in range(images.shape[0]):
            tiles = [_to_rgb(images[i])]
            for head in kinds:
                prediction = np.asarray(outputs[head][i])
                tiles.append(_colour_target(np.asarray(targets[head][i]), prediction.shape[-1]))
                tiles.append(_colour_prediction(prediction))
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


_PALETTE = np.array([[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200],
                     [245, 130, 48], [145, 30, 180], [70, 240, 240], [240, 50, 230],
                     [210, 245, 60]], dtype=np.float32) / 255


def _to_rgb(image: np.ndarray) -> np.ndarray:
    image = np.clip(np.asarray(image, np.float32), 0, 1)
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    return image[..., :3]


def _colour_target(target: np.ndarray, channels: int) -> np.ndarray:
    labels = target[..., 0].astype(int)
    if channels == 1:
        return np.repeat(labels[..., None].astype(np.float32), 3, axis=-1)
    return _PALETTE[labels % len(_PALETTE)]


def _colour_prediction(logits: np.ndarray) -> np.ndarray:
    """Class colours for a multi-class map, grey levels of the probability for one channel."""
    if logits.shape[-1] == 1:
        prob = 1 / (1 + np.exp(-logits[..., 0]))
        return np.repeat(prob[..., None], 3, axis=-1)
    classes = np.argmax(logits, axis=-1)
    return _PALETTE[classes % len(_PALETTE)]


CHECKPOINT_PATTERN = re.compile(r"^epoch-(\d+)(?:-step-(\d+))?\.weights\.h5$")


class CheckpointWriteError(OSError):
    """A checkpoint or result file could not be written (full disk, permissions); names it."""


def write_json_atomic(path: str, data) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        _discard(tmp)
        raise CheckpointWriteError(f"cannot write {path}: {exc.strerror or exc}") from None


def _discard(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


class AtomicCheckpoint(keras.callbacks.Callback):
    """Saves weights and optimizer state after every epoch, never leaving a half-written file.

    Weights go to a temporary file that is renamed into place; then ``state.json`` (completed
    epochs, steps done in the next epoch, the file name) is replaced the same way. Only a
    checkpoint named by ``state.json`` is loaded, so a run killed mid-write resumes from the
    previous one. An epoch cut short (interrupt, non-finite loss) is not recorded as complete:
    set ``hold_epoch`` and, for an interrupt, call :meth:`save` with the step reached.
    """

    def __init__(self, directory: str, *, keep: int = 2):
        super().__init__()
        self.directory = directory
        self.keep = keep
        self.hold_epoch = False
        self.last_saved: tuple[int, int, str] | None = None

    def save(self, completed_epochs: int, step: int = 0) -> str:
        os.makedirs(self.directory, exist_ok=True)
        name = f"epoch-{completed_epochs:04d}" + (f"-step-{step:06d}" if step else "")
        name += ".weights.h5"
        final = os.path.join(self.directory, name)
        tmp = os.path.join(self.directory, f"tmp-{os.getpid()}-{name}")
        try:
            self.model.save_weights(tmp)
            os.replace(tmp, final)
        except OSError as exc:
            _discard(tmp)
            raise CheckpointWriteError(f"cannot write checkpoint {final}:"
                                       f" {exc.strerror or exc}") from None
        write_json_atomic(os.path.join(self.directory, "state.json"),
                          {"epoch": completed_epochs, "step": step, "weights": name,
                           "rng": rng_state(self.model)})
        self.last_saved = (completed_epochs, step, final)
        self._prune(keep_name=name)
        return final

    def _prune(self, keep_name: str) -> None:
        names = [f for f in os.listdir(self.directory) if CHECKPOINT_PATTERN.match(f)]
        names.sort(key=lambda f: tuple(int(g or 0) for g in CHECKPOINT_PATTERN.match(f).groups()),
                   reverse=True)
        for old in [n for n in names if n != keep_name][self.keep - 1 :]:
            _discard(os.path.join(self.directory, old))
        for leftover in os.listdir(self.directory):
            if leftover.startswith("tmp-") or ".tmp-" in leftover:
                _discard(os.path.join(self.directory, leftover))

    def on_epoch_end(self, epoch, logs=None):
        if self.hold_epoch:
            return
        self.save(epoch + 1)


def seed_states(model: keras.Model) -> list:
    return [v for v in model.non_trainable_variables if "seed_generator_state" in v.path]


def rng_state(model: keras.Model) -> list[list[int]]:
    """The states of the model's random generators (dropout...), which weight files leave out,
    in model order (their variable names depend on how many models the process has built)."""
    return [np.asarray(v).tolist() for v in seed_states(model)]


def restore_rng_state(model: keras.Model, directory: str, weights_path: str) -> bool:
    """Restores the generator states saved with ``weights_path``; False if none were saved
    (an older checkpoint, or ``state.json`` lost: generators then restart from the seed)."""
    try:
        with open(os.path.join(directory, "state.json"), encoding="utf-8") as handle:
            state = json.load(handle)
    except (OSError, ValueError):
        return False
    if not isinstance(state, dict) or state.get("weights") != os.path.basename(weights_path):
        return False
    saved, variables = state.get("rng"), seed_states(model)
    if not isinstance(saved, list) or len(saved) != len(variables):
        return False
    for variable, value in zip(variables, saved, strict=True):
        variable.assign(np.asarray(value, dtype=variable.dtype))
    return True


def latest_checkpoint(directory: str) -> tuple[int, int, str] | None:
    """(completed epochs, steps into the next epoch, weights path) of the last good checkpoint.

    ``state.json`` names it; if that file is missing or unreadable, the newest complete
    ``epoch-*.weights.h5`` is used (those only appear by rename, so they are whole).
    """
    if not os.path.isdir(directory):
        return None
    state_path = os.path.join(directory, "state.json")
    try:
        with open(state_path, encoding="utf-8") as handle:
            state = json.load(handle)
        path = os.path.join(directory, state["weights"])
        if os.path.exists(path):
            return int(state["epoch"]), int(state.get("step", 0)), path
    except (OSError, ValueError, KeyError, TypeError):
        pass
    found = []
    for name in os.listdir(directory):
        match = CHECKPOINT_PATTERN.match(name)
        if match:
            found.append((int(match.group(1)), int(match.group(2) or 0), name))
    if not found:
        return None
    epoch, step, name = max(found)
    return epoch, step, os.path.join(directory, name)


class NonFiniteLoss(RuntimeError):
    """Training stopped because a loss became NaN or infinite; the message names the culprit."""


def _finite(value) -> bool:
    try:
        return bool(np.isfinite(float(value)))
    except (TypeError, ValueError):
        return True


def nonfinite_culprits(logs: dict, heads) -> list[str]:
    """The heads and loss terms whose running value is NaN/Inf: ``["boundary (term tversky)"]``."""
    found = []
    for head in heads:
        value = logs.get(f"{head}_loss")
        if value is None or _finite(value):
            continue
        terms = [key[len(head) + 1 : -len("_term")] for key, v in logs.items()
                 if key.startswith(f"{head}_") and key.endswith("_term")
                 and split_log_key(key, heads)[0] == head and not _finite(v)]
        detail = f" (term{'s' if len(terms) > 1 else ''} {', '.join(terms)})" if terms else ""
        found.append(f"'{head}'{detail}: {float(value)}")
    return found


class NonFiniteGuard(keras.callbacks.Callback):
    """Watches every step's loss. On NaN/Inf, names the head and loss term and the step.

    ``mode="stop"`` ends training, keeps the last good checkpoint (the cut epoch is not saved)
    and leaves the message in ``self.failure``. ``mode="skip"`` restores the weights and
    optimizer state from before the bad step and goes on, up to ``max_skipped`` steps in a row.
    """

    def __init__(self, heads, checkpoint: AtomicCheckpoint, *, mode: str = "stop",
                 max_skipped: int = 10):
        super().__init__()
        self.heads = list(heads)
        self.checkpoint = checkpoint
        self.mode = mode
        self.max_skipped = max_skipped
        self.failure: str | None = None
        self.skipped: list[int] = []
        self._in_a_row = 0
        self._snapshot = None
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def _variables(self):
        return list(self.model.variables) + list(self.model.optimizer.variables)

    def on_train_batch_begin(self, batch, logs=None):
        if self.mode == "skip":
            self._snapshot = [keras.ops.convert_to_numpy(v) for v in self._variables()]

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        if _finite(logs.get("loss", 0.0)):
            self._in_a_row = 0
            return
        step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        culprits = nonfinite_culprits(logs, self.heads) or ["no single head (the total)"]
        where = f"epoch {self.epoch + 1}, step {batch + 1} (global step {step})"
        if self.mode == "skip" and self._snapshot is not None:
            for variable, value in zip(self._variables(), self._snapshot, strict=False):
                variable.assign(value)
            self.model.reset_metrics()
            self.skipped.append(step)
            self._in_a_row += 1
            print(f"\nskipped a non-finite step at {where}: {'; '.join(culprits)}", flush=True)
            if self._in_a_row < self.max_skipped:
                return
        saved = self.checkpoint.last_saved
        keep = (f"the last good checkpoint is {saved[2]}" if saved else
                "no checkpoint was written before it")
        self.failure = (f"non-finite loss at {where} in head {'; '.join(culprits)}."
                        f" Training stopped; {keep}."
                        + (f" {self._in_a_row} steps in a row were skipped."
                           if self.mode == "skip" else ""))
        self.checkpoint.hold_epoch = True
        self.model.stop_training = True


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training, after the current step was checkpointed."""


class InterruptGuard(keras.callbacks.Callback):
    """First Ctrl-C (SIGINT): finish the current step, checkpoint it, stop. A second one
    interrupts at once."""

    def __init__(self, checkpoint: AtomicCheckpoint):
        super().__init__()
        self.checkpoint = checkpoint
        self.requested = False
        self.saved_path: str | None = None
        self._previous = None
        self.epoch = 0
        self.start_step = 0  # steps already done in the first epoch (when resuming mid-epoch)

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\ninterrupt: stopping after this step (Ctrl-C again to stop at once)",
              flush=True)

    def on_train_begin(self, logs=None):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)

    def on_train_end(self, logs=None):
        import signal

        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def on_epoch_begin(self, epoch, logs=None):
        if self.epoch != epoch:
            self.start_step = 0
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.requested and self.saved_path is None:
            self.checkpoint.hold_epoch = True
            self.saved_path = self.checkpoint.save(self.epoch, self.start_step + batch + 1)
            self.model.stop_training = True
