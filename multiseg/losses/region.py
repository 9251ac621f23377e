"""Region losses: ratios of sums over a sample's pixels (Dice, Jaccard, Tversky...), (N,)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras

from multiseg.losses.base import SegmentationLoss
from multiseg.losses.checks import DEFAULT_SMOOTH, check_smoothing, check_weights
from multiseg.losses.functional import dice, generalized_dice, jaccard, tversky
from multiseg.tensors import PACKAGE, check_bool, check_number, fail


class _RegionLoss(SegmentationLoss):
    """Shared arguments of the ratio losses (smoothing, reduction, background, class weights)."""

    def __init__(self, *, from_logits: bool, smooth: float | None, smooth_nr: float,
                 smooth_dr: float, per_sample: bool, include_background: bool,
                 class_weights: Sequence[float] | None, ignore_empty: bool, multilabel: bool,
                 name: str | None, reduction: str | None, dtype: Any) -> None:
        super().__init__(from_logits=from_logits, multilabel=multilabel, name=name,
                         reduction=reduction, dtype=dtype)
        owner = type(self).__name__
        self.smooth_nr, self.smooth_dr = check_smoothing(owner, smooth, smooth_nr, smooth_dr)
        self.per_sample = check_bool(owner, "per_sample", per_sample)
        self.include_background = check_bool(owner, "include_background", include_background)
        self.class_weights = check_weights(owner, "class_weights", class_weights)
        self.ignore_empty = check_bool(owner, "ignore_empty", ignore_empty)

    def _options(self) -> dict[str, Any]:
        return {"smooth_nr": self.smooth_nr, "smooth_dr": self.smooth_dr,
                "per_sample": self.per_sample, "include_background": self.include_background,
                "class_weights": self.class_weights, "ignore_empty": self.ignore_empty}


class _OverlapLoss(_RegionLoss):
    """Dice and Jaccard: the same arguments, a different ratio (``_function``)."""

    default_name = ""  # the log name when ``name`` is None
    _function: Any = None  # the pure function: dice or jaccard

    def __init__(self, *, from_logits: bool = False, smooth: float | None = None,
                 smooth_nr: float = DEFAULT_SMOOTH, smooth_dr: float = DEFAULT_SMOOTH,
                 squared: bool = False, per_sample: bool = True, include_background: bool = True,
                 class_weights: Sequence[float] | None = None, ignore_empty: bool = True,
                 multilabel: bool = False, name: str | None = None,
                 reduction: str | None = "sum_over_batch_size", dtype: Any = None) -> None:
        super().__init__(from_logits=from_logits, smooth=smooth, smooth_nr=smooth_nr,
                         smooth_dr=smooth_dr, per_sample=per_sample,
                         include_background=include_background, class_weights=class_weights,
                         ignore_empty=ignore_empty, multilabel=multilabel,
                         name=name or self.default_name, reduction=reduction, dtype=dtype)
        self.squared = check_bool(type(self).__name__, "squared", squared)

    def _options(self) -> dict[str, Any]:
        return {**super()._options(), "squared": self.squared}

    def call(self, y_true: Any, y_pred: Any) -> Any:
        return self._function(y_true, y_pred, from_logits=self.from_logits,
                              multilabel=self.multilabel, **self._options())


@keras.saving.register_keras_serializable(package=PACKAGE)
class Dice(_OverlapLoss):
    """Soft Dice loss, mean over classes, per sample or over the batch.

    Formula, for class c with probabilities p and one-hot target g summed over the pixels of a
    sample (``per_sample=True``) or of the whole batch (``per_sample=False``)::

        D_c  = (2 * sum(p * g) + smooth_nr) / (sum(p) + sum(g) + smooth_dr)
               (squared=True: sum(p^2) + sum(g^2) in the denominator, V-Net)
        loss = 1 - sum_c w_c * D_c / sum_c w_c        (then the mean over samples)

    with w_c = ``class_weights`` (default 1) and w_0 = 0 when ``include_background=False``.
    With ``ignore_empty=True`` (the default) the class mean runs over the classes present in
    the sample's target (the batch's with ``per_sample=False``), and a sample with no included
    class present scores loss 0. With ``ignore_empty=False`` an absent class scores
    D_c = smooth_nr / (sum(p) + smooth_dr), about 0 for any soft prediction, so the loss has a
    floor of about sum_{absent c} w_c / sum_c w_c (absent classes / classes) that training
    cannot lower; its gradient, smooth_nr / (sum(p) + smooth_dr)^2, is nearly 0.
    Two empty masks give D = 1 (smoothing gives s / s; with zero smoothing the 0 / 0 case is
    defined as 1). Unlike ``keras.losses.Dice`` the ratio is per class, not pooled over
    classes, and the numerator is smoothed too.

    Args:
        from_logits: ``y_pred`` are logits (sigmoid or softmax applied here). Default False.
        smooth: sets both ``smooth_nr`` and ``smooth_dr`` (e.g. 1.0, the blog convention).
            Default None.
        smooth_nr: added to the numerator. Default 1e-5 (MONAI's value).
        smooth_dr: added to the denominator. Default 1e-5; must be > 0 if ``smooth_nr`` > 0.
        squared: square the terms of the denominator (V-Net). Default False.
        per_sample: True: one ratio per sample and class, then the mean; False: sums over the
            whole batch first. Default True.
        include_background: keep channel 0 in the class mean (multi-class only; a binary head's
            single channel is always the foreground). Default True.
        class_weights: one non-negative weight per channel for the class mean. Default None.
        ignore_empty: leave classes absent from the target (per sample, or over the batch
            with ``per_sample=False``) out of the class mean; a sample with no included class
            present scores 0. Default True (see above for the floor it removes).
        multilabel: C > 1 channels are independent sigmoid outputs. Default False.
        name: Default None: "dice". reduction, dtype: as ``keras.losses.Loss``.

    Shape:
        y_pred (N, ..., C); y_true labels (N, ...) / (N, ..., 1) or one-hot (N, ..., C).
        ``call`` returns (N,).

    Raises:
        ValueError: an invalid argument, or ``y_true`` incompatible with ``y_pred``.

    Example:
        >>> loss = Dice(from_logits=True, smooth=1.0)
        >>> value = loss(labels, logits)   # labels (N, H, W), logits (N, H, W, C)

    Reference:
        Milletari et al., "V-Net", 3DV 2016; MONAI ``DiceLoss``.
    """

    default_name = "dice"
    _function = staticmethod(dice)


@keras.saving.register_keras_serializable(package=PACKAGE)
class Jaccard(_OverlapLoss):
    """Soft Jaccard (IoU) loss, mean over classes, per sample or over the batch.

    Formula, sums over the pixels of a sample (``per_sample=True``) or of the batch::

        I_c  = sum(p * g);   U_c = sum(p) + sum(g) - I_c   (squared: sum(p^2) + sum(g^2) - I_c)
        J_c  = (I_c + smooth_nr) / (U_c + smooth_dr)
        loss = 1 - sum_c w_c * J_c / sum_c w_c

    Same arguments, defaults and empty-class behaviour (``ignore_empty``) as ``Dice``. Note
    that MONAI's ``DiceLoss(jaccard=True)`` needs a smoothing of ``2 * s`` to equal this
    formula with ``s``.

    Args:
        from_logits, smooth, smooth_nr, smooth_dr, squared, per_sample, include_background,
        class_weights, ignore_empty, multilabel, name, reduction, dtype: as ``Dice``.

    Shape:
        As ``Dice``; ``call`` returns (N,).

    Raises:
        ValueError: an invalid argument, or ``y_true`` incompatible with ``y_pred``.

    Example:
        >>> Jaccard(from_logits=True)(labels, logits)

    Reference:
        Rahman & Wang, "Optimizing intersection-over-union in deep neural networks", ISVC 2016.
    """

    default_name = "jaccard"
    _function = staticmethod(jaccard)


GENERALIZED_DICE_WEIGHTS = ("square", "simple", "uniform")


@keras.saving.register_keras_serializable(package=PACKAGE)
class GeneralizedDice(SegmentationLoss):
    """Generalized Dice loss: one ratio over all classes, classes weighted by their volume.

    Formula, with G_c = sum(g_c) the target volume of class c in a sample (or the batch)::

        w_c  = 1 / G_c^2 ("square"), 1 / G_c ("simple") or 1 ("uniform")
        GD   = (2 * sum_c w_c * sum(p_c * g_c) + smooth_nr)
               / (sum_c w_c * (sum(p_c) + sum(g_c)) + smooth_dr)
        loss = 1 - GD

    A class absent from the target would get w_c = inf; it gets the largest weight of the
    present classes instead (MONAI's rule), and when no included class is present all included
    classes weigh 1, so the loss is always finite. Keep the smoothing tiny: it is added after
    the weighted sums, where weights ~ 1 / G^2 make them small, so ``smooth=1`` would swamp the
    loss. Two empty masks give loss 0.

    Args:
        from_logits: ``y_pred`` are logits. Default False.
        weight_type: "square", "simple" or "uniform". Default "square" (Sudre et al.).
        smooth, smooth_nr, smooth_dr: as ``Dice``; defaults 1e-5.
        per_sample: one ratio per sample (True) or over the batch (False). Default True.
        include_background: keep channel 0 (multi-class only). Default True.
        multilabel: C > 1 channels are independent sigmoid outputs. Default False.
        name, reduction, dtype: as ``keras.losses.Loss``.

    Shape:
        As ``Dice``; ``call`` returns (N,).

    Raises:
        ValueError: an invalid argument, or ``y_true`` incompatible with ``y_pred``.

    Example:
        >>> GeneralizedDice(from_logits=True)(labels, logits)

    Reference:
        Sudre et al., "Generalised Dice overlap as a deep learning loss function for highly
        unbalanced segmentations", DLMIA 2017.
    """

    def __init__(self, *, from_logits: bool = False, weight_type: str = "square",
                 smooth: float | None = None, smooth_nr: float = DEFAULT_SMOOTH,
                 smooth_dr: float = DEFAULT_SMOOTH, per_sample: bool = True,
                 include_background: bool = True, multilabel: bool = False,
                 name: str | None = "generalized_dice",
                 reduction: str | None = "sum_over_batch_size", dtype: Any = None) -> None:
        super().__init__(from_logits=from_logits, multilabel=multilabel, name=name,
                         reduction=reduction, dtype=dtype)
        owner = type(self).__name__
        if weight_type not in GENERALIZED_DICE_WEIGHTS:
            raise fail(owner, "weight_type", weight_type,
                        f"one of {', '.join(GENERALIZED_DICE_WEIGHTS)}")
        self.weight_type = weight_type
        self.smooth_nr, self.smooth_dr = check_smoothing(owner, smooth, smooth_nr, smooth_dr)
        self.per_sample = check_bool(owner, "per_sample", per_sample)
        self.include_background = check_bool(owner, "include_background", include_background)

    def _options(self) -> dict[str, Any]:
        return {"weight_type": self.weight_type, "smooth_nr": self.smooth_nr,
                "smooth_dr": self.smooth_dr, "per_sample": self.per_sample,
                "include_background": self.include_background}

    def call(self, y_true: Any, y_pred: Any) -> Any:
        return generalized_dice(y_true, y_pred, from_logits=self.from_logits,
                                multilabel=self.multilabel, **self._options())


@keras.saving.register_keras_serializable(package=PACKAGE)
class Tversky(_RegionLoss):
    """Tversky loss: Dice with separate weights for false positives and false negatives.

    Formula, sums over the pixels of a sample (``per_sample=True``) or of the batch::

        TP_c = sum(p * g);  FP_c = sum(p * (1 - g));  FN_c = sum((1 - p) * g)
        TI_c = (TP_c + smooth_nr) / (TP_c + alpha * FP_c + beta * FN_c + smooth_dr)
        loss = sum_c w_c * (1 - TI_c) / sum_c w_c

    ``alpha`` weights FALSE POSITIVES and ``beta`` FALSE NEGATIVES, as in Salehi et al. 2017
    (``keras.losses.Tversky`` 3.15 swaps them). alpha = beta = 0.5 is Dice; beta > alpha favours
    recall (thin or small structures). Per class, not pooled: with pooled softmax classes total
    FP equals total FN and alpha, beta would have no effect. With ``ignore_empty=True`` (the
    default) classes absent from the target are left out of the class mean, as in ``Dice``;
    with False an absent class adds about w_c / sum_c w_c to the loss (TI_c ~ 0).

    Args:
        from_logits: ``y_pred`` are logits. Default False.
        alpha: weight of false positives, >= 0. Default 0.3 (Salehi's best setting).
        beta: weight of false negatives, >= 0. Default 0.7.
        smooth, smooth_nr, smooth_dr, per_sample, include_background, class_weights,
        ignore_empty, multilabel, name, reduction, dtype: as ``Dice``.

    Shape:
        As ``Dice``; ``call`` returns (N,).

    Raises:
        ValueError: an invalid argument, or ``y_true`` incompatible with ``y_pred``.

    Example:
        >>> Tversky(alpha=0.3, beta=0.7, from_logits=True)(mask, logits)

    Reference:
        Salehi et al., "Tversky loss function for image segmentation using 3D fully
        convolutional deep networks", MLMI 2017.
    """

    def __init__(self, *, from_logits: bool = False, alpha: float = 0.3, beta: float = 0.7,
                 smooth: float | None = None, smooth_nr: float = DEFAULT_SMOOTH,
                 smooth_dr: float = DEFAULT_SMOOTH, per_sample: bool = True,
                 include_background: bool = True, class_weights: Sequence[float] | None = None,
                 ignore_empty: bool = True, multilabel: bool = False, name: str | None = "tversky",
                 reduction: str | None = "sum_over_batch_size", dtype: Any = None) -> None:
        super().__init__(from_logits=from_logits, smooth=smooth, smooth_nr=smooth_nr,
                         smooth_dr=smooth_dr, per_sample=per_sample,
                         include_background=include_background, class_weights=class_weights,
                         ignore_empty=ignore_empty, multilabel=multilabel, name=name,
                         reduction=reduction, dtype=dtype)
        owner = type(self).__name__
        self.alpha = check_number(owner, "alpha", alpha, low=0.0)
        self.beta = check_number(owner, "beta", beta, low=0.0)
        if self.alpha == 0 and self.beta == 0 and self.smooth_dr == 0:
            raise fail(owner, "alpha", alpha, "alpha + beta > 0 or smooth_dr > 0 (otherwise"
                        " the index is TP / TP)")

    def _options(self) -> dict[str, Any]:
        return {**super()._options(), "alpha": self.alpha, "beta": self.beta}

    def call(self, y_true: Any, y_pred: Any) -> Any:
        return tversky(y_true, y_pred, from_logits=self.from_logits, multilabel=self.multilabel,
                       **self._options())


@keras.saving.register_keras_serializable(package=PACKAGE)
class FocalTversky(Tversky):
    """Focal Tversky loss: the per-class Tversky loss raised to the power ``gamma``.

    Formula (TI_c as in ``Tversky``)::

        loss = sum_c w_c * (1 - TI_c) ** gamma / sum_c w_c

    ``gamma`` is the exponent itself. Abraham & Khan write the exponent as 1 / gamma and
    recommend their gamma = 4/3, which is this loss's default ``gamma=0.75``. An exponent below
    1 raises the loss and its gradient as the index approaches 1 ((1 - TI)^0.75 > 1 - TI), which
    keeps small, already fairly well segmented structures training; gamma = 1 is ``Tversky``.

    Args:
        from_logits: ``y_pred`` are logits. Default False.
        alpha: weight of false positives. Default 0.3.
        beta: weight of false negatives. Default 0.7.
        gamma: exponent, > 0. Default 0.75.
        smooth, smooth_nr, smooth_dr, per_sample, include_background, class_weights,
        ignore_empty, multilabel, name, reduction, dtype: as ``Dice``.

    Shape:
        As ``Dice``; ``call`` returns (N,).

    Raises:
        ValueError: an invalid argument, or ``y_true`` incompatible with ``y_pred``.

    Example:
        >>> FocalTversky(gamma=0.75, from_logits=True)(mask, logits)

    Reference:
        Abraham & Khan, "A novel focal Tversky loss function with improved attention U-Net for
        lesion segmentation", ISBI 2019.
    """

    def __init__(self, *, from_logits: bool = False, alpha: float = 0.3, beta: float = 0.7,
                 gamma: float = 0.75, smooth: float | None = None,
                 smooth_nr: float = DEFAULT_SMOOTH, smooth_dr: float = DEFAULT_SMOOTH,
                 per_sample: bool = True, include_background: bool = True,
                 class_weights: Sequence[float] | None = None, ignore_empty: bool = True,
                 multilabel: bool = False, name: str | None = "focal_tversky",
                 reduction: str | None = "sum_over_batch_size", dtype: Any = None) -> None:
        super().__init__(from_logits=from_logits, alpha=alpha, beta=beta, smooth=smooth,
                         smooth_nr=smooth_nr, smooth_dr=smooth_dr, per_sample=per_sample,
                         include_background=include_background, class_weights=class_weights,
                         ignore_empty=ignore_empty, multilabel=multilabel, name=name,
                         reduction=reduction, dtype=dtype)
        self.gamma = check_number(type(self).__name__, "gamma", gamma, low=0.0,
                                   low_open=True)

    def _options(self) -> dict[str, Any]:
        return {**super()._options(), "gamma": self.gamma}

