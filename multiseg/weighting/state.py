"""The loss-level weighting methods: each one's state (Keras variables) and update rule.

A method is a ``LossWeighting`` layer owned by the model (``WeightedModel.loss_weighting``).
Its variables are model variables, so every backend's trainer threads them through the
training step (on JAX they are part of the jitted step's state, not constants frozen into the
trace), ``save_weights`` writes them into every checkpoint, and a resumed run continues with
exactly the state it stopped with. The update happens inside the training step
(:meth:`LossWeighting.total` with ``training=True``), never in a callback, so nothing depends
on when callbacks run.

Every method computes the effective weight of each head, ``w_h``; the total loss is
``sum_h w_h * L_h`` (plus the method's own term, for ``uncertainty``). ``w_h`` is the
recipe's ``loss_weight`` (``c_h``) times the method's multiplier, so that every method but
``famo`` starts from the static weights, and a head with ``loss_weight: 0`` stays at 0 (it is
left out of the method: monitored, never trained).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import keras
from keras import ops

ADAM_BETA_1, ADAM_BETA_2, ADAM_EPSILON = 0.9, 0.999, 1e-8  # FAMO's weight optimiser (torch's)
FAMO_EPSILON = 1e-8  # FAMO's D = L - min_L + eps, with min_L = 0


class LossWeighting(keras.layers.Layer):
    """Base: the heads' effective weights, kept in ``loss_weights`` (a model variable).

    Args:
        heads: the heads' names, in the recipe's order.
        priors: each head's recipe ``loss_weight``.
        steps_per_epoch: steps of one training epoch (epoch-based methods count with it).
        seed: the recipe's seed (random methods).
    """

    def __init__(self, heads: Sequence[str], priors: Mapping[str, float], *,
                 steps_per_epoch: int = 1, seed: int = 0, name: str = "loss_weighting",
                 **kwargs):
        super().__init__(name=name, **kwargs)
        self.heads = list(heads)
        self.priors = [float(priors[h]) for h in self.heads]
        self.active = [i for i, p in enumerate(self.priors) if p > 0]
        self.steps_per_epoch = max(int(steps_per_epoch), 1)
        self.seed = seed
        self.loss_weights = self.add_weight(
            shape=(len(self.heads),), initializer=keras.initializers.Constant(self.priors),
            trainable=False, name="loss_weights")
        # Exact epoch means of w_h * L_h (the weights may change every step).
        self.weighted_trackers = [keras.metrics.Mean(name=f"{h}_weighted_loss")
                                  for h in self.heads]

    # -- helpers --------------------------------------------------------------------------

    def _spread(self, multipliers, *, prior: bool = True):
        """Per-head weights from the active heads' multipliers: ``c_h * m_j``, 0 elsewhere."""
        out = [ops.zeros((), "float32")] * len(self.heads)
        for j, i in enumerate(self.active):
            out[i] = multipliers[j] * self.priors[i] if prior else multipliers[j]
        return ops.stack(out)

    def _active(self, values):
        return ops.stack([values[i] for i in self.active])

    def _counter(self, name: str, dtype: str = "float32", shape=()):
        return self.add_weight(shape=shape, initializer="zeros", trainable=False, name=name,
                               dtype=dtype)

    def _add_adam_logits(self, size: int) -> None:
        """Logits with an Adam state of their own (FAMO, GradNorm): stepped by hand, inside
        the training step, never by the model's optimizer."""
        self.logits = self._counter("logits", shape=(size,))
        self.adam_m = self._counter("adam_m", shape=(size,))
        self.adam_v = self._counter("adam_v", shape=(size,))
        self.adam_steps = self._counter("adam_steps")

    def _adam_step(self, grad, apply=True):
        """The logits after one Adam step (torch's) on ``grad`` with ``self.learning_rate``,
        stored; where ``apply`` (a boolean tensor) is false, state and logits stay."""
        t = self.adam_steps.value + ops.cast(apply, "float32")
        m = ADAM_BETA_1 * self.adam_m.value + (1 - ADAM_BETA_1) * grad
        v = ADAM_BETA_2 * self.adam_v.value + (1 - ADAM_BETA_2) * grad * grad
        safe_t = ops.maximum(t, 1.0)
        m_hat = m / (1 - ops.power(ADAM_BETA_1, safe_t))
        v_hat = v / (1 - ops.power(ADAM_BETA_2, safe_t))
        logits = ops.where(apply, self.logits.value
                           - self.learning_rate * m_hat / (ops.sqrt(v_hat) + ADAM_EPSILON),
                           self.logits.value)
        self.logits.assign(logits)
        self.adam_m.assign(ops.where(apply, m, self.adam_m.value))
        self.adam_v.assign(ops.where(apply, v, self.adam_v.value))
        self.adam_steps.assign(t)
        return logits

    # -- the rule ---------------------------------------------------------------------------

    def step_weights(self, raw):
        """The weights of a training step with raw losses ``raw`` (K,), updating the state."""
        return ops.convert_to_tensor(self.loss_weights)

    def extra_loss(self):
        return 0.0

    def total(self, raw: Sequence, *, training: bool, batch_size=None):
        """``sum_h w_h * L_h`` (plus the method's own term), and the weighted-loss trackers."""
        raw = ops.stack([ops.cast(r, "float32") for r in raw])
        if training:
            weights = self.step_weights(ops.stop_gradient(raw))
            self.loss_weights.assign(ops.stop_gradient(weights))
        else:
            weights = self.evaluation_weights()
        weighted = weights * raw
        for i, tracker in enumerate(self.weighted_trackers):
            tracker.update_state(ops.stop_gradient(weighted[i]), sample_weight=batch_size)
        return ops.sum(weighted) + (self.extra_loss() if training else 0.0)

    def evaluation_weights(self):
        return ops.convert_to_tensor(self.loss_weights)


