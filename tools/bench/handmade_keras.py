"""The benchmark's hand-written Keras version of the recipe's network: what a user would write
in plain Keras, importing nothing of multiseg. Layer for layer the network of
``multiseg.models`` and the same loss formulas (tests/test_bench.py copies multiseg's weights
into it and compares outputs and losses).

Its layers with weights carry multiseg's layer names (``trunk-enc0-conv0``, ``mask-logits``),
so that weights copy by name. What it leaves out, as a user would: padding to a multiple of
2^levels (the input size is fixed), the crop back, the average over only the cells that cover
the image, and the losses' argument checks and term metrics.
"""

from __future__ import annotations

import keras
from keras import layers, ops

SMOOTH = 1e-5  # multiseg's default smoothing of Dice and Tversky (numerator and denominator)


def _conv_norm_relu(x, filters: int, momentum: float, prefix: str, i: int):
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{prefix}-conv{i}")(x)
    x = layers.BatchNormalization(momentum=momentum, name=f"{prefix}-norm{i}")(x)
    return layers.Activation("relu")(x)


def _block(x, filters: int, convs: int, momentum: float, prefix: str):
    for i in range(convs):
        x = _conv_norm_relu(x, filters, momentum, prefix, i)
    return x


def build_model(spec: dict, *, size: int) -> keras.Model:
    """The U-Net trunk and the three heads on ``size`` x ``size`` images; outputs
    ``{head name: logits}``."""
    momentum, convs, filters = spec["norm_momentum"], spec["convs_per_level"], spec["filters"]
    image = keras.Input((size, size, spec["channels"]), name="image")
    x, skips = image, []
    for level, f in enumerate(filters):
        x = _block(x, f, convs, momentum, f"trunk-enc{level}")
        skips.append(x)
        x = layers.MaxPooling2D(2)(x)
    bottleneck = x = _block(x, 2 * filters[-1], convs, momentum, "trunk-bottleneck")
    for level in reversed(range(len(filters))):
        x = layers.Conv2DTranspose(filters[level], 2, strides=2, name=f"trunk-dec{level}-up")(x)
        x = layers.Concatenate()([x, skips[level]])
        x = _block(x, filters[level], convs, momentum, f"trunk-dec{level}")
    outputs = {}
    for kind in ("segmentation", "boundary"):
        head = spec["heads"][kind]
        name, y = head["name"], x
        for i, f in enumerate(head["branch"]):
            y = _conv_norm_relu(y, f, momentum, name, i)
        outputs[name] = layers.Conv2D(head["classes"], 1, name=f"{name}-logits")(y)
    head = spec["heads"]["classification"]
    name = head["name"]
    y = layers.GlobalAveragePooling2D()(bottleneck)
    for i, units in enumerate(head["branch"]):
        y = layers.Dense(units, activation="relu", name=f"{name}-dense{i}")(y)
    outputs[name] = layers.Dense(head["classes"], name=name)(y)
    return keras.Model(image, outputs)


# Each loss term per sample, (N,), from float32 logits. Region terms (Dice, Tversky) average
# over the classes present in the sample's target; a sample with none scores 0, as
# multiseg's default ``ignore_empty`` does.


def _dice(classes: int):
    def term(y_true, logits):
        onehot = ops.one_hot(ops.cast(y_true[..., 0], "int32"), classes)
        p = ops.softmax(logits, axis=-1)
        inter = ops.sum(p * onehot, axis=(1, 2))
        total = ops.sum(p, axis=(1, 2)) + ops.sum(onehot, axis=(1, 2))
        score = (2.0 * inter + SMOOTH) / (total + SMOOTH)
        present = ops.cast(ops.sum(onehot, axis=(1, 2)) > 0, "float32")
        count = ops.sum(present, axis=-1)
        mean = ops.sum(score * present, axis=-1) / ops.maximum(count, 1.0)
        return ops.where(count > 0, 1.0 - mean, 0.0)

    return term


def _pixel_crossentropy(classes: int):
    def term(y_true, logits):
        onehot = ops.one_hot(ops.cast(y_true[..., 0], "int32"), classes)
        return -ops.mean(ops.sum(onehot * ops.log_softmax(logits, axis=-1), axis=-1),
                         axis=(1, 2))

    return term


def _tversky(alpha: float, beta: float):
    def term(y_true, logits):
        p = ops.sigmoid(logits)
        tp = ops.sum(p * y_true, axis=(1, 2, 3))
        fp = ops.sum(p * (1.0 - y_true), axis=(1, 2, 3))
        fn = ops.sum((1.0 - p) * y_true, axis=(1, 2, 3))
        index = (tp + SMOOTH) / (tp + alpha * fp + beta * fn + SMOOTH)
        return ops.where(ops.sum(y_true, axis=(1, 2, 3)) > 0, 1.0 - index, 0.0)

    return term


def _binary_crossentropy(y_true, logits):
    return ops.mean(ops.binary_crossentropy(y_true, logits, from_logits=True), axis=(1, 2, 3))


def _label_crossentropy(y_true, logits):
    return ops.sparse_categorical_crossentropy(y_true, logits, from_logits=True)


TERMS = {
    "segmentation": {"dice": lambda head, t: _dice(head["classes"]),
                     "crossentropy": lambda head, t: _pixel_crossentropy(head["classes"])},
    "boundary": {"tversky": lambda head, t: _tversky(t.get("alpha", 0.3), t.get("beta", 0.7)),
                 "crossentropy": lambda head, t: _binary_crossentropy},
    "classification": {"crossentropy": lambda head, t: _label_crossentropy},
}


def head_loss(kind: str, head: dict):
    """The head's loss per sample: its terms, each weighted, summed (Keras takes the mean)."""
    terms = [(TERMS[kind][t["name"]](head, t), t["weight"]) for t in head["terms"]]

    def loss(y_true, y_pred):
        y_true = ops.convert_to_tensor(y_true)  # called outside compile: NumPy arrays too
        logits = ops.cast(y_pred, "float32")
        return sum(weight * term(y_true, logits) for term, weight in terms)

    return loss


def compile_model(model: keras.Model, spec: dict) -> keras.Model:
    """Adam, each head's loss and loss weight, Keras's default ``jit_compile``."""
    heads = spec["heads"]
    model.compile(optimizer=keras.optimizers.Adam(spec["learning_rate"]),
                  loss={h["name"]: head_loss(kind, h) for kind, h in heads.items()},
                  loss_weights={h["name"]: h["loss_weight"] for h in heads.values()})
    return model
