"""Model files saved with the old layer names (``trunk.enc0.conv0``, ``mask.conv0``), read
with today's (``trunk-enc0-conv0``: ``multiseg.models.naming``).

A ``model.keras`` is a zip of ``config.json``, which holds the layer names (each layer's name,
and in each connection the name of the layer that produced its input), and
``model.weights.h5``, which stores the weights by layer class and position
(``layers/conv2d_3/vars/0``), never by name. Renaming the layers in ``config.json`` is all an
old file needs. Checkpoints (``.weights.h5``) are stored the same way and need nothing: they
load into a model built today as they are.

PyTorch refuses the old names (no ``.`` in a parameter name), so there an old file loads only
renamed. TensorFlow and JAX load it either way; renaming on every backend gives every loaded
model one naming (and TensorBoard tags, gradflow rows the same as a new run's). Keras-free.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from typing import Any

from multiseg.models.naming import LEGACY_SEPARATOR, TRUNK, current_name

CONFIG = "config.json"


def _old_names(model_config: dict) -> dict[str, str]:
    """{old: new} for the layers named in the old way: ``trunk.`` or ``<head>.`` with a head
    among the model's outputs. Other names (a user's own model) are left as they are."""
    outputs = model_config.get("output_layers")
    owners = {TRUNK, *(outputs if isinstance(outputs, dict) else ())}
    renames = {}
    for layer in model_config.get("layers", ()):
        name = layer.get("name") or layer.get("config", {}).get("name")
        if not isinstance(name, str):
            continue
        owner, sep, _ = name.partition(LEGACY_SEPARATOR)
        if sep and owner in owners:
            renames[name] = current_name(name)
    return renames


def _rename(value: Any, renames: dict[str, str]) -> Any:
    """``value`` with every string that is an old layer name replaced (connections name the
    producing layer in ``keras_history``; ``input_layers``/``output_layers`` in lists)."""
    if isinstance(value, str):
        return renames.get(value, value)
    if isinstance(value, list):
        return [_rename(v, renames) for v in value]
    if isinstance(value, dict):
        return {k: _rename(v, renames) for k, v in value.items()}
    return value


def renamed_config(config: dict) -> tuple[dict, int]:
    """A ``model.keras`` ``config.json`` (a functional model's) with the old layer names
    replaced by today's, and how many layers were renamed (0: nothing to do).

    Raises:
        ValueError: a new name is already taken by another layer of the model.
    """
    model_config = config.get("config")
    if not isinstance(model_config, dict):
        return config, 0
    renames = _old_names(model_config)
    if not renames:
        return config, 0
    taken = {layer.get("name") for layer in model_config.get("layers", ())} - set(renames)
    clash = sorted(new for new in renames.values() if new in taken)
    if clash:
        raise ValueError(f"cannot give the layers of this old model today's names: {clash}"
                         " are taken by other layers of it")
    result = copy.deepcopy(config)
    inner = result["config"]
    for layer in inner.get("layers", ()):
        if layer.get("name") in renames:
            layer["name"] = renames[layer["name"]]
        if isinstance(layer.get("config"), dict) and layer["config"].get("name") in renames:
            layer["config"]["name"] = renames[layer["config"]["name"]]
        if "inbound_nodes" in layer:
            layer["inbound_nodes"] = _rename(layer["inbound_nodes"], renames)
    for key in ("input_layers", "output_layers"):
        if key in inner:
            inner[key] = _rename(inner[key], renames)
    return result, len(renames)


@contextlib.contextmanager
def current_names(path: str | os.PathLike) -> Iterator[str]:
    """``path`` itself, or, when the ``model.keras`` there has layers of the old naming, a
    renamed copy in a temporary directory that lasts as long as the ``with`` block.

    Example:
        >>> with current_names("runs/old/model.keras") as path:
        ...     model = keras.saving.load_model(path)

    Raises:
        ValueError: the old names cannot be renamed (see :func:`renamed_config`).
    """
    path = os.fspath(path)
    config = None
    if zipfile.is_zipfile(path):  # else a directory or an old .h5: Keras says what it is
        with zipfile.ZipFile(path) as source:
            if CONFIG in source.namelist():
                config = json.loads(source.read(CONFIG))
    renamed = 0
    if config is not None:
        try:
            config, renamed = renamed_config(config)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
    if not renamed:
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="multiseg-") as tmp:
        copy_path = os.path.join(tmp, os.path.basename(path))
        _write_copy(path, copy_path, config)
        yield copy_path


def _write_copy(path: str, copy_path: str, config: dict) -> None:
    """The zip at ``path`` with ``config.json`` replaced; the weights copied as they are."""
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(copy_path, "w") as target:
        for info in source.infolist():
            if info.filename == CONFIG:
                target.writestr(info, json.dumps(config))
                continue
            with source.open(info) as src, target.open(info, "w") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
