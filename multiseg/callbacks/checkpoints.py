"""Checkpoints and result files, written atomically: a file is either whole or absent."""

from __future__ import annotations

import json
import os

import keras
import numpy as np

from multiseg.errors import UserError
from multiseg.runs import CHECKPOINT_PATTERN
from multiseg.startup import tensorflow_left_out


class CheckpointWriteError(OSError, UserError):
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


def save_model_atomic(model: keras.Model, path: str) -> None:
    """Saves ``model`` to ``path`` (``.keras``) by way of a temporary file renamed into place."""
    tmp = f"{path[: -len('.keras')]}.tmp-{os.getpid()}.keras"
    try:
        with tensorflow_left_out():  # Keras asks TensorFlow about the objects it saves
            model.save(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise CheckpointWriteError(f"cannot write {path}: {exc.strerror or exc}") from None
