"""Recipe loading: good recipes resolve, every mistake names its field, overrides work."""

from __future__ import annotations

import copy
import glob
import os

import pytest
import yaml

from multiseg.data import targets as targets_lib
from multiseg.recipe import (
    Recipe,
    RecipeError,
    apply_override,
    check_output,
    dump,
    from_dict,
    load,
    parse_override,
)

RECIPES = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "recipes", "*.yaml")))


class TestShippedRecipes:
    @pytest.mark.parametrize("path", RECIPES, ids=os.path.basename)
    def test_loads(self, path):
        recipe = load(path)
        assert isinstance(recipe, Recipe)
        assert recipe.heads

    def test_there_are_recipes(self):
        assert len(RECIPES) >= 3

    def test_readme_shows_the_default_recipe(self):
        """The README's recipe block is recipes/shapes.yaml, not a copy that drifts from it."""
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        with open(os.path.join(root, "README.md"), encoding="utf-8") as handle:
            readme = handle.read()
        shown = readme.split("the default, in full:\n\n```yaml\n", 1)[1].split("```", 1)[0]
        with open(os.path.join(root, "recipes", "shapes.yaml"), encoding="utf-8") as handle:
            assert yaml.safe_load(shown) == yaml.safe_load(handle)

    @pytest.mark.parametrize("path", RECIPES, ids=os.path.basename)
    def test_resolved_round_trip(self, path):
        recipe = load(path)
        again = from_dict(yaml.safe_load(dump(recipe)))
        assert again == recipe


class TestDefaults:
    def test_head_defaults(self, tiny_raw):
        raw = copy.deepcopy(tiny_raw)
        raw["heads"] = {"seg": {"kind": "segmentation", "target": "mask"}}
        recipe = from_dict(raw)
        head = recipe.heads["seg"]
        assert head.classes == 4  # from the shapes source
        assert head.attach == "decoder"
        assert [t.name for t in head.loss] == ["dice", "crossentropy"]
        assert head.loss_weight == 1.0
        assert [m.name for m in head.metrics] == ["dice", "iou"]

    def test_classification_defaults_to_bottleneck(self, tiny_raw):
        raw = copy.deepcopy(tiny_raw)
        raw["heads"] = {"kind_of": {"kind": "classification", "target": "label"}}
        assert from_dict(raw).heads["kind_of"].attach == "bottleneck"

    def test_head_order_kept(self, tiny_recipe):
        assert list(tiny_recipe.heads) == ["mask", "boundary", "shape"]

    def test_derived_targets(self, tiny_recipe):
        target = tiny_recipe.heads["boundary"].target
        assert (target.derive, target.source, target.options["width"]) == ("boundary", "mask", 1)

    def test_frozen(self, tiny_recipe):
        with pytest.raises(AttributeError):
            tiny_recipe.seed = 3


def _mutate(raw, path, value):
    parts, _ = parse_override(f"{path}=0")
    apply_override(raw, parts, value)
    return raw


