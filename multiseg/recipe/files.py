"""Recipe files: YAML loading (a key given twice is an error), ``--set`` overrides, the
recipe's run directory, and the resolved recipe written back as YAML.
"""

from __future__ import annotations

import os
from typing import Any

import yaml

from multiseg.options import show, suggest, type_name
from multiseg.recipe.reader import RecipeError, build_checks, key_text, output_problem
from multiseg.recipe.sections import from_dict
from multiseg.recipe.spec import Recipe


def parse_override(text: str) -> tuple[list[str | int], Any]:
    """``heads.mask.loss[0].weight=0.5`` -> (['heads', 'mask', 'loss', 0, 'weight'], 0.5)."""
    if "=" not in text:
        raise RecipeError("--set", f"expected key.path=value, got {show(text)}")
    key, _, value_text = text.partition("=")
    parts: list[str | int] = []
    for piece in key.strip().split("."):
        name, _, rest = piece.partition("[")
        if not name:
            raise RecipeError("--set", f"empty key in {show(key)}")
        parts.append(name)
        while rest:
            index, _, rest = rest.partition("]")
            if not index.isdigit():
                raise RecipeError("--set", f"bad index {show(f'[{index}]')} in {show(key)}")
            parts.append(int(index))
            rest = rest[1:] if rest.startswith("[") else rest
    try:
        value = yaml.safe_load(value_text) if value_text.strip() else None
    except (yaml.YAMLError, RecursionError, ValueError) as exc:
        problem = getattr(exc, "problem", None) or (str(exc).splitlines() or [repr(exc)])[0]
        raise RecipeError(f"--set {key_text(key)}", f"value is not valid YAML: {problem}") from None
    return parts, value


def override_path(parts: list[str | int]) -> str:
    """The field path an override sets, as errors write it: ``heads.mask.loss[0].weight``."""
    path = ""
    for part in parts:
        path = (f"{path}[{part}]" if isinstance(part, int)
                else f"{path}.{key_text(part)}" if path else key_text(part))
    return path


def apply_override(raw: dict, parts: list[str | int], value: Any) -> None:
    """Sets one value inside raw recipe data, creating mappings on the way. A head that the
    recipe does not have, named like one it has, is refused as a misspelling: creating it
    would only lead to "heads.masks.kind: is required"."""
    node: Any = raw
    path = ""
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        path = override_path(parts[:i + 1])
        if (i == 1 and parts[0] == "heads" and isinstance(node, dict) and node
                and part not in node):
            hint = suggest(part, [str(h) for h in node])
            if hint:
                raise RecipeError(f"--set {override_path(parts)}", f"the recipe has no head"
                                  f" {show(part)}{hint}. Its heads: "
                                  f"{', '.join(str(h) for h in node)}")
        if isinstance(part, int):
            if not isinstance(node, list) or part >= len(node):
                raise RecipeError(path, "no such list entry to override")
        elif not isinstance(node, dict):
            raise RecipeError(path, "cannot set a key inside a value that is not a mapping")
        if last:
            node[part] = value
        else:
            if isinstance(part, str) and (part not in node or node[part] is None):
                node[part] = {}
            elif isinstance(part, str) and isinstance(node[part], str) and part in (
                    "source", "loss", "optimizer"):
                # `source: shapes` is shorthand for `source: {kind: shapes}`; same for loss
                # and optimizer ({name: ...}). Other strings are not mappings to set into.
                node[part] = {"kind" if part == "source" else "name": node[part]}
            node = node[part]


