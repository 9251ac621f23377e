"""Layer names say who owns a layer: ``trunk.<part>`` is shared, ``<head>.<part>`` belongs to
that head's branch, and a head's output layer is named exactly ``<head>``. Gradient reports,
parameter counts and ``grad_scale`` rely on it. Keras-free, so any module can ask.
"""

from __future__ import annotations

from collections.abc import Iterable

TRUNK_PREFIX = "trunk."
SHARED = "shared"


def layer_owner(layer_name: str, heads: Iterable[str]) -> str:
    """``"shared"`` for trunk layers, else the head whose branch the layer belongs to."""
    if layer_name.startswith(TRUNK_PREFIX) or layer_name == "image":
        return SHARED
    head = layer_name.split(".", 1)[0]
    if head in heads:
        return head
    raise ValueError(f"layer '{layer_name}' is neither shared nor named after a head")