# (field path to change, new value, field path the error must name, words in the message)
BAD_CASES = [
    ("heads.mask.loss[0].name", "dise", r"heads\.mask\.loss\[0\]\.name", "did you mean 'dice'"),
    ("heads.mask.kind", "segmentaton", r"heads\.mask\.kind", "did you mean 'segmentation'"),
    ("heads.mask.classes", 5, r"heads\.mask\.classes", "target 'mask'"),
    ("heads.mask.attach", "decoder.7", r"heads\.mask\.attach", "unknown attach point"),
    ("heads.mask.loss_weight", -1, r"heads\.mask\.loss_weight", ">= 0"),
    ("heads.mask.loss_weight", "high", r"heads\.mask\.loss_weight", "expected a number"),
    ("heads.mask.colour", "red", r"heads\.mask\.colour", "unknown key"),
    ("heads.mask.loss[0].smoth", 1.0, r"heads\.mask\.loss\[0\]\.smoth", "did you mean 'smooth'"),
    ("heads.mask.loss[0].from_logits", True, r"heads\.mask\.loss\[0\]\.from_logits",
     "decided by the head"),
    ("heads.mask.metrics", ["dcie"], r"heads\.mask\.metrics\[0\]", "did you mean 'dice'"),
    ("heads.mask.target", "masks", r"heads\.mask\.target", "did you mean 'mask'"),
    ("heads.shape.target", "mask", r"heads\.shape\.target", "image-level label"),
    ("heads.boundary.target", "mask", r"heads\.boundary\.target", "binary map"),
    ("heads.boundary.target.width", 0, r"heads\.boundary\.target\.width", "> 0"),
    ("heads.mask.branch", [8, -2], r"heads\.mask\.branch\[1\]", "> 0"),
    ("data.image_size", [32], None, None),  # a single entry means square: valid
    ("data.image_size", [0, 32], r"data\.image_size\[0\]", "> 0"),
    ("data.image_size", [32, 32, 3], r"data\.image_size", r"\[height, width\]"),
    ("data.train", 0, r"data\.train", "> 0"),
    ("data.train", 10**12, r"data\.train", "<="),
    ("data.source.kind", "shpes", r"data\.source\.kind", "did you mean 'shapes'"),
    ("data.source.max_objects", 0, r"data\.source\.max_objects", "min_objects"),
    ("data.source.sides", 3, r"data\.source\.sides", "unknown key"),
    ("data.augment.flip", "yes", r"data\.augment\.flip", "expected a boolean"),
    ("model.filters", [], r"model\.filters", "at least 1"),
    ("model.norm", "layer", r"model\.norm", "batch, group, instance, none"),
    ("model.activation", "relux", r"model\.activation", "unknown activation"),
    ("model.dropout", 1.5, r"model\.dropout", r"\[0, 1\)"),
    ("train.epochs", 0, r"train\.epochs", "> 0"),
    ("train.epochs", 2.5, r"train\.epochs", "expected an integer"),
    ("train.batch_size", True, r"train\.batch_size", "expected an integer"),
    ("train.optimizer.name", "adan", r"train\.optimizer\.name", "did you mean 'adam'"),
    ("train.optimizer.learning_rate", float("nan"), r"train\.optimizer\.learning_rate",
     "finite"),
    ("train.epoch", 3, r"train\.epoch\b", "did you mean 'epochs'"),
    ("seed", -1, r"seed", ">= 0"),
    ("name", "a/b", r"name", "without '/'"),
    ("version", 2, r"version", "version 1"),
    # A value where a mapping belongs: what belongs there, with an example, and what was given.
    ("data.source", 5, r"data\.source$", r"a source name \(shapes, .*got an integer \(5\)"),
    ("data.augment", [1], r"data\.augment$", r"transforms such as \{flip: true.*got a list"),
    ("train.optimizer", 3.5, r"train\.optimizer$", r"optimizer name \(adam, .*got a number"),
    ("train.gradflow", "x", r"train\.gradflow$", r"number of steps or .*\{every: 200\}"),
    ("heads.mask", [1], r"heads\.mask$", r"expected a head: a mapping such as \{kind:"),
    ("model", [1], r"model$", r"expected a mapping, got a list \(\[1\]\)"),
]


