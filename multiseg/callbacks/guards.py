"""Guards: a non-finite loss is named and stops (or skips) training; Ctrl-C checkpoints first."""

from __future__ import annotations

import signal
import threading

import keras
import numpy as np

from multiseg.callbacks.checkpoints import AtomicCheckpoint
from multiseg.callbacks.logs import split_log_key
from multiseg.callbacks.steps import StepCounting
from multiseg.errors import TrainingStopped


class NonFiniteLoss(RuntimeError, TrainingStopped):
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


class NonFiniteGuard(StepCounting):
    """Watches every step's loss. On NaN/Inf, names the head and loss term and the step.

    ``mode="stop"`` ends training, keeps the last good checkpoint (the cut epoch is not saved)
    and leaves the message in ``self.failure``. ``mode="skip"`` restores the weights and
    optimizer state from before the bad step and goes on, up to ``max_skipped`` steps in a row.

    It takes the step's logs as device arrays (``multiseg.callbacks.dispatch``). To stop, it
    reads a step's loss at the end of the next step, whose dispatch then has not waited for
    it: a bad step is named exactly, and training stops one step later, which changes
    nothing kept since the cut epoch is not saved. The last step of an epoch is read at once,
    before validation and the epoch's checkpoint; skipping reads every step at once, since
    it must undo the step before the next one.
    """

    takes_device_logs = True

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
        self._unread = None  # (epoch, first batch, last batch, logs) of a call not yet read
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def _variables(self):
        return list(self.model.variables) + list(self.model.optimizer.variables)

    def on_train_batch_begin(self, batch, logs=None):
        super().on_train_batch_begin(batch, logs)
        if self.mode == "skip":
            self._snapshot = [keras.ops.convert_to_numpy(v) for v in self._variables()]

    def on_train_batch_end(self, batch, logs=None):
        call = (self.epoch, self.first_batch(batch), batch, logs or {})
        self._read_unread(steps_since=batch - call[1] + 1)
        if self.failure:
            return
        if self.mode == "skip" or batch + 1 == (self.params or {}).get("steps"):
            self._check(*call, steps_since=0)
        else:
            self._unread = call

    def on_epoch_end(self, epoch, logs=None):
        # An epoch that another callback cut short ends on a call not read yet.
        self._read_unread(steps_since=0)

    def _read_unread(self, *, steps_since: int) -> None:
        if self._unread is not None:
            unread, self._unread = self._unread, None
            self._check(*unread, steps_since=steps_since)

    def _check(self, epoch: int, first: int, batch: int, logs: dict, *,
               steps_since: int) -> None:
        """Reads the loss of the call of batches ``first..batch``; ``steps_since``: the
        training steps run after it."""
        if _finite(logs.get("loss", 0.0)):
            self._in_a_row = 0
            return
        step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations)) - steps_since
        culprits = nonfinite_culprits(logs, self.heads) or ["no single head (the total)"]
        # Several steps per call (train.steps_per_execution): the loss is their running mean.
        where = (f"epoch {epoch + 1}, step {batch + 1} (global step {step})"
                 if first == batch else f"epoch {epoch + 1}, one of steps {first + 1} to"
                 f" {batch + 1} (global steps {step - batch + first} to {step})")
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


class InterruptGuard(keras.callbacks.Callback):
    """First Ctrl-C (SIGINT): finish the current step, checkpoint it, stop. A second one
    interrupts at once."""

    takes_device_logs = True  # it reads no logs

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
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)

    def on_train_end(self, logs=None):
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
