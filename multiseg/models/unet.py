"""The shared U-Net trunk, exposing named attach points for the heads."""

from __future__ import annotations

import random

import keras
from keras import layers

from multiseg.models.layers import PadToMultiple
from multiseg.models.naming import TRUNK, layer_name


def padding_multiple(filters: tuple[int, ...]) -> int:
    """The trunk pads images to a multiple of this (its pooling halves the size per level)."""
    return 2 ** len(filters)


def norm_layer(kind: str, channels: int, *, groups: int, name: str,
               momentum: float = 0.9) -> keras.layers.Layer | None:
    """``batch``, ``group`` (groups reduced until they divide ``channels``), ``instance``
    (each channel of each sample on its own: no statistics shared across the batch, so
    training and inference compute the same thing) or ``none``."""
    if kind == "batch":
        return layers.BatchNormalization(momentum=momentum, name=name)
    if kind == "group":
        g = min(groups, channels)
        while channels % g:
            g -= 1
        return layers.GroupNormalization(groups=g, name=name)
    if kind == "instance":
        return layers.GroupNormalization(groups=-1, name=name)
    if kind == "none":
        return None
    raise ValueError(f"norm must be batch, group, instance or none, got '{kind}'")


def conv_block(x, filters: int, *, convs: int, norm: str, groups: int, activation: str,
               name: str, norm_momentum: float = 0.9):
    """``convs`` times: 3x3 conv, normalisation, activation."""
    for i in range(convs):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=norm == "none",
                          name=layer_name(name, f"conv{i}"))(x)
        layer = norm_layer(norm, filters, groups=groups, name=layer_name(name, f"norm{i}"),
                           momentum=norm_momentum)
        if layer is not None:
            x = layer(x)
        x = layers.Activation(activation, name=layer_name(name, f"act{i}"))(x)
    return x


def unet_trunk(image, *, filters: tuple[int, ...], convs_per_level: int = 2,
               norm: str = "batch", groups: int = 8, norm_momentum: float = 0.9,
               activation: str = "relu", dropout: float = 0.0,
               upsample: str = "transpose", seed: int = 0) -> dict:
    """Builds the trunk on ``image`` and returns its attach points.

    Attach points: ``bottleneck`` (1/2^L resolution, 2 * filters[-1] channels), ``decoder``
    (full padded resolution, filters[0] channels) and ``decoder.k`` for k = 1..L-1 (the
    decoder at 1/2^k resolution, filters[k] channels), for deep supervision.

    Every layer's name starts with ``trunk-`` (``multiseg.models.naming``): a layer is shared
    or belongs to one head.

    ``seed`` seeds the dropout layers' generators, one seed each drawn from it. Explicit seeds,
    because without one Keras's torch backend draws dropout masks from torch's global
    generator, which checkpoints do not hold: a resumed run would differ from an uninterrupted
    one. (A seeded generator's state is a model variable; checkpoints save it.)
    """
    seeds = random.Random(seed)
    levels = len(filters)
    block = dict(convs=convs_per_level, norm=norm, groups=groups, norm_momentum=norm_momentum,
                 activation=activation)
    x = PadToMultiple(padding_multiple(filters), name=layer_name(TRUNK, "pad"))(image)
    skips = []
    for level, f in enumerate(filters):
        x = conv_block(x, f, name=layer_name(TRUNK, f"enc{level}"), **block)
        skips.append(x)
        x = layers.MaxPooling2D(2, name=layer_name(TRUNK, f"enc{level}", "pool"))(x)
    if dropout:
        x = layers.Dropout(dropout, seed=seeds.randrange(1, 2**31),
                           name=layer_name(TRUNK, "bottleneck", "dropout"))(x)
    x = conv_block(x, 2 * filters[-1], name=layer_name(TRUNK, "bottleneck"), **block)
    points = {"bottleneck": x}
    for level in reversed(range(levels)):
        f = filters[level]
        name = layer_name(TRUNK, f"dec{level}")
        if upsample == "transpose":
            x = layers.Conv2DTranspose(f, 2, strides=2, name=layer_name(name, "up"))(x)
        elif upsample == "resize":
            x = layers.UpSampling2D(2, interpolation="bilinear",
                                    name=layer_name(name, "resize"))(x)
            x = layers.Conv2D(f, 3, padding="same", name=layer_name(name, "up"))(x)
        else:
            raise ValueError(f"upsample must be transpose or resize, got '{upsample}'")
        x = layers.Concatenate(name=layer_name(name, "concat"))([x, skips[level]])
        x = conv_block(x, f, name=name, **block)
        if dropout and level > 0:
            x = layers.Dropout(dropout, seed=seeds.randrange(1, 2**31),
                               name=layer_name(name, "dropout"))(x)
        points["decoder" if level == 0 else f"decoder.{level}"] = x
    return points
