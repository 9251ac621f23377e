"""What the benchmark's hand-written networks (``handmade_keras``, ``handmade_torch``; used by
``step.py``) are built from: a plain description of the recipe's network, and in-memory
batches.

The hand-written networks mirror a recipe of the default's shape (``recipes/shapes.yaml``): a
U-Net trunk with batch norm and transposed-convolution upsampling, a segmentation head (Dice +
crossentropy) and a boundary head (Tversky + crossentropy) on the decoder, a classification
head (crossentropy) on the bottleneck. ``network_spec`` reads those numbers from a recipe and
refuses one that has anything they do not mirror. Neither Keras nor PyTorch is imported here.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# Each head kind the hand-written networks know: where it attaches and the loss terms they
# have (any of them, each with its weight).
MIRRORED_HEADS = {
    "segmentation": ("decoder", ("dice", "crossentropy")),
    "boundary": ("decoder", ("tversky", "crossentropy")),
    "classification": ("bottleneck", ("crossentropy",)),
}
# The only loss options the hand-written losses take (others would change the formula).
MIRRORED_OPTIONS = {"dice": (), "crossentropy": (), "tversky": ("alpha", "beta")}


def network_spec(recipe, *, channels: int) -> dict[str, Any]:
    """The recipe's network as plain data, for the hand-written Keras and PyTorch versions.

    Raises:
        ValueError: the recipe has something they do not mirror, saying what.
    """
    model = recipe.model
    problems = []
    for field, wanted in (("norm", "batch"), ("upsample", "transpose"), ("activation", "relu"),
                          ("dropout", 0.0), ("trunk", "unet")):
        if getattr(model, field) != wanted:
            problems.append(f"model.{field} is {getattr(model, field)!r}, not {wanted!r}")
    optimizer = recipe.train.optimizer
    if (optimizer.name, optimizer.weight_decay, optimizer.clipnorm) != ("adam", None, None):
        problems.append("train.optimizer is not a plain adam")
    if recipe.train.weighting.method != "static":
        problems.append(f"train.weighting is {recipe.train.weighting.method!r}, not 'static'")
    kinds = [h.kind for h in recipe.heads.values()]
    if sorted(kinds) != sorted(MIRRORED_HEADS):
        problems.append(f"heads are of kinds {kinds}, not one each of {list(MIRRORED_HEADS)}")
    heads = {}
    for name, head in recipe.heads.items():
        if head.kind not in MIRRORED_HEADS:
            continue
        attach, terms = MIRRORED_HEADS[head.kind]
        where = f"heads.{name}"
        if head.attach != attach:
            problems.append(f"{where}.attach is {head.attach!r}, not {attach!r}")
        if head.grad_scale != 1.0 or head.multilabel:
            problems.append(f"{where}: grad_scale or a multilabel target")
        if head.kind != "boundary" and head.classes < 2:
            problems.append(f"{where}.classes is {head.classes}: the mirror is softmax only")
        for term in head.loss:
            if term.name not in terms:
                problems.append(f"{where}.loss has {term.name}, not one of {list(terms)}")
                continue
            extra = set(term.options) - set(MIRRORED_OPTIONS[term.name])
            if extra:
                problems.append(f"{where}.loss {term.name} has options {sorted(extra)}")
        heads[head.kind] = {
            "name": name, "classes": head.classes, "branch": list(head.branch),
            "loss_weight": float(head.loss_weight),
            "terms": [{"name": t.name, "weight": float(t.weight), **dict(t.options)}
                      for t in head.loss],
        }
    if problems:
        raise ValueError("the hand-written networks mirror a recipe shaped like"
                         " recipes/shapes.yaml; this one differs: " + "; ".join(problems))
    return {
        "channels": int(channels),
        "filters": [int(f) for f in model.filters],
        "convs_per_level": int(model.convs_per_level),
        # Keras's momentum is the weight of the old value, PyTorch's that of the new one.
        "norm_momentum": float(model.norm_momentum),
        "heads": heads,
        "learning_rate": float(recipe.train.optimizer.learning_rate),
    }


def synthetic_batches(spec: dict, *, size: int, batch: int, count: int,
                      seed: int = 0) -> list[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """``count`` random batches in multiseg's layout: images (N, H, W, C) float32; per head,
    a label mask (N, H, W, 1) float32, a 0/1 boundary map (N, H, W, 1) float32, an image
    label (N,) int32. Only their shapes matter to the timings."""
    rng = np.random.default_rng(seed)
    heads = spec["heads"]
    out = []
    for _ in range(count):
        image = rng.random((batch, size, size, spec["channels"]), dtype=np.float32)
        seg = heads["segmentation"]
        mask = rng.integers(0, seg["classes"], (batch, size, size, 1)).astype(np.float32)
        edge = (rng.random((batch, size, size, 1)) < 0.1).astype(np.float32)
        label = rng.integers(0, heads["classification"]["classes"], (batch,)).astype(np.int32)
        out.append((image, {seg["name"]: mask, heads["boundary"]["name"]: edge,
                            heads["classification"]["name"]: label}))
    return out
