"""The training step of the gradient-level methods, one per backend.

Keras's own steps take one gradient, of the total loss. ``pcgrad``, ``upgrad`` and ``gradnorm``
need each weighted head's gradient as well, in the same step, computed as gradflow's probe
(``multiseg.gradients``) computes them, but inside the trainer's step and on its state.
TensorFlow: one forward pass under a persistent tape, one ``tape.gradient`` per head. JAX: one
``jax.vjp`` of the stateless forward pass, pulled back once per head, inside Keras's jitted
``train_step(state, data)``. The
rest is written once in ``keras.ops``: the Gram matrix of the heads' trunk gradients, the
method's rule (``multiseg.weighting.gradient``), the combined gradient.

Everything else is Keras's step unchanged: the compiled losses (each head's raw loss logged),
the loss tracker, the metrics, the weighted-loss trackers, the optimizer (its ``clipnorm``,
weight decay and schedule).

Which variables are the shared trunk's comes from the functional graph, as in
``multiseg.graph``: the layers that at least two weighted heads' outputs depend on.
"""

from __future__ import annotations

import keras
from keras import ops

from multiseg.weighting.gradient import GradientWeighting, GradNormWeights


def train_step(model, *args):
    """The model's training step on this backend (``model.train_step``'s arguments)."""
    backend = keras.backend.backend()
    if backend not in STEPS:
        raise ValueError(f"the gradient-level weighting methods train on"
                         f" {' and '.join(STEPS)}, not {backend}")
    return STEPS[backend](model, *args)


def prepare(model) -> None:
    """What the steps need to know of the model's structure, read once from its functional
    graph (a sub-model per head: the layers its output depends on): which variables are the
    trunk's, shared by at least two weighted heads, and GradNorm's layer."""
    weighting: GradientWeighting = model.loss_weighting
    layers = [layer for layer in model.layers if layer is not weighting]
    reached = [{id(layer) for layer in keras.Model(model.inputs,
                                                   model.output[weighting.heads[i]]).layers}
               for i in weighting.active]
    shared = [layer for layer in layers if sum(id(layer) in ids for ids in reached) >= 2]
    model._trunk_variables = {id(v) for layer in shared for v in layer.trainable_variables}
    if isinstance(weighting, GradNormWeights):
        # The last shared layer with a kernel that every weighted head's output depends on.
        found = [layer for layer in shared if all(id(layer) in ids for ids in reached)
                 and any(v.path.endswith("/kernel") for v in layer.trainable_variables)]
        if not found:
            raise ValueError("gradnorm needs a layer with a kernel that every head with"
                             " loss_weight > 0 depends on; this model has none")
        weighting.layer_name = found[-1].name


def _plan(model):
    """(weighted heads, their loss weights, trunk flags per trainable variable, indices of
    GradNorm's layer's variables)."""
    weighting = model.loss_weighting
    heads = [weighting.heads[i] for i in weighting.active]
    priors = [weighting.priors[i] for i in weighting.active]
    variables = model.trainable_variables
    trunk = [id(v) in model._trunk_variables for v in variables]
    layer = getattr(weighting, "layer_name", None)
    at_layer = [j for j, v in enumerate(variables)
                if layer is not None and v.path.startswith(layer + "/")]
    return heads, priors, trunk, at_layer


def combine_trunk(weighting, per_head, trunk, rest=None):
    """The update's gradient from the weighted heads' gradients ``per_head[h][j]`` (tensors,
    zeros where a head does not reach): on the trunk ``sum_h alpha_h g_h``, ``alpha`` from the
    method's rule on their Gram matrix; elsewhere ``sum_h g_h`` (a branch gets its own head's
    gradient). ``rest``: gradients of the regularisation losses, added everywhere."""
    flat = ops.stack([ops.concatenate([ops.reshape(ops.cast(g[j], "float32"), (-1,))
                                       for j, shared in enumerate(trunk) if shared])
                      for g in per_head])
    alpha = weighting.combine(ops.matmul(flat, ops.transpose(flat)))
    combined = []
    for j, shared in enumerate(trunk):
        parts = [g[j] * ops.cast(alpha[h], g[j].dtype) if shared else g[j]
                 for h, g in enumerate(per_head)]
        total = parts[0]
        for part in parts[1:]:
            total = total + part
        combined.append(total if rest is None else total + rest[j])
    return combined


def _norm(tensors):
    return ops.sqrt(sum(ops.sum(ops.square(ops.cast(t, "float32"))) for t in tensors))


def _first_batch_size(x):
    return ops.shape(next(i for i in keras.tree.flatten(x) if i is not None))[0]


