"""multiseg's callback list: the callbacks that take device logs get the backend's arrays and
nothing waits for the device on their account; the others get numbers, as from Keras."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras.src.utils.python_utils import pythonify_logs  # Keras's own: the oracle

from multiseg.callbacks.dispatch import DeviceLogCallbacks, to_numbers


class Reading:
    """A log value that counts how often it is read as a number."""

    reads = 0

    def __float__(self):
        Reading.reads += 1
        return 0.25


class Recorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seen = []

    def on_train_batch_end(self, batch, logs=None):
        self.seen.append((batch, logs))


class DeviceRecorder(Recorder):
    takes_device_logs = True


class OnBatchEnd(keras.callbacks.Callback):
    """Keras's older hook name: Keras's default ``on_train_batch_end`` calls it."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def on_batch_end(self, batch, logs=None):
        self.seen.append(logs)


def _batch_end(callbacks, logs):
    listed = DeviceLogCallbacks(callbacks, model=None, epochs=1, steps=1)
    Reading.reads = 0
    listed.on_train_batch_end(0, logs)
    return Reading.reads


def test_device_log_callbacks_read_nothing():
    value = Reading()
    device = DeviceRecorder()
    # Keras's History acts on no batch: it reads nothing either.
    assert _batch_end([device, keras.callbacks.Callback()], {"loss": value}) == 0
    assert device.seen == [(0, {"loss": value})]
    assert device.seen[0][1]["loss"] is value


def test_the_others_get_numbers_read_once_for_all():
    device, plain, older = DeviceRecorder(), Recorder(), OnBatchEnd()
    value = Reading()
    assert _batch_end([device, plain, older], {"loss": value}) == 1
    assert plain.seen == [(0, {"loss": 0.25})] and older.seen == [{"loss": 0.25}]
    assert device.seen[0][1]["loss"] is value


@pytest.mark.parametrize("logs", [
    {"loss": 1.5, "mask": {"dice": np.float32(0.5), "iou": np.array(0.25)}},
    {"b": np.array([1.0, 2.0]), "a": "text", "c": None},
    {},
    None,
])
def test_numbers_are_kerass(logs):
    ours, keras_own = to_numbers(logs), pythonify_logs(logs)
    assert list(ours) == list(keras_own)
    for key in ours:
        assert type(ours[key]) is type(keras_own[key])
        np.testing.assert_array_equal(ours[key], keras_own[key])


def test_fit_hands_backend_arrays_and_keeps_the_history():
    keras.utils.set_random_seed(1)
    x = np.random.default_rng(0).normal(size=(8, 3)).astype("float32")
    y = x.sum(axis=1, keepdims=True)

    def fitted(callbacks_for):
        keras.utils.set_random_seed(1)
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
        model.compile("sgd", "mse")
        recorder = DeviceRecorder()
        history = model.fit(x, y, batch_size=4, epochs=2, verbose=0, shuffle=False,
                            callbacks=callbacks_for(model, recorder))
        return history.history, recorder

    ours, recorder = fitted(lambda model, recorder: DeviceLogCallbacks(
        [recorder], model=model, epochs=2, steps=2))
    plain, numbers = fitted(lambda model, recorder: [recorder])
    assert [batch for batch, _ in recorder.seen] == [0, 1, 0, 1]
    assert all(keras.ops.is_tensor(logs["loss"]) for _, logs in recorder.seen)
    # Keras's list (the plain callback marks no device logs there) hands numbers.
    assert all(isinstance(logs["loss"], float) for _, logs in numbers.seen)
    np.testing.assert_allclose([float(logs["loss"]) for _, logs in recorder.seen],
                               [logs["loss"] for _, logs in numbers.seen], rtol=1e-6)
    assert ours.keys() == plain.keys()
    np.testing.assert_allclose(ours["loss"], plain["loss"], rtol=1e-6)
