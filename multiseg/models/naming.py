"""Layer names say who owns a layer: ``trunk-<part>`` is shared, ``<head>-<part>`` belongs to
that head's branch, and a head's output layer is named exactly ``<head>``. Gradient reports,
parameter counts and ``grad_scale`` rely on it. Every builder names its layers through
:func:`layer_name`. Keras-free, so any module can ask.

Why ``-``: a head name is an identifier (``[A-Za-z_][A-Za-z0-9_]*``, checked by the recipe),
so a name's owner is everything before its first ``-``, whatever the head is called. Keras
refuses only ``/`` in names; PyTorch refuses ``.`` in parameter and module names (Keras's torch
backend registers every variable under its path, ``<layer>/<variable>``); TensorFlow's name
scopes take letters, digits and ``_ . - / >`` (so not ``:``). ``-`` passes all three.

Models saved before this naming used ``.`` (``trunk.enc0.conv0``, ``mask.conv0``). Their names
still say who owns a layer (:func:`layer_owner` reads both), and :func:`current_name` turns
one into today's name; ``multiseg.models.legacy`` renames the layers of a saved model file.
"""

from __future__ import annotations

from collections.abc import Iterable

SEPARATOR = "-"
LEGACY_SEPARATOR = "."  # models saved before the PyTorch backend worked
TRUNK = "trunk"
SHARED = "shared"


def layer_name(prefix: str, *parts: str) -> str:
    """``layer_name("trunk", "enc0", "conv1")`` is ``"trunk-enc0-conv1"``; ``prefix`` is the
    owner (``trunk`` or a head) or a name already made by this function."""
    # SEPARATOR is read at call time: a test builds models of the old naming by patching it.
    return SEPARATOR.join((prefix, *parts))


def current_name(name: str) -> str:
    """A layer name of either naming in today's: ``trunk.enc0.conv0`` -> ``trunk-enc0-conv0``.
    Names of today's naming come back unchanged."""
    return name.replace(LEGACY_SEPARATOR, SEPARATOR)


def layer_owner(layer_name: str, heads: Iterable[str]) -> str:
    """``"shared"`` for trunk layers, else the head whose branch the layer belongs to. Reads
    the names of old saved models (``.`` for ``-``) too."""
    heads = tuple(heads)
    if layer_name == "image":
        return SHARED
    owner, sep, _ = current_name(layer_name).partition(SEPARATOR)
    if owner == TRUNK and sep:
        return SHARED
    if owner in heads:
        return owner
    raise ValueError(f"layer '{layer_name}' is neither shared (named '{TRUNK}{SEPARATOR}...')"
                     f" nor named after a head (one of {list(heads)})")
