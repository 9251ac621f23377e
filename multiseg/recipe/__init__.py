"""Recipes: YAML files validated into frozen dataclasses.

A recipe is plain data. It is read with ``yaml.safe_load`` only, every key is known (unknown keys
are errors with a suggestion), every error names the field path, and validation happens here,
before anything is built. Only this package and the ``build_*`` functions look at a recipe.

Modules, one job each:
    spec      the frozen dataclasses (the format's documentation) and ``Recipe.to_dict``
    reader    ``RecipeError``, the ``Section`` cursor over one mapping, value checks
    sections  the data, model and train sections, and ``from_dict`` (the whole recipe)
    heads     heads: kind, target, loss terms, metrics (asking ``multiseg.headkinds``)
    files     YAML files, duplicate keys, ``--set`` overrides, ``load``, ``dump``
"""

from __future__ import annotations

from multiseg.headkinds import HEAD_DECIDED_OPTIONS, HEAD_KINDS
from multiseg.recipe.files import (
    apply_override,
    check_output,
    dump,
    load,
    load_raw,
    parse_override,
)
from multiseg.recipe.heads import MAX_CLASSES, MAX_HEAD_NAME, RESERVED_HEAD_NAMES
from multiseg.recipe.reader import RecipeError
from multiseg.recipe.sections import NORMS, OPTIMIZERS, UPSAMPLE_MODES, WEIGHTINGS, from_dict
from multiseg.recipe.spec import (
    RECIPE_VERSION,
    AugmentSpec,
    DataSpec,
    GradflowSpec,
    HeadSpec,
    LossTermSpec,
    MetricSpec,
    ModelSpec,
    OptimizerSpec,
    Recipe,
    SourceSpec,
    TargetSpec,
    TrainSpec,
)

__all__ = [
    "HEAD_DECIDED_OPTIONS",
    "HEAD_KINDS",
    "MAX_CLASSES",
    "MAX_HEAD_NAME",
    "NORMS",
    "OPTIMIZERS",
    "RECIPE_VERSION",
    "RESERVED_HEAD_NAMES",
    "UPSAMPLE_MODES",
    "WEIGHTINGS",
    "AugmentSpec",
    "DataSpec",
    "GradflowSpec",
    "HeadSpec",
    "LossTermSpec",
    "MetricSpec",
    "ModelSpec",
    "OptimizerSpec",
    "Recipe",
    "RecipeError",
    "SourceSpec",
    "TargetSpec",
    "TrainSpec",
    "apply_override",
    "check_output",
    "dump",
    "from_dict",
    "load",
    "load_raw",
    "parse_override",
]