class TestErrors:
    @pytest.mark.parametrize("path,value,where,words", BAD_CASES,
                             ids=[f"{c[0]}={c[1]!r}" for c in BAD_CASES])
    def test_names_field(self, tiny_raw, path, value, where, words):
        raw = _mutate(copy.deepcopy(tiny_raw), path, value)
        if where is None:
            from_dict(raw)
            return
        with pytest.raises(RecipeError, match=words) as info:
            from_dict(raw)
        assert __import__("re").match(where, info.value.path), info.value.path

    def test_no_heads(self, tiny_raw):
        tiny_raw["heads"] = {}
        with pytest.raises(RecipeError, match="at least one head"):
            from_dict(tiny_raw)

    def test_bad_head_name(self, tiny_raw):
        tiny_raw["heads"]["2nd"] = tiny_raw["heads"].pop("mask")
        with pytest.raises(RecipeError, match="identifiers"):
            from_dict(tiny_raw)

    def test_binary_segmentation_needs_one_channel(self, tiny_raw):
        tiny_raw["data"]["source"] = "cells"
        tiny_raw["heads"] = {"cell": {"kind": "segmentation", "classes": 2, "target": "mask"}}
        with pytest.raises(RecipeError, match="classes: 1"):
            from_dict(tiny_raw)

    def test_empty_file(self, tmp_path):
        path = tmp_path / "empty.yaml"
        path.write_text("")
        with pytest.raises(RecipeError, match="empty") as info:
            load(path)
        assert str(path) in str(info.value)

    def test_yaml_syntax_names_line(self, tmp_path):
        path = tmp_path / "broken.yaml"
        path.write_text("name: x\ndata: {source: shapes\n")
        with pytest.raises(RecipeError, match="not valid YAML") as info:
            load(path)
        assert f"{path}:" in info.value.path

    def test_python_tags_refused(self, tmp_path):
        path = tmp_path / "evil.yaml"
        path.write_text("name: !!python/object/apply:os.system ['echo hacked']\n")
        with pytest.raises(RecipeError, match="safe loader"):
            load(path)

    def test_missing_file(self, tmp_path):
        with pytest.raises(RecipeError, match="no such recipe file"):
            load(tmp_path / "nope.yaml")

    def test_not_a_mapping(self, tmp_path):
        path = tmp_path / "list.yaml"
        path.write_text("- a\n- b\n")
        with pytest.raises(RecipeError, match="mapping"):
            load(path)


class TestOverrides:
    @pytest.mark.parametrize("text,parts,value", [
        ("train.epochs=3", ["train", "epochs"], 3),
        ("heads.mask.loss_weight=0.5", ["heads", "mask", "loss_weight"], 0.5),
        ("heads.mask.loss[1].weight=2", ["heads", "mask", "loss", 1, "weight"], 2),
        ("data.augment.flip=false", ["data", "augment", "flip"], False),
        ("model.filters=[8, 16]", ["model", "filters"], [8, 16]),
        ("name=run-2", ["name"], "run-2"),
    ])
    def test_parse(self, text, parts, value):
        assert parse_override(text) == (parts, value)

    def test_applied_and_validated(self, tmp_path, tiny_raw):
        path = tmp_path / "r.yaml"
        path.write_text(yaml.safe_dump(tiny_raw))
        recipe = load(path, ["train.epochs=3", "heads.mask.loss_weight=0.25",
                             "heads.mask.loss[1].weight=2"])
        assert recipe.train.epochs == 3
        assert recipe.heads["mask"].loss_weight == 0.25
        assert recipe.heads["mask"].loss[1].weight == 2.0

    def test_source_shorthand(self, tmp_path, tiny_raw):
        tiny_raw["data"]["source"] = "shapes"
        path = tmp_path / "r.yaml"
        path.write_text(yaml.safe_dump(tiny_raw))
        assert load(path, ["data.source.noise=0.1"]).data.source.options["noise"] == 0.1

    def test_bad_override_validated_like_file(self, tmp_path, tiny_raw):
        path = tmp_path / "r.yaml"
        path.write_text(yaml.safe_dump(tiny_raw))
        with pytest.raises(RecipeError, match="did you mean 'epochs'") as info:
            load(path, ["train.epoch=3"])
        assert info.value.path == "train.epoch"

    def test_error_from_an_override_names_the_override(self, tmp_path, tiny_raw):
        path = tmp_path / "r.yaml"
        path.write_text(yaml.safe_dump(tiny_raw))
        with pytest.raises(RecipeError) as info:
            load(path, ["heads.mask.loss_weight=-1"])
        assert str(info.value) == ("heads.mask.loss_weight: must be >= 0, got -1.0"
                                   " (from --set heads.mask.loss_weight=-1)")
        # A mistake of the file keeps naming the file, whatever else --set changed.
        tiny_raw["train"]["epochs"] = 0
        path.write_text(yaml.safe_dump(tiny_raw))
        with pytest.raises(RecipeError, match=rf"train.epochs: must be > 0, got 0 \(in {path}\)"):
            load(path, ["heads.mask.loss_weight=0.5"])

    def test_misspelled_head_is_suggested(self, tmp_path, tiny_raw):
        path = tmp_path / "r.yaml"
        path.write_text(yaml.safe_dump(tiny_raw))
        with pytest.raises(RecipeError) as info:
            load(path, ["heads.masks.loss_weight=0.5"])
        assert info.value.path == "--set heads.masks.loss_weight"
        assert "the recipe has no head 'masks' (did you mean 'mask'?)" in str(info.value)
        assert "is required" not in str(info.value)

    def test_new_head_by_override(self, tmp_path, tiny_raw):
        # A head unlike every head of the file is an addition, read like one in the file.
        path = tmp_path / "r.yaml"
        path.write_text(yaml.safe_dump(tiny_raw))
        recipe = load(path, ["heads.outline.kind=boundary",
                             "heads.outline.target={derive: boundary, from: mask}"])
        assert recipe.heads["outline"].kind == "boundary"

    @pytest.mark.parametrize("text", ["train.epochs", "=3", "heads.mask.loss[x].weight=1"])
    def test_malformed(self, text):
        with pytest.raises(RecipeError, match="--set"):
            parse_override(text)

    def test_index_out_of_range(self, tiny_raw):
        with pytest.raises(RecipeError, match="no such list entry"):
            apply_override(tiny_raw, ["heads", "mask", "loss", 5, "weight"], 1.0)