class ScheduledWeights(LossWeighting):
    """Each scheduled head's weight moves from ``initial`` to ``final`` between epochs
    ``begin`` and ``end`` (``linear``, or ``cosine``: ``(1 - cos(pi p)) / 2`` of the way at
    fraction ``p``), epochs counted in steps (``step / steps_per_epoch``); other heads keep
    their ``loss_weight``."""

    def __init__(self, heads, priors, *, schedules: Mapping[str, Mapping], **kwargs):
        super().__init__(heads, priors, **kwargs)
        self.schedules = {h: dict(s) for h, s in schedules.items()}
        self.step = self._counter("step", "int32")
        start = ops.zeros((), "float32")
        self.loss_weights.assign(ops.stack([
            ops.cast(self.schedule_value(h, start) if h in self.schedules else p, "float32")
            for h, p in zip(self.heads, self.priors, strict=True)]))

    def schedule_value(self, head: str, epoch):
        s = self.schedules[head]
        final = s["final"] if s.get("final") is not None else self.priors[self.heads.index(head)]
        p = ops.clip((epoch - s["begin"]) / (s["end"] - s["begin"]), 0.0, 1.0)
        if s.get("shape", "linear") == "cosine":
            p = (1.0 - ops.cos(math.pi * p)) / 2.0
        return s["initial"] + (final - s["initial"]) * p

    def step_weights(self, raw):
        epoch = ops.cast(self.step.value, "float32") / float(self.steps_per_epoch)
        self.step.assign(self.step.value + 1)
        return ops.stack([ops.cast(self.schedule_value(h, epoch), "float32")
                          if h in self.schedules else ops.cast(p, "float32")
                          for h, p in zip(self.heads, self.priors, strict=True)])


class UncertaintyWeights(LossWeighting):
    """Kendall et al. (2018): a learned log-variance ``s_h`` per head, trained with the model;
    total ``sum_h c_h exp(-s_h) L_h + s_h``. At its optimum ``c_h exp(-s_h) = 1 / L_h``: each
    head's weight goes to the inverse of its loss (its noise level), whatever ``c_h``."""

    def __init__(self, heads, priors, **kwargs):
        super().__init__(heads, priors, **kwargs)
        self.log_variances = self.add_weight(shape=(len(self.heads),), initializer="zeros",
                                             trainable=True, name="log_variances")

    def step_weights(self, raw):
        return self.evaluation_weights()

    def evaluation_weights(self):
        return self._spread(self._active(ops.exp(-ops.convert_to_tensor(self.log_variances))))

    def extra_loss(self):
        return ops.sum(self._active(ops.convert_to_tensor(self.log_variances)))


