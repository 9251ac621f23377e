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
from conftest import TINY_RAW, copy_run_after

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
    from multiseg.weighting.gradient import GRADIENT_WEIGHTINGS
    from multiseg.weighting.state import LOSS_WEIGHTINGS

    heads = [f"h{i}" for i in range(len(priors))]
    layer_class = {**LOSS_WEIGHTINGS, **GRADIENT_WEIGHTINGS}[method]
    return layer_class(heads, dict(zip(heads, priors, strict=True)), **options)


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


# The methods whose state is more than a trainable variable or a step count (two short
# trainings each).
@pytest.mark.parametrize("weighting", ["dwa", "rlw", "famo", "gradnorm"])
def test_resume_restores_the_weighting_state(tmp_path, weighting):
    """The files of two epochs, resumed for a third, give the state of three epochs straight."""
    import keras

    from multiseg import load_model
    from multiseg.runs import load_run
    from multiseg.train import train
    from multiseg.weighting.model import WeightedModel

    def state(model):
        return [keras.ops.convert_to_numpy(v) for v in model.loss_weighting.variables]

    straight = _recipe(weighting, epochs=3)
    straight["output"] = str(tmp_path / "straight")
    resumed = copy.deepcopy(straight)
    resumed["output"] = str(tmp_path / "resumed")
    whole = train(from_dict(straight), verbose=0, extra_callbacks=[
        copy_run_after(straight["output"], 2, resumed["output"])]).model
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


# ---------------------------------------------------------------------------------------------
# The gradient-level methods: pcgrad, upgrad, gradnorm.


class TestGradientRecipe:
    @pytest.mark.parametrize("weighting", [
        "pcgrad", "upgrad", {"method": "gradnorm", "alpha": 0.5, "learning_rate": 0.01}])
    def test_round_trip(self, weighting):
        recipe = from_dict(_recipe(weighting))
        assert from_dict(recipe.to_dict()) == recipe

    @pytest.mark.parametrize(("weighting", "train", "field", "words"), [
        ({"method": "gradnorm", "alpha": -1}, {}, "train.weighting.alpha", ">= 0"),
        ({"method": "gradnorm", "learning_rate": 0}, {}, "train.weighting.learning_rate",
         "> 0"),
        ({"method": "pcgrad", "alpha": 1}, {}, "train.weighting.alpha", "Known keys here"),
        ("upgrad", {"precision": "mixed_float16"}, "train.precision",
         "use float32 or mixed_bfloat16"),
    ])
    def test_errors_name_the_field(self, weighting, train, field, words):
        with pytest.raises(RecipeError, match=words) as caught:
            from_dict(_recipe(weighting, **train))
        assert str(caught.value).startswith(field + ":")

    @pytest.mark.parametrize("method", ["pcgrad", "upgrad", "gradnorm"])
    def test_one_weighted_head_is_refused(self, method):
        raw = _recipe(method)
        raw["heads"]["shape"]["loss_weight"] = 0.0
        assert from_dict(raw).train.weighting.method == method  # two left: fine
        raw["heads"]["boundary"]["loss_weight"] = 0.0
        with pytest.raises(RecipeError, match="at least 2 heads with loss_weight > 0"):
            from_dict(raw)

    def test_torch_is_refused(self, monkeypatch):
        import keras

        monkeypatch.setattr(keras.backend, "backend", lambda: "torch")
        with pytest.raises(RecipeError, match="tensorflow and jax backends, not torch") as c:
            from_dict(_recipe("pcgrad"))
        assert str(c.value).startswith("train.weighting.method:")


def _pcgrad_reference(grads, orders):
    """PCGrad on the gradient vectors themselves (rows of ``grads``), as the authors write it."""
    adjusted = grads.astype(np.float64).copy()
    for i in range(len(grads)):
        for j in orders[i]:
            dot = adjusted[i] @ grads[j]
            if dot < 0:
                adjusted[i] -= dot / (grads[j] @ grads[j]) * grads[j]
    return adjusted


# Four heads' gradients in 6 dimensions: heads 0 and 1 conflict strongly, 2 conflicts with 0
# a little, 3 agrees with everyone but 1.
GRADIENTS = np.array([[1.0, 0.2, -0.5, 0.0, 0.3, 0.1],
                      [-0.9, 0.1, 0.6, 0.2, -0.2, 0.0],
                      [-0.1, 1.0, 0.0, 0.3, 0.0, -0.4],
                      [0.5, 0.4, 0.2, -0.1, 0.1, 0.2]])


