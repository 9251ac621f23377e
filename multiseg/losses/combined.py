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

    Logging the terms: ``record_terms`` links a running mean per term (``LossTerm`` metrics
    compiled with this loss); each call then records each term's value, unweighted, into its
    mean, as Keras's own compiled loss updates its per-output loss trackers. A term is thus
    computed once per step, not again by its metric. A loss that was never linked (built on its
    own, or deserialised) touches no metric.

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
        self._trackers: dict[str, Any] = {}

    def record_terms(self, trackers: Mapping[str, Any]) -> None:
        """From now on, record each term's value into ``trackers[label]`` at every call.

        Args:
            trackers: term label to a running mean with ``link()`` (told that this loss
                records its values, so it computes nothing itself) and ``record(value, samples)``:
                ``multiseg.metrics.LossTerm``. They must be compiled with this loss, so that
                their variables are the model's metric variables (on JAX the loss runs in a
                stateless scope that maps them). Replaces any earlier trackers.

        Raises:
            ValueError: a label that is not one of the terms'.
        """
        labels = [label for label, _, _ in self.terms]
        unknown = [label for label in trackers if label not in labels]
        if unknown:
            raise ValueError(f"CombinedLoss: no term labelled {', '.join(map(repr, unknown))};"
                             f" terms: {', '.join(labels)}.")
        for tracker in trackers.values():
            tracker.link()
        self._trackers = dict(trackers)

    def __call__(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> Any:
        total = None
        for label, weight, loss in self.terms:
            value = ops.cast(loss(y_true, y_pred, sample_weight), "float32")
            if label in self._trackers:
                self._trackers[label].record(value, ops.shape(y_pred)[0])
            value = weight * value
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

