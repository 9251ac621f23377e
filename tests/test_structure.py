"""The package's shape: imports flow one way, without cycles, and modules stay small.

Imports are read from the source (every ``import``, also inside functions), so a cycle hidden
by a function-level import is found too. Layers, lowest first: a module imports modules of its
own layer or of lower ones only. docs/architecture.md draws the same picture.
"""

from __future__ import annotations

import ast
import importlib.util
import pathlib

import pytest

import multiseg

PACKAGE = pathlib.Path(multiseg.__file__).parent

# Longest prefix wins: "multiseg.data.__main__" is a command, the rest of data a family.
LAYERS = {
    # 0: base -- keras-free records and checks that anything may ask
    "multiseg.errors": 0,
    "multiseg.headkinds": 0,
    "multiseg.options": 0,
    "multiseg.models.naming": 0,
    "multiseg.catalog": 0,
    "multiseg.colours": 0,
    "multiseg.distribute.choices": 0,  # train.distribute's options, asked by the recipe
    "multiseg.weighting.choices": 0,  # train.weighting's methods, asked by the recipe
    # 1: families -- data, tensors, losses, metrics, models; they never read a recipe module
    "multiseg.data": 1,
    "multiseg.tensors": 1,
    "multiseg.losses": 1,
    "multiseg.metrics": 1,
    "multiseg.models": 1,
    "multiseg.tblog": 1,
    "multiseg.weighting": 1,  # the methods' state, a layer of the model
    # 2: the recipe reader, which asks the families about their options
    "multiseg.recipe": 2,
    # 3: what training is made of
    "multiseg": 3,  # the package itself: load_model
    "multiseg.gradients": 3,
    "multiseg.graph": 3,
    "multiseg.batchnorm": 3,
    "multiseg.callbacks": 3,
    "multiseg.runs": 3,
    "multiseg.gradflow": 3,
    "multiseg.startup": 3,
    "multiseg.distribute": 3,  # the engines, started for a training run
    "multiseg.trainer": 3,
    # 4: commands; they do not import each other
    "multiseg.train": 4,
    "multiseg.evaluate": 4,
    "multiseg.predict": 4,
    "multiseg.data.__main__": 4,
}
COMMANDS = 4
MAX_LINES = 500
# Modules allowed over MAX_LINES, with the reason (also in docs/architecture.md).
LONG_MODULES: dict[str, str] = {}


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(name: str) -> str:
    """The multiseg module an import names: ``multiseg.losses.Dice`` -> ``multiseg.losses``."""
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def _imports(module: str) -> set[str]:
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = (importlib.util.resolve_name("." * node.level + (node.module or ""), package)
                    if node.level else node.module or "")
            # `from multiseg import recipe` names a module; `from x import Name` names x.
            names = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(_resolve(n) for n in names if n == "multiseg" or n.startswith("multiseg."))
    found.discard(module)
    return found


GRAPH = {module: _imports(module) for module in MODULES}


def _layer(module: str) -> int:
    prefixes = [p for p in LAYERS if module == p or module.startswith(p + ".")]
    if not prefixes:
        raise AssertionError(f"{module} has no layer: add it to LAYERS and to"
                             " docs/architecture.md")
    return LAYERS[max(prefixes, key=len)]


def test_the_graph_is_read():
    # The reader must see real edges, or the tests below pass on an empty graph.
    assert "multiseg.losses" in {_resolve(m) for m in GRAPH["multiseg.models.build"]}
    assert "multiseg.headkinds" in GRAPH["multiseg.models.build"]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_down_the_layers(module):
    layer = _layer(module)
    upward = sorted(m for m in GRAPH[module] if _layer(m) > layer)
    assert not upward, f"{module} (layer {layer}) imports higher layers: {upward}"
    if layer == COMMANDS:
        others = sorted(m for m in GRAPH[module] if _layer(m) == COMMANDS)
        assert not others, f"command {module} imports other commands: {others}"


def test_no_import_cycles():
    # Depth-first search over modules, with function-level imports counted.
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for child in sorted(GRAPH[module]):
            if child == "multiseg":
                continue  # every module's parent package; its own imports are checked
            if state.get(child) == 1:
                cycle = stack[stack.index(child):] + [child]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if child not in state:
                visit(child)
        stack.pop()
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)


def test_packages_do_not_import_each_other_both_ways():
    # A cycle between packages (recipe -> data -> recipe) is hidden from the module graph
    # when different modules of each take part; refuse it as well.
    def top(module: str) -> str:
        return ".".join(module.split(".")[:2])

    edges = {(top(a), top(b)) for a, targets in GRAPH.items() for b in targets
             if top(a) != top(b) and "multiseg" not in (top(a), top(b))
             and a != "multiseg.data.__main__"}
    both = sorted((a, b) for a, b in edges if (b, a) in edges and a < b)
    assert not both, f"packages importing each other: {both}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_stay_small(module):
    lines = len(MODULES[module].read_text(encoding="utf-8").splitlines())
    if module in LONG_MODULES:
        return
    assert lines <= MAX_LINES, (f"{module} has {lines} lines: split it by job, or add it to"
                                " LONG_MODULES with the reason")
