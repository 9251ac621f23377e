"""LossTerm: the running mean of one term of a head's loss, for its own log."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

# What Keras's compiled loss applies to its own per-output loss trackers: the same scale as the
# reduction's (keras.src.losses.loss.scale_loss_for_distribution), so the two cannot disagree.
from keras.src.losses.loss import unscale_loss_for_distribution

from multiseg.tensors import PACKAGE, fail


@keras.saving.register_keras_serializable(package=PACKAGE)
class LossTerm(keras.metrics.Mean):
    """Running mean of one loss term, to log each term of a head's loss on its own.

    Formula: the mean over batches of ``loss(y_true, y_pred, sample_weight)``, each batch's
    reduced loss weighted by its number of samples, as Keras weighs its ``<head>_loss``. Under
    a TensorFlow strategy each replica records its own batch's mean (Keras scales the reduced
    loss by 1 / replicas; the scale is undone here), so the figure is the global batch's.

    Compiled with the head's ``CombinedLoss`` and linked to it (``CombinedLoss.record_terms``,
    done by ``multiseg.models.build.head_metrics``), the term is computed once per step, by the
    loss, which records its value here (``record``); ``update_state`` then does nothing. An
    unlinked LossTerm (on its own, or deserialised) computes ``loss`` itself in
    ``update_state``.

    Args:
        loss: the ``keras.losses.Loss`` to follow.
        name: log name, e.g. "dice" (Keras logs "<head>_dice").
        dtype: as ``keras.metrics.Metric``.

    Raises:
        ValueError: ``loss`` is not a ``keras.losses.Loss``.

    Example:
        >>> LossTerm(multiseg.losses.Dice(from_logits=True), name="loss_dice")
    """

    def __init__(self, loss: keras.losses.Loss, name: str, dtype: Any = None) -> None:
        if not isinstance(loss, keras.losses.Loss):
            raise fail("LossTerm", "loss", loss, "a keras.losses.Loss")
        super().__init__(name=name, dtype=dtype)
        self.loss = loss
        self.linked = False  # the head's loss records the values (not serialised)

    def link(self) -> None:
        """The loss that holds this term records its values (``record``): stop computing them."""
        self.linked = True

    def record(self, value: Any, samples: Any = 1) -> None:
        """Adds one batch's value of the term, as computed by the loss, over ``samples``."""
        super().update_state(unscale_loss_for_distribution(value), sample_weight=samples)

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        if not self.linked:
            self.record(self.loss(y_true, y_pred, sample_weight), ops.shape(y_pred)[0])

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "loss": keras.saving.serialize_keras_object(self.loss)}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> LossTerm:
        config = dict(config)
        loss = keras.saving.deserialize_keras_object(config.pop("loss"))
        return cls(loss, **config)