def _head(raw, name, **changes):
    raw["heads"][name].update(changes)
    return raw


class TestOptions:
    """Loss and metric options keep their default's type; null means the default."""

    def test_integer_option_stays_integer(self, tiny_raw):
        # boundary_f1's tolerance defaults to 2 (an int); the metric refuses 2.0.
        _head(tiny_raw, "boundary", metrics=[{"name": "boundary_f1", "tolerance": 3}])
        _head(tiny_raw, "shape", metrics=[{"name": "top_k_accuracy", "k": 2}])
        recipe = from_dict(tiny_raw)
        tolerance = recipe.heads["boundary"].metrics[0].options["tolerance"]
        assert tolerance == 3 and type(tolerance) is int
        assert type(recipe.heads["shape"].metrics[0].options["k"]) is int
        assert from_dict(yaml.safe_load(dump(recipe))) == recipe

    def test_float_option_takes_an_integer(self, tiny_raw):
        _head(tiny_raw, "boundary", loss={"name": "tversky", "alpha": 1, "beta": 0})
        options = from_dict(tiny_raw).heads["boundary"].loss[0].options
        assert options == {"alpha": 1.0, "beta": 0.0}
        assert type(options["alpha"]) is float

    def test_null_is_the_default(self, tiny_raw):
        _head(tiny_raw, "boundary", loss={"name": "tversky", "alpha": None},
              metrics=[{"name": "dice", "threshold": None}])
        head = from_dict(tiny_raw).heads["boundary"]
        assert head.loss[0].options == {} and head.metrics[0].options == {}

    def test_threshold_in_the_open_unit_interval(self, tiny_raw):
        _head(tiny_raw, "boundary", metrics=[{"name": "dice", "threshold": 0.3}])
        assert from_dict(tiny_raw).heads["boundary"].metrics[0].options["threshold"] == 0.3

    @pytest.mark.parametrize("head,entry,where,words", [
        ("boundary", {"name": "boundary_f1", "tolerance": 2.0}, "metrics[0].tolerance",
         "expected an integer, got a number"),
        ("boundary", {"name": "boundary_f1", "tolerance": True}, "metrics[0].tolerance",
         "expected an integer, got a boolean"),
        ("shape", {"name": "top_k_accuracy", "k": 2.5}, "metrics[0].k", "expected an integer"),
        ("boundary", {"name": "dice", "multilabel": True}, "metrics[0].multilabel",
         "decided by the head"),
        ("boundary", {"name": "boundary_f1", "outlines": False}, "metrics[0].outlines",
         "decided by the head"),
        ("boundary", {"name": "dice", "threshold": 0}, "metrics[0].threshold", r"\(0, 1\)"),
        ("boundary", {"name": "dice", "threshold": 1}, "metrics[0].threshold", r"\(0, 1\)"),
        ("boundary", {"name": "dice", "threshold": -0.5}, "metrics[0].threshold", r"\(0, 1\)"),
        ("boundary", {"name": "dice", "threshold": True}, "metrics[0].threshold",
         "expected a number, got a boolean"),
        ("mask", {"name": "dice", "threshold": 0.5}, "metrics[0].threshold",
         "one-channel or multilabel"),
        ("boundary", {"name": "dice", "weight": 1}, "metrics[0].weight", "unknown option"),
    ], ids=lambda v: str(v) if not isinstance(v, dict) else "-".join(map(str, v.values())))
    def test_metric_option_refused(self, tiny_raw, head, entry, where, words):
        _head(tiny_raw, head, metrics=[entry])
        with pytest.raises(RecipeError, match=words) as info:
            from_dict(tiny_raw)
        assert info.value.path == f"heads.{head}.{where}"

    def test_loss_option_bool_is_not_a_number(self, tiny_raw):
        _head(tiny_raw, "boundary", loss={"name": "tversky", "alpha": True})
        with pytest.raises(RecipeError, match="expected a number, got a boolean") as info:
            from_dict(tiny_raw)
        assert info.value.path == "heads.boundary.loss.alpha"


