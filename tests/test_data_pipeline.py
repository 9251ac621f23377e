"""Sample sets (tiles, random crops, held-out tiles), the input pipeline, the data report, the
built-in nuclei recipe, and the TensorFlow-free path."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from PIL import Image

from multiseg import recipe as recipe_lib
from multiseg.data import DataError, build_data, target_names
from multiseg.data import __main__ as data_cli
from multiseg.data.patches import RandomCrops, Tiles, make_sets, tile_starts
from multiseg.data.samples import Item, Loaded
from multiseg.recipe import from_dict

ROOT = os.path.join(os.path.dirname(__file__), "..")
NUCLEI = os.path.join(ROOT, "recipes", "nuclei.yaml")


def position_item(h, w, name="pos.png"):
    """An item whose two image channels hold each pixel's own (y, x): a crop tells its origin."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ids = (yy // 8 * 100 + xx // 8 + 1).astype(np.int32)  # 8x8 objects, all touching
    return Item(name, np.stack([yy, xx], axis=-1), {"mask": (ids > 0).astype(np.uint8),
                                                     "instances": ids})


class TestTileStarts:
    @pytest.mark.parametrize("length,tile,overlap,expected", [
        (64, 64, 0, [0]),  # exactly one tile
        (50, 64, 0, [0]),  # smaller than a tile (padded elsewhere)
        (128, 64, 0, [0, 64]),
        (100, 64, 0, [0, 36]),  # the last tile is flush with the end
        (128, 64, 16, [0, 32, 64]),  # 3 tiles so neighbours share >= 16 px
        (512, 128, 0, [0, 128, 256, 384]),
    ])
    def test_table(self, length, tile, overlap, expected):
        assert tile_starts(length, tile, overlap) == expected


class TestSampleSets:
    def test_tiles_cover_the_image(self):
        item = position_item(40, 70)
        train, val, _ = make_sets(Loaded([item], [item]), (32, 32), mode="tile", overlap=0,
                                  seed=0)
        assert isinstance(train, Tiles) and len(train) == 2 * 3
        batch = train.take(np.arange(len(train)))
        origins = {(int(b[0, 0, 0]), int(b[0, 0, 1])) for b in batch["image"]}
        assert origins == {(y, x) for y in (0, 8) for x in (0, 19, 38)}

    def test_held_out_tiles_never_overlap_training_crops(self):
        item = position_item(128, 128)
        loaded = Loaded([item], [item], holdout=0.25)
        train, val, notes = make_sets(loaded, (32, 32), mode="random", overlap=0, seed=3)
        assert isinstance(train, RandomCrops) and isinstance(val, Tiles)
        assert len(val) == 4 and "held out 4 of 16 tiles" in notes[0]
        held = [(int(v[0, 0, 0]), int(v[0, 0, 1])) for v in val.take(np.arange(4))["image"]]
        assert all(y % 32 == 0 and x % 32 == 0 for y, x in held)  # whole grid cells
        crops = train.take(np.zeros(400, int), np.random.default_rng(0))["image"]
        origins = {(int(c[0, 0, 0]), int(c[0, 0, 1])) for c in crops}
        assert len(origins) > 300  # really random
        for y, x in origins:
            for hy, hx in held:
                assert y + 32 <= hy or hy + 32 <= y or x + 32 <= hx or hx + 32 <= x
        # The same seed holds out the same tiles; another seed other ones.
        again = make_sets(loaded, (32, 32), mode="random", overlap=0, seed=3)[1]
        other = make_sets(loaded, (32, 32), mode="random", overlap=0, seed=4)[1]
        assert again.regions == val.regions and other.regions != val.regions

    def test_held_out_tile_mode(self):
        item = position_item(64, 96)
        train, val, _ = make_sets(Loaded([item], [item], holdout=0.5), (32, 32), mode="tile",
                                  overlap=0, seed=0)
        assert len(train) == 3 and len(val) == 3
        assert not {r[1:] for r in train.regions} & {r[1:] for r in val.regions}

    def test_too_small_to_hold_out(self):
        item = position_item(40, 40, name="small.png")
        with pytest.raises(DataError, match="small.png: is 40x40: fewer than 2 tiles"):
            make_sets(Loaded([item], [item], holdout=0.2), (32, 32), mode="tile", overlap=0,
                      seed=0)

    def test_small_images_are_padded(self):
        item = position_item(20, 32, name="short.png")
        train, _, notes = make_sets(Loaded([item], [item]), (32, 32), mode="tile", overlap=0,
                                    seed=0)
        batch = train.take(np.array([0]))
        assert batch["image"].shape == (1, 32, 32, 2) and batch["mask"][0, 20:].sum() == 0
        assert "short.png: smaller than data.image_size [32, 32], padded" in " ".join(notes)


