"""The benchmark's hand-written PyTorch version of the recipe's network: the network and losses
of ``handmade_keras`` in plain PyTorch, channels first, as PyTorch users write it.

Mirrored: batch norm with Keras's epsilon (1e-3) and the same momentum (PyTorch counts it from
the other side), bias-free convolutions before a norm, the same loss formulas.
``parameter_count`` counts what Keras's ``count_params`` does: weights and the norms' moving
statistics. ``load_keras_weights`` takes multiseg's weights (tests/test_bench.py).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

SMOOTH = 1e-5


def _conv_norm_relu(cin: int, cout: int, momentum: float) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout, eps=1e-3, momentum=1.0 - momentum), nn.ReLU(inplace=True)]


def _block(cin: int, cout: int, convs: int, momentum: float) -> nn.Sequential:
    layers = []
    for i in range(convs):
        layers += _conv_norm_relu(cin if i == 0 else cout, cout, momentum)
    return nn.Sequential(*layers)


class UNet(nn.Module):
    """The U-Net trunk and the three heads; ``forward`` returns ``{head name: logits}``."""

    def __init__(self, spec: dict):
        super().__init__()
        filters, convs, momentum = spec["filters"], spec["convs_per_level"], spec["norm_momentum"]
        heads = spec["heads"]
        self.names = {kind: h["name"] for kind, h in heads.items()}
        self.encoders = nn.ModuleList()
        cin = spec["channels"]
        for f in filters:
            self.encoders.append(_block(cin, f, convs, momentum))
            cin = f
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = _block(cin, 2 * filters[-1], convs, momentum)
        cin = 2 * filters[-1]
        # Deepest level first, the order they run in.
        self.ups, self.decoders = nn.ModuleList(), nn.ModuleList()
        for f in reversed(filters):
            self.ups.append(nn.ConvTranspose2d(cin, f, 2, stride=2))
            self.decoders.append(_block(2 * f, f, convs, momentum))
            cin = f
        self.spatial = nn.ModuleDict()
        for kind in ("segmentation", "boundary"):
            layers, c = [], filters[0]
            for f in heads[kind]["branch"]:
                layers += _conv_norm_relu(c, f, momentum)
                c = f
            layers.append(nn.Conv2d(c, heads[kind]["classes"], 1))
            self.spatial[kind] = nn.Sequential(*layers)
        layers, c = [], 2 * filters[-1]
        for units in heads["classification"]["branch"]:
            layers += [nn.Linear(c, units), nn.ReLU(inplace=True)]
            c = units
        layers.append(nn.Linear(c, heads["classification"]["classes"]))
        self.classifier = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        skips = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        outputs = {self.names["classification"]: self.classifier(x.mean(dim=(2, 3)))}
        for up, decoder, skip in zip(self.ups, self.decoders, reversed(skips), strict=True):
            x = decoder(torch.cat([up(x), skip], dim=1))
        for kind, head in self.spatial.items():
            outputs[self.names[kind]] = head(x)
        return outputs


def parameter_count(model: nn.Module) -> int:
    """Parameters plus the norms' running mean and variance (Keras counts those too)."""
    params = sum(p.numel() for p in model.parameters())
    stats = sum(b.numel() for name, b in model.named_buffers()
                if name.endswith(("running_mean", "running_var")))
    return params + stats


def keras_layer_names(model: UNet) -> dict[str, nn.Module]:
    """Each module with weights under the name of its layer in multiseg's model."""
    found: dict[str, nn.Module] = {}

    def block(prefix: str, modules) -> None:
        convs = [m for m in modules if isinstance(m, nn.Conv2d)]
        norms = [m for m in modules if isinstance(m, nn.BatchNorm2d)]
        for i, (conv, norm) in enumerate(zip(convs, norms, strict=True)):
            found[f"{prefix}-conv{i}"], found[f"{prefix}-norm{i}"] = conv, norm

    levels = len(model.encoders)
    for level, encoder in enumerate(model.encoders):
        block(f"trunk-enc{level}", encoder)
    block("trunk-bottleneck", model.bottleneck)
    for i, (up, decoder) in enumerate(zip(model.ups, model.decoders, strict=True)):
        level = levels - 1 - i
        found[f"trunk-dec{level}-up"] = up
        block(f"trunk-dec{level}", decoder)
    for kind, head in model.spatial.items():
        name = model.names[kind]
        block(name, list(head)[:-1])
        found[f"{name}-logits"] = head[-1]
    name = model.names["classification"]
    dense = [m for m in model.classifier if isinstance(m, nn.Linear)]
    for i, layer in enumerate(dense[:-1]):
        found[f"{name}-dense{i}"] = layer
    found[name] = dense[-1]
    return found


