"""From a recipe to a compiled Keras model with one output per head."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import keras

from multiseg import losses as losses_lib
from multiseg import metrics as metrics_lib
from multiseg.headkinds import HEAD_KINDS
from multiseg.models import heads as heads_lib
from multiseg.models.initial import initialized_together
from multiseg.models.naming import layer_owner
from multiseg.models.unet import padding_multiple, unet_trunk
from multiseg.weighting.model import make_model, set_steps_per_epoch


def build_model(recipe, *, channels: int) -> keras.Model:
    """The recipe's network: a shared trunk and one branch per head, outputs keyed by head."""
    spec = recipe.model
    image = keras.Input(shape=(None, None, channels), name="image")
    with initialized_together():  # JAX: one compilation for every initial weight
        points = unet_trunk(image, filters=spec.filters, convs_per_level=spec.convs_per_level,
                            norm=spec.norm, groups=spec.groups,
                            norm_momentum=spec.norm_momentum, activation=spec.activation,
                            dropout=spec.dropout, upsample=spec.upsample, seed=recipe.seed)
        outputs = {}
        for name, head in recipe.heads.items():
            scale = 2 ** int(head.attach.split(".")[1]) if "." in head.attach else 1
            builder = getattr(heads_lib, HEAD_KINDS[head.kind].builder)
            outputs[name] = builder(
                points[head.attach], image, name=name, classes=head.classes,
                branch=head.branch, scale=scale, grad_scale=head.grad_scale, norm=spec.norm,
                groups=spec.groups, norm_momentum=spec.norm_momentum,
                activation=spec.activation, padding=padding_multiple(spec.filters))
    # static: a plain functional model; other methods: one that owns their state.
    return make_model(image, outputs, name=recipe.name.replace("/", "_"),
                      weighting=recipe.train.weighting,
                      heads={n: h.loss_weight for n, h in recipe.heads.items()}, seed=recipe.seed)


def parameter_counts(model: keras.Model, heads) -> dict[str, int]:
    """Trainable and non-trainable parameters of the shared trunk and of each head's branch."""
    counts = {"shared": 0, **{h: 0 for h in heads}}
    for layer in model.layers:
        owner = layer_owner(layer.name, heads)
        counts[owner] += sum(int(w.numpy().size) if hasattr(w, "numpy") else int(w.size)
                             for w in layer.weights)
    return counts


def _taken(cls: type, decided: Mapping[str, Any]) -> dict[str, Any]:
    """Those of a head's decided options that the constructor of ``cls`` has."""
    params = inspect.signature(cls.__init__).parameters
    return {k: v for k, v in decided.items() if k in params}


def head_losses(recipe) -> dict[str, keras.losses.Loss]:
    """Each head's loss: its weighted terms, told what the head decides (whether it outputs
    logits, whether its channels are independent: ``HeadKind.decided_options``)."""
    result = {}
    for name, head in recipe.heads.items():
        decided = HEAD_KINDS[head.kind].decided_options(multilabel=head.multilabel)
        from_logits = decided.pop("from_logits")
        entries = [{"name": t.name, "weight": t.weight, **dict(t.options),
                    **_taken(losses_lib.LOSSES[t.name], decided)} for t in head.loss]
        result[name] = losses_lib.build(entries if len(entries) > 1 else entries[0],
                                        from_logits=from_logits)
    return result


def loss_terms(loss: keras.losses.Loss) -> list[tuple[str, float, keras.losses.Loss]]:
    """(label, weight, loss) of each term of a head's loss; one term for a plain loss."""
    if isinstance(loss, losses_lib.CombinedLoss):
        return list(loss.terms)
    return [(loss.name, 1.0, loss)]


