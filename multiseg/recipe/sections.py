"""The recipe's sections: data, model and train, and the whole recipe (``from_dict``).

Heads are read in ``heads``; this module reads the rest and puts the recipe together. Each
reader takes a ``Section`` (the mapping and its field path) and returns a frozen spec.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from multiseg.data.patches import PATCH_MODES
from multiseg.data.sources import (
    SOURCES,
    is_synthetic,
    option_types,
    source_options,
    source_targets,
)
from multiseg.distribute.choices import DISTRIBUTIONS, backend_problem, recipe_problems
from multiseg.options import show, suggest, type_name
from multiseg.recipe.heads import head_name_problem, read_head
from multiseg.recipe.reader import (
    BUILD_CHECKS,
    RecipeError,
    Section,
    at_most,
    below_one,
    every,
    inside_unit,
    int_list,
    key_text,
    non_negative,
    output_problem,
    positive,
    run_name_problem,
    tidy,
)
from multiseg.recipe.spec import (
    AUGMENT_LIMITS,
    RECIPE_VERSION,
    AugmentSpec,
    DataSpec,
    GradflowSpec,
    ModelSpec,
    OptimizerSpec,
    Recipe,
    SourceSpec,
    TrainSpec,
    WeightingSpec,
)
from multiseg.weighting.choices import (
    COMMON_OPTIONS,
    GRADIENT_BACKENDS,
    GRADIENT_PRECISIONS,
    METHODS,
    SCHEDULE_OPTIONS,
)

NORMS = ("batch", "group", "instance", "none")
UPSAMPLE_MODES = ("transpose", "resize")
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
WEIGHTINGS = tuple(METHODS)
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")


def _read_data(sec: Section) -> DataSpec:
    sec.expect("source", "image_size", "train", "val", "augment", "patches", "tile_overlap")
    raw_source = sec.raw_value("source")
    src_path = sec.sub("source")
    if raw_source is None:
        raise RecipeError(src_path, f"is required. Built-in sources: {', '.join(SOURCES)}")
    if isinstance(raw_source, str):
        raw_source = {"kind": raw_source}
    src = Section(raw_source, src_path, f"a source name ({', '.join(SOURCES)}) or a mapping"
                   " such as {kind: folder, path: data/my_set}")
    kind = src.choice("kind", tuple(SOURCES))
    allowed = source_options(kind)
    src.expect("kind", *allowed)
    options = {}
    for key, default in allowed.items():
        options[key] = src.get(key, option_types(kind, key), default)
    problem = SOURCES[kind].check_options(options)
    if problem:
        raise RecipeError(f"{src_path}.{key_text(problem[0])}", tidy(problem[1]))

    size_raw = sec.get("image_size", (list, int))
    size = int_list(size_raw, sec.sub("image_size"), min_len=1, max_value=8192)
    if len(size) == 1:
        size = (size[0], size[0])
    if len(size) != 2:
        raise RecipeError(sec.sub("image_size"), f"expected [height, width], got"
                          f" {show(size_raw)}")
    count_check = every(positive, at_most(10_000_000))
    if is_synthetic(kind):
        train = sec.get("train", int, check=count_check)
        val = sec.get("val", int, check=count_check)
    else:
        # File sources: the files decide; train/val set samples per epoch (or at most).
        train = sec.get("train", int, None, count_check)
        val = sec.get("val", int, None, count_check)
    aug = sec.section("augment", "a mapping of transforms such as {flip: true, rotate: 15}")
    aug.expect("flip", "rotate90", *AUGMENT_LIMITS)
    values: dict[str, Any] = {"flip": aug.get("flip", bool, False),
                              "rotate90": aug.get("rotate90", bool, False)}
    for key, limit in AUGMENT_LIMITS.items():
        values[key] = aug.get(key, float, 0.0, every(non_negative, at_most(limit)))
    augment = AugmentSpec(**values)
    if augment.rotate90 and size[0] != size[1]:
        raise RecipeError(aug.sub("rotate90"), f"needs square images, image_size is {list(size)}")
    patches = sec.choice("patches", PATCH_MODES, "whole")
    overlap = sec.get("tile_overlap", int, 0, non_negative)
    if overlap and patches != "tile":
        raise RecipeError(sec.sub("tile_overlap"), "applies to patches: tile only")
    if overlap >= min(size):
        raise RecipeError(sec.sub("tile_overlap"), f"must be smaller than the tile size"
                          f" {list(size)}, got {show(overlap)}")
    if is_synthetic(kind) and patches != "whole":
        raise RecipeError(sec.sub("patches"), f"the synthetic source '{kind}' draws samples at"
                          " image_size already; patches apply to folder and arrays sources")
    if options.get("split") == "tiles" and patches == "whole":
        raise RecipeError(f"{src_path}.split", "split: tiles holds out tiles of every image:"
                          " set data.patches to tile or random")
    return DataSpec(source=SourceSpec(kind, options), image_size=size, train=train, val=val,
                    augment=augment, patches=patches, tile_overlap=overlap)


def _read_model(sec: Section) -> ModelSpec:
    sec.expect(*(f.name for f in dataclasses.fields(ModelSpec)))
    trunk = sec.choice("trunk", ("unet",), "unet")
    filters = int_list(sec.get("filters", (list, int), [16, 32, 64, 128]), sec.sub("filters"),
                        min_len=1, max_value=2048)
    if len(filters) > 7:
        raise RecipeError(sec.sub("filters"), f"at most 7 levels, got {len(filters)}")
    spec = ModelSpec(
        trunk=trunk,
        filters=filters,
        convs_per_level=sec.get("convs_per_level", int, 2, every(positive, at_most(8))),
        norm=sec.choice("norm", NORMS, "batch"),
        groups=sec.get("groups", int, 8, every(positive, at_most(1024))),
        norm_momentum=sec.get("norm_momentum", float, 0.9, inside_unit),
        activation=sec.get("activation", str, "relu"),
        dropout=sec.get("dropout", float, 0.0, below_one),
        upsample=sec.choice("upsample", UPSAMPLE_MODES, "transpose"),
    )
    problem = _activation_problem(spec.activation) if BUILD_CHECKS.get() else None
    if problem:
        import keras

        names = [n for n in dir(keras.activations)
                 if not n.startswith("_") and not _activation_problem(n)]
        known = "such as relu, gelu, silu, elu, leaky_relu"
        if problem == "unknown":
            message = (f"unknown activation {show(spec.activation)}"
                       f"{suggest(spec.activation, names)}. Expected a keras activation name"
                       f" {known}")
        else:
            message = (f"activation {show(spec.activation)} {problem}; the trunk needs a"
                       f" shape-preserving function of one argument {known}")
        raise RecipeError(sec.sub("activation"), message)
    return spec


def _activation_problem(name: str) -> str | None:
    """None for a keras activation that works element-wise, as the trunk's layers need; else
    'unknown', or why it does not fit (glu halves the channels, threshold takes arguments)."""
    import keras

    try:
        function = keras.activations.get(name)
    except (ValueError, TypeError):
        return "unknown"
    try:
        shape = tuple(keras.ops.shape(function(keras.ops.zeros((1, 2, 2, 4)))))
    except Exception:  # whatever a foreign function raises here, it does not fit
        return "takes arguments of its own"
    return None if shape == (1, 2, 2, 4) else "changes the shape of its input"


def _read_train(sec: Section) -> TrainSpec:
    sec.expect(*(f.name for f in dataclasses.fields(TrainSpec)))
    opt_raw = sec.raw_value("optimizer")
    if isinstance(opt_raw, str):
        opt_raw = {"name": opt_raw}
    opt = Section(opt_raw, sec.sub("optimizer"), f"an optimizer name ({', '.join(OPTIMIZERS)})"
                   " or a mapping such as {name: adam, learning_rate: 1.0e-3}")
    opt.expect(*(f.name for f in dataclasses.fields(OptimizerSpec)))
    optimizer = OptimizerSpec(
        name=opt.choice("name", OPTIMIZERS, "adam"),
        learning_rate=opt.get("learning_rate", float, 1e-3, every(positive, at_most(10.0))),
        weight_decay=opt.get("weight_decay", float, None, every(non_negative, at_most(1.0))),
        momentum=opt.get("momentum", float, None, below_one),
        clipnorm=opt.get("clipnorm", float, None, every(positive, at_most(1e6))),
    )
    if optimizer.momentum is not None and optimizer.name not in ("sgd", "rmsprop"):
        raise RecipeError(opt.sub("momentum"), f"applies to sgd and rmsprop, not"
                          f" {optimizer.name} (whose moments are its own)")
    gf_raw = sec.raw_value("gradflow")
    if isinstance(gf_raw, int) and not isinstance(gf_raw, bool):
        gf_raw = {"every": gf_raw}
    gf = Section(gf_raw, sec.sub("gradflow"),
                  "a number of steps or a mapping such as {every: 200}")
    gf.expect("every")
    gradflow = GradflowSpec(every=gf.get("every", int, 0, every(non_negative,
                                                               at_most(10_000_000))))
    spec = TrainSpec(
        epochs=sec.get("epochs", int, 10, every(positive, at_most(100_000))),
        batch_size=sec.get("batch_size", int, 16, every(positive, at_most(65_536))),
        steps_per_epoch=sec.get("steps_per_epoch", int, None, every(positive,
                                                                   at_most(10_000_000))),
        optimizer=optimizer,
        lr_schedule=sec.choice("lr_schedule", ("constant", "cosine"), "constant"),
        weighting=_read_weighting(sec),
        gradflow=gradflow,
        deterministic=sec.get("deterministic", bool, False),
        on_nonfinite=sec.choice("on_nonfinite", ("stop", "skip"), "stop"),
        max_skipped_steps=sec.get("max_skipped_steps", int, 10, every(positive,
                                                                     at_most(1_000_000))),
        precise_bn=sec.get("precise_bn", int, 8, every(non_negative, at_most(100_000))),
        precision=sec.choice("precision", PRECISIONS, "float32"),
        jit_compile=_jit_compile(sec),
        steps_per_execution=sec.get("steps_per_execution", int, 1,
                                    every(positive, at_most(100_000))),
        distribute=_distribute(sec),
    )
    _check_steps_per_execution(sec, spec)
    if spec.deterministic and spec.jit_compile is True and BUILD_CHECKS.get():
        import keras

        if keras.backend.backend() == "tensorflow":
            # Keras would only warn and train without XLA.
            raise RecipeError(sec.sub("jit_compile"), "true cannot hold with deterministic:"
                              " true on TensorFlow, where Keras turns XLA off under op"
                              " determinism (not every XLA kernel is deterministic); use"
                              " jit_compile: auto or false, or deterministic: false")
    return spec


def _check_steps_per_execution(sec: Section, spec: TrainSpec) -> None:
    if spec.steps_per_execution == 1:
        return
    if spec.on_nonfinite == "skip":
        raise RecipeError(sec.sub("steps_per_execution"), f"must be 1 with on_nonfinite: skip,"
                          f" which undoes one step at a time (got {spec.steps_per_execution})")
    if BUILD_CHECKS.get():  # Keras is imported: its backend is known
        import keras

        if keras.backend.backend() == "torch":
            raise RecipeError(sec.sub("steps_per_execution"), f"must be 1 on the torch backend,"
                              f" which runs one step per call (got"
                              f" {spec.steps_per_execution})")


def _distribute(sec: Section) -> str:
    name = sec.choice("distribute", tuple(DISTRIBUTIONS), "none")
    if name != "none" and BUILD_CHECKS.get():  # Keras is imported: its backend is known
        import keras

        problem = backend_problem(name, keras.backend.backend())
        if problem:
            raise RecipeError(sec.sub("distribute"), problem)
    return name


def _read_weighting(sec: Section) -> WeightingSpec:
    raw = sec.raw_value("weighting")
    if raw is None:
        return WeightingSpec()
    if isinstance(raw, str):
        raw = {"method": raw}
    w = Section(raw, sec.sub("weighting"), f"a method name ({', '.join(WEIGHTINGS)}) or a"
                " mapping such as {method: dwa, temperature: 2.0}")
    method = w.choice("method", WEIGHTINGS, "static")
    record = METHODS[method]
    common = COMMON_OPTIONS if method != "static" else {}
    w.expect("method", *record.options, *common)
    options = {key: w.get(key, kind, default, check)
               for key, (default, kind, check) in record.options.items() if key != "heads"}
    if "heads" in record.options:
        options["heads"] = _read_schedules(w)
    default, kind, check = COMMON_OPTIONS["log_every"]
    log_every = w.get("log_every", kind, default, check) if common else default
    return WeightingSpec(method=method, options=options, log_every=log_every)


def _read_schedules(w: Section) -> dict[str, dict[str, Any]]:
    """``scheduled``'s ``heads``: ``{boundary: {initial: 0.0, end: 5}}``, one per head."""
    if not w.has("heads"):
        raise w.missing("heads", ": a schedule per head, e.g. heads: {boundary: {initial: 0.0,"
                        " end: 5}} (a warm-up over 5 epochs)")
    raw = w.raw_value("heads")
    if not isinstance(raw, Mapping) or not raw:
        raise RecipeError(w.sub("heads"), f"expected a mapping of head names to schedules,"
                          f" e.g. {{boundary: {{initial: 0.0, end: 5}}}}; got {show(raw)}")
    heads_sec = Section(raw, w.sub("heads"))
    schedules = {}
    for head in raw:
        s = heads_sec.section(head, "a schedule such as {initial: 0.0, final: 1.0, end: 5}")
        s.expect(*SCHEDULE_OPTIONS)
        values = {key: s.get(key, kind, default, check)
                  for key, (default, kind, check) in SCHEDULE_OPTIONS.items()}
        if values["end"] <= values["begin"]:
            raise RecipeError(s.sub("end"), f"must be after begin ({values['begin']:g}), got"
                              f" {values['end']:g}")
        schedules[head] = values
    return schedules