# ---------------------------------------------------------------------------------------------
# TensorFlow: a persistent tape.


def _tensorflow_step(model, data):
    import tensorflow as tf
    from keras.src.trainers.data_adapters import data_adapter_utils

    x, y, sample_weight = data_adapter_utils.unpack_x_y_sample_weight(data)
    weighting = model.loss_weighting
    heads, priors, trunk, at_layer = _plan(model)
    variables = model.trainable_weights
    with tf.GradientTape(persistent=True) as tape:
        y_pred = model(x, training=True)
        loss = model._compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight,
                                   training=True)
        model._loss_tracker.update_state(loss, sample_weight=_first_batch_size(x))
        raw = [tf.cast(model._raw_losses[h], "float32") for h in heads]
        # Inside the tape: what the tape has not seen has no gradient.
        weighted = [c * value for c, value in zip(priors, raw, strict=True)]
        regularisation = model._regularisation

    def gradient(target, sources):
        # None: the target does not reach the variable (another head's branch).
        return [tf.zeros_like(v) if g is None else tf.convert_to_tensor(g)
                for v, g in zip(sources, tape.gradient(target, sources), strict=True)]

    if weighting.per_head == "trunk":
        per_head = [gradient(value, variables) for value in weighted]
        rest = gradient(regularisation, variables) if regularisation is not None else None
        grads = combine_trunk(weighting, per_head, trunk, rest)
    else:
        grads = gradient(loss, variables)
        layer_variables = [variables[j] for j in at_layer]
        weighting.update(tf.stack([_norm(gradient(value, layer_variables)) for value in raw]),
                         tf.stack(raw))
    model.optimizer.apply_gradients(zip(grads, variables, strict=True))
    return model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)


# ---------------------------------------------------------------------------------------------
# JAX: the stateless step, one vjp pulled back per head.


def _jax_step(model, state, data):
    import jax
    import jax.numpy as jnp
    from keras.src.trainers.data_adapters import data_adapter_utils

    trainable, non_trainable, optimizer_variables, metrics_variables = state
    x, y, sample_weight = data_adapter_utils.unpack_x_y_sample_weight(data)
    weighting = model.loss_weighting
    heads, priors, trunk, at_layer = _plan(model)

    def forward(trainable_values):
        loss, aux = model.compute_loss_and_updates(
            trainable_values, non_trainable, metrics_variables, x, y, sample_weight,
            training=True, optimizer_variables=optimizer_variables)
        raw = jnp.stack([jnp.asarray(model._raw_losses[h], jnp.float32) for h in heads])
        regularisation = model._regularisation
        rest = (jnp.zeros((), jnp.float32) if regularisation is None
                else jnp.asarray(regularisation, jnp.float32))
        return (loss, raw, rest), aux

    (loss, raw, _), pullback, aux = jax.vjp(forward, trainable, has_aux=True)
    has_rest = model._regularisation is not None  # known when traced
    model._regularisation = None  # no tracer outlives the trace
    unscaled_loss, y_pred, non_trainable, metrics_variables = aux
    zero_loss, zero_rest = jnp.zeros_like(loss), jnp.zeros((), jnp.float32)
    basis = jnp.eye(len(heads), dtype=jnp.float32)
    mapping = list(zip(model.non_trainable_variables, non_trainable, strict=True))
    with keras.StatelessScope(state_mapping=mapping) as scope:
        if weighting.per_head == "trunk":
            per_head = [pullback((zero_loss, c * basis[i], zero_rest))[0]
                        for i, c in enumerate(priors)]
            rest = (pullback((zero_loss, jnp.zeros_like(raw), jnp.ones((), jnp.float32)))[0]
                    if has_rest else None)
            grads = combine_trunk(weighting, per_head, trunk, rest)
        else:
            grads = pullback((jnp.ones_like(loss), jnp.zeros_like(raw), zero_rest))[0]
            # Only the layer's part of each pullback is used: XLA drops the rest of its work.
            norms = jnp.stack([_norm([pullback((zero_loss, basis[i], zero_rest))[0][j]
                                      for j in at_layer]) for i in range(len(heads))])
            weighting.update(norms, raw)
    non_trainable = [scope.get_current_value(v) for v in model.non_trainable_variables]
    trainable, optimizer_variables = model.optimizer.stateless_apply(
        optimizer_variables, grads, trainable)
    logs, metrics_variables = model._update_metrics_variables(
        metrics_variables, unscaled_loss, x, y, y_pred, sample_weight)
    return logs, (trainable, non_trainable, optimizer_variables, metrics_variables)


STEPS = {"tensorflow": _tensorflow_step, "jax": _jax_step}
