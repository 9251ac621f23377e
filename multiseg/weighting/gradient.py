"""The gradient-level weighting methods: their rules on the heads' gradients, and their state.

``pcgrad`` and ``upgrad`` change the direction of the shared trunk's update; ``gradnorm``
learns loss weights from the heads' gradient norms at one shared layer. Each needs every
weighted head's own gradient in the training step (``multiseg.weighting.steps``, one step per
backend), and hands back what the step applies.

PCGrad and UPGrad work on the Gram matrix ``G = J J^T`` of the heads' trunk gradients (``J``:
one row per head, ``g_h = grad of c_h L_h`` over the trunk's variables): both combine the rows
into ``d = J^T alpha = sum_h alpha_h g_h``, and ``alpha`` follows from ``G`` alone. So the rule
is a few operations on a K x K matrix, written once in ``keras.ops`` for every backend, and the
implied per-head weights of the trunk (``alpha_h c_h``: ``d`` is the trunk gradient of
``sum_h alpha_h c_h L_h``) are state like any other weight. The heads' branches get their own
head's gradient ``c_h grad L_h``, as with static weights.

Each method is a :class:`GradientWeighting` layer (a ``LossWeighting``: its variables are model
state, saved in checkpoints). ``loss_weights`` holds the weights of the reported loss and of
``model.keras``: the recipe's ``loss_weight`` for ``pcgrad`` and ``upgrad``, whose objective
stays ``sum_h c_h L_h``; the learned weights for ``gradnorm``.
"""

from __future__ import annotations

import itertools

import keras
import numpy as np
from keras import ops

from multiseg.weighting.state import LossWeighting

# Added to the diagonal of the trace-normalised Gram matrix before UPGrad's projection
# (torchjd's default): gradients that are (nearly) linearly dependent leave G singular.
GRAM_REGULARISATION = 1e-4
# A free coordinate of a candidate active set may come out this far below 0 from float32
# rounding and still count as feasible (G is trace-normalised, so this is relative).
FEASIBILITY_TOLERANCE = 1e-5


# ---------------------------------------------------------------------------------------------
# The rules, on the K x K Gram matrix of the weighted heads' trunk gradients.


def pcgrad_weights(gram, orders):
    """PCGrad (Yu et al. 2020) as weights on the heads' gradients: ``sum_i g_i^PC = J^T
    alpha``.

    For each head i, ``g_i^PC`` starts as ``g_i``; for j in ``orders[i]``, where ``g_i^PC . g_j
    < 0``, ``g_i^PC -= (g_i^PC . g_j) / |g_j|^2 g_j``. Every ``g_i^PC`` stays a combination of
    the rows of ``J``, ``g_i^PC = J^T a_i``, and ``g_i^PC . g_j = (a_i^T G)_j``, so the
    projections need ``G`` only.

    Args:
        gram: (K, K) Gram matrix ``G_ij = g_i . g_j``.
        orders: (K, K) integers; row i the order in which ``g_i`` is projected (a permutation
            of all heads, i included, as in the authors' code, where it changes nothing).

    Returns:
        (K,) ``alpha`` with ``sum_i g_i^PC = J^T alpha``.
    """
    k = int(gram.shape[0])
    gram = ops.convert_to_tensor(gram, "float32")
    squared = ops.diagonal(gram)
    total = ops.zeros((k,), "float32")
    for i in range(k):
        coefficients = ops.one_hot(i, k, dtype="float32")
        for position in range(k):
            j = orders[i, position]
            dot = ops.sum(coefficients * ops.take(gram, j, axis=0))
            norm = ops.take(squared, j)
            # A zero gradient conflicts with nothing: skip it rather than divide by 0.
            step = ops.where((dot < 0) & (norm > 0), dot / ops.maximum(norm, 1e-30), 0.0)
            coefficients = coefficients - step * ops.one_hot(j, k, dtype="float32")
        total = total + coefficients
    return total


