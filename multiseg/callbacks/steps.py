"""Step counting for callbacks when Keras runs several training steps per call
(``train.steps_per_execution``): a callback then sees the first batch of a call in
``on_train_batch_begin`` and its last in ``on_train_batch_end``."""

from __future__ import annotations

import keras


class StepCounting(keras.callbacks.Callback):
    """Base of the callbacks that count steps or act every N steps."""

    _first_batch: int | None = None

    def on_train_batch_begin(self, batch, logs=None):
        self._first_batch = batch

    def first_batch(self, batch: int) -> int:
        """The first batch (within the epoch) of the call that ended at ``batch``."""
        return batch if self._first_batch is None else self._first_batch

    def steps_in_call(self, batch: int) -> int:
        """How many training steps the call that ended at ``batch`` ran."""
        return batch - self.first_batch(batch) + 1


def crossed(before: int, after: int, every: int) -> bool:
    """True when a multiple of ``every`` lies in the steps ``before + 1 .. after`` (every 0:
    never): an every-N-steps action falls due within one call of several steps."""
    return every > 0 and after // every > before // every
