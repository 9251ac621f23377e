"""CombinedLoss: a head's weighted sum of loss terms."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import keras
from keras import ops

from multiseg.tensors import PACKAGE, check_number, fail


@keras.saving.register_keras_serializable(package=PACKAGE)
class CombinedLoss(keras.losses.Loss):
    """Weighted sum of loss terms inside one head: ``sum_i weight_i * loss_i(y_true, y_pred)``.

    Each term is reduced by its own ``reduction`` (with the sample weights passed through) and
    the weighted scalars are summed, so terms with per-pixel and per-sample outputs mix freely.

    Args:
        terms: ``(label, weight, loss)`` triples, or ``(weight, loss)`` pairs (the label is
            then the loss's ``name``). Labels are made unique: "dice", "dice_2".
        name: Default "combined_loss".
        reduction, dtype: as ``keras.losses.Loss`` (the result is already a scalar).

    Attributes:
        terms: list of ``(label, weight, loss)``.

    Raises:
        ValueError: no terms, a negative or non-finite weight, or a term that is not a Loss.

    Example:
        >>> CombinedLoss([("dice", 1.0, Dice()), ("crossentropy", 0.5, Crossentropy())])
    """

    def __init__(self, terms: Sequence[tuple[Any, ...]], *, name: str | None = "combined_loss",
                 reduction: str | None = "sum_over_batch_size", dtype: Any = None) -> None:
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if isinstance(terms, (str, Mapping)) or not isinstance(terms, Sequence) or not terms:
            raise fail("CombinedLoss", "terms", terms,
                        "a non-empty list of (label, weight, loss) triples")
        self.terms: list[tuple[str, float, keras.losses.Loss]] = []
        used: set[str] = set()
        for i, term in enumerate(terms):
            if not isinstance(term, (tuple, list)) or len(term) not in (2, 3):
                raise fail("CombinedLoss", f"terms[{i}]", term,
                            "a (label, weight, loss) triple or a (weight, loss) pair")
            label, weight, loss = term if len(term) == 3 else (None, *term)
            if not isinstance(loss, keras.losses.Loss):
                raise fail("CombinedLoss", f"terms[{i}] loss", loss, "a keras.losses.Loss")
            weight = check_number("CombinedLoss", f"terms[{i}] weight", weight, low=0.0)
            base = label = str(label or loss.name)
            count = 1
            while label in used:
                count += 1
                label = f"{base}_{count}"
            used.add(label)
            self.terms.append((label, weight, loss))

    def __call__(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> Any:
        total = None
        for _, weight, loss in self.terms:
            value = weight * ops.cast(loss(y_true, y_pred, sample_weight), "float32")
            total = value if total is None else total + value
        return total

    def call(self, y_true: Any, y_pred: Any) -> Any:
        return self(y_true, y_pred)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "dtype": self._dtype_policy.name,
                "terms": [{"label": label, "weight": weight,
                           "loss": keras.saving.serialize_keras_object(loss)}
                          for label, weight, loss in self.terms]}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> CombinedLoss:
        config = dict(config)
        terms = [(t["label"], t["weight"], keras.saving.deserialize_keras_object(t["loss"]))
                 for t in config.pop("terms")]
        return cls(terms, **config)

