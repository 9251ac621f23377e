"""Per-head gradients (multiseg.gradients): ownership from the graph, exact zeros, agreement
with independent gradient computations, loss weights, grad_scale and cosines.

Backend-agnostic: the independent gradients are computed with the running backend's own tools
(a fresh ``tf.GradientTape`` on TensorFlow, ``jax.grad`` on JAX, ``torch.autograd.grad`` on
PyTorch). The other backends' paths are checked by hand with ``KERAS_BACKEND=jax`` (or
``torch``) ``python -m pytest tests/test_gradients.py tests/test_gradflow.py``; the three
backends' figures are compared with each other in ``tests/test_backend_gradients.py``.
"""

from __future__ import annotations

import copy
import math

import keras
import numpy as np
import pytest

from multiseg.gradients import SHARED, GradientProbe, summarise
from multiseg.graph import model_graph
from multiseg.models.build import build_model, compile_model, head_losses
from multiseg.models.naming import layer_owner
from multiseg.recipe import from_dict


def _recipe(raw, **heads):
    """The tiny recipe with per-head changes: _recipe(raw, boundary={"grad_scale": 0})."""
    raw = copy.deepcopy(raw)
    for head, changes in heads.items():
        if changes is None:
            del raw["heads"][head]
        else:
            raw["heads"][head].update(changes)
    return from_dict(raw)


def _batch(recipe, n: int = 4, seed: int = 0):
    """A hand-made batch in the data's formats: float masks (N, H, W, 1), int labels (N,)."""
    rng = np.random.default_rng(seed)
    h, w = recipe.data.image_size
    images = rng.normal(size=(n, h, w, 3)).astype(np.float32)
    targets = {}
    for name, head in recipe.heads.items():
        if head.kind == "classification":
            targets[name] = rng.integers(0, head.classes, size=(n,)).astype(np.int32)
        elif head.kind == "boundary":
            targets[name] = (rng.random((n, h, w, 1)) < 0.2).astype(np.float32)
        else:
            targets[name] = rng.integers(0, head.classes, size=(n, h, w, 1)).astype(np.float32)
    return images, targets


def _probe(recipe, model=None, **weights):
    model = model or build_model(recipe, channels=3)
    loss_weights = {h: s.loss_weight for h, s in recipe.heads.items()}
    loss_weights.update(weights)
    return GradientProbe(model, head_losses(recipe), loss_weights)


def _independent(model, loss, images, target, head):
    """One loss alone, its gradient by the backend's own machinery, on a fresh forward pass."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            outputs = model(images, training=True)
            value = loss(target, outputs[head])
        grads = tape.gradient(value, [v.value for v in model.trainable_variables])
        return [None if g is None else g.numpy() for g in grads]
    if backend == "jax":
        import jax

        non_trainable = [v.value for v in model.non_trainable_variables]

        def f(trainable):
            outputs, _ = model.stateless_call(trainable, non_trainable, images, training=True)
            return loss(target, outputs[head])

        grads = jax.grad(f)([v.value for v in model.trainable_variables])
        return [np.asarray(g) for g in grads]
    if backend == "torch":
        import torch

        value = loss(target, model(images, training=True)[head])
        grads = torch.autograd.grad(value, [v.value for v in model.trainable_variables],
                                    allow_unused=True)
        return [None if g is None else g.cpu().numpy() for g in grads]
    raise NotImplementedError(backend)


def _keras_total_gradient(model, images, targets):
    """Gradient of the compiled model's total loss (Keras's loss_weights applied by Keras)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            outputs = model(images, training=True)
            total = model.compute_loss(x=images, y=targets, y_pred=outputs)
        return [g.numpy() for g in tape.gradient(total, [v.value for v in
                                                          model.trainable_variables])]
    if backend == "jax":
        import jax

        model.optimizer.build(model.trainable_variables)

        def f(trainable):
            total, _ = model.compute_loss_and_updates(
                trainable, [v.value for v in model.non_trainable_variables],
                [v.value for v in model.metrics_variables], images, targets, None,
                training=True, optimizer_variables=[v.value for v in model.optimizer.variables])
            return total

        return [np.asarray(g) for g in jax.grad(f)([v.value for v in
                                                     model.trainable_variables])]
    if backend == "torch":
        import torch

        outputs = model(images, training=True)
        total = model.compute_loss(x=images, y=targets, y_pred=outputs)
        variables = model.trainable_variables
        grads = torch.autograd.grad(total, [v.value for v in variables], allow_unused=True)
        return [np.zeros(v.shape, np.float32) if g is None else g.cpu().numpy()
                for g, v in zip(grads, variables, strict=True)]
    raise NotImplementedError(backend)