def load_raw(path: str | os.PathLike) -> Any:
    """Reads a recipe file with ``yaml.safe_load``; errors name the file."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        raise RecipeError(path, "no such recipe file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(path, f"cannot read the recipe: {exc}") from None
    # yaml.safe_load, in its steps, to look at the document's nodes before building values.
    loader = None
    try:
        loader = yaml.SafeLoader(text)  # its reader refuses control characters right away
        node = loader.get_single_node()
        if node is None:
            return None
        _refuse_duplicate_keys(node, path)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else path
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RecipeError(where, f"not valid YAML (or uses a tag that a safe loader refuses):"
                          f" {problem}") from None
    except RecursionError:
        raise RecipeError(path, "not a recipe: nested too deeply to read") from None
    except RecipeError:
        raise
    except ValueError as exc:
        # A value YAML recognises but cannot build: !!int abc, 2001-02-30, a 5000-digit number.
        raise RecipeError(path, f"not valid YAML: a value cannot be read: {exc}") from None
    finally:
        if loader is not None:
            loader.dispose()


def _refuse_duplicate_keys(root: yaml.Node, file: str) -> None:
    """A key given twice in one mapping is an error. PyYAML keeps the last one without a word,
    so a second head ``mask:`` would silently replace the first. Merge keys (``<<``) and the
    keys they bring keep their YAML meaning."""
    todo, done = [(root, "")], set()
    while todo:  # iterative, and each node once: aliases can share nodes many times over
        node, where = todo.pop()
        if id(node) in done:
            continue
        done.add(id(node))
        children = []
        if isinstance(node, yaml.SequenceNode):
            children = [(child, f"{where}[{i}]") for i, child in enumerate(node.value)]
        elif isinstance(node, yaml.MappingNode):
            lines: dict[tuple[str, str], int] = {}
            for key_node, value_node in node.value:
                if (not isinstance(key_node, yaml.ScalarNode)
                        or key_node.tag == "tag:yaml.org,2002:merge"):
                    continue
                sub = f"{where}.{key_text(key_node.value)}" if where else key_text(key_node.value)
                key = (key_node.tag, key_node.value)
                line = key_node.start_mark.line + 1
                if key in lines:
                    raise RecipeError(sub, f"is given twice in {file} (lines {lines[key]} and"
                                      f" {line}); YAML would keep only the last one silently:"
                                      " remove or rename one")
                lines[key] = line
                children.append((value_node, sub))
        todo.extend(reversed(children))


def load(path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = (), *,
         build: bool = True) -> Recipe:
    """Loads, overrides and validates a recipe file.

    Args:
        build: also build every loss and metric and try the model's activation, so that bad
            option values fail here (imports Keras). False checks everything else without
            Keras: the commands read a recipe so first, then again before training.
    """
    with build_checks(build):
        return _load(path, overrides)


def _load(path: str | os.PathLike, overrides: list[str] | tuple[str, ...]) -> Recipe:
    raw = load_raw(path)
    if raw is None:
        raise RecipeError(os.fspath(path), "the recipe file is empty")
    if not isinstance(raw, dict):
        raise RecipeError(os.fspath(path), f"a recipe is a mapping of sections, got"
                          f" {type_name(raw)}")
    overridden = []
    for text in overrides:
        parts, value = parse_override(text)
        apply_override(raw, parts, value)
        overridden.append((override_path(parts), text.strip()))
    try:
        recipe = from_dict(raw)
        check_output(recipe.output)
        return recipe
    except RecipeError as exc:
        if not exc.path:  # the top level: name the file
            raise RecipeError(os.fspath(path), exc.message) from None
        # A mistake at or inside a field that --set wrote is the command line's, not the file's.
        cause = next((text for field, text in reversed(overridden)
                      if _within(exc.path, field) or _within(field, exc.path)), None)
        origin = f"from --set {cause}" if cause else f"in {os.fspath(path)}"
        raise RecipeError(exc.path, f"{exc.message} ({origin})") from None


def _within(path: str, field: str) -> bool:
    """Whether ``path`` is ``field`` or a field inside it."""
    return path == field or path.startswith((f"{field}.", f"{field}["))


def dump(recipe: Recipe) -> str:
    """The resolved recipe as YAML text."""
    return yaml.safe_dump(recipe.to_dict(), sort_keys=False)


def check_output(path: str, where: str = "output") -> None:
    """Refuses a run directory that cannot be made: a bad path (see ``output_problem``), or
    an existing file in its place or in the place of one of its parents. ``load`` runs it on
    the recipe's ``output``; ``from_dict`` checks the text only, not the disk.

    Raises:
        RecipeError: naming ``where`` (``output``, or ``--output`` on the command line).
    """
    problem = output_problem(path)
    if problem:
        raise RecipeError(where, f"{problem}, got {show(path)}")
    # Training makes the directory before anything else; a file in the way is a recipe mistake.
    node = os.path.abspath(path)
    while not os.path.exists(node) and os.path.dirname(node) != node:
        node = os.path.dirname(node)
    if os.path.exists(node) and not os.path.isdir(node):
        what = ("is an existing file" if node == os.path.abspath(path)
                else f"lies inside {show(node)}, which is a file")
        raise RecipeError(where, f"{what}; the run directory must be a directory: choose"
                          " another path")