def upgrad_weights(gram):
    """UPGrad (Quinton & Rey 2024) as weights on the heads' gradients: ``J^T alpha = sum_i
    pi(g_i)``, ``pi`` the projection onto the dual cone ``{x : J x >= 0}`` (no head's loss
    rises to first order along x).

    ``pi(J^T u) = J^T v`` with ``v = argmin_{v >= u} v^T G v`` (the paper's Proposition 1), so
    ``alpha = sum_i v_i`` with ``u = e_i``. The quadratic program is solved exactly: its
    solution solves ``G_FF s_F = -(G u)_F``, ``s = v - u``, on its free set F; every subset F
    is tried (2^K small systems, batched), and the feasible candidate (``s >= 0``) of least
    ``v^T G v`` is the minimum (every candidate is a feasible point, and the minimum is one of
    them). G is trace-normalised (the projection does not depend on G's scale) and
    regularised by ``GRAM_REGULARISATION * I``, as torchjd does.

    Args:
        gram: (K, K) Gram matrix.

    Returns:
        (K,) ``alpha``; with no conflict (``G >= 0``) every ``v_i = e_i`` and ``alpha = 1``.
    """
    k = int(gram.shape[0])
    gram = ops.convert_to_tensor(gram, "float32")
    trace = ops.sum(ops.diagonal(gram))
    g = ops.where(trace > 0, gram / ops.maximum(trace, 1e-30), ops.zeros_like(gram))
    g = g + GRAM_REGULARISATION * ops.eye(k, dtype="float32")
    free = np.array(list(itertools.product((0.0, 1.0), repeat=k)), np.float32)  # (S, K)
    free_t = ops.convert_to_tensor(free)
    # On F: G_FF s_F = -(G u)_F; off F: s = 0 (an identity row).
    system = (free_t[:, :, None] * g[None] * free_t[:, None, :]
              + ops.convert_to_tensor(np.stack([np.diag(1.0 - f) for f in free])))  # (S,K,K)
    rhs = -free_t[None, :, :] * ops.transpose(g)[:, None, :]  # (K u's, S, K): -f * G e_i
    shifts = ops.solve(ops.broadcast_to(system[None], (k, *system.shape)),
                       rhs[..., None])[..., 0]  # (K, S, K)
    candidates = ops.eye(k, dtype="float32")[:, None, :] + shifts
    objective = ops.einsum("isa,ab,isb->is", candidates, g, candidates)
    feasible = ops.all(shifts >= -FEASIBILITY_TOLERANCE, axis=-1)
    objective = ops.where(feasible, objective, ops.full_like(objective, np.inf))
    best = ops.argmin(objective, axis=1)  # (K,): never empty, F = {} (v = u) is feasible
    chosen = ops.sum(candidates * ops.one_hot(best, len(free), dtype="float32")[..., None],
                     axis=1)  # (K, K)
    projected = ops.maximum(chosen, ops.eye(k, dtype="float32"))  # v >= u, rounding aside
    return ops.sum(projected, axis=0)


def gradnorm_gradient(logits, norms, losses, initial_losses, priors, alpha: float):
    """The gradient of GradNorm's loss (Chen et al. 2018) with respect to its logits.

    Weights ``w = c * K softmax(xi)``; at the chosen layer W, ``G_h = w_h |grad_W L_h|``
    (``norms``: ``|grad_W L_h|``, raw losses), ``Gbar = mean_h G_h``; training rates
    ``r_h = Ltilde_h / mean Ltilde``, ``Ltilde_h = L_h / L_h(0)``. The loss ``sum_h |G_h -
    Gbar r_h^alpha|`` with its target held constant (the paper) has the gradient
    ``sign(G_h - T_h) c_h |grad_W L_h|`` in ``w_h``, hence in ``xi``:
    ``J_softmax(xi)^T (K c * sign(G - T) * norms)``.

    All arguments are (K,) tensors over the weighted heads, ``alpha`` a float.
    """
    k = float(int(logits.shape[0]))
    z = ops.softmax(logits)
    weights = priors * k * z
    grad_norms = weights * norms
    rates = (losses / initial_losses) / ops.mean(losses / initial_losses)
    target = ops.mean(grad_norms) * ops.power(rates, alpha)
    in_weights = ops.sign(grad_norms - target) * priors * norms * k
    return z * (in_weights - ops.sum(z * in_weights))


# ---------------------------------------------------------------------------------------------
# The methods' state.