def _layer_norm(grads, info) -> float:
    return math.sqrt(sum(float(np.sum(np.square(grads[j], dtype=np.float64)))
                         for j in info.variables if grads[j] is not None))


class TestModelGraph:
    def test_graph_owners_match_the_layer_names(self, tiny_recipe):
        # Graph-derived ownership and the naming convention agree for every layer.
        model = build_model(tiny_recipe, channels=3)
        owners = model_graph(model, tiny_recipe.heads).owners()
        assert set(owners) == {layer.name for layer in model.layers}
        for name, owner in owners.items():
            assert owner == layer_owner(name, tiny_recipe.heads), name
        assert owners["mask-conv0"] == "mask" and owners["shape"] == "shape"
        assert owners["trunk-bottleneck-conv0"] == SHARED

    def test_trunk_layers_one_head_uses_belong_to_it(self, tiny_raw):
        # Without the boundary head, only mask reads the decoder: by the graph it is mask's,
        # whatever its name says (only mask's loss can train it).
        recipe = _recipe(tiny_raw, boundary=None)
        graph = model_graph(build_model(recipe, channels=3), recipe.heads)
        assert graph.layer("trunk-dec0-conv0").owner == "mask"
        assert graph.layer("trunk-dec0-conv0").heads == ("mask",)
        assert graph.layer("trunk-enc0-conv0").owner == SHARED

    def test_forward_order_shared_first_then_branches(self, tiny_recipe):
        graph = model_graph(build_model(tiny_recipe, channels=3), tiny_recipe.heads)
        order = [info.owner for info in graph.layers]
        groups = [SHARED, "mask", "boundary", "shape"]
        assert order == sorted(order, key=groups.index)
        position = {info.name: i for i, info in enumerate(graph.layers)}
        assert graph.edges and all(position[a] < position[b] for a, b in graph.edges)
        assert ("trunk-bottleneck-act1", "shape-pool") in graph.edges

    def test_every_variable_belongs_to_one_layer(self, tiny_recipe):
        model = build_model(tiny_recipe, channels=3)
        graph = model_graph(model, tiny_recipe.heads)
        claimed = sorted(j for info in graph.layers for j in info.variables)
        assert claimed == list(range(len(model.trainable_variables)))
        assert sum(info.params for info in graph.layers) == model.count_params() - sum(
            int(np.prod(v.shape)) for v in model.non_trainable_variables)

    def test_nested_functional_model(self):
        # A backbone built as its own functional model: its layers are walked into.
        inner_in = keras.Input((6,))
        inner_out = keras.layers.Dense(5, name="dense")(inner_in)
        backbone = keras.Model(inner_in, inner_out, name="backbone")
        image = keras.Input((6,), name="image")
        features = backbone(image)
        model = keras.Model(image, {"a": keras.layers.Dense(1, name="a")(features),
                                    "b": keras.layers.Dense(1, name="b")(features)})
        graph = model_graph(model, ("a", "b"))
        assert graph.owners() == {"image": SHARED, "backbone/dense": SHARED, "a": "a", "b": "b"}
        assert ("backbone/dense", "a") in graph.edges and ("image", "backbone/dense") in graph.edges
        probe = GradientProbe(model, {"a": keras.losses.MeanSquaredError(),
                                      "b": keras.losses.MeanSquaredError()})
        x = np.random.default_rng(0).normal(size=(8, 6)).astype(np.float32)
        report = summarise(probe.gradients(x, {"a": np.ones((8, 1)), "b": np.zeros((8, 1))}),
                           learning_rate=0.1)
        by_name = {e["name"]: e for e in report["layers"]}
        assert by_name["backbone/dense"]["reach"] == ["a", "b"]
        assert by_name["a"]["grad_norm"]["b"] == 0.0 and by_name["b"]["grad_norm"]["a"] == 0.0

    def test_refuses_positional_outputs(self):
        image = keras.Input((3,))
        model = keras.Model(image, [keras.layers.Dense(1)(image)])
        with pytest.raises(ValueError, match="dict keyed by head name"):
            model_graph(model)

    def test_unknown_head(self, tiny_recipe):
        with pytest.raises(ValueError, match=r"heads \['edges'\] are not model outputs"):
            model_graph(build_model(tiny_recipe, channels=3), ["mask", "edges"])