class TestGradientRules:
    @pytest.mark.parametrize("orders", [
        [[1, 2, 3, 0], [0, 3, 2, 1], [3, 0, 1, 2], [2, 1, 0, 3]],
        [[0, 1, 2, 3]] * 4,
        [[3, 2, 1, 0]] * 4,
    ])
    def test_pcgrad_is_the_projection_on_the_vectors(self, orders):
        import keras

        from multiseg.weighting.gradient import pcgrad_weights

        gram = GRADIENTS @ GRADIENTS.T
        alpha = keras.ops.convert_to_numpy(pcgrad_weights(gram.astype("float32"),
                                                          np.array(orders, "int32")))
        expected = _pcgrad_reference(GRADIENTS, orders).sum(axis=0)
        np.testing.assert_allclose(alpha @ GRADIENTS, expected, atol=1e-5)

    def test_pcgrad_two_heads(self):
        """Two heads: each loses its component along the other; the sum conflicts with
        neither, and a head whose gradient is 0 changes nothing."""
        import keras

        from multiseg.weighting.gradient import pcgrad_weights

        g = np.array([[1.0, 0.0], [-1.0, 1.0], [0.0, 0.0]])
        alpha = keras.ops.convert_to_numpy(pcgrad_weights(
            (g @ g.T).astype("float32"), np.array([[1, 2, 0], [0, 2, 1], [0, 1, 2]], "int32")))
        # g0 - (-1/2) g1 = (0.5, 0.5); g1 - (-1/1) g0 = (0, 1): sum (0.5, 1.5).
        np.testing.assert_allclose(alpha @ g, [0.5, 1.5], atol=1e-6)
        assert (g[:2] @ (alpha @ g) >= 0).all()

    @pytest.mark.parametrize("heads", [2, 3, 4])
    def test_upgrad_solves_the_projection(self, heads):
        """Against SciPy's bounded least squares on the same (normalised, regularised)
        problem: min |A v|^2 over v >= e_i, with A^T A = G / tr(G) + eps I."""
        import keras
        from scipy.optimize import lsq_linear

        from multiseg.weighting.gradient import GRAM_REGULARISATION, upgrad_weights

        jac = GRADIENTS[:heads]
        gram = jac @ jac.T
        alpha = keras.ops.convert_to_numpy(upgrad_weights(gram.astype("float32")))
        stacked = np.vstack([jac.T / np.sqrt(np.trace(gram)),
                             np.sqrt(GRAM_REGULARISATION) * np.eye(heads)])
        expected = np.zeros(heads)
        for i in range(heads):
            lower = np.eye(heads)[i]
            solution = lsq_linear(stacked, np.zeros(len(stacked)), bounds=(lower, np.inf),
                                  tol=1e-12)
            expected += solution.x
        # float32 solves of systems whose condition number reaches ~1e4 (the regulariser).
        np.testing.assert_allclose(alpha, expected, rtol=1e-4, atol=1e-4)
        # The direction conflicts with no head (up to the regulariser: eps * alpha_i).
        direction = alpha @ jac
        assert (jac @ direction >= -GRAM_REGULARISATION * np.trace(gram) * alpha.max()).all()
        if heads >= 2:
            assert GRADIENTS[0] @ GRADIENTS[1] < 0  # there was a conflict to remove

    def test_upgrad_without_conflict_is_the_sum(self):
        import keras

        from multiseg.weighting.gradient import upgrad_weights

        g = np.array([[1.0, 0.2, 0.0], [0.5, 1.0, 0.1], [0.1, 0.0, 2.0]])
        alpha = keras.ops.convert_to_numpy(upgrad_weights((g @ g.T).astype("float32")))
        np.testing.assert_allclose(alpha, [1.0, 1.0, 1.0], atol=1e-6)

    def test_gradnorm_gradient_is_the_derivative(self):
        """The closed form against central differences of sum_h |G_h - T_h| in the logits,
        the target T held at its value (the paper treats it as a constant)."""
        import keras

        from multiseg.weighting.gradient import gradnorm_gradient

        logits, norms = np.array([0.3, -0.2, 0.1]), np.array([2.0, 0.5, 1.2])
        losses, initial = np.array([0.8, 0.9, 0.3]), np.array([1.0, 1.5, 0.5])
        priors, alpha = np.array([1.0, 0.5, 2.0]), 1.5

        def weights(xi):
            return priors * 3 * np.exp(xi) / np.exp(xi).sum()

        ratio = losses / initial
        target = np.mean(weights(logits) * norms) * (ratio / ratio.mean()) ** alpha

        def objective(xi):
            return np.abs(weights(xi) * norms - target).sum()

        step = 1e-6
        numeric = [(objective(logits + step * e) - objective(logits - step * e)) / (2 * step)
                   for e in np.eye(3)]
        as_tensor = [keras.ops.convert_to_tensor(v, "float32")
                     for v in (logits, norms, losses, initial, priors)]
        closed = keras.ops.convert_to_numpy(gradnorm_gradient(*as_tensor, alpha))
        np.testing.assert_allclose(closed, numeric, rtol=1e-5, atol=1e-6)

    def test_gradnorm_update_is_adam_on_the_logits(self):
        """Two steps of the layer's update against Adam written out; L(0) is the first
        step's loss, and the weights the step uses are those before its update."""
        import keras

        from multiseg.weighting.gradient import gradnorm_gradient

        layer = _layer("gradnorm", priors=(1.0, 0.5), alpha=1.0, learning_rate=0.1)
        losses = np.array([[1.0, 2.0], [0.5, 1.8]])
        norms = np.array([[3.0, 1.0], [2.0, 1.5]])
        xi, m, v = np.zeros(2), np.zeros(2), np.zeros(2)
        for t, (raw, norm) in enumerate(zip(losses, norms, strict=True), start=1):
            weights, _ = _run(layer, [raw])
            np.testing.assert_allclose(weights[0], np.array([1.0, 0.5]) * 2 * np.exp(xi)
                                       / np.exp(xi).sum(), rtol=1e-6)
            layer.update(keras.ops.convert_to_tensor(norm, "float32"),
                         keras.ops.convert_to_tensor(raw, "float32"))
            g = keras.ops.convert_to_numpy(gradnorm_gradient(*[
                keras.ops.convert_to_tensor(a, "float32")
                for a in (xi, norm, raw, losses[0], [1.0, 0.5])], 1.0))
            m = 0.9 * m + 0.1 * g
            v = 0.999 * v + 0.001 * g * g
            xi = xi - 0.1 * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
            np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.logits), xi,
                                       rtol=1e-5, atol=1e-7)
        assert abs(xi[0] - xi[1]) > 0.1  # the weights did move


