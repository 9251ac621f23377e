"""Per-head gradients: which layers each head's loss reaches, how strongly, and where heads fight.

For a multi-head model (output: a dict keyed by head name) and one or more batches, this module
computes every head's gradient with respect to every trainable variable, takes every layer's
owner (shared, or one head's branch) from the model graph (``multiseg.graph``), and reduces the
gradients to per-layer statistics (norms, update/weight ratios, cosines between heads on the
shared layers).

The three steps are separate so each can be used and tested alone:

    graph = model_graph(model, heads)                  # multiseg.graph: owners from the graph
    probe = GradientProbe(model, losses, loss_weights)  # compiled once per model
    grads = probe.gradients(images, targets)            # HeadGradients: one backward per head
    report = summarise(grads, learning_rate=1e-3)       # plain dict, the gradflow.json document

How the gradients are computed: one forward pass with ``training=True`` (what ``fit`` does, so
batch-norm uses batch statistics and dropout is active) through ``model.stateless_call``, then one
backward pass per head. ``stateless_call`` returns the updated batch-norm moving statistics
instead of assigning them, and they are discarded: a probe never changes the model's variables,
on any backend. A head's gradient with respect to a variable it cannot reach is exactly zero (the
backend reports "unconnected" or an exact 0.0); nothing here assumes it.

The backend-specific part is one function per backend in ``_BACKENDS``, keyed on
``keras.backend.backend()`` (TensorFlow: a persistent tape in a ``tf.function``; JAX: one
``vjp`` pulled back once per head, jitted; PyTorch: ``torch.autograd.grad`` once per head on
the retained graph, eagerly); everything else is NumPy. The three agree to float32 rounding
(``tests/test_backend_gradients.py``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from multiseg.graph import ModelGraph, forward_layers, model_graph
from multiseg.models.naming import SHARED, layer_owner

REPORT_FORMAT = "multiseg.gradflow/1"
# Keras Adam defaults; the first Adam step is lr * g / (|g| + eps / sqrt(1 - beta_2)).
ADAM_EPSILON = 1e-7
ADAM_BETA_2 = 0.999


# ---------------------------------------------------------------------------------------------
# The backend-specific part: one forward, one backward per head, nothing assigned.
#
# Each function returns ``probe(images, targets) -> (losses, grads)``: ``losses`` the k raw
# head losses (NumPy), ``grads[h][j]`` head h's gradient for trainable variable j as a NumPy
# array, or None where the backend reports the variable unconnected to that head's loss.


def _tensorflow_probe(model: keras.Model, heads: tuple[str, ...], losses: Mapping):
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def run(trainable, non_trainable, images, targets):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(trainable)
            outputs, _ = model.stateless_call(trainable, non_trainable, images, training=True)
            values = [losses[h](targets[h], outputs[h]) for h in heads]
        grads = [tape.gradient(value, trainable) for value in values]
        # None (unconnected) passes through tf.function unchanged: it is the reach information.
        return tf.stack(values), [[g if g is None else tf.convert_to_tensor(g) for g in per]
                                  for per in grads]

    def probe(images, targets):
        values, grads = run([v.value for v in model.trainable_variables],
                            [v.value for v in model.non_trainable_variables],
                            tf.convert_to_tensor(images),
                            {h: tf.convert_to_tensor(targets[h]) for h in heads})
        return values.numpy(), [[None if g is None else g.numpy() for g in per]
                                for per in grads]

    return probe


def _jax_probe(model: keras.Model, heads: tuple[str, ...], losses: Mapping):
    import jax
    import jax.numpy as jnp

    def head_losses(trainable, non_trainable, images, targets):
        outputs, _ = model.stateless_call(trainable, non_trainable, images, training=True)
        return jnp.stack([losses[h](targets[h], outputs[h]) for h in heads])

    @jax.jit
    def run(trainable, non_trainable, images, targets):
        values, pullback = jax.vjp(
            lambda t: head_losses(t, non_trainable, images, targets), trainable)
        basis = jnp.eye(len(heads), dtype=values.dtype)
        return values, [pullback(basis[i])[0] for i in range(len(heads))]

    def probe(images, targets):
        model.jax_state_sync()  # during fit, the live values are in the trainer's state
        values, grads = run([v.value for v in model.trainable_variables],
                            [v.value for v in model.non_trainable_variables],
                            jnp.asarray(images), {h: jnp.asarray(targets[h]) for h in heads})
        return np.asarray(values), [[np.asarray(g) for g in per] for per in grads]

    return probe


def _torch_probe(model: keras.Model, heads: tuple[str, ...], losses: Mapping):
    import torch

    def probe(images, targets):
        # Leaves sharing the variables' storage: gradients are taken for them, and the
        # variables themselves are never part of the graph.
        trainable = [v.value.detach().requires_grad_(True) for v in model.trainable_variables]
        non_trainable = [v.value.detach() for v in model.non_trainable_variables]
        convert = keras.ops.convert_to_tensor  # on the backend's device
        with torch.enable_grad():  # callbacks may run where fit turned it off
            outputs, _ = model.stateless_call(trainable, non_trainable, convert(images),
                                              training=True)
            values = [losses[h](convert(targets[h]), outputs[h]) for h in heads]
            # allow_unused: None for a variable the head's loss does not reach, as on TF.
            grads = [torch.autograd.grad(value, trainable, retain_graph=i < len(heads) - 1,
                                         allow_unused=True)
                     for i, value in enumerate(values)]
        return (np.array([float(v.detach().cpu()) for v in values], np.float32),
                [[None if g is None else g.detach().cpu().numpy() for g in per]
                 for per in grads])

    return probe


_BACKENDS = {"tensorflow": _tensorflow_probe, "jax": _jax_probe, "torch": _torch_probe}


# ---------------------------------------------------------------------------------------------
# Gradients per head.


@dataclass
class HeadGradients:
    """Each head's raw gradient ``dL_h/dθ_j`` for every trainable variable ``θ_j``.

    ``raw[h][j]`` is a NumPy array, or None where head h's loss does not reach variable j (its
    gradient there is exactly zero). The weighted gradient, head h's contribution to the
    gradient of the total loss ``sum_h w_h L_h``, is ``loss_weights[h] * raw[h][j]``.
    """

    graph: ModelGraph
    raw: dict[str, list[np.ndarray | None]]
    loss: dict[str, float]  # raw loss of each head (mean over the batches)
    loss_weights: dict[str, float]
    weights: list[np.ndarray]  # the trainable variables' values at the time of the probe
    paths: list[str]  # the trainable variables' paths
    batches: int = 1
    samples: int = 0
    grad_scale: dict[str, float] = field(default_factory=dict)

    @property
    def heads(self) -> tuple[str, ...]:
        return self.graph.heads

    def gradient(self, head: str, variable: int, *, weighted: bool = False) -> np.ndarray:
        """One head's gradient for one variable, zeros where it does not reach."""
        g = self.raw[head][variable]
        if g is None:
            return np.zeros(self.weights[variable].shape, np.float32)
        return g * np.float32(self.loss_weights[head]) if weighted else g

    def layer_values(self, head: str, layer: str, *, weighted: bool = True) -> np.ndarray:
        """A head's gradient over one layer's trainable variables, flattened."""
        info = self.graph.layer(layer)
        parts = [self.gradient(head, j, weighted=weighted).ravel() for j in info.variables]
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)


