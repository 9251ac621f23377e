"""train.precision (mixed bfloat16/float16) and train.jit_compile (XLA)."""

from __future__ import annotations

import copy
import json
import os
import warnings

import keras
import numpy as np
import pytest

from multiseg import load_model
from multiseg.losses import functional
from multiseg.recipe import RecipeError, from_dict
from multiseg.train import train
from tests.conftest import TINY_RAW

LOSSES_512 = [
    ("dice", {}), ("jaccard", {}), ("generalized_dice", {}), ("tversky", {}),
    ("focal", {}), ("crossentropy", {}),
]


@pytest.mark.parametrize("name,options", LOSSES_512)
def test_region_and_pixel_losses_are_exact_on_float16_inputs(name, options):
    # A sum over 512 x 512 probabilities is 262,144 at most: past float16's 65,504. The pure
    # functions compute in float32 whatever they are given (Keras's Loss casts before them).
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (1, 512, 512, 4)).astype(np.float32)
    labels = rng.integers(0, 4, (1, 512, 512, 1)).astype(np.int32)
    function = getattr(functional, name)
    half = function(labels, keras.ops.convert_to_tensor(logits.astype(np.float16)),
                    from_logits=True, **options)
    full = function(labels, keras.ops.convert_to_tensor(logits.astype(np.float16)
                                                        .astype(np.float32)),
                    from_logits=True, **options)
    half, full = (keras.ops.convert_to_numpy(v) for v in (half, full))
    assert np.isfinite(half).all()
    np.testing.assert_allclose(half, full, atol=1e-3)


@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_trains_saves_and_reloads(precision, tmp_path):
    raw = copy.deepcopy(TINY_RAW)
    raw["output"] = str(tmp_path / "run")
    raw["train"]["precision"] = precision
    result = train(from_dict(raw), verbose=0)
    compute = precision.removeprefix("mixed_")
    conv = next(layer for layer in result.model.layers if "conv" in layer.name)
    assert conv.compute_dtype == compute and conv.variable_dtype == "float32"
    assert keras.config.dtype_policy().name == "float32"  # nothing else inherits it
    with open(os.path.join(result.run_dir, "metrics.json")) as handle:
        figures = json.load(handle)
    for split in ("train", "val"):
        assert all(np.isfinite(v) for group in figures[split].values() for v in group.values())
    model = load_model(os.path.join(result.run_dir, "model.keras"))
    if precision == "mixed_float16":  # the loss scale comes back with the model
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    image = np.random.default_rng(1).random((1, 32, 32, 3), dtype=np.float32)
    outputs = model.predict_on_batch(image)
    assert all(np.isfinite(np.asarray(v, np.float32)).all() for v in outputs.values())


def test_every_head_loss_and_metric_trains_under_xla(tmp_path):
    raw = copy.deepcopy(TINY_RAW)
    raw["output"] = str(tmp_path / "run")
    raw["train"]["jit_compile"] = True
    raw["train"]["epochs"] = 1
    heads = raw["heads"]
    heads["mask"]["loss"] = [
        {"name": n} for n in ("dice", "jaccard", "generalized_dice", "tversky",
                              "focal_tversky", "focal", "crossentropy")]
    heads["mask"]["metrics"] = ["dice", "iou", "precision", "recall", "boundary_f1",
                                "accuracy"]
    heads["boundary"]["loss"] = [{"name": "weighted_crossentropy"}, {"name": "dice"}]
    heads["boundary"]["metrics"] = ["dice", "boundary_f1"]
    heads["shape"]["metrics"] = ["accuracy", {"name": "top_k_accuracy", "k": 2}]
    heads["present"] = {"kind": "classification", "classes": 3, "attach": "bottleneck",
                        "target": {"derive": "label", "from": "mask", "mode": "presence"},
                        "loss": "crossentropy", "metrics": ["accuracy"]}
    result = train(from_dict(raw), verbose=0)
    assert result.model.jit_compile is True
    values = [v for group in result.metrics["train"].values() for v in group.values()]
    assert len(values) > 20 and all(np.isfinite(values))


def test_options_are_checked():
    raw = copy.deepcopy(TINY_RAW)
    raw["train"]["precision"] = "float16"
    with pytest.raises(RecipeError, match="train.precision: unknown value 'float16'.*"
                                          "mixed_float16"):
        from_dict(raw)
    raw["train"]["precision"] = "float32"
    raw["train"]["jit_compile"] = "xla"
    with pytest.raises(RecipeError, match="train.jit_compile: expected auto, true or false"):
        from_dict(raw)


def test_preview_colours_take_float16_logits():
    # A mixed_float16 model predicts float16 logits; exp(20) overflows float16 (max 65504).
    from multiseg.callbacks.pictures import colour_prediction

    logits = np.array([[-20.0, 0.0, 20.0]], np.float16)[..., None]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        grey = colour_prediction(logits)
    np.testing.assert_allclose(grey[0, :, 0], [2.06e-9, 0.5, 1.0], rtol=1e-2, atol=1e-9)
