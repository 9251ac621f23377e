"""Head builders: each builds a head's own branch and output from a trunk attach point.

A head kind's record (``multiseg.headkinds.HEAD_KINDS``) names its builder here. Every layer a
head creates is named ``<head>-<part>`` (``multiseg.models.naming.layer_name``), and its last
layer is named exactly ``<head>``, so the model output, its target, loss, metrics and logs
share one key. Heads output logits; losses and metrics are told so (``from_logits=True``) by
the head, never by the user.
"""

from __future__ import annotations

from keras import layers

from multiseg.models.layers import CropToMatch, GradientScale, ValidAveragePooling
from multiseg.models.naming import layer_name
from multiseg.models.unet import norm_layer


def _entry(features, *, name: str, grad_scale: float):
    if grad_scale != 1.0:
        return GradientScale(grad_scale, name=layer_name(name, "grad_scale"))(features)
    return features


def _spatial_branch(x, *, name: str, branch: tuple[int, ...], norm: str, groups: int,
                    norm_momentum: float, activation: str):
    for i, f in enumerate(branch):
        x = layers.Conv2D(f, 3, padding="same", use_bias=norm == "none",
                          name=layer_name(name, f"conv{i}"))(x)
        layer = norm_layer(norm, f, groups=groups, name=layer_name(name, f"norm{i}"),
                           momentum=norm_momentum)
        if layer is not None:
            x = layer(x)
        x = layers.Activation(activation, name=layer_name(name, f"act{i}"))(x)
    return x


def _spatial_output(x, image, *, name: str, channels: int, scale: int):
    x = layers.Conv2D(channels, 1, name=layer_name(name, "logits"))(x)
    if scale > 1:
        # Deep supervision: logits of a coarse decoder level are resized to the image.
        x = layers.UpSampling2D(scale, interpolation="bilinear", name=layer_name(name, "resize"))(x)
    return CropToMatch(name=name)(x, image)


def segmentation_head(features, image, *, name: str, classes: int, branch: tuple[int, ...] = (),
                      scale: int = 1, grad_scale: float = 1.0, norm: str = "batch",
                      groups: int = 8, norm_momentum: float = 0.9, activation: str = "relu",
                      padding: int = 1):
    """Per-pixel class logits, (N, H, W, classes); classes == 1 is a binary (sigmoid) mask."""
    del padding  # the output is cropped back to the image
    x = _entry(features, name=name, grad_scale=grad_scale)
    x = _spatial_branch(x, name=name, branch=branch, norm=norm, groups=groups,
                        norm_momentum=norm_momentum, activation=activation)
    return _spatial_output(x, image, name=name, channels=classes, scale=scale)


def boundary_head(features, image, *, name: str, classes: int = 1, branch: tuple[int, ...] = (),
                  scale: int = 1, grad_scale: float = 1.0, norm: str = "batch", groups: int = 8,
                  norm_momentum: float = 0.9, activation: str = "relu", padding: int = 1):
    """One-channel edge logits, (N, H, W, 1)."""
    if classes != 1:
        raise ValueError(f"a boundary head has 1 channel, got classes={classes}")
    return segmentation_head(features, image, name=name, classes=1, branch=branch, scale=scale,
                             grad_scale=grad_scale, norm=norm, groups=groups,
                             norm_momentum=norm_momentum, activation=activation,
                             padding=padding)


def classification_head(features, image, *, name: str, classes: int,
                        branch: tuple[int, ...] = (), scale: int = 1, grad_scale: float = 1.0,
                        norm: str = "batch", groups: int = 8, norm_momentum: float = 0.9,
                        activation: str = "relu", padding: int = 1):
    """Image-level class logits, (N, classes), from features averaged over the image.

    Only the feature cells that cover the image are averaged, not the trunk's zero padding
    (the image padded to a multiple of ``padding``).
    """
    del scale, norm, groups, norm_momentum  # the pooling finds the stride; no norms after it
    x = _entry(features, name=name, grad_scale=grad_scale)
    x = ValidAveragePooling(padding, name=layer_name(name, "pool"))(x, image)
    for i, units in enumerate(branch):
        x = layers.Dense(units, activation=activation, name=layer_name(name, f"dense{i}"))(x)
    return layers.Dense(classes, name=name)(x)

