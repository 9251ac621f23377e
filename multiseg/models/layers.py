"""Small layers the trunk and heads need. All serialisable, all backend-agnostic."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="multiseg")
class PadToMultiple(keras.layers.Layer):
    """Zero-pads height and width at the bottom/right up to a multiple of ``multiple``.

    Lets the U-Net take any input size: its pooling needs sizes divisible by 2^levels.
    """

    def __init__(self, multiple: int, **kwargs):
        super().__init__(**kwargs)
        if multiple < 1:
            raise ValueError(f"multiple must be >= 1, got {multiple}")
        self.multiple = int(multiple)

    def call(self, x):
        shape = ops.shape(x)
        pad_h = (-shape[1]) % self.multiple
        pad_w = (-shape[2]) % self.multiple
        return ops.pad(x, [[0, 0], [0, pad_h], [0, pad_w], [0, 0]])

    def compute_output_shape(self, input_shape):
        def up(n):
            return None if n is None else -(-n // self.multiple) * self.multiple

        return (input_shape[0], up(input_shape[1]), up(input_shape[2]), input_shape[3])

    def get_config(self):
        return {**super().get_config(), "multiple": self.multiple}


@keras.saving.register_keras_serializable(package="multiseg")
class CropToMatch(keras.layers.Layer):
    """Crops ``x`` (N, H', W', C) back to the height and width of ``reference``."""

    def call(self, x, reference):
        shape = ops.shape(reference)
        return x[:, : shape[1], : shape[2], :]

    def compute_output_shape(self, x_shape, reference_shape):
        return (x_shape[0], reference_shape[1], reference_shape[2], x_shape[3])


@keras.saving.register_keras_serializable(package="multiseg")
class GradientScale(keras.layers.Layer):
    """Identity forward; multiplies the gradient flowing back through it by ``scale``.

    ``scale`` 0 is a stop-gradient: the head behind it trains only its own branch. Written as
    ``s * x + (1 - s) * stop_gradient(x)`` so it needs no backend-specific custom gradient.
    """

    def __init__(self, scale: float, **kwargs):
        super().__init__(**kwargs)
        if scale < 0:
            raise ValueError(f"scale must be >= 0, got {scale}")
        self.scale = float(scale)

    def call(self, x):
        if self.scale == 1.0:
            return x
        frozen = ops.stop_gradient(x)
        if self.scale == 0.0:
            return frozen
        return self.scale * x + (1.0 - self.scale) * frozen

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "scale": self.scale}


@keras.saving.register_keras_serializable(package="multiseg")
class ValidAveragePooling(keras.layers.Layer):
    """Global average of ``x`` (N, h, w, C) over the cells that cover the real image, (N, C).

    The trunk zero-pads the image (N, H, W, _) at the bottom/right to (Hp, Wp), multiples of
    ``multiple``; a feature map of stride s = Hp / h then has ceil(H / s) x ceil(W / s) cells
    that see the image, the rest see only padding. Averaging those too would make image-level
    logits depend on how much padding the size needs. ``multiple`` 1 averages every cell.
    """

    def __init__(self, multiple: int = 1, **kwargs):
        super().__init__(**kwargs)
        if multiple < 1:
            raise ValueError(f"multiple must be >= 1, got {multiple}")
        self.multiple = int(multiple)

    def _valid(self, size, cells):
        padded = (size + self.multiple - 1) // self.multiple * self.multiple
        # ceil(size / stride) with stride = padded / cells, in integers.
        return (size * cells + padded - 1) // padded

    def call(self, x, image):
        x_shape, image_shape = ops.shape(x), ops.shape(image)
        rows = self._valid(image_shape[1], x_shape[1])
        cols = self._valid(image_shape[2], x_shape[2])
        mask = ops.logical_and(ops.arange(x_shape[1])[:, None] < rows,
                               ops.arange(x_shape[2])[None, :] < cols)
        mask = ops.cast(mask, x.dtype)[None, :, :, None]
        count = ops.cast(rows * cols, x.dtype)
        return ops.sum(x * mask, axis=(1, 2)) / count

    def compute_output_shape(self, x_shape, image_shape):
        return (x_shape[0], x_shape[3])

    def get_config(self):
        return {**super().get_config(), "multiple": self.multiple}