class TestHeadGradients:
    def test_exact_zero_pattern_across_branches(self, tiny_recipe):
        # Each head's gradient is exactly 0.0 on the other heads' branches and nonzero on its
        # own branch and on every shared layer of its path: measured, layer by layer.
        probe = _probe(tiny_recipe)
        grads = probe.gradients(*_batch(tiny_recipe))
        report = summarise(grads, learning_rate=0.01)
        for entry in report["layers"]:
            for head in tiny_recipe.heads:
                if head in entry["on_path"]:
                    assert entry["grad_norm"][head] > 0, (entry["name"], head)
                else:
                    assert entry["grad_norm"][head] == 0.0, (entry["name"], head)
                    assert entry["grad_max_abs"][head] == 0.0
            if entry["owner"] != SHARED:
                assert entry["reach"] == [entry["owner"]]
        # The classification head attaches at the bottleneck: the decoder is beyond its reach.
        by_name = {e["name"]: e for e in report["layers"]}
        assert by_name["trunk-dec0-conv0"]["reach"] == ["mask", "boundary"]
        assert by_name["trunk-enc0-conv0"]["reach"] == ["mask", "boundary", "shape"]
        assert report["reach"]["shape"][-1] == "shape"
        # And in the gradients themselves, not only in the summary: no element differs from 0.
        for info in probe.graph.weighted_layers:
            for head in tiny_recipe.heads:
                if head not in info.heads:
                    assert not np.any(grads.layer_values(head, info.name, weighted=False))

    def test_norms_equal_each_loss_alone(self, tiny_recipe):
        model = build_model(tiny_recipe, channels=3)
        probe = _probe(tiny_recipe, model)
        images, targets = _batch(tiny_recipe)
        report = summarise(probe.gradients(images, targets), learning_rate=0.01, mode="raw")
        losses = head_losses(tiny_recipe)
        for head in tiny_recipe.heads:
            alone = _independent(model, losses[head], images, targets[head], head)
            for info, entry in zip(probe.graph.weighted_layers, report["layers"], strict=True):
                expected = _layer_norm(alone, info)
                # float32 gradients, summed in a different order: 1e-5 relative.
                assert entry["grad_norm"][head] == pytest.approx(expected, rel=1e-5, abs=1e-9)

    def test_weighted_gradients_scale_linearly_with_the_loss_weight(self, tiny_recipe):
        model = build_model(tiny_recipe, channels=3)
        batch = _batch(tiny_recipe)
        one = summarise(_probe(tiny_recipe, model, boundary=0.3).gradients(*batch),
                        learning_rate=0.01)
        two = summarise(_probe(tiny_recipe, model, boundary=0.6).gradients(*batch),
                        learning_rate=0.01)
        for a, b in zip(one["layers"], two["layers"], strict=True):
            assert b["grad_norm"]["boundary"] == pytest.approx(2 * a["grad_norm"]["boundary"],
                                                              rel=1e-6)
            assert b["grad_norm_raw"]["boundary"] == pytest.approx(
                a["grad_norm_raw"]["boundary"], rel=1e-6)
            assert b["grad_norm"]["mask"] == pytest.approx(a["grad_norm"]["mask"], rel=1e-6)
        # The raw loss is the head's loss on a fresh training-mode forward pass; the weighted
        # one that times the weight given.
        raw = float(keras.ops.convert_to_numpy(head_losses(tiny_recipe)["boundary"](
            batch[1]["boundary"], model(batch[0], training=True)["boundary"])))
        for report, weight in ((one, 0.3), (two, 0.6)):
            assert report["loss"]["boundary"]["raw"] == pytest.approx(raw, rel=1e-6)
            assert report["loss"]["boundary"]["weighted"] == pytest.approx(weight * raw,
                                                                          rel=1e-6)

    def test_weighted_gradient_is_what_keras_optimises(self, tiny_recipe):
        # The gradient of Keras's own compiled total loss, with weights {h: w_h}, equals the
        # sum of the probe's weighted per-head gradients, variable by variable.
        model = build_model(tiny_recipe, channels=3)
        compile_model(model, tiny_recipe)
        images, targets = _batch(tiny_recipe)
        grads = _probe(tiny_recipe, model).gradients(images, targets)
        for j, expected in enumerate(_keras_total_gradient(model, images, targets)):
            ours = sum(grads.gradient(h, j, weighted=True) for h in tiny_recipe.heads)
            np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-7)

    def test_mean_over_batches(self, tiny_recipe):
        probe = _probe(tiny_recipe)
        first, second = _batch(tiny_recipe, seed=1), _batch(tiny_recipe, seed=2)
        a, b = probe.gradients(*first), probe.gradients(*second)
        mean = probe.mean_gradients([first, second])
        assert mean.batches == 2 and mean.samples == 8
        for head in tiny_recipe.heads:
            assert mean.loss[head] == pytest.approx((a.loss[head] + b.loss[head]) / 2, rel=1e-6)
            for j in range(len(mean.weights)):
                np.testing.assert_allclose(mean.gradient(head, j),
                                           (a.gradient(head, j) + b.gradient(head, j)) / 2,
                                           rtol=1e-5, atol=1e-8)

    def test_probe_changes_no_variable(self, tiny_recipe):
        # Batch-norm moving statistics included: the probe runs in training mode, and the new
        # statistics stateless_call returns are discarded.
        model = build_model(tiny_recipe, channels=3)
        before = [keras.ops.convert_to_numpy(v) for v in model.variables]
        assert any("moving_mean" in v.path for v in model.non_trainable_variables)
        _probe(tiny_recipe, model).gradients(*_batch(tiny_recipe))
        after = [keras.ops.convert_to_numpy(v) for v in model.variables]
        for old, new in zip(before, after, strict=True):
            np.testing.assert_array_equal(old, new)

    def test_loss_weight_key_checked(self, tiny_recipe):
        model = build_model(tiny_recipe, channels=3)
        with pytest.raises(ValueError, match=r"loss_weights \['edges'\] name no head"):
            GradientProbe(model, head_losses(tiny_recipe), {"edges": 1.0})


