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


@pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                    reason="op determinism is TensorFlow's (JAX's CPU programs are deterministic)")
def test_deterministic_run_leaves_the_process_as_it_found_it(tiny_raw):
    from tensorflow.python.framework.config import is_op_determinism_enabled

    class During(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.enabled = is_op_determinism_enabled()

    during = During()
    tiny_raw["train"]["deterministic"] = True
    train(from_dict(tiny_raw), verbose=0, extra_callbacks=[during])
    # Left on, it would slow the process's later runs and Keras would decline their
    # jit_compile: true (keras.src.trainers.trainer.model_supports_jit).
    assert during.enabled and not is_op_determinism_enabled()


def test_deterministic_xla_is_refused_on_tensorflow():
    raw = copy.deepcopy(TINY_RAW)
    raw["train"].update(deterministic=True, jit_compile=True)
    if keras.backend.backend() == "tensorflow":
        with pytest.raises(RecipeError, match="^train.jit_compile: true cannot hold with"
                                              " deterministic: true on TensorFlow"):
            from_dict(raw)
    else:  # XLA is how JAX computes anything
        assert from_dict(raw).train.jit_compile is True


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


# ---------------------------------------------------------------------------------------------
# train.steps_per_execution: how many steps one call into the compiled step runs.


def _steps_run(tiny_raw, steps_per_execution: int):
    """Two epochs of 6 steps, deterministic, with gradflow snapshots every 3 steps and DWA's
    weights logged every 5."""
    raw = copy.deepcopy(tiny_raw)
    raw["output"] = f"{tiny_raw['output']}-{steps_per_execution}"
    raw["data"]["train"] = 48
    raw["train"].update(epochs=2, deterministic=True, steps_per_execution=steps_per_execution,
                        gradflow={"every": 3}, weighting={"method": "dwa", "log_every": 5})
    return train(from_dict(raw), verbose=0)


def _tensorboard_steps(logdir: str, tag: str) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(logdir, size_guidance={"tensors": 0})
    events.Reload()
    return [e.step for e in events.Tensors(tag)]


def test_several_steps_per_call_train_the_same_model(tiny_raw):
    one, two = _steps_run(tiny_raw, 1), _steps_run(tiny_raw, 2)
    for result in (one, two):
        assert int(keras.ops.convert_to_numpy(result.model.optimizer.iterations)) == 12
    assert two.model.steps_per_execution == 2
    # The same batches through the same steps: the weights agree to float32 round-off
    # (TensorFlow runs a call's steps in one loop of its graph, summing in another order).
    for a, b in zip(one.model.get_weights(), two.model.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert two.metrics["val"]["total"]["loss"] == pytest.approx(
        one.metrics["val"]["total"]["loss"], rel=1e-4)
    # Every-N-step records fall on the call that reaches step N: calls end at even steps.
    logs = lambda run, *parts: os.path.join(run.run_dir, "logs", *parts)  # noqa: E731
    assert _tensorboard_steps(logs(one, "gradflow"), "loss/mask") == [3, 6, 9, 12]
    assert _tensorboard_steps(logs(two, "gradflow"), "loss/mask") == [4, 6, 10, 12]
    assert _tensorboard_steps(logs(one, "train"), "step/mask/loss_weight") == [5, 10]
    assert _tensorboard_steps(logs(two, "train"), "step/mask/loss_weight") == [6, 10]
    # How a step is dispatched is not part of the run: model.keras loads on any backend.
    assert load_model(os.path.join(two.run_dir, "model.keras")).steps_per_execution == 1


@pytest.mark.parametrize("crossing", [(0, 1, 1, True), (2, 4, 3, True), (3, 5, 3, False),
                                      (5, 6, 3, True), (0, 9, 10, False), (4, 8, 0, False)])
def test_crossed_finds_a_multiple_within_a_call(crossing):
    from multiseg.callbacks.steps import crossed

    before, after, every, expected = crossing
    assert crossed(before, after, every) is expected
    assert expected == any(every and s % every == 0 for s in range(before + 1, after + 1))


def test_steps_per_execution_is_checked(tiny_raw, monkeypatch):
    raw = copy.deepcopy(tiny_raw)
    assert from_dict(raw).train.steps_per_execution == 1
    raw["train"]["steps_per_execution"] = 0
    with pytest.raises(RecipeError, match="train.steps_per_execution: must be > 0, got 0"):
        from_dict(raw)
    raw["train"].update(steps_per_execution=4, on_nonfinite="skip")
    with pytest.raises(RecipeError, match="train.steps_per_execution: must be 1 with"
                                          " on_nonfinite: skip"):
        from_dict(raw)
    raw["train"]["on_nonfinite"] = "stop"
    assert from_dict(raw).to_dict()["train"]["steps_per_execution"] == 4
    monkeypatch.setattr(keras.backend, "backend", lambda: "torch")
    with pytest.raises(RecipeError, match="must be 1 on the torch backend"):
        from_dict(raw)


@pytest.mark.parametrize("requested,steps,chosen", [
    (8, 48, 8), (8, 12, 6), (8, 37, 1), (3, 2, 2), (1, 5, 1), (4, 1, 1)])
def test_a_call_never_crosses_the_end_of_an_epoch(requested, steps, chosen):
    from multiseg.models.build import steps_per_call

    assert steps_per_call(requested, steps) == chosen
    assert steps % chosen == 0 and not any(
        steps % d == 0 for d in range(chosen + 1, requested + 1))


def test_the_summary_says_how_many_steps_run_per_call():
    from multiseg.runs import _steps_per_call_text

    assert _steps_per_call_text(1, 1, 5) == ""
    assert _steps_per_call_text(8, 8, 48) == ", 8 steps per call"
    assert _steps_per_call_text(8, 1, 37) == (
        ", 1 step per call (train.steps_per_execution 8: the most that divide the 37 steps of"
        " an epoch)")
