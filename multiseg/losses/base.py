"""What every multiseg loss class shares: the keras base class, sample weights, config."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from multiseg.tensors import check_bool


def adapt_sample_weight(sample_weight: Any, y_pred: Any, per_pixel: bool) -> Any:
    """Fit Keras sample weights to the loss's output: (N, ...) per pixel or (N,) per sample.

    Per-sample weights (N,) are expanded to (N, 1, ..., 1) for pixel losses; pixel weight maps
    (N, ...) or (N, ..., 1) are averaged to one weight per sample for region losses.
    """
    w = ops.cast(ops.convert_to_tensor(sample_weight), "float32")
    rank = len(y_pred.shape)
    if len(w.shape) == rank and w.shape[-1] == 1:
        w = ops.squeeze(w, -1)
    if per_pixel:
        while 0 < len(w.shape) < rank - 1:
            w = ops.expand_dims(w, -1)
    elif len(w.shape) > 1:
        w = ops.mean(w, axis=tuple(range(1, len(w.shape))))
    return w


class SegmentationLoss(keras.losses.Loss):
    """Common constructor arguments and config of every multiseg loss."""

    # True: ``call`` returns one value per pixel; False: one value per sample.
    _per_pixel = False

    def __call__(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> Any:
        if sample_weight is not None:
            sample_weight = adapt_sample_weight(sample_weight, y_pred, self._per_pixel)
        return super().__call__(y_true, y_pred, sample_weight)

    def __init__(self, *, from_logits: bool, multilabel: bool, name: str | None,
                 reduction: str | None, dtype: Any) -> None:
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        owner = type(self).__name__
        self.from_logits = check_bool(owner, "from_logits", from_logits)
        self.multilabel = check_bool(owner, "multilabel", multilabel)

    def _options(self) -> dict[str, Any]:
        """Options beyond from_logits/multilabel, as passed to the pure function."""
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        options = {k: (list(v) if isinstance(v, tuple) else v)
                   for k, v in self._options().items()}
        return {**super().get_config(), "from_logits": self.from_logits,
                "multilabel": self.multilabel, **options, "dtype": self._dtype_policy.name}