def _toy(method, heads=("a", "b", "c"), priors=None, **options):
    """A dense trunk of two layers and a small branch per head; a and b have the same
    branch at the start and targets of opposite sign, so that they fight over the trunk."""
    import keras

    from multiseg.weighting.model import make_model

    rng = np.random.default_rng(3)
    x = rng.normal(size=(32, 4)).astype("float32")
    direction = rng.normal(size=(4, 1))
    targets = {"a": x @ direction, "b": -3.0 * (x @ direction) + 1.0,
               "c": np.sin(x[:, :1]) + x[:, 1:2]}
    targets = {h: targets[h].astype("float32") for h in heads}
    priors = dict(priors or {h: 1.0 for h in heads})
    keras.utils.set_random_seed(3)
    inputs = keras.Input((4,), name="image")
    trunk = keras.layers.Dense(8, activation="tanh", name="trunk-d0")(inputs)
    trunk = keras.layers.Dense(8, activation="tanh", name="trunk-d1")(trunk)
    def dense(units, name, seed):
        return keras.layers.Dense(units, name=name,
                                  kernel_initializer=keras.initializers.GlorotUniform(seed))

    seeds = {"a": 11, "b": 11, "c": 12}
    outputs = {h: dense(1, h, seeds[h])(dense(4, f"{h}-d", seeds[h] + 100)(trunk))
               for h in heads}
    model = make_model(inputs, outputs, name="toy", heads=priors,
                       weighting=WeightingSpec(method, options))
    losses = {h: keras.losses.MeanSquaredError() for h in heads}
    return model, losses, priors, x, targets


def _trunk_cosines(model, raw, update):
    """gradflow's trunk cosine (``summarise``) between the update and each head's gradient:
    the update takes the place of one head's gradient in turn."""
    from multiseg.gradients import HeadGradients, summarise

    found = {}
    for h in raw.heads:
        swapped = {**raw.raw, h: update}
        other = next(o for o in raw.heads if o != h)
        report = summarise(HeadGradients(graph=raw.graph, raw=swapped, loss=raw.loss,
                                         loss_weights=raw.loss_weights, weights=raw.weights,
                                         paths=raw.paths), learning_rate=1.0)
        key = f"{h}|{other}" if raw.heads.index(h) < raw.heads.index(other) else f"{other}|{h}"
        found[(h, other)] = report["cosine"][key]
    return found


@pytest.mark.parametrize(("method", "heads"), [("pcgrad", ("a", "b")),
                                               ("upgrad", ("a", "b", "c"))])
