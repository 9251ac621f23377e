"""The model graph: a multi-head model's layers in forward order, which head owns each, and
the connections between them.

A layer that only one head's output depends on belongs to that head's branch; one that several
heads' outputs depend on is shared. This is read from the functional graph (walking back from
each head's output, into nested functional models), never from layer names; the naming
convention (``multiseg.models.naming``) agrees with it for the models multiseg builds, which a
test checks.

    graph = model_graph(model, heads)   # ModelGraph: layers (LayerInfo), owners, edges
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from multiseg.models.naming import SHARED

UNUSED = "unused"  # a layer no head's output depends on (only inside nested models)


@dataclass(frozen=True)
class LayerInfo:
    """One layer of the model, in forward order.

    ``name`` is the layer's name, prefixed by ``<submodel>/`` inside a nested functional model.
    ``heads`` are the heads whose output depends on the layer through the graph; ``owner`` is
    ``"shared"`` when there are several, the head's name when there is one.
    """

    name: str
    kind: str  # the layer's class name
    owner: str  # "shared", a head name, or "unused"
    heads: tuple[str, ...]  # heads whose outputs reach this layer (walking back the graph)
    variables: tuple[int, ...]  # indices into model.trainable_variables
    params: int  # trainable parameters


@dataclass(frozen=True)
class ModelGraph:
    """The model's layers in forward order, their owners, and the edges between them."""

    heads: tuple[str, ...]
    layers: tuple[LayerInfo, ...]
    edges: tuple[tuple[str, str], ...]  # (producer layer, consumer layer)

    def layer(self, name: str) -> LayerInfo:
        for info in self.layers:
            if info.name == name:
                return info
        raise KeyError(f"no layer named '{name}'")

    @property
    def weighted_layers(self) -> tuple[LayerInfo, ...]:
        """The layers that hold trainable variables: the ones gradients are reported for."""
        return tuple(info for info in self.layers if info.variables)

    def owners(self) -> dict[str, str]:
        return {info.name: info.owner for info in self.layers}


def _is_nested(operation, model) -> bool:
    from keras.src.models.functional import Functional

    return isinstance(operation, Functional) and operation is not model


class _Context:
    """Where a walk is: inside which nested model, and what that model's inputs are bound to."""

    def __init__(self, prefix: str = "", bindings: dict | None = None, key: tuple = ()):
        self.prefix = prefix
        self.bindings = bindings or {}  # id(inner input tensor) -> (outer tensor, context)
        self.key = key


def _producer(tensor, context: _Context, model):
    """The (layer, node index, context) that produced ``tensor``, seen through nested models."""
    while True:
        if id(tensor) in context.bindings:
            tensor, context = context.bindings[id(tensor)]
            continue
        operation, node_index, tensor_index = tensor._keras_history
        if _is_nested(operation, model):
            node = operation._inbound_nodes[node_index]
            inner = _Context(f"{context.prefix}{operation.name}/",
                             {id(i): (o, context) for i, o in zip(
                                 operation.inputs, node.input_tensors, strict=False)},
                             (*context.key, id(node)))
            tensor, context = operation.outputs[tensor_index], inner
            continue
        return operation, node_index, context


def forward_layers(model, prefix: str = "") -> list[tuple[str, Any]]:
    """(name, layer) in the functional model's forward order, nested models expanded."""
    found = []
    for layer in model.layers:
        if _is_nested(layer, model):
            found += [(n, sub) for n, sub in forward_layers(layer, f"{prefix}{layer.name}/")
                      if not isinstance(sub, keras.layers.InputLayer)]
        else:
            found.append((f"{prefix}{layer.name}", layer))
    return found


def model_graph(model: keras.Model, heads: Iterable[str] | None = None) -> ModelGraph:
    """Classifies every layer of a functional multi-head model from its graph.

    Walks back from each head's output (``model.output[head]``) through the layers' inbound
    nodes, into nested functional models. A layer reached from exactly one head's output
    belongs to that head's branch; one reached from several is shared.

    Args:
        model: a functional ``keras.Model`` whose output is a dict keyed by head name.
        heads: the heads to consider, in the order reports use (default: the output keys).

    Raises:
        ValueError: the model's output is not a dict, or a head is not one of its keys.
    """
    outputs = model.output
    if not isinstance(outputs, Mapping):
        raise ValueError("per-head gradients need a functional model whose output is a dict"
                         f" keyed by head name; got {type(outputs).__name__}")
    heads = tuple(outputs) if heads is None else tuple(heads)
    unknown = [h for h in heads if h not in outputs]
    if unknown:
        raise ValueError(f"heads {unknown} are not model outputs; the outputs are"
                         f" {sorted(outputs)}")
    reached: dict[str, set[str]] = {}
    edges: set[tuple[str, str]] = set()
    for head in heads:
        start = _producer(outputs[head], _Context(), model)
        stack, seen = [start], set()
        while stack:
            operation, node_index, context = stack.pop()
            node = operation._inbound_nodes[node_index]
            key = (id(node), context.key)
            if key in seen:
                continue
            seen.add(key)
            name = f"{context.prefix}{operation.name}"
            reached.setdefault(name, set()).add(head)
            for tensor in node.input_tensors:
                parent = _producer(tensor, context, model)
                edges.add((f"{parent[2].prefix}{parent[0].name}", name))
                stack.append(parent)

    index = {id(v): i for i, v in enumerate(model.trainable_variables)}
    claimed: set[int] = set()
    layers = []
    for name, layer in forward_layers(model):
        variables = []
        for v in layer.trainable_weights:
            i = index.get(id(v))
            if i is not None and i not in claimed:  # a tied weight counts for its first layer
                claimed.add(i)
                variables.append(i)
        by = tuple(h for h in heads if h in reached.get(name, ()))
        owner = SHARED if len(by) > 1 else by[0] if by else UNUSED
        layers.append(LayerInfo(name=name, kind=type(layer).__name__, owner=owner, heads=by,
                                variables=tuple(variables),
                                params=sum(int(np.prod(model.trainable_variables[i].shape))
                                           for i in variables)))
    # Forward order with each branch kept together: the shared layers, then each head's
    # branch in head order. Still a forward (topological) order: a shared layer never depends
    # on a branch layer, since everything it depends on is reached by all the heads it is.
    group = {SHARED: 0, **{h: i + 1 for i, h in enumerate(heads)}, UNUSED: len(heads) + 1}
    layers = [info for _, info in sorted(enumerate(layers),
                                         key=lambda item: (group[item[1].owner], item[0]))]
    rest = [i for i in range(len(model.trainable_variables)) if i not in claimed]
    if rest:  # variables of no layer in the graph (model-level weights): reported together
        layers.append(LayerInfo(name="(other variables)", kind="Variable", owner=SHARED,
                                heads=heads, variables=tuple(rest),
                                params=sum(int(np.prod(model.trainable_variables[i].shape))
                                           for i in rest)))
    order = {info.name: i for i, info in enumerate(layers)}
    ordered_edges = sorted((e for e in edges if e[0] in order and e[1] in order),
                           key=lambda e: (order[e[1]], order[e[0]]))
    return ModelGraph(heads=heads, layers=tuple(layers), edges=tuple(ordered_edges))
