"""LossTerm: the running mean of one term of a head's loss, for its own log."""

from __future__ import annotations

from typing import Any

import keras

from multiseg.tensors import PACKAGE, fail


@keras.saving.register_keras_serializable(package=PACKAGE)
class LossTerm(keras.metrics.Mean):
    """Running mean of one loss term, to log each term of a head's loss on its own.

    Formula: the mean over batches of ``loss(y_true, y_pred, sample_weight)`` (each batch's
    reduced loss counts once).

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

    def record(self, value: Any) -> None:
        """Adds one batch's value of the term, as computed by the loss."""
        super().update_state(value)

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        if not self.linked:
            super().update_state(self.loss(y_true, y_pred, sample_weight))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "loss": keras.saving.serialize_keras_object(self.loss)}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> LossTerm:
        config = dict(config)
        loss = keras.saving.deserialize_keras_object(config.pop("loss"))
        return cls(loss, **config)
