"""Hard segmentation and classification metrics, streamed over batches.

Modules: ``base`` (hard decisions, weights, the per-class base), ``confusion`` (Dice, IoU,
precision, recall from TP/FP/FN counts), ``accuracy`` (accuracy, top-k), ``boundary``
(boundary F1), ``loss_term`` (a loss term's running mean), ``registry`` (``METRICS``,
``metric_options``, ``build_metric``).

Every metric turns ``y_pred`` into hard decisions (argmax over C > 1 channels; for one channel
or ``multilabel`` channels, probability > ``threshold``, default 0.5, where the probability of a
logit is its sigmoid) and accumulates counts (true positives, false positives, false negatives,
matched boundary pixels...) in metric variables across batches. ``result()`` computes the
ratios from the totals, so an epoch value is the value over the whole epoch, never a mean of
batch means.

Inputs follow ``multiseg.losses``: ``y_pred`` channels-last logits or probabilities as
``from_logits`` says, ``y_true`` integer labels (possibly as floats), one-hot, or a binary
mask; image-level outputs (N, C) with labels (N,) or (N, 1).

Conventions: ``classes`` is the number of output channels (1 = binary). Class means skip
channel 0 (background) by default when C > 1 (``include_background=False``); a binary head's
single channel is the foreground. A class absent from both target and prediction scores 1
(consistent with the losses: two empty masks agree perfectly); a ratio whose denominator is 0
while the class is present somewhere (precision when nothing was predicted) scores 0.
"""

from multiseg.metrics.accuracy import Accuracy, TopKAccuracy
from multiseg.metrics.boundary import BoundaryF1
from multiseg.metrics.confusion import DiceScore, IoUScore, Precision, Recall
from multiseg.metrics.loss_term import LossTerm
from multiseg.metrics.registry import METRICS, build_metric, metric_options

__all__ = [
    "METRICS",
    "Accuracy",
    "BoundaryF1",
    "DiceScore",
    "IoUScore",
    "LossTerm",
    "Precision",
    "Recall",
    "TopKAccuracy",
    "build_metric",
    "metric_options",
]