def _check_weighting(spec: WeightingSpec, heads: Mapping, *,
                     precision: str = "float32") -> None:
    """The weighting method against the heads: schedules name heads, and a method that
    balances heads has at least two to balance; a gradient-level method against the
    precision and the backend."""
    path = "train.weighting"
    for head in spec.options.get("heads", {}) if spec.method == "scheduled" else ():
        if head not in heads:
            raise RecipeError(f"{path}.heads.{key_text(head)}", f"no such head"
                              f"{suggest(head, list(heads))}. Heads: {', '.join(heads)}")
    weighted = [name for name, head in heads.items() if head.loss_weight > 0]
    needed = METHODS[spec.method].min_heads
    if len(weighted) < needed:
        raise RecipeError(f"{path}.method", f"{spec.method} balances heads against each other"
                          f" and needs at least {needed} heads with loss_weight > 0; this"
                          f" recipe has {len(weighted)} ({', '.join(weighted)}). Use static,"
                          " or scheduled for a weight that changes over time")
    most = METHODS[spec.method].max_heads
    if most is not None and len(weighted) > most:
        raise RecipeError(f"{path}.method", f"{spec.method} takes at most {most} heads with"
                          f" loss_weight > 0; this recipe has {len(weighted)}. Use pcgrad or"
                          " gradnorm")
    if METHODS[spec.method].level != "gradient":
        return
    if precision not in GRADIENT_PRECISIONS:
        raise RecipeError("train.precision", f"{spec.method} combines the heads' gradients,"
                          f" which {precision} (loss scaling) does not support; use"
                          f" {' or '.join(GRADIENT_PRECISIONS)}")
    if BUILD_CHECKS.get():  # Keras is imported: its backend is known
        import keras

        if keras.backend.backend() not in GRADIENT_BACKENDS:
            raise RecipeError(f"{path}.method", f"{spec.method} has a training step for the"
                              f" {' and '.join(GRADIENT_BACKENDS)} backends, not"
                              f" {keras.backend.backend()}; set KERAS_BACKEND to one of them,"
                              " or use a loss-level method (e.g. famo, dwa)")