class GradientProbe:
    """Per-head gradients of a multi-head model, compiled once.

    Args:
        model: a functional ``keras.Model`` with a dict output keyed by head name.
        losses: ``{head: keras Loss}``, each called as ``loss(target, output)`` (the heads'
            losses as ``compile`` gets them, e.g. ``multiseg.models.build.head_losses``).
        loss_weights: ``{head: w}`` of ``total = sum_h w_h * L_h`` (default 1.0 each).

    Example:
        >>> probe = GradientProbe(model, head_losses(recipe), {"mask": 1.0, "shape": 0.2})
        >>> grads = probe.gradients(images, {"mask": masks, "shape": labels})

    Raises:
        ValueError: a loss or weight names no model output, or the backend is not supported.
    """

    def __init__(self, model: keras.Model, losses: Mapping[str, Any],
                 loss_weights: Mapping[str, float] | None = None):
        self.model = model
        self.losses = dict(losses)
        weights = dict(loss_weights) if loss_weights is not None else {}
        extra = sorted(set(weights) - set(self.losses))
        if extra:
            raise ValueError(f"loss_weights {extra} name no head with a loss; heads with a"
                             f" loss: {list(self.losses)}")
        self.loss_weights = {h: float(weights.get(h, 1.0)) for h in self.losses}
        self.graph = model_graph(model, tuple(self.losses))
        backend = keras.backend.backend()
        if backend not in _BACKENDS:
            raise ValueError(f"per-head gradients are implemented for the backends"
                             f" {sorted(_BACKENDS)}, not '{backend}'")
        self._probe = _BACKENDS[backend](model, self.graph.heads, self.losses)
        from multiseg.models.layers import GradientScale

        self.grad_scale = {h: 1.0 for h in self.graph.heads}
        for name, layer in forward_layers(model):
            info = self.graph.layer(name)
            if isinstance(layer, GradientScale) and info.owner in self.grad_scale:
                self.grad_scale[info.owner] *= layer.scale

    @property
    def heads(self) -> tuple[str, ...]:
        return self.graph.heads

    def gradients(self, images, targets: Mapping[str, Any]) -> HeadGradients:
        """Every head's gradient on one batch ``(images, {head: target})``."""
        return self.mean_gradients([(images, targets)])

    def mean_gradients(self, batches: Iterable[tuple[Any, Mapping[str, Any]]]) -> HeadGradients:
        """Gradients and losses averaged over several batches (the mean of the batch means)."""
        heads = self.heads
        total: dict[str, list[np.ndarray | None]] | None = None
        loss_sum = np.zeros(len(heads), np.float64)
        count = samples = 0
        for images, targets in batches:
            missing = [h for h in heads if h not in targets]
            if missing:
                raise ValueError(f"targets lack the heads {missing}; they have {sorted(targets)}")
            values, grads = self._probe(images, targets)
            loss_sum += values.astype(np.float64)
            if total is None:
                total = {h: list(grads[i]) for i, h in enumerate(heads)}
            else:
                for i, h in enumerate(heads):
                    total[h] = [a if b is None else b if a is None else a + b
                                for a, b in zip(total[h], grads[i], strict=True)]
            count += 1
            samples += len(images)
        if total is None:
            raise ValueError("no batches to compute gradients on")
        if count > 1:
            scale = np.float32(1.0 / count)
            total = {h: [None if g is None else g * scale for g in per]
                     for h, per in total.items()}
        variables = self.model.trainable_variables
        return HeadGradients(graph=self.graph, raw=total,
                             loss={h: float(loss_sum[i] / count) for i, h in enumerate(heads)},
                             loss_weights=dict(self.loss_weights),
                             weights=[keras.ops.convert_to_numpy(v) for v in variables],
                             paths=[v.path for v in variables], batches=count, samples=samples,
                             grad_scale=dict(self.grad_scale))


