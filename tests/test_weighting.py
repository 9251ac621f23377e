"""train.weighting: the recipe section, each method against its formula, state in checkpoints.

The formula tests drive a method's layer directly with chosen losses (eager), or train a toy
model of two regression heads; they run on the session's backend (TensorFlow by default;
``KERAS_BACKEND=jax`` runs them on JAX).
"""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest
from conftest import TINY_RAW

from multiseg.recipe import RecipeError, from_dict
from multiseg.recipe.spec import WeightingSpec


def _recipe(weighting, **train):
    raw = copy.deepcopy(TINY_RAW)
    raw["train"]["weighting"] = weighting
    raw["train"].update(train)
    return raw


# ---------------------------------------------------------------------------------------------
# The recipe section.


class TestRecipe:
    def test_default_is_static(self):
        assert from_dict(copy.deepcopy(TINY_RAW)).train.weighting == WeightingSpec()

    @pytest.mark.parametrize("weighting", [
        "dwa", {"method": "dwa", "temperature": 3}, {"method": "famo", "learning_rate": 0.1},
        {"method": "rlw", "log_every": 0}, "uncertainty",
        {"method": "scheduled", "heads": {"boundary": {"initial": 0, "end": 2,
                                                       "shape": "cosine"}}},
    ])
    def test_round_trip(self, weighting):
        recipe = from_dict(_recipe(weighting))
        assert from_dict(recipe.to_dict()) == recipe

    @pytest.mark.parametrize(("weighting", "field", "words"), [
        ("dynamic", "train.weighting.method", "Expected one of: static, scheduled"),
        ("dwaa", "train.weighting.method", "did you mean 'dwa'"),
        ({"method": "dwa", "T": 2}, "train.weighting.T", "Known keys here: log_every"),
        ({"method": "dwa", "temperature": 0}, "train.weighting.temperature", "> 0"),
        ({"method": "famo", "decay": -1}, "train.weighting.decay", ">= 0"),
        ({"method": "rlw", "log_every": -5}, "train.weighting.log_every", ">= 0"),
        ({"method": "scheduled"}, "train.weighting.heads", "is required"),
        ({"method": "scheduled", "heads": {"boundry": {"initial": 0, "end": 1}}},
         "train.weighting.heads.boundry", "did you mean 'boundary'"),
        ({"method": "scheduled", "heads": {"boundary": {"initial": 0, "begin": 2, "end": 1}}},
         "train.weighting.heads.boundary.end", "after begin"),
        ({"method": "scheduled", "heads": {"boundary": {"end": 1}}},
         "train.weighting.heads.boundary.initial", "is required"),
        ({"method": "scheduled", "heads": {"boundary": {"initial": 0, "end": 1,
                                                        "shape": "step"}}},
         "train.weighting.heads.boundary.shape", "linear, cosine"),
    ])
    def test_errors_name_the_field(self, weighting, field, words):
        with pytest.raises(RecipeError, match=words) as caught:
            from_dict(_recipe(weighting))
        assert str(caught.value).startswith(field + ":")

    def test_one_weighted_head_is_refused(self):
        raw = _recipe("famo")
        for head in ("boundary", "shape"):
            raw["heads"][head]["loss_weight"] = 0.0
        with pytest.raises(RecipeError, match="at least 2 heads with loss_weight > 0"):
            from_dict(raw)
        raw["train"]["weighting"] = {"method": "scheduled",
                                     "heads": {"mask": {"initial": 0.1, "end": 1}}}
        assert from_dict(raw).train.weighting.method == "scheduled"


# ---------------------------------------------------------------------------------------------
# Each method's rule, driven with chosen losses.


def _layer(method, priors=(1.0, 1.0), **options):
    from multiseg.weighting.state import LOSS_WEIGHTINGS

    heads = [f"h{i}" for i in range(len(priors))]
    return LOSS_WEIGHTINGS[method](heads, dict(zip(heads, priors, strict=True)), **options)


def _run(layer, losses):
    """The weights each step used, and the totals, for a sequence of raw-loss vectors."""
    import keras

    weights, totals = [], []
    for step_losses in losses:
        total = layer.total([keras.ops.convert_to_tensor(v, "float32") for v in step_losses],
                            training=True, batch_size=1)
        totals.append(float(keras.ops.convert_to_numpy(total)))
        weights.append(keras.ops.convert_to_numpy(layer.loss_weights).copy())
    return np.array(weights, np.float64), np.array(totals)


# No two heads fall at exactly the same rate: float32 would make delta differ by rounding
# alone, which Adam (sign-like on tiny gradients) turns into a full step.
LOSSES = np.array([[2.0, 1.0], [1.8, 0.95], [1.5, 0.85], [1.4, 0.6], [1.3, 0.58], [1.1, 0.5],
                   [1.0, 0.49], [0.9, 0.41]])


