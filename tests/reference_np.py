"""Plain-NumPy reference implementations of the multiseg losses and metrics.

Written from the formulas (papers and docs/losses.md), not from multiseg's Keras code: float64,
explicit loops over samples and classes, no shared helpers with the library. Each loss returns
the final scalar, i.e. what ``loss(y_true, y_pred)`` returns with Keras's default reduction
(the mean over samples for region losses, over pixels for pixel losses).
"""

from __future__ import annotations

import numpy as np

EPS = 1e-7  # clip of probabilities before a log, as the library (and keras) document


# ---------------------------------------------------------------------------- input handling


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def probabilities(y_pred: np.ndarray, from_logits: bool, multilabel: bool = False) -> np.ndarray:
    y_pred = np.asarray(y_pred, np.float64)
    if not from_logits:
        return y_pred
    if y_pred.shape[-1] == 1 or multilabel:
        return sigmoid(y_pred)
    return softmax(y_pred)


def one_hot(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Targets as float64 shaped like y_pred: binary masks, labels or one-hot."""
    y_true = np.asarray(y_true, np.float64)
    channels = y_pred.shape[-1]
    if y_true.shape == y_pred.shape:  # binary mask, multi-hot or one-hot
        return y_true
    if y_true.ndim == y_pred.ndim and y_true.shape[-1] == 1:
        y_true = y_true[..., 0]
    if channels == 1:
        return y_true[..., None]
    labels = np.round(y_true).astype(int)
    out = np.zeros(labels.shape + (channels,))
    for index in np.ndindex(labels.shape):
        out[index + (labels[index],)] = 1.0
    return out


def _class_weights(channels: int, class_weights, include_background: bool,
                   multilabel: bool) -> np.ndarray:
    w = np.ones(channels) if class_weights is None else np.asarray(class_weights, np.float64)
    w = w.copy()
    if channels > 1 and not include_background and not multilabel:  # softmax heads only
        w[0] = 0.0
    return w


def _groups(g: np.ndarray, p: np.ndarray, per_sample: bool):
    """Yield (g, p) flattened to (pixels, C) per sample, or once for the whole batch."""
    c = g.shape[-1]
    if per_sample:
        for n in range(g.shape[0]):
            yield g[n].reshape(-1, c), p[n].reshape(-1, c)
    else:
        yield g.reshape(-1, c), p.reshape(-1, c)


def _div(num: float, den: float) -> float:
    # The documented convention: 0 / 0 (zero smoothing, empty class) counts as a perfect 1.
    return 1.0 if den == 0 else num / den


def _class_mean(values: list[float], w: np.ndarray, gs: np.ndarray, ignore_empty: bool,
                perfect: float) -> float:
    """Weighted class mean; with ignore_empty only over classes present in the target ``gs``
    (pixels, C), and ``perfect`` when none of the weighted classes is present."""
    if ignore_empty:
        w = np.where(gs.sum(axis=0) > 0, w, 0.0)
        if w.sum() == 0:
            return perfect
    return float(np.dot(w, values) / w.sum())


# ---------------------------------------------------------------------------- region losses


def dice_loss(y_true, y_pred, *, from_logits=False, smooth_nr=1e-5, smooth_dr=1e-5,
              squared=False, per_sample=True, include_background=True, class_weights=None,
              ignore_empty=True, multilabel=False) -> float:
    p = probabilities(y_pred, from_logits, multilabel)
    g = one_hot(y_true, p)
    w = _class_weights(p.shape[-1], class_weights, include_background, multilabel)
    losses = []
    for gs, ps in _groups(g, p, per_sample):
        scores = []
        for c in range(p.shape[-1]):
            inter = np.sum(gs[:, c] * ps[:, c])
            if squared:
                den = np.sum(ps[:, c] ** 2) + np.sum(gs[:, c] ** 2)
            else:
                den = np.sum(ps[:, c]) + np.sum(gs[:, c])
            scores.append(_div(2 * inter + smooth_nr, den + smooth_dr))
        losses.append(1.0 - _class_mean(scores, w, gs, ignore_empty, 1.0))
    return float(np.mean(losses))


def jaccard_loss(y_true, y_pred, *, from_logits=False, smooth_nr=1e-5, smooth_dr=1e-5,
                 squared=False, per_sample=True, include_background=True, class_weights=None,
                 ignore_empty=True, multilabel=False) -> float:
    p = probabilities(y_pred, from_logits, multilabel)
    g = one_hot(y_true, p)
    w = _class_weights(p.shape[-1], class_weights, include_background, multilabel)
    losses = []
    for gs, ps in _groups(g, p, per_sample):
        scores = []
        for c in range(p.shape[-1]):
            inter = np.sum(gs[:, c] * ps[:, c])
            if squared:
                union = np.sum(ps[:, c] ** 2) + np.sum(gs[:, c] ** 2) - inter
            else:
                union = np.sum(ps[:, c]) + np.sum(gs[:, c]) - inter
            scores.append(_div(inter + smooth_nr, union + smooth_dr))
        losses.append(1.0 - _class_mean(scores, w, gs, ignore_empty, 1.0))
    return float(np.mean(losses))


def tversky_loss(y_true, y_pred, *, from_logits=False, alpha=0.3, beta=0.7, gamma=1.0,
                 smooth_nr=1e-5, smooth_dr=1e-5, per_sample=True, include_background=True,
                 class_weights=None, ignore_empty=True, multilabel=False) -> float:
    """alpha weights false positives, beta false negatives (Salehi et al. 2017)."""
    p = probabilities(y_pred, from_logits, multilabel)
    g = one_hot(y_true, p)
    w = _class_weights(p.shape[-1], class_weights, include_background, multilabel)
    losses = []
    for gs, ps in _groups(g, p, per_sample):
        terms = []
        for c in range(p.shape[-1]):
            tp = np.sum(ps[:, c] * gs[:, c])
            fp = np.sum(ps[:, c] * (1 - gs[:, c]))
            fn = np.sum((1 - ps[:, c]) * gs[:, c])
            index = _div(tp + smooth_nr, tp + alpha * fp + beta * fn + smooth_dr)
            terms.append(max(1.0 - index, 0.0) ** gamma)
        losses.append(_class_mean(terms, w, gs, ignore_empty, 0.0))
    return float(np.mean(losses))


def generalized_dice_loss(y_true, y_pred, *, from_logits=False, weight_type="square",
                          smooth_nr=1e-5, smooth_dr=1e-5, per_sample=True,
                          include_background=True, multilabel=False) -> float:
    p = probabilities(y_pred, from_logits, multilabel)
    g = one_hot(y_true, p)
    channels = p.shape[-1]
    included = [c for c in range(channels)
                if include_background or multilabel or channels == 1 or c > 0]
    losses = []
    for gs, ps in _groups(g, p, per_sample):
        weights = {}
        for c in included:
            volume = gs[:, c].sum()
            if volume > 0:
                weights[c] = {"square": 1 / volume**2, "simple": 1 / volume,
                              "uniform": 1.0}[weight_type]
        if weights:
            largest = max(weights.values())
            weights = {c: weights.get(c, largest) for c in included}
        else:
            weights = dict.fromkeys(included, 1.0)
        num = sum(weights[c] * np.sum(gs[:, c] * ps[:, c]) for c in included)
        den = sum(weights[c] * (np.sum(gs[:, c]) + np.sum(ps[:, c])) for c in included)
        losses.append(1.0 - _div(2 * num + smooth_nr, den + smooth_dr))
    return float(np.mean(losses))


# ----------------------------------------------------------------------------- pixel losses


def _clip(p: np.ndarray) -> np.ndarray:
    return np.clip(p, EPS, 1 - EPS)


def crossentropy_loss(y_true, y_pred, *, from_logits=False, label_smoothing=0.0,
                      class_weights=None, multilabel=False) -> float:
    p = probabilities(y_pred, from_logits, multilabel)
    if not from_logits:
        p = _clip(p)
    g = one_hot(y_true, p)
    channels = p.shape[-1]
    if channels == 1 or multilabel:
        s = g * (1 - label_smoothing) + label_smoothing / 2
        ce = -(s * np.log(p) + (1 - s) * np.log(1 - p))
        if class_weights is not None:
            if channels == 1:
                ce = ce * (class_weights[0] * (1 - g) + class_weights[1] * g)
            else:
                ce = ce * np.asarray(class_weights)
        return float(np.mean(ce.mean(axis=-1)))
    s = g * (1 - label_smoothing) + label_smoothing / channels
    ce = -(s * np.log(p)).sum(axis=-1)
    if class_weights is not None:
        ce = ce * (g * np.asarray(class_weights)).sum(axis=-1)
    return float(np.mean(ce))


def focal_loss(y_true, y_pred, *, from_logits=False, gamma=2.0, alpha=None,
               multilabel=False) -> float:
    p = probabilities(y_pred, from_logits, multilabel)
    if not from_logits:
        p = _clip(p)
    g = one_hot(y_true, p)
    channels = p.shape[-1]
    if channels == 1 or multilabel:
        a = 1.0 if alpha is None else np.asarray(alpha, np.float64)
        b = 1.0 if alpha is None else 1 - a
        fl = -(a * g * (1 - p) ** gamma * np.log(p) + b * (1 - g) * p**gamma * np.log(1 - p))
        return float(np.mean(fl.mean(axis=-1)))
    a = np.ones(channels) if alpha is None else np.asarray(alpha, np.float64)
    fl = -(a * g * (1 - p) ** gamma * np.log(p)).sum(axis=-1)
    return float(np.mean(fl))


def weighted_crossentropy_loss(y_true, y_pred, *, from_logits=False, pos_weight="balanced",
                               multilabel=False) -> float:
    p = probabilities(y_pred, from_logits, True)
    if not from_logits:
        p = _clip(p)
    g = np.asarray(y_true, np.float64).reshape(p.shape)
    out = np.zeros(p.shape)
    for n in range(p.shape[0]):
        for c in range(p.shape[-1]):
            gn, pn = g[n, ..., c], p[n, ..., c]
            if pos_weight == "balanced":
                f = gn.mean()
                w_pos, w_neg = 0.5 / max(f, EPS), 0.5 / max(1 - f, EPS)
            else:
                w_pos, w_neg = pos_weight, 1.0
            out[n, ..., c] = -(w_pos * gn * np.log(pn) + w_neg * (1 - gn) * np.log(1 - pn))
    return float(np.mean(out.mean(axis=-1)))


# ---------------------------------------------------------------------------------- metrics


def hard(y_true, y_pred, *, from_logits=False, threshold=None, multilabel=False):
    """Hard 0/1 target and prediction, shaped like y_pred.

    One channel or multilabel: positive where the probability (the sigmoid of a logit)
    exceeds ``threshold``, 0.5 when None."""
    y_pred = np.asarray(y_pred, np.float64)
    g = one_hot(y_true, y_pred)
    channels = y_pred.shape[-1]
    if channels == 1 or multilabel:
        p = sigmoid(y_pred) if from_logits else y_pred
        cut = 0.5 if threshold is None else threshold
        return (g > 0.5).astype(float), (p > cut).astype(float)
    h = np.zeros_like(y_pred)
    gh = np.zeros_like(y_pred)
    for index in np.ndindex(y_pred.shape[:-1]):
        h[index + (int(np.argmax(y_pred[index])),)] = 1
        gh[index + (int(np.argmax(g[index])),)] = 1
    return gh, h


def confusion(batches, **kw) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class TP, FP, FN summed over a list of (y_true, y_pred) batches."""
    tp = fp = fn = 0
    for y_true, y_pred in batches:
        g, h = hard(y_true, y_pred, **kw)
        axes = tuple(range(g.ndim - 1))
        tp = tp + (g * h).sum(axis=axes)
        fp = fp + ((1 - g) * h).sum(axis=axes)
        fn = fn + (g * (1 - h)).sum(axis=axes)
    return tp, fp, fn


def _metric_ratio(num, den, empty):
    if empty:
        return 1.0
    return 0.0 if den == 0 else num / den


def _select(values, channels, include_background, class_id, multilabel=False):
    if class_id is not None:
        return float(values[class_id])
    start = 1 if channels > 1 and not include_background and not multilabel else 0
    return float(np.mean(values[start:]))


def count_metric(kind: str, batches, *, include_background=False, class_id=None, **kw):
    """'dice', 'iou', 'precision' or 'recall' over a list of (y_true, y_pred) batches."""
    tp, fp, fn = confusion(batches, **kw)
    values = []
    for c in range(len(tp)):
        empty = tp[c] + fp[c] + fn[c] == 0
        num, den = {"dice": (2 * tp[c], 2 * tp[c] + fp[c] + fn[c]),
                    "iou": (tp[c], tp[c] + fp[c] + fn[c]),
                    "precision": (tp[c], tp[c] + fp[c]),
                    "recall": (tp[c], tp[c] + fn[c])}[kind]
        values.append(_metric_ratio(num, den, empty))
    return _select(np.asarray(values), len(tp), include_background, class_id,
                   kw.get("multilabel", False))


def accuracy(batches, **kw) -> float:
    right = total = 0
    for y_true, y_pred in batches:
        g, h = hard(y_true, y_pred, **kw)
        if g.shape[-1] == 1 or kw.get("multilabel"):
            right += np.sum(g == h)
            total += g.size
        else:
            right += np.sum(np.all(g == h, axis=-1))
            total += g[..., 0].size
    return right / total


def top_k_accuracy(batches, k: int) -> float:
    right = total = 0
    for y_true, y_pred in batches:
        y_pred = np.asarray(y_pred, np.float64)
        g = one_hot(y_true, y_pred)
        for index in np.ndindex(y_pred.shape[:-1]):
            label = int(np.argmax(g[index]))
            higher = np.sum(y_pred[index] > y_pred[index][label])
            right += higher < k
            total += 1
    return right / total


def boundary_2d(mask: np.ndarray) -> np.ndarray:
    """Pixels of a 2-D mask with a 0 among their in-image 8 neighbours."""
    h, w = mask.shape
    out = np.zeros_like(mask)
    for i in range(h):
        for j in range(w):
            if mask[i, j]:
                window = mask[max(i - 1, 0): i + 2, max(j - 1, 0): j + 2]
                out[i, j] = float(window.min() == 0)
    return out


def _near(points: np.ndarray, other: np.ndarray, tolerance: int) -> int:
    """How many 1-pixels of ``points`` have a 1 of ``other`` within Chebyshev distance t."""
    others = np.argwhere(other > 0)
    count = 0
    for i, j in np.argwhere(points > 0):
        if len(others) and np.min(np.maximum(np.abs(others[:, 0] - i),
                                             np.abs(others[:, 1] - j))) <= tolerance:
            count += 1
    return count


def boundary_f1(batches, *, tolerance=2, outlines=False, include_background=False,
                class_id=None, **kw):
    """Boundary F1 over a list of 2-D batches (N, H, W, C); ``outlines``: the hard maps are
    the boundaries (a boundary head's outline maps), nothing is extracted."""
    channels = None
    counts = None
    for y_true, y_pred in batches:
        g, h = hard(y_true, y_pred, **kw)
        channels = g.shape[-1]
        if counts is None:
            counts = np.zeros((channels, 4))
        for n in range(g.shape[0]):
            for c in range(channels):
                bg, bh = g[n, :, :, c], h[n, :, :, c]
                if not outlines:
                    bg, bh = boundary_2d(bg), boundary_2d(bh)
                counts[c] += [_near(bh, bg, tolerance), bh.sum(), _near(bg, bh, tolerance),
                              bg.sum()]
    values = []
    for matched_pred, total_pred, matched_true, total_true in counts:
        empty = total_pred + total_true == 0
        precision = _metric_ratio(matched_pred, total_pred, empty)
        recall = _metric_ratio(matched_true, total_true, empty)
        values.append(_metric_ratio(2 * precision * recall, precision + recall, empty))
    return _select(np.asarray(values), channels, include_background, class_id,
                   kw.get("multilabel", False))
