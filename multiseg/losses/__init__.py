"""Segmentation losses: Dice, Jaccard, Tversky, focal, crossentropy and their combinations.

Every loss is a pure function (``dice``, ``jaccard``...) plus a thin, serialisable
``keras.losses.Loss`` subclass (``Dice``, ``Jaccard``...), as keras does for ``dice``/``Dice``.
``LOSSES`` maps recipe names to classes and ``build`` turns a recipe entry into a loss object.

Modules: ``functional`` (the pure functions and their tensor math), ``region`` (ratio losses,
one value per sample), ``pixel`` (one value per pixel), ``combined`` (a head's weighted sum of
terms), ``registry`` (``LOSSES``, ``loss_options``, ``build``), ``targets`` (``check_targets``),
``checks`` and ``base`` (what the loss classes share).

Conventions shared by every loss (written out once here, repeated in ``docs/losses.md``):

- Tensors are channels-last. ``y_pred`` has C channels: C == 1 is a binary task (sigmoid when
  ``from_logits``), C > 1 a multi-class task (softmax when ``from_logits``), or C independent
  binary channels when ``multilabel=True`` (sigmoid per channel). The activation is applied
  exactly once, inside the loss, when ``from_logits=True``; never put one in the model as well.
- ``y_true`` for a binary task is a {0, 1} mask shaped like ``y_pred`` or without its last
  axis. For a multi-class task it is either integer labels shaped like ``y_pred`` without the
  channel axis (or with a channel axis of 1), possibly stored as floats because Keras casts
  targets to the loss dtype, or a one-hot tensor shaped like ``y_pred``. For ``multilabel`` it
  is a multi-hot tensor shaped like ``y_pred``. Image-level outputs (N, C) work the same way
  with labels (N,) or (N, 1).
- Region losses (Dice, Jaccard, Tversky...) return one value per sample, shape (N,); with
  ``per_sample=False`` the batch value is repeated N times so that Keras's reductions and
  sample weights behave the same in both modes. Pixel losses (crossentropy, focal...) return
  one value per pixel, shape ``y_pred.shape[:-1]``. Sample weights may be per sample (N,) or
  per pixel (N, ...): they are broadcast over pixels, or averaged per sample, to fit.
- All reductions run in float32, whatever the compute dtype (float16 sums over a 512x512 image
  overflow).
- An empty class (absent from the target and from the prediction) scores a perfect ratio of 1:
  the smoothing terms give (0 + s) / (0 + s) = 1, and with zero smoothing the 0 / 0 case is
  defined as 1 explicitly. Dice, Jaccard and (focal) Tversky leave a class absent from the
  target out of the class mean by default (``ignore_empty=True``): a soft prediction never puts
  exactly 0 on it, so it would score about 0 and floor the loss at about absent / classes.
- ``include_background`` concerns softmax heads only: binary and multilabel heads have no
  background channel.
- Label values are not range-checked inside the graph (a label outside [0, C) one-hot encodes
  to all zeros); ``check_targets`` checks the data, with a clear message, before training.
"""

from __future__ import annotations

from multiseg.losses.combined import CombinedLoss
from multiseg.losses.functional import (
    crossentropy,
    dice,
    focal,
    generalized_dice,
    jaccard,
    tversky,
    weighted_crossentropy,
)
from multiseg.losses.pixel import Crossentropy, Focal, WeightedCrossentropy
from multiseg.losses.region import (
    GENERALIZED_DICE_WEIGHTS,
    Dice,
    FocalTversky,
    GeneralizedDice,
    Jaccard,
    Tversky,
)
from multiseg.losses.registry import LOSSES, build, check_channels, loss_options
from multiseg.losses.targets import check_targets

__all__ = [
    "GENERALIZED_DICE_WEIGHTS",
    "LOSSES",
    "CombinedLoss",
    "Crossentropy",
    "Dice",
    "Focal",
    "FocalTversky",
    "GeneralizedDice",
    "Jaccard",
    "Tversky",
    "WeightedCrossentropy",
    "build",
    "check_targets",
    "crossentropy",
    "dice",
    "focal",
    "generalized_dice",
    "jaccard",
    "loss_options",
    "check_channels",
    "tversky",
    "weighted_crossentropy",
]
