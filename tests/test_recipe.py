"""Recipe loading: good recipes resolve, every mistake names its field, overrides work."""

from __future__ import annotations

import copy
import glob
import os

import pytest
import yaml

from multiseg.recipe import (
    Recipe,
    RecipeError,
    apply_override,
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
    ("model.norm", "layer", r"model\.norm", "batch, group, none"),
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

    @pytest.mark.parametrize("text", ["train.epochs", "=3", "heads.mask.loss[x].weight=1"])
    def test_malformed(self, text):
        with pytest.raises(RecipeError, match="--set"):
            parse_override(text)

    def test_index_out_of_range(self, tiny_raw):
        with pytest.raises(RecipeError, match="no such list entry"):
            apply_override(tiny_raw, ["heads", "mask", "loss", 5, "weight"], 1.0)
