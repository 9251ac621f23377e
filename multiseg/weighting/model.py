"""The model that a non-static ``train.weighting`` trains: the recipe's functional network
with a ``LossWeighting`` layer attached and ``compute_loss`` taken over.

Keras's ``CompileLoss`` still computes every head's raw loss (so ``<head>_loss`` and the loss
terms are logged as always); a thin wrapper around each head's loss hands the raw value to
``compute_loss``, which asks the weighting layer for the total. ``static`` uses no wrapper at
all: a plain functional model compiled with constant ``loss_weights``, as before.

``model.keras`` is written from :func:`inference_model`: the same layers as a plain functional
model compiled with the final weights as constants, so that it reloads with Keras and
multiseg's layers, losses and metrics, and no weighting code.
"""

from __future__ import annotations

from collections.abc import Mapping

import keras
import numpy as np

from multiseg.weighting import steps
from multiseg.weighting.gradient import GRADIENT_WEIGHTINGS
from multiseg.weighting.state import LOSS_WEIGHTINGS, LossWeighting


class _RawLoss(keras.losses.Loss):
    """A head's loss as compiled, recording its value for ``WeightedModel.compute_loss``."""

    def __init__(self, loss: keras.losses.Loss, head: str, sink: dict):
        super().__init__(name=getattr(loss, "name", head))
        self.loss, self.head, self.sink = loss, head, sink

    def __call__(self, y_true, y_pred, sample_weight=None):
        value = self.loss(y_true, y_pred, sample_weight)
        self.sink[self.head] = value
        return value


@keras.saving.register_keras_serializable(package="multiseg")
class WeightedModel(keras.Model):
    """A functional multi-head model whose total loss comes from ``loss_weighting``."""

    def __init__(self, *args, weighting: LossWeighting | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._raw_losses: dict = {}
        if weighting is not None:
            self.loss_weighting = weighting  # tracked: its variables are the model's

    def compile(self, optimizer="rmsprop", loss=None, loss_weights=None, **kwargs):
        self.head_losses = dict(loss)
        taps = {h: _RawLoss(head_loss, h, self._raw_losses) for h, head_loss in loss.items()}
        if getattr(optimizer, "weight_decay", None) and hasattr(self, "loss_weighting"):
            # Decay would pull learned weights (log-variances) towards 1 for no reason.
            optimizer.exclude_from_weight_decay(
                var_list=self.loss_weighting.trainable_variables)
        super().compile(optimizer=optimizer, loss=taps, loss_weights=loss_weights, **kwargs)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        self._raw_losses.clear()
        self._compile_loss(y, y_pred, sample_weight)  # raw losses logged, its sum unused
        heads = self.loss_weighting.heads
        batch = keras.ops.shape(y_pred[heads[0]])[0]
        total = self.loss_weighting.total([self._raw_losses[h] for h in heads],
                                          training=training, batch_size=batch)
        # Python sum: traced code on JAX (GRADIENT-NOTES).
        return total + sum(self.losses) if self.losses else total


@keras.saving.register_keras_serializable(package="multiseg")
class GradientWeightedModel(WeightedModel):
    """A :class:`WeightedModel` whose training step combines the heads' own gradients
    (``multiseg.weighting.steps``, one step per backend)."""

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        # Regularisation losses are nobody's head: the step adds their gradient as it is.
        self._regularisation = sum(self.losses) if self.losses else None
        return super().compute_loss(x, y, y_pred, sample_weight, training)

    def train_step(self, *args):
        return steps.train_step(self, *args)


def make_model(inputs, outputs: Mapping, *, name: str, weighting, heads: Mapping,
               seed: int = 0) -> keras.Model:
    """The recipe's model: plain functional for ``static``, else a :class:`WeightedModel`
    with the method's state. ``weighting`` is the recipe's ``WeightingSpec``; ``heads`` maps
    each head to its recipe ``loss_weight``."""
    if weighting.method == "static":
        return keras.Model(inputs, outputs, name=name)
    options = dict(weighting.options)
    if weighting.method in GRADIENT_WEIGHTINGS:
        layer = GRADIENT_WEIGHTINGS[weighting.method](list(heads), dict(heads), seed=seed,
                                                      **options)
        model = GradientWeightedModel(inputs, outputs, name=name, weighting=layer)
        steps.prepare(model)
        return model
    if weighting.method == "scheduled":
        options = {"schedules": options["heads"]}
    layer = LOSS_WEIGHTINGS[weighting.method](list(heads), dict(heads), seed=seed, **options)
    return WeightedModel(inputs, outputs, name=name, weighting=layer)


def set_steps_per_epoch(model: keras.Model, steps: int) -> None:
    """Epoch-based methods count epochs in steps; known once the data is."""
    if isinstance(model, WeightedModel):
        model.loss_weighting.steps_per_epoch = max(int(steps), 1)


def current_weights(model: keras.Model) -> dict[str, float] | None:
    """The heads' effective loss weights now (those of the last training step), or None for
    a model without a weighting method."""
    layer = getattr(model, "loss_weighting", None)
    if not isinstance(layer, LossWeighting):
        return None
    return _per_head(model, layer.heads, layer.loss_weights)


def current_trunk_weights(model: keras.Model) -> dict[str, float] | None:
    """``pcgrad`` and ``upgrad``: the implied per-head weights of the last step's trunk
    update (``alpha_h c_h``); None for every other model."""
    layer = getattr(model, "loss_weighting", None)
    trunk = getattr(layer, "trunk_weights", None)
    if trunk is None:
        return None
    return _per_head(model, layer.heads, trunk)


def _per_head(model: keras.Model, heads, variable) -> dict[str, float]:
    if keras.backend.backend() == "jax" and hasattr(model, "jax_state_sync"):
        model.jax_state_sync()  # during fit, the live values are in the trainer's state
    values = np.asarray(keras.ops.convert_to_numpy(variable), np.float64)
    return {h: float(v) for h, v in zip(heads, values, strict=True)}


def network(model: keras.Model) -> keras.Model:
    """The recipe's network alone: ``model``, or for a :class:`WeightedModel` a plain
    functional view of its layers (without the weighting's variables), e.g. to take the
    weights of a ``model.keras``."""
    if not isinstance(model, WeightedModel):
        return model
    return keras.Model(model.input, model.output, name=model.name)


def inference_model(model: keras.Model) -> keras.Model:
    """What ``model.keras`` holds: ``model`` itself, or for a :class:`WeightedModel` a plain
    functional model on the same layers, compiled with the current weights as constants."""
    if not isinstance(model, WeightedModel):
        return model
    plain = network(model)
    weights = current_weights(model)
    compile_config = model._compile_config.config if model._compile_config else {}
    optimizer = keras.optimizers.get(keras.optimizers.serialize(model.optimizer))
    plain.compile(optimizer=optimizer, loss=model.head_losses, loss_weights=weights,
                  metrics=compile_config.get("metrics"))
    if model.optimizer.built:
        # The optimizer's state, less the weighting's own variables, as a static model has it.
        optimizer.build(plain.trainable_variables)
        trained = {_slot_name(v, model.optimizer): v for v in model.optimizer.variables}
        for variable in optimizer.variables:
            source = trained.get(_slot_name(variable, optimizer))
            if source is not None and tuple(source.shape) == tuple(variable.shape):
                variable.assign(source)
    return plain


def _slot_name(variable, optimizer) -> str:
    """An optimizer variable's path without the optimizer's own (numbered) name."""
    return variable.path.removeprefix(optimizer.name + "/")