def write_nuclei_like(root, count=3, size=48):
    """A folder of grey images with touching blob instances (16-bit instance masks)."""
    rng = np.random.default_rng(0)
    for i in range(count):
        ids = np.zeros((size, size), np.uint16)
        for k in range(1, 9):
            y, x = rng.integers(4, size - 12, size=2)
            ids[y : y + 8, x : x + 8] = k
        image = ((ids > 0) * 150 + rng.integers(0, 30, ids.shape)).astype(np.uint8)
        os.makedirs(root / "images", exist_ok=True)
        os.makedirs(root / "masks", exist_ok=True)
        Image.fromarray(image).save(root / "images" / f"f{i}.png")
        Image.fromarray(ids).save(root / "masks" / f"f{i}.png")


def crops_recipe(root, tmp_path):
    return {
        "name": "crops", "seed": 2,
        "data": {"source": {"kind": "folder", "path": str(root), "mask_format": "instances",
                            "split": "tiles", "val_fraction": 0.25},
                 "image_size": [24, 24], "patches": "random", "train": 20,
                 "augment": {"flip": True, "rotate90": True, "rotate": 10, "noise": 0.05}},
        "model": {"filters": [4, 8]},
        "heads": {
            "mask": {"kind": "segmentation", "target": "mask", "metrics": ["dice"]},
            "contour": {"kind": "boundary",
                        "target": {"derive": "boundary", "from": "instances", "mode": "inner"}},
            "crowded": {"kind": "classification",
                        "target": {"derive": "label", "from": "instances", "mode": "count",
                                   "bins": [3]}},
        },
        "train": {"epochs": 2, "batch_size": 4},
        "output": str(tmp_path / "run"),
    }