def head_metrics(recipe, losses: dict[str, keras.losses.Loss]) -> dict[str, list]:
    """Each head's metrics, plus one running mean per loss term when a head has several.

    The term means are linked to ``losses``: the head's ``CombinedLoss`` records each term's
    value into them as it computes the loss, so a term is computed once per step. Compile the
    model with these ``losses`` (``compile_model`` does); losses built separately touch no
    metric.
    """
    result = {}
    for name, head in recipe.heads.items():
        decided = HEAD_KINDS[head.kind].decided_options(multilabel=head.multilabel)
        metrics = []
        for m in head.metrics:
            options = _taken(metrics_lib.METRICS[m.name], decided)
            from_logits = options.pop("from_logits", decided["from_logits"])
            outlines = options.pop("outlines", False)
            metrics.append(metrics_lib.build_metric({"name": m.name, **dict(m.options),
                                                     **options},
                                                    classes=head.classes,
                                                    from_logits=from_logits, outlines=outlines))
        terms = loss_terms(losses[name])
        if len(terms) > 1:
            trackers = {label: metrics_lib.LossTerm(loss, name=f"{label}_term")
                        for label, _, loss in terms}
            losses[name].record_terms(trackers)
            metrics += list(trackers.values())
        result[name] = metrics
    return result


def compile_model(model: keras.Model, recipe, *, total_steps: int = 1) -> keras.Model:
    """Compiles with dict-keyed loss, loss_weights and metrics, after checking the key sets."""
    losses = head_losses(recipe)
    weights = {name: float(h.loss_weight) for name, h in recipe.heads.items()}
    metrics = head_metrics(recipe, losses)
    outputs = set(model.output.keys())
    for what, table in (("loss", losses), ("loss_weights", weights), ("metrics", metrics)):
        # Keras silently reassigns mismatched dict keys by position: refuse them here.
        if set(table) != outputs:
            raise ValueError(f"{what} keys {sorted(table)} do not match the model outputs"
                             f" {sorted(outputs)}")
    spec = recipe.train.optimizer
    lr = spec.learning_rate
    if recipe.train.lr_schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(lr, decay_steps=max(total_steps, 1))
    optimizer = _optimizer(spec, lr)
    set_steps_per_epoch(model, max(total_steps // recipe.train.epochs, 1))
    model.compile(optimizer=optimizer, loss=losses, loss_weights=weights, metrics=metrics)
    return model


def build_training_variables(model: keras.Model, batch) -> None:
    """Creates the variables of the compiled losses, metrics and optimizer from ``batch``'s
    shapes, before the first training step. On TensorFlow without a strategy Keras would
    create them inside the first trace of the step, and TensorFlow traces a function that
    created variables a second time (the default recipe's first step: 6.9 s against 3.7 s).
    This is what Keras itself does on JAX and under a TensorFlow strategy."""
    model._symbolic_build(data_batch=batch)


def set_step_options(model: keras.Model, recipe, *, steps_per_epoch: int) -> None:
    """How the training step runs: ``jit_compile`` when the recipe fixes it (auto: Keras's
    choice, as measured in docs/performance.md) and the steps per call
    (``train.steps_per_execution``, see ``steps_per_call``). Set after compiling, so that they
    stay out of the compile config, and so out of model.keras, which every backend loads
    (PyTorch refuses more than one step per call)."""
    if recipe.train.jit_compile != "auto":
        model.jit_compile = recipe.train.jit_compile
    set_steps_per_call(model, steps_per_call(recipe.train.steps_per_execution, steps_per_epoch))


def steps_per_call(requested: int, steps: int) -> int:
    """The most training steps per call, up to ``requested``, that divide an epoch's
    ``steps``: Keras runs whole calls, and a call that crossed the epoch's end would train on
    the next epoch's batches."""
    return max(d for d in range(1, max(min(requested, steps), 1) + 1) if steps % d == 0)


def set_steps_per_call(model: keras.Model, count: int) -> None:
    """Keras's ``steps_per_execution``; the step functions are made again when it changes
    (TensorFlow traces the count into them)."""
    if model.steps_per_execution != count:
        model.steps_per_execution = count
        model.train_function = model.test_function = model.predict_function = None


def _optimizer(spec, learning_rate) -> keras.optimizers.Optimizer:
    common = {"learning_rate": learning_rate}
    if spec.clipnorm is not None:
        common["clipnorm"] = spec.clipnorm
    if spec.weight_decay is not None:
        common["weight_decay"] = spec.weight_decay
    if spec.name == "adam":
        return keras.optimizers.Adam(**common)
    if spec.name == "adamw":
        return keras.optimizers.AdamW(**{"weight_decay": 4e-3, **common})
    if spec.name == "sgd":
        return keras.optimizers.SGD(momentum=spec.momentum or 0.0, **common)
    return keras.optimizers.RMSprop(momentum=spec.momentum or 0.0, **common)