class TestGradScale:
    def test_zero_sends_no_gradient_into_the_trunk(self, tiny_raw):
        recipe = _recipe(tiny_raw, boundary={"grad_scale": 0.0, "branch": [4]})
        report = summarise(_probe(recipe).gradients(*_batch(recipe)), learning_rate=0.01)
        assert report["grad_scale"]["boundary"] == 0.0
        for entry in report["layers"]:
            if entry["owner"] == SHARED:
                assert entry["grad_norm"]["boundary"] == 0.0, entry["name"]
                assert entry["cosine"]["mask|boundary"] is None
            if entry["owner"] == "boundary":
                assert entry["grad_norm"]["boundary"] > 0, entry["name"]
        assert report["trunk"]["grad_norm"]["boundary"] == 0.0
        assert report["attach"]["boundary"]["grad_norm"] == 0.0
        assert report["branch"]["boundary"]["grad_norm"] > 0
        assert report["cosine"]["mask|boundary"] is None
        assert report["reach"]["boundary"] == ["boundary-conv0", "boundary-norm0",
                                               "boundary-logits"]

    def test_a_tenth_scales_the_trunk_gradient_by_a_tenth(self, tiny_raw):
        full = _recipe(tiny_raw, boundary={"branch": [4]})
        tenth = _recipe(tiny_raw, boundary={"grad_scale": 0.1, "branch": [4]})
        model_full = build_model(full, channels=3)
        model_tenth = build_model(tenth, channels=3)
        model_tenth.set_weights(model_full.get_weights())  # GradientScale has no weights
        batch = _batch(full)
        a = _probe(full, model_full).gradients(*batch)
        b = _probe(tenth, model_tenth).gradients(*batch)
        assert b.grad_scale == {"mask": 1.0, "boundary": 0.1, "shape": 1.0}
        for info in a.graph.weighted_layers:
            for j in info.variables:
                for head in full.heads:
                    factor = 0.1 if head == "boundary" and info.owner == SHARED else 1.0
                    expected = factor * a.gradient(head, j)
                    # float32 sums round relative to their terms, not to a result that
                    # cancels near 0: 1e-4 relative, or 1e-4 of the variable's largest entry.
                    np.testing.assert_allclose(b.gradient(head, j), expected, rtol=1e-4,
                                               atol=1e-4 * float(np.abs(expected).max()))


