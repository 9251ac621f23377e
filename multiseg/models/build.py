"""From a recipe to a compiled Keras model with one output per head."""

from __future__ import annotations

import keras

from multiseg import losses as losses_lib
from multiseg import metrics as metrics_lib
from multiseg.models.heads import HEAD_OUTPUTS, HEADS
from multiseg.models.naming import layer_owner
from multiseg.models.unet import padding_multiple, unet_trunk
from multiseg.recipe import decided_options


def build_model(recipe, *, channels: int) -> keras.Model:
    """The recipe's network: a shared trunk and one branch per head, outputs keyed by head."""
    spec = recipe.model
    image = keras.Input(shape=(None, None, channels), name="image")
    points = unet_trunk(image, filters=spec.filters, convs_per_level=spec.convs_per_level,
                        norm=spec.norm, groups=spec.groups, norm_momentum=spec.norm_momentum,
                        activation=spec.activation,
                        dropout=spec.dropout, upsample=spec.upsample)
    outputs = {}
    for name, head in recipe.heads.items():
        scale = 2 ** int(head.attach.split(".")[1]) if "." in head.attach else 1
        outputs[name] = HEADS[head.kind](
            points[head.attach], image, name=name, classes=head.classes, branch=head.branch,
            scale=scale, grad_scale=head.grad_scale, norm=spec.norm, groups=spec.groups,
            norm_momentum=spec.norm_momentum, activation=spec.activation,
            padding=padding_multiple(spec.filters))
    return keras.Model(image, outputs, name=recipe.name.replace("/", "_"))


def parameter_counts(model: keras.Model, heads) -> dict[str, int]:
    """Trainable and non-trainable parameters of the shared trunk and of each head's branch."""
    counts = {"shared": 0, **{h: 0 for h in heads}}
    for layer in model.layers:
        owner = layer_owner(layer.name, heads)
        counts[owner] += sum(int(w.numpy().size) if hasattr(w, "numpy") else int(w.size)
                             for w in layer.weights)
    return counts


def head_losses(recipe) -> dict[str, keras.losses.Loss]:
    """Each head's loss: its weighted terms, told whether the head outputs logits and whether
    its channels are independent (multilabel)."""
    result = {}
    for name, head in recipe.heads.items():
        entries = [{"name": t.name, "weight": t.weight, **dict(t.options),
                    **decided_options(head.multilabel)} for t in head.loss]
        result[name] = losses_lib.build(entries if len(entries) > 1 else entries[0],
                                        from_logits=HEAD_OUTPUTS[head.kind].from_logits)
    return result


def loss_terms(loss: keras.losses.Loss) -> list[tuple[str, float, keras.losses.Loss]]:
    """(label, weight, loss) of each term of a head's loss; one term for a plain loss."""
    if isinstance(loss, losses_lib.CombinedLoss):
        return list(loss.terms)
    return [(loss.name, 1.0, loss)]


def head_metrics(recipe, losses: dict[str, keras.losses.Loss]) -> dict[str, list]:
    """Each head's metrics, plus one running mean per loss term when a head has several."""
    result = {}
    for name, head in recipe.heads.items():
        from_logits = HEAD_OUTPUTS[head.kind].from_logits
        outlines = HEAD_OUTPUTS[head.kind].outlines
        metrics = [metrics_lib.build_metric({"name": m.name, **dict(m.options),
                                             **decided_options(head.multilabel)},
                                            classes=head.classes, from_logits=from_logits,
                                            outlines=outlines)
                   for m in head.metrics]
        terms = loss_terms(losses[name])
        if len(terms) > 1:
            metrics += [metrics_lib.LossTerm(loss, name=f"{label}_term")
                        for label, _, loss in terms]
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
    model.compile(optimizer=optimizer, loss=losses, loss_weights=weights, metrics=metrics)
    return model


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