def load_keras_weights(model: UNet, weights: dict[str, list[np.ndarray]]) -> None:
    """Copies ``{keras layer name: layer.get_weights()}`` (channels last) into ``model``.

    Raises:
        KeyError: the layer names differ from the model's (a network that no longer mirrors).
    """
    modules = keras_layer_names(model)
    if set(modules) != set(weights):
        raise KeyError(f"layers only in the Keras weights: {sorted(set(weights) - set(modules))};"
                       f" only here: {sorted(set(modules) - set(weights))}")
    with torch.no_grad():
        for name, module in modules.items():
            arrays = [torch.from_numpy(np.asarray(a, dtype=np.float32)) for a in weights[name]]
            if isinstance(module, nn.BatchNorm2d):
                targets = [module.weight, module.bias, module.running_mean, module.running_var]
            else:
                # Convolutions (h, w, in, out) -> (out, in, h, w), and transposed ones
                # (h, w, out, in) -> (in, out, h, w): the same permutation. Dense: transposed.
                kernel = arrays[0]
                arrays[0] = kernel.permute(3, 2, 0, 1) if kernel.ndim == 4 else kernel.T
                targets = [module.weight] + ([module.bias] if module.bias is not None else [])
            if len(targets) != len(arrays):
                raise KeyError(f"{name}: {len(arrays)} Keras weights for {len(targets)} here")
            for target, array in zip(targets, arrays, strict=True):
                target.copy_(array.reshape(target.shape))


# Each loss term, a batch mean, from float32 logits: TERMS[head kind][term name](head, term).
# Region terms average over the classes present in each sample's target, as handmade_keras.


def _dice(classes: int):
    def term(labels, logits):
        onehot = F.one_hot(labels, classes).permute(0, 3, 1, 2).to(logits.dtype)
        p = logits.softmax(dim=1)
        inter = (p * onehot).sum(dim=(2, 3))
        total = p.sum(dim=(2, 3)) + onehot.sum(dim=(2, 3))
        score = (2.0 * inter + SMOOTH) / (total + SMOOTH)
        present = (onehot.sum(dim=(2, 3)) > 0).to(score.dtype)
        count = present.sum(dim=1)
        mean = (score * present).sum(dim=1) / count.clamp(min=1.0)
        return torch.where(count > 0, 1.0 - mean, torch.zeros_like(mean)).mean()

    return term


def _tversky(alpha: float, beta: float):
    def term(g, logits):
        p = torch.sigmoid(logits)
        tp = (p * g).sum(dim=(1, 2, 3))
        fp = (p * (1.0 - g)).sum(dim=(1, 2, 3))
        fn = ((1.0 - p) * g).sum(dim=(1, 2, 3))
        index = (tp + SMOOTH) / (tp + alpha * fp + beta * fn + SMOOTH)
        present = g.sum(dim=(1, 2, 3)) > 0
        return torch.where(present, 1.0 - index, torch.zeros_like(index)).mean()

    return term


def _crossentropy(labels, logits):
    return F.cross_entropy(logits, labels)


def _binary_crossentropy(g, logits):
    return F.binary_cross_entropy_with_logits(logits, g)


TERMS = {
    "segmentation": {"dice": lambda head, t: _dice(head["classes"]),
                     "crossentropy": lambda head, t: _crossentropy},
    "boundary": {"tversky": lambda head, t: _tversky(t.get("alpha", 0.3), t.get("beta", 0.7)),
                 "crossentropy": lambda head, t: _binary_crossentropy},
    "classification": {"crossentropy": lambda head, t: _crossentropy},
}


def make_loss(spec: dict):
    """``loss(outputs, targets) -> scalar``: each head's terms, weighted, summed, times the
    head's loss weight; targets in PyTorch's layout (``to_torch``)."""
    heads = [(h["name"], h["loss_weight"],
              [(TERMS[kind][t["name"]](h, t), t["weight"]) for t in h["terms"]])
             for kind, h in spec["heads"].items()]

    def loss(outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> torch.Tensor:
        total = 0.0
        for name, loss_weight, terms in heads:
            logits = outputs[name].float()
            total = total + loss_weight * sum(w * term(targets[name], logits)
                                              for term, w in terms)
        return total

    return loss


def to_torch(batch: tuple, spec: dict, device: str) -> tuple:
    """A batch in multiseg's layout (channels last, label masks (N, H, W, 1)) as PyTorch
    tensors: images (N, C, H, W), label masks (N, H, W) int64, boundary maps (N, 1, H, W)."""
    images, targets = batch
    heads = spec["heads"]
    seg, edge, cls = (heads[k]["name"] for k in ("segmentation", "boundary", "classification"))
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
    y = {seg: torch.from_numpy(np.asarray(targets[seg])[..., 0]).long(),
         edge: torch.from_numpy(np.asarray(targets[edge])).permute(0, 3, 1, 2).contiguous(),
         cls: torch.from_numpy(np.asarray(targets[cls])).long()}
    if device != "cpu":
        x = x.pin_memory()
        y = {k: v.pin_memory() for k, v in y.items()}
    return x, y