def _linear_pair(sign: float):
    """x -> shared linear layer -> two identical linear heads; b's target is sign * a's."""
    image = keras.Input((6,), name="image")
    shared = keras.layers.Dense(5, use_bias=False, name="trunk-linear")(image)
    model = keras.Model(image, {"a": keras.layers.Dense(1, use_bias=False, name="a")(shared),
                                "b": keras.layers.Dense(1, use_bias=False, name="b")(shared)})
    rng = np.random.default_rng(3)
    # Fixed small weights (not the global initialiser's): predictions small beside the targets.
    model.get_layer("trunk-linear").set_weights([0.3 * rng.normal(size=(6, 5))])
    head = 0.3 * rng.normal(size=(5, 1))
    model.get_layer("a").set_weights([head])
    model.get_layer("b").set_weights([head])
    x = rng.normal(size=(16, 6)).astype(np.float32)
    target = 10.0 * rng.normal(size=(16, 1)).astype(np.float32)
    losses = {"a": keras.losses.MeanSquaredError(), "b": keras.losses.MeanSquaredError()}
    grads = GradientProbe(model, losses).gradients(x, {"a": target, "b": sign * target})
    return model, x, target, summarise(grads, learning_rate=0.1)


class TestCosine:
    def test_two_identical_heads_agree_exactly(self):
        _, _, _, report = _linear_pair(+1.0)
        assert report["cosine"]["a|b"] == pytest.approx(1.0, abs=1e-6)
        assert report["layers"][0]["cosine"]["a|b"] == pytest.approx(1.0, abs=1e-6)
        assert report["conflicts"] == []

    def test_negated_targets_conflict(self):
        model, x, target, report = _linear_pair(-1.0)
        # Expected from the formula: for MSE on a linear head with kernel v on shared features
        # h = x W, dL/dW = x^T (2 / N) (y_hat - y) v^T, so the cosine between the two heads is
        # the cosine between x^T (y_hat - y) and x^T (y_hat + y).
        y_hat = keras.ops.convert_to_numpy(model(x)["a"]).astype(np.float64)
        u, v = x.T @ (y_hat - target), x.T @ (y_hat + target)
        expected = float(np.sum(u * v) / np.linalg.norm(u) / np.linalg.norm(v))
        assert expected < -0.9
        assert report["cosine"]["a|b"] == pytest.approx(expected, abs=1e-5)
        assert report["layers"][0]["name"] == "trunk-linear"
        assert report["conflicts"] == ["a|b"]

    def test_cosines_from_independent_gradients(self, tiny_recipe):
        # Per shared layer, over the shared trunk, and over the shared layers both heads of a
        # pair reach, from each loss's own gradient (the backend's tools, not the probe's).
        model = build_model(tiny_recipe, channels=3)
        probe = _probe(tiny_recipe, model)
        images, targets = _batch(tiny_recipe)
        report = summarise(probe.gradients(images, targets), learning_rate=0.01)
        losses = head_losses(tiny_recipe)
        alone = {h: _independent(model, losses[h], images, targets[h], h)
                 for h in tiny_recipe.heads}
        shared = [(info, entry) for info, entry in zip(probe.graph.weighted_layers,
                                                       report["layers"], strict=True)
                  if info.owner == SHARED]

        def flat(head, info):
            return np.concatenate([np.zeros(model.trainable_variables[j].shape).ravel()
                                   if alone[head][j] is None else
                                   alone[head][j].astype(np.float64).ravel()
                                   for j in info.variables])

        assert list(report["cosine"]) == ["mask|boundary", "mask|shape", "boundary|shape"]
        for pair in report["cosine"]:
            a, b = pair.split("|")
            dot = sq_a = sq_b = 0.0
            common = np.zeros(3)
            for info, entry in shared:
                ga, gb = flat(a, info), flat(b, info)
                terms = np.array([ga @ gb, ga @ ga, gb @ gb])
                dot, sq_a, sq_b = dot + terms[0], sq_a + terms[1], sq_b + terms[2]
                if terms[1] > 0 and terms[2] > 0:
                    common += terms
                    # float32 gradients, summed in another order: 1e-4 absolute.
                    assert entry["cosine"][pair] == pytest.approx(
                        terms[0] / np.sqrt(terms[1] * terms[2]), abs=1e-4), (entry["name"], pair)
                else:
                    assert entry["cosine"][pair] is None, (entry["name"], pair)
            assert report["cosine"][pair] == pytest.approx(dot / np.sqrt(sq_a * sq_b), abs=1e-4)
            assert report["cosine_common"][pair] == pytest.approx(
                common[0] / np.sqrt(common[1] * common[2]), abs=1e-4)