def test_trunk_update_conflicts_with_no_head(method, heads):
    """One SGD step (learning rate 1: the update is the gradient): on the trunk it has a
    non-negative cosine with every head's gradient (gradflow's measure), although the heads'
    gradients conflict there; each branch gets its own head's weighted gradient; the trunk's
    update is the implied weights ``trunk_weights`` times the raw gradients."""
    import keras

    from multiseg.gradients import GradientProbe, summarise

    priors = dict(zip(heads, (1.0, 0.5, 2.0), strict=False))
    model, losses, priors, x, targets = _toy(method, heads, priors)
    model.compile(optimizer=keras.optimizers.SGD(1.0), loss=losses, loss_weights=priors)
    raw = GradientProbe(model, losses, priors).gradients(x, targets)
    assert summarise(raw, learning_rate=1.0)["conflicts"]  # something to resolve
    before = [keras.ops.convert_to_numpy(v) for v in model.trainable_variables]
    model.train_on_batch(x, targets)
    after = [keras.ops.convert_to_numpy(v) for v in model.trainable_variables]
    update = [b - a for b, a in zip(before, after, strict=True)]
    for (head, other), cosine in _trunk_cosines(model, raw, update).items():
        # UPGrad's regulariser allows eps * alpha of conflict in trace-normalised units.
        assert cosine >= -1e-3, (head, other, cosine)
    implied = keras.ops.convert_to_numpy(model.loss_weighting.trunk_weights)
    for j, path in enumerate(raw.paths):
        owner = path.split("/")[0].split("-")[0]
        if owner == "trunk":
            expected = sum(w * raw.gradient(h, j) for h, w in zip(heads, implied, strict=True))
        else:
            expected = priors[owner] * raw.gradient(owner, j)
        np.testing.assert_allclose(update[j], expected, rtol=1e-4, atol=1e-6, err_msg=path)
    assert not np.allclose(implied, list(priors.values()), atol=1e-3)  # alpha did act


def test_gradnorm_equalises_the_gradient_norms():
    """alpha = 0: GradNorm's target is the mean weighted gradient norm at its layer
    (trunk-d1, the last layer both heads share). With the recipe's weights (b's 5x a's) b's
    weighted gradient norm there is several times a's; GradNorm's weights bring them
    together."""
    import keras

    from multiseg.gradients import GradientProbe

    model, losses, priors, x, targets = _toy("gradnorm", ("a", "b"), {"a": 1.0, "b": 5.0},
                                             alpha=0.0, learning_rate=0.05)
    assert model.loss_weighting.layer_name == "trunk-d1"
    model.compile(optimizer=keras.optimizers.Adam(0.003), loss=losses, loss_weights=priors)
    probe = GradientProbe(model, losses, priors)

    def norm_ratio(weights):
        grads = probe.gradients(x, targets)
        norms = [w * np.linalg.norm(grads.layer_values(h, "trunk-d1", weighted=False))
                 for h, w in zip(("a", "b"), weights, strict=True)]
        return max(norms) / min(norms)

    static = norm_ratio([1.0, 5.0])
    model.fit(x, targets, batch_size=32, epochs=60, verbose=0)
    weights = keras.ops.convert_to_numpy(model.loss_weighting.loss_weights)
    assert static > 3.0
    # From static's ratio to near 1: the sign-like Adam steps on an L1 loss keep the
    # weights moving about the balance by a few learning rates (measured 1.09 to 1.35).
    assert norm_ratio(weights) < min(1.5, static / 4)
    # w = c * K softmax(xi): the multipliers sum to K.
    assert (weights / [1.0, 5.0]).sum() == pytest.approx(2.0, rel=1e-5)


@pytest.mark.parametrize("method", ["pcgrad", "upgrad"])
def test_recipe_trains_with_grad_scale(tmp_path, method):
    """The tiny recipe (segmentation, boundary and classification heads, the last on the
    bottleneck) with a grad_scale: one epoch trains, model.keras reloads as a plain model."""
    import keras

    from multiseg import load_model
    from multiseg.train import train

    raw = _recipe(method)
    raw["heads"]["shape"]["grad_scale"] = 0.5
    raw["output"] = str(tmp_path / "run")
    result = train(from_dict(raw), verbose=0)
    assert np.isfinite(result.metrics["train"]["total"]["loss"])
    # Both rules only add to a head's share of the trunk (alpha >= 1): PCGrad subtracts
    # negative multiples, UPGrad's v >= e_i.
    implied = keras.ops.convert_to_numpy(result.model.loss_weighting.trunk_weights)
    assert np.all(implied >= np.array([1.0, 0.5, 0.2]) * (1 - 1e-6))
    # TensorBoard has them: the last epoch's <head>/trunk_weight is the final step's.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(os.path.join(result.run_dir, "logs", "train"),
                              size_guidance={"tensors": 0})
    events.Reload()
    for head, value in zip(("mask", "boundary", "shape"), implied, strict=True):
        last = events.Tensors(f"{head}/trunk_weight")[-1]
        assert last.tensor_proto.float_val[0] == pytest.approx(float(value), rel=1e-6)
    saved = load_model(os.path.join(result.run_dir, "model.keras"))
    assert type(saved).__name__ == "Functional"
    # pcgrad and upgrad keep the recipe's loss weights as the objective (and in model.keras).
    assert saved.get_compile_config()["loss_weights"] == pytest.approx(
        {"mask": 1.0, "boundary": 0.5, "shape": 0.2}, rel=1e-6)