class TestMultilabel:
    """A presence target (multi-hot) makes its head multilabel: the head decides, like
    from_logits, and its losses and metrics follow; a recipe never writes it."""

    PRESENCE = {"derive": "label", "from": "mask", "mode": "presence"}

    def test_presence_head_is_multilabel(self, tiny_raw):
        from multiseg.models.build import head_losses, head_metrics, loss_terms

        _head(tiny_raw, "shape", target=self.PRESENCE,
              loss=[{"name": "crossentropy"}, {"name": "dice"}],
              metrics=["accuracy", {"name": "precision", "threshold": 0.7}])
        recipe = from_dict(tiny_raw)
        assert recipe.heads["shape"].multilabel
        assert not recipe.heads["mask"].multilabel and not recipe.heads["boundary"].multilabel
        losses = head_losses(recipe)
        assert [loss.multilabel for _, _, loss in loss_terms(losses["shape"])] == [True, True]
        assert not any(loss.multilabel for _, _, loss in loss_terms(losses["mask"]))
        shape = head_metrics(recipe, losses)["shape"]
        assert [m.multilabel for m in shape if hasattr(m, "multilabel")] == [True, True]
        # Decided, not written: the resolved recipe has no multilabel and reloads equal.
        assert "multilabel" not in dump(recipe)
        assert from_dict(yaml.safe_load(dump(recipe))) == recipe

    @pytest.mark.parametrize("source,target", [
        ("shapes", "label"),
        ("shapes", {"derive": "label", "from": "mask"}),  # dominant: one class per image
        ("cells", {"derive": "label", "from": "mask", "mode": "presence"}),  # binary mask
    ], ids=["source-label", "dominant", "presence-of-a-binary-mask"])
    def test_one_class_per_image_is_not_multilabel(self, tiny_raw, source, target):
        tiny_raw["data"]["source"] = source
        tiny_raw["heads"] = {"label": {"kind": "classification", "target": target}}
        assert not from_dict(tiny_raw).heads["label"].multilabel

    @pytest.mark.parametrize("change,where", [
        ({"loss": {"name": "crossentropy", "multilabel": True}}, "heads.shape.loss.multilabel"),
        ({"loss": [{"name": "crossentropy", "multilabel": False}]},
         "heads.shape.loss[0].multilabel"),
        ({"metrics": [{"name": "accuracy", "multilabel": True}]},
         "heads.shape.metrics[0].multilabel"),
        ({"multilabel": True}, "heads.shape.multilabel"),
    ], ids=["loss", "loss-false", "metric", "head"])
    @pytest.mark.parametrize("presence", [True, False], ids=["presence", "label"])
    def test_written_multilabel_refused(self, tiny_raw, change, where, presence):
        _head(tiny_raw, "shape", **change, **({"target": self.PRESENCE} if presence else {}))
        with pytest.raises(RecipeError, match="decided by the head") as info:
            from_dict(tiny_raw)
        assert info.value.path == where
        assert "presence" in info.value.message and "remove it" in info.value.message

    def test_top_k_on_a_presence_head_refused(self, tiny_raw):
        _head(tiny_raw, "shape", target=self.PRESENCE,
              metrics=[{"name": "top_k_accuracy", "k": 2}])
        with pytest.raises(RecipeError, match="one class per image") as info:
            from_dict(tiny_raw)
        assert info.value.path == "heads.shape.metrics[0]"

    def test_multilabel_options_fit_a_presence_head(self, tiny_raw):
        # Per-channel sigmoid options, refused on a softmax head, fit a presence head.
        _head(tiny_raw, "shape", target=self.PRESENCE,
              loss=[{"name": "weighted_crossentropy"}, {"name": "focal", "alpha": 0.25}],
              metrics=[{"name": "dice", "threshold": 0.4}])
        from_dict(tiny_raw)
        _head(tiny_raw, "shape", target="label")
        with pytest.raises(RecipeError, match="softmax") as info:
            from_dict(tiny_raw)
        assert info.value.path == "heads.shape.loss[0].name"
        assert "presence" in info.value.message