class TestPipeline:
    @pytest.fixture
    def data(self, tmp_path):
        write_nuclei_like(tmp_path / "set")
        return build_data(from_dict(crops_recipe(tmp_path / "set", tmp_path)))

    def test_batch_shapes_and_counts(self, data):
        assert len(data.train) == 5  # 20 crops per epoch, batch 4
        images, targets = data.train[0]
        assert images.shape == (4, 24, 24, 1)
        assert targets["mask"].shape == targets["contour"].shape == (4, 24, 24, 1)
        assert targets["crowded"].shape == (4,) and targets["crowded"].dtype == np.int32
        # Targets are derived after augmentation: the contour is the mask's objects' edges.
        assert np.all(targets["contour"] <= targets["mask"])

    def test_batches_depend_only_on_seed_epoch_and_index(self, data, tmp_path):
        again = build_data(from_dict(crops_recipe(tmp_path / "set", tmp_path)))
        again.train.set_epoch(2)
        data.train.set_epoch(1)
        data.train.on_epoch_end()
        for index in (0, 3):
            a, b = data.train[index], again.train[index]
            np.testing.assert_array_equal(a[0], b[0])
            for head in a[1]:
                np.testing.assert_array_equal(a[1][head], b[1][head])
        assert not np.array_equal(data.train.batch(1, 0)[0], data.train.batch(2, 0)[0])

    @pytest.mark.parametrize("pipeline,chunk", [("tf.data", 1), ("tf.data", 2), ("tf.data", 8),
                                                ("threads", None)])
    def test_pipelines_give_the_same_batches(self, data, pipeline, chunk, monkeypatch):
        if chunk is not None:  # steps made per call into Python: 5 steps are 2 + 2 + 1
            from multiseg.data import feeds

            monkeypatch.setattr(feeds, "CHUNK_STEPS", chunk)
        steps = len(data.train)
        start, stop = steps - 2, steps + 3  # across an epoch boundary
        if pipeline == "tf.data":
            dataset = data.train.dataset(start, stop, pipeline=pipeline)
            # Known: Keras's evaluate misreads losses over a dataset of unknown length.
            assert int(dataset.cardinality()) == stop - start
            got = [(x.numpy(), {k: v.numpy() for k, v in y.items()}) for x, y in dataset]
        else:
            got = list(data.train.dataset(start, stop, pipeline=pipeline))
        assert len(got) == stop - start
        for g, (x, y) in zip(range(start, stop), got, strict=True):
            want_x, want_y = data.train.batch(*divmod(g, steps))
            np.testing.assert_array_equal(x, want_x)
            for head in want_y:
                np.testing.assert_array_equal(y[head], want_y[head])
                assert y[head].dtype == want_y[head].dtype

    def test_a_short_last_batch_comes_alone(self):
        from multiseg.data import Batches, HeadTarget

        rng = np.random.default_rng(0)
        samples = {"image": rng.random((10, 8, 8, 1), np.float32),
                   "mask": rng.integers(0, 2, (10, 8, 8)).astype(np.uint8)}
        batches = Batches(samples, [HeadTarget("mask", "mask", None)], batch_size=4,
                          shuffle=False, augment={"flip": True}, seed=0)
        assert batches.varies and not batches.full  # 10 samples: 4, 4, 2
        got = list(batches.dataset(0, 6, pipeline="tf.data"))
        assert [len(x) for x, _ in got] == [4, 4, 2, 4, 4, 2]
        for step, (x, y) in enumerate(got):
            want_x, want_y = batches.global_batch(step)
            np.testing.assert_array_equal(x.numpy(), want_x)
            np.testing.assert_array_equal(y["mask"].numpy(), want_y["mask"])
        shuffled = Batches(samples, [HeadTarget("mask", "mask", None)], batch_size=4,
                           shuffle=True, augment=None, seed=0)
        assert shuffled.full and {len(shuffled.global_batch(s)[0]) for s in range(6)} == {4}

    def test_validation_is_fixed_and_cached(self, data):
        assert not data.val.varies
        first = [x.numpy() for x, _ in data.val.dataset(pipeline="tf.data")]
        data.val.set_epoch(5)
        np.testing.assert_array_equal(np.concatenate(first), np.concatenate(
            [data.val[i][0] for i in range(len(data.val))]))

    # tf.data is the TensorFlow backend's pipeline; elsewhere fit's first-batch look restarts
    # it after prefetching, so a few batches are made twice (correct, but not once each).
    @pytest.mark.parametrize("pipeline", ["tf.data", "threads"]
                             if keras.backend.backend() == "tensorflow" else ["threads"])
    def test_fit_consumes_global_steps_in_order(self, data, tmp_path, pipeline):
        from multiseg.models.build import build_model, compile_model

        recipe = from_dict(crops_recipe(tmp_path / "set", tmp_path))
        seen = []
        make = data.train.global_batch
        data.train.global_batch = lambda step: (seen.append(int(step)), make(step))[1]
        model = build_model(recipe, channels=data.channels)
        compile_model(model, recipe)
        steps = len(data.train)
        history = model.fit(data.train.dataset(steps, 3 * steps, pipeline=pipeline),
                            steps_per_epoch=steps, epochs=3, initial_epoch=1,
                            validation_data=data.val.dataset(pipeline=pipeline),
                            shuffle=False, verbose=0)
        assert sorted(seen) == list(range(steps, 3 * steps))  # each batch made exactly once
        assert np.isfinite(history.history["val_mask_dice"]).all()


