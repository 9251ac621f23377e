"""Batch normalisation that holds up in inference mode after short runs.

A BatchNormalization layer trains on each batch's own statistics but predicts with moving
averages. After a short run those averages still remember their initial values (0 and 1), and
the saved model, in inference mode, predicts something else than training measured. Two tools:

- ``recompute_statistics`` (PreciseBN): sets every layer's moving mean and variance to the
  average of its batch statistics over a number of training batches, seen through the current
  weights; ``PreciseBatchNorm`` does it at the end of every epoch, before validation and before
  the checkpoint (so ``model.keras`` carries them too).
- ``mode_gap``: the same validation metrics in inference mode and in training mode (batch
  statistics), the check that training runs after fitting to tell the user when the two differ.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import keras
import numpy as np

from multiseg.callbacks.checkpoints import seed_states
from multiseg.distribute.engines import predict_batch

# Above this, inference-mode and training-mode figures tell different stories (metrics are
# fractions in [0, 1]).
MODE_GAP_MARGIN = 0.05


def batch_norm_layers(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    return [layer for layer in model.layers
            if isinstance(layer, keras.layers.BatchNormalization)]


@contextlib.contextmanager
def _state_kept(variables: list) -> Iterator[None]:
    """Restores ``variables`` on exit: a training-mode pass must not move the random
    generators (dropout) that training and resume depend on."""
    saved = [keras.ops.convert_to_numpy(v) for v in variables]
    try:
        yield
    finally:
        for variable, value in zip(variables, saved, strict=True):
            variable.assign(value)


class _TrainingMode(keras.Model):
    """Calls ``inner`` in training mode, so that ``predict_on_batch`` runs it compiled with
    batch statistics (an eager call costs tens of compiled steps on TensorFlow)."""

    def __init__(self, inner: keras.Model):
        super().__init__(name="training_mode")
        self.inner = inner
        # Nothing of its own to create. Unbuilt, Keras's JAX predict_on_batch would first call
        # it eagerly, compiling each operation of the network on its own (a tiny run compiled
        # 226 programs with that, 101 without).
        self.built = True

    def call(self, inputs):
        return self.inner(inputs, training=True)


class _Moments(keras.layers.Layer):
    """Mean and biased variance over every axis but ``axis``, as BatchNormalization takes
    them in training mode."""

    made = 0  # layer names are unique within a model

    def __init__(self, axis: int):
        super().__init__(name=f"moments_{_Moments.made}")
        _Moments.made += 1
        self.axis = axis

    def call(self, x):
        x = keras.ops.cast(x, "float32")
        axes = [a for a in range(len(x.shape)) if a != self.axis % len(x.shape)]
        return keras.ops.mean(x, axis=axes), keras.ops.var(x, axis=axes)


def statistics_probe(model: keras.Model) -> keras.Model | None:
    """A model giving, in training mode, every BatchNormalization layer's batch mean and
    variance; None if ``model`` has no such layer."""
    layers = batch_norm_layers(model)
    if not layers:
        return None
    moments = [_Moments(layer.axis)(layer.input) for layer in layers]
    return _TrainingMode(keras.Model(model.inputs, moments))


def recompute_statistics(model: keras.Model, images: Iterable[np.ndarray], *,
                         probe: keras.Model | None = None) -> int:
    """Sets each BatchNormalization layer's moving statistics to the mean of its batch
    statistics over ``images`` (a few training batches), as in PreciseBN (Wu & Johnson, 2021).

    Every batch runs forward in training mode, so a layer sees the activations that training
    produced (earlier layers normalised by the batch's own statistics). The moving mean
    becomes the plain average of the batch means, the moving variance that of the batch
    variances: no memory of earlier values.

    Args:
        model: the model whose layers are updated.
        images: input batches.
        probe: ``statistics_probe(model)``, to reuse across calls.

    Returns:
        The number of batches used (0 if the model has no BatchNormalization layer).
    """
    layers = batch_norm_layers(model)
    if not layers:
        return 0
    probe = probe or statistics_probe(model)
    sums: list[np.ndarray] | None = None
    count = 0
    # Training mode draws dropout masks (and on TensorFlow moves the moving statistics):
    # the random generators must stay where training left them.
    with _state_kept(seed_states(model)):
        for batch in images:
            # [(mean, variance) per layer], flattened in layer order.
            values = [np.asarray(v, np.float64)
                      for v in keras.tree.flatten(predict_batch(probe, batch))]
            sums = values if sums is None else [a + b for a, b in zip(sums, values, strict=True)]
            count += 1
    if not count:
        return 0
    for i, layer in enumerate(layers):
        layer.moving_mean.assign(sums[2 * i] / count)
        layer.moving_variance.assign(sums[2 * i + 1] / count)
    return count


class PreciseBatchNorm(keras.callbacks.Callback):
    """Recomputes the population statistics after the last step of every epoch.

    Fit validates and then calls ``on_epoch_end`` (where the checkpoint is written), so the
    last batch's end is the one moment that precedes both.

    Args:
        batch_images: ``step -> images`` of the training set, for a global step.
        steps_per_epoch: training steps in a full epoch (global steps of epoch e start at
            ``e * steps_per_epoch``).
        count: batches to average over (at most one epoch's).
    """

    takes_device_logs = True  # it reads no logs (multiseg.callbacks.dispatch)

    def __init__(self, batch_images: Callable[[int], np.ndarray], *, steps_per_epoch: int,
                 count: int):
        super().__init__()
        self.batch_images = batch_images
        self.steps_per_epoch = steps_per_epoch
        self.count = min(count, steps_per_epoch)
        self.epoch = 0
        self.probe = None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if batch + 1 == self.params["steps"]:
            first = self.epoch * self.steps_per_epoch
            self.probe = self.probe or statistics_probe(self.model)
            recompute_statistics(self.model, (self.batch_images(first + i)
                                              for i in range(self.count)), probe=self.probe)


@dataclass(frozen=True)
class ModeGap:
    """One metric of one head on the same validation batches, in both modes."""

    head: str
    metric: str
    inference: float
    training: float

    @property
    def shortfall(self) -> float:
        """How much lower the figure is as the model is used than as training measured it."""
        return self.training - self.inference


def has_mode_dependent_layers(model: keras.Model) -> bool:
    """Whether training mode computes anything different from inference mode."""
    return any(isinstance(layer, (keras.layers.BatchNormalization, keras.layers.Dropout))
               for layer in model.layers)


def mode_gap(model: keras.Model, batches: Iterable[tuple[np.ndarray, dict]],
             metrics: Callable[[], dict[str, list[keras.metrics.Metric]]]) -> list[ModeGap]:
    """Every head's metrics on ``batches`` in inference mode and in training mode.

    Training mode normalises each batch by its own statistics, the figures training reported;
    the model's state (moving statistics, random generators) is left as it was.

    Args:
        model: the trained model.
        batches: (images, {head: target}) pairs, read once.
        metrics: a factory of fresh metrics, ``{head: [metric, ...]}``.
    """
    modes = {False: metrics(), True: metrics()}
    calls = {False: model, True: _TrainingMode(model)}
    with _state_kept(list(model.non_trainable_variables)):
        for images, targets in batches:
            for training, per_head in modes.items():
                outputs = predict_batch(calls[training], images)
                for head, head_metrics in per_head.items():
                    for metric in head_metrics:
                        metric.update_state(targets[head], outputs[head])
    return [ModeGap(head, inference.name, float(inference.result()), float(training.result()))
            for head in modes[False]
            for inference, training in zip(modes[False][head], modes[True][head], strict=True)]


def mode_gap_warning(gaps: list[ModeGap], *, norm: str, norm_momentum: float, precise_bn: int,
                     dropout: float, batches: int) -> str | None:
    """A warning naming the metrics that are lower in inference mode than in training mode by
    more than ``MODE_GAP_MARGIN``, the likely cause, and the recipe keys that fix it; None if
    none are. (Higher in inference mode is no fault: batch statistics of a few validation
    batches are noisy.)"""
    wide = [g for g in gaps if g.shortfall > MODE_GAP_MARGIN]
    if not wide:
        return None
    figures = "; ".join(f"{g.head} {g.metric} {g.inference:.3f} in inference mode,"
                        f" {g.training:.3f} in training mode" for g in wide)
    lines = [f"warning: the trained model scores lower in inference mode, as it is used and"
             f" saved, than in training mode on the same {batches} validation batches:"
             f" {figures}."]
    if norm == "batch":
        fixes = []
        if not precise_bn:
            fixes.append("train.precise_bn: 8 (recompute the statistics over training batches)")
        if norm_momentum > 0.9:
            fixes.append(f"model.norm_momentum: 0.9 (now {norm_momentum:g})")
        fixes += ["more training steps (train.epochs)",
                  "model.norm: group or instance (no batch statistics at all)"]
        lines.append("Likely cause: BatchNormalization's moving statistics do not describe"
                     " the data the model now sees (a short run, small or unrepresentative"
                     " batches). Fixes: " + "; ".join(fixes) + ".")
    if dropout:
        lines.append(f"Dropout (model.dropout: {dropout:g}) also differs between the modes.")
    return "\n".join(lines)