class TestStatistics:
    def test_layer_statistics_by_hand(self):
        # One Dense layer, one head: every figure recomputed from the raw gradient.
        model, x, target, report = _linear_pair(+1.0)
        losses = {"a": keras.losses.MeanSquaredError()}
        grads = GradientProbe(model, {**losses, "b": keras.losses.MeanSquaredError()},
                              {"a": 0.5, "b": 1.0}).gradients(x, {"a": target, "b": target})
        report = summarise(grads, learning_rate=0.1)
        g = grads.gradient("a", 0).astype(np.float64)
        weight = grads.weights[0].astype(np.float64)
        entry = report["layers"][0]
        assert entry["grad_norm_raw"]["a"] == pytest.approx(np.linalg.norm(g), rel=1e-6)
        assert entry["grad_norm"]["a"] == pytest.approx(0.5 * np.linalg.norm(g), rel=1e-6)
        assert entry["grad_mean_abs"]["a"] == pytest.approx(0.5 * np.mean(np.abs(g)), rel=1e-6)
        assert entry["grad_max_abs"]["a"] == pytest.approx(0.5 * np.max(np.abs(g)), rel=1e-6)
        # Plain SGD step at lr 0.1 on the weighted gradient, relative to the weights.
        assert entry["update_ratio"]["a"] == pytest.approx(
            0.1 * 0.5 * np.linalg.norm(g) / np.linalg.norm(weight), rel=1e-6)
        # Keras Adam's first step: lr * m / (sqrt(v) + eps) with bias correction.
        m, v = 0.1 * 0.5 * g, 0.001 * (0.5 * g) ** 2
        step = 0.1 * math.sqrt(0.001) / 0.1 * m / (np.sqrt(v) + 1e-7)
        assert entry["adam_step_ratio"]["a"] == pytest.approx(
            np.linalg.norm(step) / np.linalg.norm(weight), rel=1e-5)
        total = 0.5 * g + grads.gradient("b", 0)
        assert entry["grad_norm_total"] == pytest.approx(np.linalg.norm(total), rel=1e-6)

    def test_raw_and_weighted_modes(self, tiny_recipe):
        grads = _probe(tiny_recipe).gradients(*_batch(tiny_recipe))
        raw = summarise(grads, learning_rate=0.01, mode="raw")
        weighted = summarise(grads, learning_rate=0.01)
        for r, w in zip(raw["layers"], weighted["layers"], strict=True):
            assert r["grad_norm"] == r["grad_norm_raw"]
            assert w["grad_norm"] == w["grad_norm_weighted"]
            assert w["grad_norm"]["shape"] == pytest.approx(0.2 * r["grad_norm"]["shape"])
        assert raw["cosine"] == weighted["cosine"]  # positive weights leave directions alone
        with pytest.raises(ValueError, match="mode must be 'weighted' or 'raw'"):
            summarise(grads, learning_rate=0.01, mode="scaled")

    def test_attach_and_last_shared(self, tiny_recipe):
        report = summarise(_probe(tiny_recipe).gradients(*_batch(tiny_recipe)),
                           learning_rate=0.01)
        assert report["attach"]["mask"]["layer"] == "trunk-dec0-norm1"
        assert report["attach"]["shape"]["layer"] == "trunk-bottleneck-norm1"
        assert report["last_shared"]["layer"] == "trunk-dec0-norm1"
        assert report["last_shared"]["grad_norm"]["shape"] == 0.0
        by_name = {e["name"]: e for e in report["layers"]}
        assert report["attach"]["shape"]["grad_norm"] == by_name[
            "trunk-bottleneck-norm1"]["grad_norm"]["shape"] > 0