class TestMistakeOrder:
    """A misspelled key is reported before the errors that its absence would cause."""

    @pytest.mark.parametrize("path,value,where,words", [
        # Without its `mode`, the label is dominant, and `bins` would be the error.
        ("heads.shape.target", {"derive": "label", "from": "mask", "mdoe": "coverage",
                                "bins": [0.5]}, "heads.shape.target.mdoe", "did you mean 'mode'"),
        # Without `from`, the target reads `mask`, and the count mode would be the error.
        ("heads.shape.target", {"derive": "label", "form": "mask", "mode": "count",
                                "bins": [3]}, "heads.shape.target.form", "did you mean 'from'"),
        # An unknown option comes before a bad value of a known one.
        ("heads.mask.loss", [{"name": "dice", "squared": 1, "smoth": 1}],
         "heads.mask.loss[0].smoth", "did you mean 'smooth'"),
        ("data.augment", {"rotate90": True, "fl1p": "yes"}, "data.augment.fl1p",
         "did you mean 'flip'"),
        ("train", {"epochs": 0, "bach_size": 4}, "train.bach_size", "did you mean 'batch_size'"),
        ("train.optimizer", {"name": "adam", "momentum": 0.9, "clipnrom": 1},
         "train.optimizer.clipnrom", "did you mean 'clipnorm'"),
        ("model", {"filters": [], "nrom": "batch"}, "model.nrom", "did you mean 'norm'"),
        ("heads.mask", {"kind": "segmentation", "target": "mask", "classes": 3,
                        "clases": 4}, "heads.mask.clases", "did you mean 'classes'"),
    ])
    def test_unknown_key_first(self, tiny_raw, path, value, where, words):
        raw = _mutate(tiny_raw, path, value)
        with pytest.raises(RecipeError, match=words) as info:
            from_dict(raw)
        assert info.value.path == where

    def test_patches_misspelled_with_split_tiles(self):
        with open(next(p for p in RECIPES if p.endswith("nuclei.yaml")), encoding="utf-8") as f:
            raw = yaml.safe_load(f)
        raw["data"]["ptaches"] = raw["data"].pop("patches")
        with pytest.raises(RecipeError, match="did you mean 'patches'") as info:
            from_dict(raw)
        assert info.value.path == "data.ptaches"