class GradientWeighting(LossWeighting):
    """Base of the gradient-level methods. ``per_head`` says which gradients the training
    step computes per weighted head: ``"trunk"`` (all of them, the trunk's combined by
    :meth:`TrunkCombination.combine`) or ``"layer"`` (those of one layer's variables, beside
    the total loss's gradient: :meth:`GradNormWeights.update`)."""

    per_head = "trunk"


class TrunkCombination(GradientWeighting):
    """``combine`` turns the Gram matrix of the weighted heads' trunk gradients into the
    weights ``alpha`` of the trunk's update; ``trunk_weights`` keeps the implied weights of
    the last step, ``alpha_h c_h`` per head (0 for a head with loss_weight 0)."""

    def __init__(self, heads, priors, **kwargs):
        super().__init__(heads, priors, **kwargs)
        self.trunk_weights = self._counter("trunk_weights", shape=(len(self.heads),))
        self.trunk_weights.assign(ops.convert_to_tensor(self.priors, "float32"))

    def combine(self, gram):
        alpha = self.rule(gram)
        self.trunk_weights.assign(self._spread(alpha))
        return alpha

    def rule(self, gram):
        raise NotImplementedError


class ProjectedGradients(TrunkCombination):
    """PCGrad: each head's trunk gradient projected off the others' it conflicts with, in a
    random order per head, drawn from a generator seeded by the recipe (state in the
    checkpoints); the trunk's update is the sum (:func:`pcgrad_weights`)."""

    def __init__(self, heads, priors, **kwargs):
        super().__init__(heads, priors, **kwargs)
        self.generator = keras.random.SeedGenerator(self.seed, name="pcgrad_seed_generator")

    def rule(self, gram):
        k = len(self.active)
        draws = keras.random.uniform((k, k), seed=self.generator)
        return pcgrad_weights(gram, ops.argsort(draws, axis=-1))


class UnconflictedGradients(TrunkCombination):
    """UPGrad: the sum of the heads' trunk gradients, each projected onto the dual cone of
    all of them (:func:`upgrad_weights`)."""

    def rule(self, gram):
        return upgrad_weights(gram)


class GradNormWeights(GradientWeighting):
    """GradNorm: loss weights ``w = c * K softmax(xi)``, used as loss weights for the whole
    network; ``xi`` follows Adam on :func:`gradnorm_gradient`, from the weighted heads'
    gradient norms at one layer (the last shared layer with a kernel that every
    weighted head reaches, ``layer_name``, chosen by the model). ``L_h(0)`` is the first
    step's raw loss."""

    per_head = "layer"

    def __init__(self, heads, priors, *, alpha: float = 1.5, learning_rate: float = 0.025,
                 **kwargs):
        super().__init__(heads, priors, **kwargs)
        self.alpha = float(alpha)
        self.learning_rate = float(learning_rate)
        k = len(self.active)
        self._add_adam_logits(k)
        self.initial_losses = self._counter("initial_losses", shape=(k,))
        self.has_initial = self._counter("has_initial")
        self.layer_name: str | None = None  # set by the model when it knows its graph

    def multipliers(self):
        return float(len(self.active)) * ops.softmax(ops.convert_to_tensor(self.logits))

    def step_weights(self, raw):
        seen = self.has_initial.value > 0
        self.initial_losses.assign(ops.where(seen, self.initial_losses.value,
                                             self._active(raw)))
        self.has_initial.assign(1.0)
        return self._spread(self.multipliers())

    def update(self, norms, raw):
        """One Adam step on the logits from the weighted heads' gradient norms ``norms`` (K,)
        at the layer and their raw losses ``raw`` (K,)."""
        priors = ops.convert_to_tensor([self.priors[i] for i in self.active], "float32")
        # A head whose first loss was 0 has no training rate: count it as on target.
        initial = ops.where(self.initial_losses.value > 0, self.initial_losses.value, 1.0)
        losses = ops.where(self.initial_losses.value > 0, raw, 1.0)
        grad = gradnorm_gradient(ops.convert_to_tensor(self.logits), norms, losses, initial,
                                 priors, self.alpha)
        self._adam_step(grad)


GRADIENT_WEIGHTINGS: dict[str, type[GradientWeighting]] = {
    "pcgrad": ProjectedGradients,
    "upgrad": UnconflictedGradients,
    "gradnorm": GradNormWeights,
}