class TestScheduled:
    def test_linear_and_cosine(self):
        layer = _layer("scheduled", priors=(1.0, 0.5), steps_per_epoch=4, schedules={
            "h0": {"initial": 0.0, "final": 1.0, "begin": 1.0, "end": 3.0, "shape": "linear"},
            "h1": {"initial": 2.0, "final": None, "begin": 0.0, "end": 2.0,
                   "shape": "cosine"}})
        weights, _ = _run(layer, np.ones((16, 2)))
        epochs = np.arange(16) / 4  # step s starts at epoch s / steps_per_epoch
        expected_h0 = np.clip((epochs - 1) / 2, 0, 1)
        p = np.clip(epochs / 2, 0, 1)
        expected_h1 = 2.0 + (0.5 - 2.0) * (1 - np.cos(np.pi * p)) / 2  # final: loss_weight
        np.testing.assert_allclose(weights[:, 0], expected_h0, atol=1e-6)
        np.testing.assert_allclose(weights[:, 1], expected_h1, atol=1e-6)


class TestDWA:
    def test_rule_over_epochs(self):
        layer = _layer("dwa", priors=(1.0, 0.5), steps_per_epoch=2, temperature=2.0)
        weights, totals = _run(layer, LOSSES)
        means = LOSSES.reshape(4, 2, 2).mean(axis=1)  # epoch means, per head
        np.testing.assert_allclose(weights[:4], [[1.0, 0.5]] * 4, atol=1e-6)
        for epoch in (2, 3):
            rates = means[epoch - 1] / means[epoch - 2]
            softmax = np.exp(rates / 2.0) / np.exp(rates / 2.0).sum()
            expected = 2 * softmax * [1.0, 0.5]
            np.testing.assert_allclose(weights[2 * epoch], expected, rtol=1e-6)
            np.testing.assert_allclose(weights[2 * epoch + 1], expected, rtol=1e-6)
        np.testing.assert_allclose(totals, (weights * LOSSES).sum(axis=1), rtol=1e-6)


class TestRLW:
    def test_draws_follow_the_seeded_generator(self):
        import keras

        layer = _layer("rlw", priors=(1.0, 0.5, 0.0), seed=5)
        losses = np.ones((6, 3))
        weights, _ = _run(layer, losses)
        generator = keras.random.SeedGenerator(5)
        for step in range(6):
            draw = keras.ops.convert_to_numpy(keras.random.normal((2,), seed=generator))
            softmax = np.exp(draw) / np.exp(draw).sum()
            np.testing.assert_allclose(weights[step], [2 * softmax[0], 0.5 * 2 * softmax[1], 0],
                                       rtol=1e-5)
        assert np.ptp(weights[:, 0]) > 0.05  # a new draw every step


class TestFAMO:
    def test_update_rule(self):
        lr, decay, k = 0.025, 1e-3, 2
        layer = _layer("famo", priors=(1.0, 1.0), learning_rate=lr, decay=decay)
        weights, totals = _run(layer, LOSSES)
        # The rule, written out: torch's Adam with L2 decay on J_softmax(xi)^T delta.
        xi, m, v, t, previous = np.zeros(k), np.zeros(k), np.zeros(k), 0, None
        for step, losses in enumerate(LOSSES):
            log_d = np.log(losses + 1e-8)
            if previous is not None:
                z = np.exp(xi) / np.exp(xi).sum()
                delta = previous - log_d
                jacobian = np.diag(z) - np.outer(z, z)
                g = jacobian.T @ delta + decay * xi
                t += 1
                m = 0.9 * m + 0.1 * g
                v = 0.999 * v + 0.001 * g * g
                xi = xi - lr * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
            previous = log_d
            z = np.exp(xi) / np.exp(xi).sum()
            c = (z / losses).sum()
            expected = k * z / (c * losses)
            # float32 state against float64: a few ulps per step.
            np.testing.assert_allclose(weights[step], expected, rtol=1e-5)
        # The weighted losses are equal at every step (FAMO's normalisation): K z / c each.
        assert weights[0] @ LOSSES[0] == pytest.approx(totals[0], rel=1e-6)


