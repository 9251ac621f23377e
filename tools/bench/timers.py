"""Keras callbacks that time epochs and steps, shared by the benchmarks in this folder."""

from __future__ import annotations

import time

import keras


class EpochTimer(keras.callbacks.Callback):
    """Wall time of each epoch, in seconds (validation included)."""

    def __init__(self):
        super().__init__()
        self.times: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.perf_counter() - self.start)


class StepTimer(keras.callbacks.Callback):
    """Wall time of each training step, in seconds."""

    def __init__(self):
        super().__init__()
        self.times: list[float] = []

    def on_train_batch_begin(self, batch, logs=None):
        self.start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter() - self.start)
