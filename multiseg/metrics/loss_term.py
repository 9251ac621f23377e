"""LossTerm: the running mean of one term of a head's loss, for its own log."""

from __future__ import annotations

from typing import Any

import keras

from multiseg.tensors import PACKAGE, fail


@keras.saving.register_keras_serializable(package=PACKAGE)
class LossTerm(keras.metrics.Mean):
    """Running mean of one loss term, to log each term of a head's loss on its own.

    Formula: the mean over batches of ``loss(y_true, y_pred, sample_weight)`` (each batch's
    reduced loss counts once, as Keras logs its losses).

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

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        super().update_state(self.loss(y_true, y_pred, sample_weight))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "loss": keras.saving.serialize_keras_object(self.loss)}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> LossTerm:
        config = dict(config)
        loss = keras.saving.deserialize_keras_object(config.pop("loss"))
        return cls(loss, **config)