class TestLimits:
    def test_bins_up_to_4096_classes(self, tiny_raw):
        bins = [(i + 1) / 4096 for i in range(4095)]  # 4096 classes: the most a head takes
        _head(tiny_raw, "shape", classes=None,
              target={"derive": "label", "from": "mask", "mode": "coverage", "bins": bins})
        assert from_dict(tiny_raw).heads["shape"].classes == 4096
        tiny_raw["heads"]["shape"]["target"]["bins"] = [(i + 1) / 4097 for i in range(4096)]
        with pytest.raises(RecipeError, match="4097 classes; a head has at most 4096") as info:
            from_dict(tiny_raw)
        assert info.value.path == "heads.shape.target.bins"

    @pytest.mark.parametrize("options,where,words", [
        ({"dense_above": -1}, "dense_above", r"\[0, 200\]"),
        ({"dense_above": 201}, "dense_above", r"\[0, 200\]"),
        ({"dense_above": 10**400}, "dense_above", r"\[0, 200\]"),
        ({"min_cells": 201, "max_cells": 200}, "min_cells", r"\[0, 200\]"),
        ({"min_cells": 5, "max_cells": 4}, "max_cells", r"min_cells \(5\)"),
    ])
    def test_cells_counts(self, tiny_raw, options, where, words):
        tiny_raw["data"]["source"] = {"kind": "cells", **options}
        tiny_raw["heads"] = {"cell": {"kind": "segmentation", "target": "mask"}}
        with pytest.raises(RecipeError, match=words) as info:
            from_dict(tiny_raw)
        assert info.value.path == f"data.source.{where}"

    def test_cells_dense_above_limits_accepted(self, tiny_raw):
        tiny_raw["heads"] = {"cell": {"kind": "segmentation", "target": "mask"}}
        for value in (0, 200):
            tiny_raw["data"]["source"] = {"kind": "cells", "dense_above": value}
            assert from_dict(tiny_raw).data.source.options["dense_above"] == value

    @pytest.mark.parametrize("name,ok", [
        ("m" * 64, True), ("m" * 65, False), ("mask_2", True), ("_mask", True),
        ("m\u00e1scara", False), ("val", False), ("val_mask", False), ("valve", True),
        ("total", False), ("learning", False), ("optimizer", False), ("trunk2", False),
    ])
    def test_head_names(self, tiny_raw, name, ok):
        tiny_raw["heads"] = {name: tiny_raw["heads"]["mask"]}
        if ok:
            assert list(from_dict(tiny_raw).heads) == [name]
            return
        with pytest.raises(RecipeError, match="ASCII|at most 64|reserved") as info:
            from_dict(tiny_raw)
        assert info.value.path == f"heads.{name}"

    def test_momentum_only_for_sgd_and_rmsprop(self, tiny_raw):
        for name in ("sgd", "rmsprop"):
            tiny_raw["train"]["optimizer"] = {"name": name, "momentum": 0.9}
            assert from_dict(tiny_raw).train.optimizer.momentum == 0.9
        for name in ("adam", "adamw"):
            tiny_raw["train"]["optimizer"] = {"name": name, "momentum": 0.9}
            with pytest.raises(RecipeError, match="sgd and rmsprop"):
                from_dict(tiny_raw)

    @pytest.mark.parametrize("activation,words", [
        ("glu", "changes the shape"), ("threshold", "arguments"), ("Relu", "did you mean 'relu'"),
        ("get", "unknown activation"),
    ])
    def test_activation(self, tiny_raw, activation, words):
        tiny_raw["model"]["activation"] = activation
        with pytest.raises(RecipeError, match=words):
            from_dict(tiny_raw)


class TestOutput:
    """``load`` refuses a run directory that cannot be made; ``from_dict`` checks the text."""

    def _load(self, raw, tmp_path):
        path = tmp_path / "recipe.yaml"
        path.write_text(yaml.safe_dump(raw))
        return load(path)

    def test_existing_file_refused(self, tiny_raw, tmp_path):
        taken = tmp_path / "taken"
        taken.write_text("")
        for output, words in ((taken, "existing file"), (taken / "run", "which is a file")):
            tiny_raw["output"] = str(output)
            with pytest.raises(RecipeError, match=words) as info:
                self._load(tiny_raw, tmp_path)
            assert info.value.path == "output"
            assert from_dict(tiny_raw).output == str(output)  # the disk is load's concern

    def test_new_and_existing_directories_accepted(self, tiny_raw, tmp_path):
        for output in (tmp_path, tmp_path / "a" / "b"):
            tiny_raw["output"] = str(output)
            assert self._load(tiny_raw, tmp_path).output == str(output)

    @pytest.mark.parametrize("output,words", [
        ("  ", "non-empty"), ("runs/a\x00b", "control characters"),
        ("runs/" + "r" * 256, "255 bytes")])
    def test_bad_text(self, tiny_raw, output, words):
        tiny_raw["output"] = output
        with pytest.raises(RecipeError, match=words) as info:
            from_dict(tiny_raw)
        assert info.value.path == "output"

    @pytest.mark.parametrize("output,words", [
        ("", "non-empty"), ("runs/a\x00b", "control characters"), ("x" * 5000, "4096")])
    def test_bad_paths(self, output, words):
        with pytest.raises(RecipeError, match=words) as info:
            check_output(output, where="--output")
        assert info.value.path == "--output"

    @pytest.mark.parametrize("name,words", [
        ("..", "other than"), (".", "other than"), ("a\nb", "control"), ("a\x00b", "control")])
    def test_run_name(self, tiny_raw, name, words):
        tiny_raw["name"] = name
        with pytest.raises(RecipeError, match=words):
            from_dict(tiny_raw)