class TestUncertainty:
    def test_weights_move_to_the_noise_ratio(self):
        """Two regression heads with residual noise sigma 0.5 and 1.0: at the optimum
        w_h = 1 / L_h, so w_a / w_b goes to sigma_b^2 / sigma_a^2 = 4."""
        import keras

        from multiseg.weighting.model import make_model

        rng = np.random.default_rng(0)
        x = rng.normal(size=(256, 3)).astype("float32")
        targets = {"a": (x @ [[1.0], [2.0], [0.0]] + 0.5 * rng.normal(size=(256, 1))),
                   "b": (x @ [[0.0], [1.0], [-1.0]] + 1.0 * rng.normal(size=(256, 1)))}
        targets = {h: t.astype("float32") for h, t in targets.items()}
        keras.utils.set_random_seed(0)
        inputs = keras.Input((3,), name="image")
        trunk = keras.layers.Dense(8, name="trunk-dense")(inputs)
        outputs = {h: keras.layers.Dense(1, name=f"{h}-out")(trunk) for h in ("a", "b")}
        model = make_model(inputs, outputs, name="toy", heads={"a": 1.0, "b": 1.0},
                           weighting=WeightingSpec("uncertainty"))
        model.compile(optimizer=keras.optimizers.Adam(0.05),
                      loss={h: keras.losses.MeanSquaredError() for h in ("a", "b")},
                      loss_weights={"a": 1.0, "b": 1.0})
        history = model.fit(x, targets, batch_size=64, epochs=60, verbose=0).history
        weights = keras.ops.convert_to_numpy(model.loss_weighting.loss_weights)
        raw = np.array([history["a_loss"][-1], history["b_loss"][-1]])
        # The noise these 256 samples really have: the least-squares fit's residuals (5.46,
        # not 4: a sample's variance).
        design = np.c_[x, np.ones(len(x))]
        noise = [np.mean((t - design @ np.linalg.lstsq(design, t, rcond=None)[0]) ** 2)
                 for t in (targets["a"], targets["b"])]
        ratio = noise[1] / noise[0]
        assert raw[1] / raw[0] == pytest.approx(ratio, rel=0.1)  # the fit has converged
        # Each weight near 1 / L (its optimum; Adam still moves it a little each step), so
        # from 1:1 the weights reach the noise ratio (15%: minibatch noise in the last steps).
        np.testing.assert_allclose(weights, 1 / raw, rtol=0.15)
        assert weights[0] / weights[1] == pytest.approx(ratio, rel=0.15)
        # The logged weighted loss is the effective weight times the raw loss.
        assert history["a_weighted_loss"][-1] == pytest.approx(weights[0] * raw[0], rel=0.05)


# ---------------------------------------------------------------------------------------------
# Training: the model a recipe builds, its state in checkpoints, model.keras.


def test_static_builds_the_plain_model(tiny_recipe):
    import keras

    from multiseg.models.build import build_model

    model = build_model(tiny_recipe, channels=1)
    assert type(model).__name__ == "Functional" and not hasattr(model, "loss_weighting")
    assert isinstance(model, keras.Model)


# The methods whose state is more than a trainable variable or a step count (about 50 s each
# on 2 CPU cores: three short trainings).
@pytest.mark.parametrize("weighting", ["dwa", "rlw", "famo"])
def test_resume_restores_the_weighting_state(tmp_path, weighting):
    """Two epochs then a resumed third give the state of three epochs straight."""
    import keras

    from multiseg import load_model
    from multiseg.runs import load_run
    from multiseg.train import train
    from multiseg.weighting.model import WeightedModel

    def state(model):
        return [keras.ops.convert_to_numpy(v) for v in model.loss_weighting.variables]

    straight = _recipe(weighting, epochs=3)
    straight["output"] = str(tmp_path / "straight")
    whole = train(from_dict(straight), verbose=0).model
    resumed = copy.deepcopy(straight)
    resumed["output"] = str(tmp_path / "resumed")
    resumed["train"]["epochs"] = 2
    train(from_dict(resumed), verbose=0)
    resumed["train"]["epochs"] = 3
    result = train(from_dict(resumed), verbose=0)
    assert isinstance(result.model, WeightedModel) and result.epochs_run == 1
    for a, b in zip(state(whole), state(result.model), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # model.keras: a plain functional model, the weights of the last step as constants.
    saved = load_model(os.path.join(result.run_dir, "model.keras"))
    assert type(saved).__name__ == "Functional"
    final = keras.ops.convert_to_numpy(result.model.loss_weighting.loss_weights)
    assert saved.get_compile_config()["loss_weights"] == pytest.approx(
        dict(zip(("mask", "boundary", "shape"), final.tolist(), strict=True)))
    # A run's model reloads from model.keras into the weighted model the recipe builds.
    _, data, model = load_run(result.run_dir)
    images = data.val[0][0]
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(images)["mask"]),
                               keras.ops.convert_to_numpy(saved(images)["mask"]), atol=1e-6)