def _jit_compile(sec: Section) -> bool | str:
    value = sec.get("jit_compile", (bool, str), "auto")
    if value not in (True, False, "auto"):
        raise RecipeError(sec.sub("jit_compile"), f"expected auto, true or false, got"
                          f" {show(value)}")
    return value


def from_dict(raw: Any, *, where: str = "") -> Recipe:
    """Validates plain data (as YAML gives it) into a :class:`Recipe`.

    Raises:
        RecipeError: naming the field path of the first mistake.
    """
    if raw is None:
        raise RecipeError(where, "the recipe is empty")
    top = Section(raw, "")
    # A misspelled section ("haeds") is the mistake to report, not the section it hides.
    top.used.update(("version", "name", "seed", "data", "model", "heads", "train", "output"))
    top.finish()
    version = top.get("version", int, RECIPE_VERSION)
    if version != RECIPE_VERSION:
        raise RecipeError("version", f"this multiseg reads recipe version {RECIPE_VERSION},"
                          f" got {version}")
    name = top.get("name", str, "multiseg-run", run_name_problem)
    seed = top.get("seed", int, 0, every(non_negative, at_most(2**32 - 1)))
    data = _read_data(top.section("data"))
    model = _read_model(top.section("model"))
    heads_raw = top.raw_value("heads")
    if heads_raw is None:
        raise top.missing("heads", ": at least one head, e.g. heads: {mask: {kind:"
                          " segmentation, target: mask}}")
    example = "e.g. heads: {mask: {kind: segmentation, target: mask}}"
    if not isinstance(heads_raw, Mapping):
        raise RecipeError("heads", f"expected a mapping of head names to heads, {example}; got"
                          f" {type_name(heads_raw)} ({show(heads_raw)})")
    if not heads_raw:
        raise RecipeError("heads", f"at least one head is required, {example}")
    heads_sec = Section(heads_raw, "heads")
    s_targets = source_targets(data.source.kind, data.source.options)
    heads = {}
    for head_name in heads_raw:
        head_path = f"heads.{key_text(head_name)}"
        problem = head_name_problem(head_name)
        if problem:
            raise RecipeError(head_path, problem)
        head = heads_sec.section(head_name, "a head: a mapping such as {kind: segmentation,"
                                 " target: mask}")
        heads[head_name] = read_head(head_name, head, len(model.filters), s_targets)
    if all(head.loss_weight == 0 for head in heads.values()):
        raise RecipeError("heads", "every head has loss_weight 0: nothing would be trained")
    train = _read_train(top.section("train"))
    _check_weighting(train.weighting, heads, precision=train.precision)
    output = top.get("output", str, f"runs/{name}", output_problem)
    top.finish()
    recipe = Recipe(name=name, data=data, model=model, heads=heads, train=train, output=output,
                    seed=seed, version=version)
    problems = recipe_problems(recipe)  # what the distribution cannot train, with its field
    if problems:
        raise RecipeError(*problems[0])
    return recipe