class TestMessages:
    def test_long_key_is_quoted_short(self, tiny_raw):
        tiny_raw["train"]["x" * 10_000] = 1
        with pytest.raises(RecipeError, match="unknown key") as info:
            from_dict(tiny_raw)
        assert info.value.path.startswith("train.'xxx") and "..." in info.value.path
        assert len(str(info.value)) < 600

    def test_source_message_quoting_a_long_path_is_short(self, tiny_raw):
        tiny_raw["data"]["source"] = {"kind": "folder", "path": "/nowhere/" + "p" * 10_000}
        with pytest.raises(RecipeError, match="no such folder") as info:
            from_dict(tiny_raw)
        assert info.value.path == "data.source.path" and len(str(info.value)) < 400

    def test_one_line(self):
        assert "\n" not in str(RecipeError("a.b", "first\nsecond"))

    def test_a_user_error_and_a_value_error(self):
        """Commands choose exit code 2 by type; Python callers catch a ValueError as before."""
        from multiseg.errors import UserError

        error = RecipeError("a.b", "wrong")
        assert isinstance(error, ValueError) and isinstance(error, UserError)
        assert error.exit_code == 2


class TestDocs:
    """docs/recipes.md describes every key the recipe reader accepts."""

    def test_every_key_is_documented(self):
        import dataclasses as dc

        from multiseg import recipe as r
        from multiseg.data.sources import SOURCES

        root = os.path.join(os.path.dirname(__file__), "..", "docs")
        with open(os.path.join(root, "recipes.md"), encoding="utf-8") as handle:
            text = handle.read()
        keys = {f.name for spec in (r.Recipe, r.DataSpec, r.AugmentSpec, r.ModelSpec, r.HeadSpec,
                                    r.OptimizerSpec, r.GradflowSpec, r.TrainSpec)
                for f in dc.fields(spec)} - {"options"}
        keys |= {"derive", "from", "width", "mode", "bins", "every", "weight"}
        keys |= {k for source in SOURCES.values() for k in source.OPTIONS}
        values = {*r.HEAD_KINDS, *r.NORMS, *r.UPSAMPLE_MODES, *r.OPTIMIZERS, *r.WEIGHTINGS,
                  *targets_lib.DERIVATIONS, *targets_lib.BOUNDARY_MODES,
                  *targets_lib.LABEL_MODES, *SOURCES, "whole", "tile",
                  "random", "instances", "cosine", "constant", "stop", "skip",
                  *r.RESERVED_HEAD_NAMES}
        # As `key`, `section.key`, or key: in the example recipe.
        missing = sorted(w for w in keys | values
                         if not any(form in text for form in (f"`{w}", f".{w}`", f"{w}:")))
        assert not missing, f"not in docs/recipes.md: {missing}"

    def test_head_kind_defaults_follow_the_records(self):
        """The table of defaults per head kind says what multiseg.headkinds holds."""
        from multiseg.headkinds import HEAD_KINDS

        root = os.path.join(os.path.dirname(__file__), "..", "docs")
        with open(os.path.join(root, "recipes.md"), encoding="utf-8") as handle:
            text = handle.read()
        section = text.split("## Defaults per head kind", 1)[1].split("\n## ", 1)[0]
        rows = {cells[0]: cells for line in section.splitlines() if line.startswith("| ")
                for cells in [[c.strip() for c in line.strip("|").split("|")]]}
        for kind, record in HEAD_KINDS.items():
            _, _, losses, metrics, attach = rows[kind]
            assert losses == " + ".join(t["name"] for t in record.default_losses), kind
            assert metrics == ", ".join(record.default_metrics), kind
            assert attach == record.default_attach, kind