class DynamicWeightAverage(LossWeighting):
    """Liu et al. (2019): for epoch t >= 2 (counted from 0), ``m_h = K softmax(r / T)_h`` with
    ``r_h = Lbar_h(t-1) / Lbar_h(t-2)``, the ratio of the head's mean training losses over the
    two last epochs; 1 for the first two epochs. K is the number of weighted heads."""

    def __init__(self, heads, priors, *, temperature: float = 2.0, **kwargs):
        super().__init__(heads, priors, **kwargs)
        self.temperature = float(temperature)
        k = len(self.heads)
        self.epoch_sums = self._counter("epoch_sums", shape=(k,))
        self.epoch_steps = self._counter("epoch_steps")
        self.last_means = self._counter("last_means", shape=(k,))
        self.earlier_means = self._counter("earlier_means", shape=(k,))
        self.epochs_seen = self._counter("epochs_seen")

    def step_weights(self, raw):
        # An epoch is complete at the first step of the next one: roll the means over then.
        roll = self.epoch_steps.value >= float(self.steps_per_epoch)
        means = self.epoch_sums.value / ops.maximum(self.epoch_steps.value, 1.0)
        earlier = ops.where(roll, self.last_means.value, self.earlier_means.value)
        last = ops.where(roll, means, self.last_means.value)
        seen = self.epochs_seen.value + ops.cast(roll, "float32")
        self.earlier_means.assign(earlier)
        self.last_means.assign(last)
        self.epochs_seen.assign(seen)
        self.epoch_sums.assign(ops.where(roll, 0.0, self.epoch_sums.value) + raw)
        self.epoch_steps.assign(ops.where(roll, 0.0, self.epoch_steps.value) + 1.0)
        rates = self._active(last / ops.where(earlier > 0, earlier, 1.0))
        k = float(len(self.active))
        dwa = k * ops.softmax(rates / self.temperature)
        multipliers = ops.where(seen >= 2.0, dwa, ops.ones_like(dwa))
        return self._spread(multipliers)


class RandomWeights(LossWeighting):
    """Lin et al. (2022): ``m = K softmax(lambda)``, ``lambda ~ N(0, I)`` drawn every step from
    a generator seeded by the recipe (its state is in the checkpoints)."""

    def __init__(self, heads, priors, **kwargs):
        super().__init__(heads, priors, **kwargs)
        self.generator = keras.random.SeedGenerator(self.seed, name="rlw_seed_generator")

    def step_weights(self, raw):
        draw = keras.random.normal((len(self.active),), seed=self.generator)
        return self._spread(float(len(self.active)) * ops.softmax(draw))

    def evaluation_weights(self):
        # The expected multiplier is 1 (by symmetry): validation is weighted by loss_weight,
        # not by the last step's draw.
        return self._spread(ops.ones((len(self.active),), "float32"))


class FastAdaptiveWeights(LossWeighting):
    """Liu et al. (2023), FAMO: logits ``xi`` (``z = softmax(xi)``), and the loss
    ``sum_h z_h log L_h / c`` with ``c = sum_h z_h / L_h``, whose gradient is that of
    ``sum_h m_h L_h`` with ``m_h = z_h / (c L_h)`` (the multipliers sum to 1; here times K).
    ``xi`` follows Adam (torch's, with L2 ``decay``) on ``J_softmax(xi)^T delta``,
    ``delta_h = log L_h(previous step) - log L_h(this step)``: heads whose loss fell less gain
    weight. The update uses the previous step's losses (another batch) rather than a second
    forward pass on the same batch, which keeps its cost O(1) (the paper's update)."""

    def __init__(self, heads, priors, *, learning_rate: float = 0.025, decay: float = 1e-3,
                 **kwargs):
        super().__init__(heads, priors, **kwargs)
        self.learning_rate = float(learning_rate)
        self.decay = float(decay)
        k = len(self.active)
        self._add_adam_logits(k)
        self.previous_log_losses = self._counter("previous_log_losses", shape=(k,))
        self.has_previous = self._counter("has_previous")

    def step_weights(self, raw):
        log_losses = ops.log(self._active(raw) + FAMO_EPSILON)
        xi = ops.convert_to_tensor(self.logits)
        z = ops.softmax(xi)
        delta = self.previous_log_losses.value - log_losses
        grad = z * (delta - ops.sum(z * delta)) + self.decay * xi
        xi = self._adam_step(grad, apply=self.has_previous.value > 0)
        self.previous_log_losses.assign(log_losses)
        self.has_previous.assign(1.0)
        z = ops.softmax(xi)
        losses = ops.exp(log_losses)
        c = ops.sum(z / losses)
        return self._spread(float(len(self.active)) * z / (c * losses))


LOSS_WEIGHTINGS: dict[str, type[LossWeighting]] = {
    "scheduled": ScheduledWeights,
    "uncertainty": UncertaintyWeights,
    "dwa": DynamicWeightAverage,
    "rlw": RandomWeights,
    "famo": FastAdaptiveWeights,
}
