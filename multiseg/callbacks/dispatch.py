"""The callback list of multiseg's training: Keras's, less its wait for the device after
every training step.

Before it calls any callback that acts on every batch, Keras turns the step's logs into
Python numbers, and reading a number waits for the step to finish. Meanwhile the host cannot
queue the next step, and on a GPU the device idles through the callbacks' work, the next
batch and the next dispatch. A callback whose class sets ``takes_device_logs = True``
receives the logs as the backend's arrays instead, and reads a value only when it uses it
(a progress line, a logged step, the non-finite check of the step before); the rest get
numbers, as from Keras, read once per step for all of them.
"""

from __future__ import annotations

import keras


def to_numbers(logs: dict | None) -> dict:
    """``logs`` flattened, each scalar as a Python float (others kept as they are): what
    Keras hands a callback."""
    result = {}
    for key, value in sorted((logs or {}).items()):
        if isinstance(value, dict):
            result.update(to_numbers(value))
            continue
        try:
            if keras.ops.is_tensor(value):
                value = keras.ops.convert_to_numpy(value)
            value = float(value)
        except (TypeError, ValueError):
            pass  # not a scalar: kept as it is, as Keras does
        result[key] = value
    return result


def _acts_on_train_batch_end(callback) -> bool:
    base = keras.callbacks.Callback
    kind = type(callback)
    return (kind.on_train_batch_end is not base.on_train_batch_end
            or kind.on_batch_end is not base.on_batch_end)


class DeviceLogCallbacks(keras.callbacks.CallbackList):
    """Keras's ``CallbackList`` for ``fit``, whose training-batch ends hand device logs to
    the callbacks that take them (see the module). Made as ``fit`` would make it:
    ``DeviceLogCallbacks(callbacks, model=model, epochs=E, steps=S)``, with a history
    (``fit`` returns it) and no Keras progress bar."""

    def __init__(self, callbacks, *, model, epochs: int, steps: int):
        super().__init__(callbacks, add_history=True, add_progbar=False, model=model,
                         verbose=0, epochs=epochs, steps=steps)
        self._async_train = False  # the batch ends run in order, on this thread
        # (callback, whether it takes device logs), in the list's order, decided once: the
        # ones that act on no batch end are left out.
        self._batch_ends = [(c, getattr(c, "takes_device_logs", False)) for c in self.callbacks
                            if _acts_on_train_batch_end(c)]
        self._needs_numbers = not all(device for _, device in self._batch_ends)

    def _on_train_batch_end(self, batch, logs=None):
        numbers = to_numbers(logs) if self._needs_numbers else None
        for callback, device in self._batch_ends:
            callback.on_train_batch_end(batch, logs=logs if device else numbers)