# ---------------------------------------------------------------------------------------------
# Statistics: the gradflow.json document.


def pair_key(a: str, b: str) -> str:
    return f"{a}|{b}"


def head_pairs(heads: Iterable[str]) -> list[tuple[str, str]]:
    heads = list(heads)
    return [(a, b) for i, a in enumerate(heads) for b in heads[i + 1:]]


def _cosine(dot: float, sq_a: float, sq_b: float) -> float | None:
    """None where a gradient is zero (the cosine is undefined)."""
    if sq_a <= 0 or sq_b <= 0:
        return None
    return max(-1.0, min(1.0, dot / math.sqrt(sq_a * sq_b)))


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a.ravel(), b.ravel()))


def _adam_step_sq(g: np.ndarray) -> float:
    """Squared norm of Keras Adam's first step from zero state, divided by the learning rate."""
    step = g / (np.abs(g) + ADAM_EPSILON / math.sqrt(1.0 - ADAM_BETA_2))
    return _dot(step, step)


def _named_owner(name: str, heads) -> str | None:
    try:
        return layer_owner(name, heads)
    except ValueError:
        return None


def summarise(grads: HeadGradients, *, learning_rate: float, mode: str = "weighted",
              optimizer: str | None = None, recipe: str | None = None,
              step: int | None = None) -> dict[str, Any]:
    """Reduces per-head gradients to the ``gradflow.json`` document (plain JSON data).

    Args:
        grads: from :meth:`GradientProbe.gradients`.
        learning_rate: for the update/weight ratios of one optimiser step.
        mode: ``weighted`` (``w_h * dL_h/dθ``, what the optimiser receives) or ``raw``
            (``dL_h/dθ``): which gradient ``grad_norm``, ``grad_mean_abs``, ``grad_max_abs``
            and the trunk, branch and attach norms describe.
        optimizer, recipe, step: recorded as given.

    The fields are documented in ``docs/gradflow.md``. In short: per layer (forward order) and
    head, the L2 norm, mean and max of |g| (0.0 exactly where the head does not reach); the
    update/weight ratio of a plain SGD step ``lr * ||w_h g_h|| / ||θ||`` and of Keras Adam's
    first step; per pair of heads, the cosine of their gradients on each shared layer and over
    the whole shared trunk. Cosines use the raw gradients (a positive loss weight does not
    change them) and are None where either gradient is zero.

    Raises:
        ValueError: an unknown ``mode``.
    """
    if mode not in ("weighted", "raw"):
        raise ValueError(f"mode must be 'weighted' or 'raw', got '{mode}'")
    heads = grads.heads
    w = grads.loss_weights
    scale = {h: (w[h] if mode == "weighted" else 1.0) for h in heads}
    pairs = head_pairs(heads)
    graph = grads.graph

    # Per variable sums, then per layer: squared norms, |g| sums, max |g|, dots between heads.
    layers = []
    trunk_sq = {h: 0.0 for h in heads}
    trunk_dot = {p: 0.0 for p in pairs}
    # Over the shared layers both heads of a pair reach (their common part of the trunk).
    common = {p: [0.0, 0.0, 0.0] for p in pairs}
    trunk_total_sq = trunk_params = 0
    branch_sq = {h: 0.0 for h in heads}
    branch_params = {h: 0 for h in heads}
    reach: dict[str, list[str]] = {h: [] for h in heads}
    for info in graph.weighted_layers:
        sq = {h: 0.0 for h in heads}
        abs_sum = {h: 0.0 for h in heads}
        abs_max = {h: 0.0 for h in heads}
        dots = {p: 0.0 for p in pairs}
        adam_sq = {h: 0.0 for h in heads}
        total_sq = adam_total_sq = weight_sq = 0.0
        for j in info.variables:
            weight_sq += _dot(grads.weights[j], grads.weights[j])
            present = {h: grads.raw[h][j] for h in heads if grads.raw[h][j] is not None}
            for h, g in present.items():
                sq[h] += _dot(g, g)
                a = np.abs(g)
                abs_sum[h] += float(np.sum(a, dtype=np.float64))
                abs_max[h] = max(abs_max[h], float(np.max(a)) if a.size else 0.0)
                if w[h]:
                    adam_sq[h] += _adam_step_sq(g * np.float32(w[h]))
            if info.owner == SHARED:
                for a_head, b_head in pairs:
                    if a_head in present and b_head in present:
                        dots[(a_head, b_head)] += _dot(present[a_head], present[b_head])
            if present:
                total = sum(g * np.float32(w[h]) for h, g in present.items())
                total_sq += _dot(total, total)
                adam_total_sq += _adam_step_sq(total)
        measured = [h for h in heads if abs_max[h] > 0.0]
        for h in measured:
            reach[h].append(info.name)
        weight_norm = math.sqrt(weight_sq)

        def ratio(sq_value: float, norm: float = weight_norm) -> float | None:
            return learning_rate * math.sqrt(sq_value) / norm if norm > 0 else None

        entry: dict[str, Any] = {
            "name": info.name,
            "class": info.kind,
            "owner": info.owner,
            "named_owner": _named_owner(info.name, heads),
            "on_path": list(info.heads),
            "reach": measured,
            "params": info.params,
            "weight_norm": weight_norm,
            "grad_norm": {h: scale[h] * math.sqrt(sq[h]) for h in heads},
            "grad_mean_abs": {h: scale[h] * abs_sum[h] / info.params if info.params else 0.0
                              for h in heads},
            "grad_max_abs": {h: scale[h] * abs_max[h] for h in heads},
            "grad_norm_raw": {h: math.sqrt(sq[h]) for h in heads},
            "grad_norm_weighted": {h: w[h] * math.sqrt(sq[h]) for h in heads},
            "grad_norm_total": math.sqrt(total_sq),
            "update_ratio": {h: ratio(w[h] ** 2 * sq[h]) for h in heads},
            "update_ratio_total": ratio(total_sq),
            "adam_step_ratio": {h: ratio(adam_sq[h]) for h in heads},
            "adam_step_ratio_total": ratio(adam_total_sq),
            "cosine": {},
        }
        if info.owner == SHARED:
            entry["cosine"] = {pair_key(*p): _cosine(dots[p], sq[p[0]], sq[p[1]])
                               for p in pairs}
            for h in heads:
                trunk_sq[h] += sq[h]
            for p in pairs:
                trunk_dot[p] += dots[p]
                if sq[p[0]] > 0 and sq[p[1]] > 0:
                    common[p][0] += dots[p]
                    common[p][1] += sq[p[0]]
                    common[p][2] += sq[p[1]]
            trunk_total_sq += total_sq
            trunk_params += info.params
        elif info.owner in branch_sq:
            branch_sq[info.owner] += sq[info.owner]
            branch_params[info.owner] += info.params
        layers.append(entry)

    shared_layers = [e for e in layers if e["owner"] == SHARED]
    attach = {}
    for h in heads:
        on_path = [e for e in shared_layers if h in e["on_path"]]
        last = on_path[-1] if on_path else None
        attach[h] = {"layer": last["name"] if last else None,
                     "grad_norm": last["grad_norm"][h] if last else 0.0}
    last_shared = shared_layers[-1] if shared_layers else None
    cosine = {pair_key(*p): _cosine(trunk_dot[p], trunk_sq[p[0]], trunk_sq[p[1]])
              for p in pairs}
    return {
        "format": REPORT_FORMAT,
        "recipe": recipe,
        "backend": keras.backend.backend(),
        "mode": mode,
        "step": step,
        "heads": list(heads),
        "loss_weights": {h: w[h] for h in heads},
        "grad_scale": {h: grads.grad_scale.get(h, 1.0) for h in heads},
        "loss": {h: {"raw": grads.loss[h], "weighted": w[h] * grads.loss[h]} for h in heads},
        "batches": grads.batches,
        "samples": grads.samples,
        "optimizer": optimizer,
        "learning_rate": learning_rate,
        "layers": layers,
        "trunk": {"params": trunk_params,
                  "grad_norm": {h: scale[h] * math.sqrt(trunk_sq[h]) for h in heads},
                  "grad_norm_total": math.sqrt(trunk_total_sq)},
        "branch": {h: {"params": branch_params[h],
                       "grad_norm": scale[h] * math.sqrt(branch_sq[h])} for h in heads},
        "attach": attach,
        "last_shared": {"layer": last_shared["name"] if last_shared else None,
                        "grad_norm": {h: last_shared["grad_norm"][h] if last_shared else 0.0
                                      for h in heads}},
        "cosine": cosine,
        "cosine_common": {pair_key(*p): _cosine(*common[p]) for p in pairs},
        "conflicts": [k for k, v in cosine.items() if v is not None and v < 0],
        "reach": reach,
        "graph": {"nodes": [{"name": i.name, "class": i.kind, "owner": i.owner,
                             "params": i.params} for i in graph.layers],
                  "edges": [list(e) for e in graph.edges]},
    }