class TestReport:
    def test_frequencies(self, tmp_path):
        write_nuclei_like(tmp_path / "set")
        raw = crops_recipe(tmp_path / "set", tmp_path)
        data = build_data(from_dict(raw))
        freq = {f.head: f for f in data.report.frequencies}
        assert freq["mask"].names == ("background", "object")
        assert freq["crowded"].names == ("<3", ">=3")
        # Random crops: as many as an epoch draws (20), from the 3 training images.
        assert (freq["crowded"].samples, freq["crowded"].total, freq["crowded"].crops) == \
            (20, 3, True)
        assert "in 20 random crops of the 3 training images:" in data.report.text()
        assert not data.report.warnings
        # Fixed tiles: the shares of every training tile, counted here from the items.
        raw["data"]["patches"] = "tile"
        data = build_data(from_dict(raw))
        tiles = data.train.samples
        h, w = tiles.size
        windows = [tiles.items[k].masks["instances"][y : y + h, x : x + w]
                   for k, y, x in tiles.regions]
        foreground = np.mean([window > 0 for window in windows])
        crowded = np.mean([len(np.unique(window[window > 0])) >= 3 for window in windows])
        assert 0 < foreground < 1 and 0 < crowded < 1  # both classes occur: shares can differ
        freq = {f.head: f for f in data.report.frequencies}
        assert (freq["mask"].samples, freq["mask"].total) == (len(windows), len(windows))
        np.testing.assert_allclose(freq["mask"].fractions, [1 - foreground, foreground],
                                   rtol=1e-9)
        np.testing.assert_allclose(freq["crowded"].fractions, [1 - crowded, crowded],
                                   rtol=1e-9)

    def test_rare_classes_warn_with_the_options_that_help(self, tmp_path, caplog):
        root = tmp_path / "rare"
        for i in range(4):
            mask = np.zeros((48, 48), np.uint8)
            mask[10 + i : 12 + i, 20:22] = 255  # 4 of 2304 pixels: 0.17%
            for sub, array in (("images", mask // 2), ("masks", mask)):
                os.makedirs(root / sub, exist_ok=True)
                Image.fromarray(array).save(root / sub / f"r{i}.png")
        raw = crops_recipe(root, tmp_path)
        raw["data"] = {"source": {"kind": "folder", "path": str(root)}, "image_size": [48, 48]}
        raw["heads"] = {"mask": {"kind": "segmentation", "target": "mask"},
                        "edge": {"kind": "boundary", "target": {"derive": "boundary"}}}
        with caplog.at_level("WARNING", logger="multiseg.data"):
            data = build_data(from_dict(raw))
        mask, edge = data.report.warnings
        assert mask.startswith("heads.mask.target: class 'foreground' is 0.17% of the pixels")
        assert "Dice-type loss" in mask and "class_weights" in mask
        assert edge.startswith("heads.edge.target: class 'boundary'")
        assert "thicker target" in edge and "Tversky" in edge
        assert [r.message for r in caplog.records if r.levelname == "WARNING"] == [mask, edge]

    def test_presence_is_multi_hot(self, tiny_raw):
        # The head is multilabel because of its target; the recipe says nothing of it.
        tiny_raw["heads"]["shape"]["target"] = {"derive": "label", "mode": "presence"}
        data = build_data(from_dict(tiny_raw))
        _, targets = data.train[0]
        masks = targets["mask"][..., 0]
        expected = np.stack([(masks == c).any(axis=(1, 2)) for c in (1, 2, 3)], axis=1)
        np.testing.assert_array_equal(targets["shape"], expected)
        shares = {f.head: f for f in data.report.frequencies}["shape"]
        assert shares.names == ("circle", "square", "triangle")

    def test_target_names(self, tiny_recipe):
        from multiseg.data import head_targets
        from multiseg.data.sources import source_targets

        infos = source_targets("shapes", {})
        names = {t.head: target_names(t, infos) for t in head_targets(tiny_recipe)}
        assert names == {"mask": ("background", "circle", "square", "triangle"),
                         "boundary": ("background", "boundary"),
                         "shape": ("circle", "square", "triangle")}

    def test_cli_reports_and_fails_with_the_file(self, tmp_path, capsys):
        write_nuclei_like(tmp_path / "set")
        path = tmp_path / "r.yaml"
        path.write_text(json.dumps(crops_recipe(tmp_path / "set", tmp_path)))
        assert data_cli.main([str(path)]) == 0
        assert "20 train / 3 val samples of 24 x 24 (height x width), 1 channel" in \
            capsys.readouterr().out
        (tmp_path / "set" / "masks" / "f1.png").write_bytes(b"broken")
        assert data_cli.main([str(path)]) == 2
        assert "error: " in (err := capsys.readouterr().err) and "masks/f1.png" in err


class TestNucleiRecipe:
    def test_builtin_data_loads(self):
        recipe = recipe_lib.load(NUCLEI)
        data = build_data(recipe)
        assert data.channels == 1 and data.report.images == (1, 1)
        assert len(data.val.samples) == 4  # a quarter of the 16 tiles of 128 x 128
        item = data.train.samples.items[0]
        assert item.size == (512, 512)
        assert len(np.unique(item.masks["instances"])) == 126  # 125 nuclei and background

    def test_reduced_run_trains(self, tmp_path):
        from multiseg.train import train

        raw = recipe_lib.load_raw(NUCLEI)
        raw = copy.deepcopy(raw)
        raw["data"]["image_size"] = [32, 32]
        raw["data"]["train"] = 8
        raw["model"]["filters"] = [4, 8]
        raw["heads"]["contour"]["branch"] = [4]
        raw["heads"]["density"]["branch"] = [4]
        raw["heads"]["density"]["target"]["bins"] = [2]
        raw["train"].update({"epochs": 1, "batch_size": 4, "steps_per_epoch": 2})
        raw["output"] = str(tmp_path / "nuclei")
        result = train(from_dict(raw), verbose=0)
        val = result.metrics["val"]
        assert set(val) >= {"nucleus", "contour", "density", "total"}
        assert 0 <= val["nucleus"]["dice"] <= 1 and 0 <= val["nucleus"]["boundary_f1"] <= 1
        assert np.isfinite(val["total"]["loss"])


def test_without_tensorflow(tmp_path):
    """On JAX with TensorFlow unimportable, the same recipe gives the same batches."""
    backend = keras.backend.backend()
    write_nuclei_like(tmp_path / "set")
    raw = crops_recipe(tmp_path / "set", tmp_path)
    (tmp_path / "r.json").write_text(json.dumps(raw))
    data = build_data(from_dict(raw))
    want = [float(data.train.global_batch(g)[0].sum()) for g in range(7)]
    script = textwrap.dedent(f"""
        import json, sys
        sys.modules["tensorflow"] = None  # any import of TensorFlow now fails
        import keras
        import types
        from multiseg.data import StepRange, build_data
        from multiseg.recipe import from_dict
        data = build_data(from_dict(json.load(open({str(tmp_path / 'r.json')!r}))))
        ds = data.train.dataset(0, 7)
        assert isinstance(ds, types.GeneratorType), ds
        assert isinstance(data.val.dataset(), StepRange) and data.val.dataset().workers == 2
        print(json.dumps([keras.backend.backend()] + [float(x.sum()) for x, _ in ds]))
    """)
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=env, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got[0] == "jax"
    np.testing.assert_allclose(got[1:], want, rtol=1e-6)
    assert keras.backend.backend() == backend  # this process is unaffected
