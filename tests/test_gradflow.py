"""Gradient-flow reports (multiseg.gradflow): the JSON schema, the text table, the charts, the
tools/gradflow command and the TensorBoard logger used during training."""

from __future__ import annotations

import copy
import importlib.machinery
import importlib.util
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from multiseg.callbacks import GradflowLogger
from multiseg.gradflow import (
    FORMATS,
    format_table,
    parse_formats,
    recipe_report,
    write_report,
)
from multiseg.gradients import SHARED, GradientProbe, summarise
from multiseg.recipe import from_dict, load

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(REPO, "tools", "gradflow")
# The default recipe made tiny: same heads, attach points and losses, seconds to run.
TINY_OVERRIDES = ["data.image_size=[32, 32]", "model.filters=[4, 8]", "data.train=16",
                  "data.val=8", "train.batch_size=8", "heads.mask.branch=[4]",
                  "heads.boundary.branch=[4]", "heads.shape.branch=[4]"]


def _tool():
    """tools/gradflow imported as a module (it has no .py suffix), to call main() in-process."""
    loader = importlib.machinery.SourceFileLoader("gradflow_tool", TOOL)
    spec = importlib.util.spec_from_loader("gradflow_tool", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def report():
    recipe = load(os.path.join(REPO, "recipes", "shapes.yaml"), TINY_OVERRIDES)
    return recipe_report(recipe, batches=2)


def _finite_or_none(value) -> bool:
    return value is None or (isinstance(value, float) and math.isfinite(value))


class TestReportSchema:
    def test_required_fields(self, report):
        heads = report["heads"]
        assert heads == ["mask", "boundary", "shape"]
        assert isinstance(report["layers"], list) and report["layers"]
        for entry in report["layers"]:
            assert isinstance(entry["name"], str)
            assert entry["owner"] in (SHARED, *heads)
            assert set(entry["grad_norm"]) == set(heads)
            assert all(isinstance(v, float) and v >= 0 for v in entry["grad_norm"].values())
        assert set(report["cosine"]) == {"mask|boundary", "mask|shape", "boundary|shape"}
        assert all(_finite_or_none(v) for v in report["cosine"].values())

    def test_every_documented_field(self, report):
        heads = report["heads"]
        top = {"format", "recipe", "backend", "mode", "step", "heads", "loss_weights",
               "grad_scale", "loss", "batches", "samples", "optimizer", "learning_rate",
               "layers", "trunk", "branch", "attach", "last_shared", "cosine", "cosine_common",
               "conflicts", "reach", "graph"}
        assert set(report) == top
        assert report["format"] == "multiseg.gradflow/1" and report["mode"] == "weighted"
        assert report["batches"] == 2 and report["samples"] == 16
        per_layer = {"name", "class", "owner", "named_owner", "on_path", "reach", "params",
                     "weight_norm", "grad_norm", "grad_mean_abs", "grad_max_abs",
                     "grad_norm_raw", "grad_norm_weighted", "grad_norm_total", "update_ratio",
                     "update_ratio_total", "adam_step_ratio", "adam_step_ratio_total", "cosine"}
        for entry in report["layers"]:
            assert set(entry) == per_layer, entry["name"]
            for key in ("grad_mean_abs", "grad_max_abs", "grad_norm_raw", "grad_norm_weighted",
                        "update_ratio", "adam_step_ratio"):
                assert set(entry[key]) == set(heads)
            assert set(entry["reach"]) <= set(entry["on_path"])
            assert entry["params"] > 0
            if entry["owner"] == SHARED:
                assert set(entry["cosine"]) == set(report["cosine"])
            else:
                assert entry["cosine"] == {}
        assert set(report["loss"]["mask"]) == {"raw", "weighted"}
        assert set(report["attach"]["shape"]) == {"layer", "grad_norm"}
        assert report["reach"]["mask"][0] == report["layers"][0]["name"]
        names = {e["name"] for e in report["layers"]}
        assert set(report["reach"]["shape"]) <= names
        assert {n["name"] for n in report["graph"]["nodes"]} >= names
        assert all(len(edge) == 2 for edge in report["graph"]["edges"])

    def test_plain_json_round_trip(self, report, tmp_path):
        # No NaN or infinity anywhere: undefined values are null.
        text = json.dumps(report, allow_nan=False)
        assert json.loads(text) == report
        write_report(report, tmp_path, ["json"])
        assert json.loads((tmp_path / "gradflow.json").read_text()) == report

    def test_layers_in_forward_order(self, report):
        order = [e["name"] for e in report["layers"]]
        assert order[0] == "trunk-enc0-conv0"
        position = {name: i for i, name in enumerate(order)}
        for a, b in report["graph"]["edges"]:
            if a in position and b in position:
                assert position[a] < position[b]


class TestText:
    def test_table(self, report):
        text = format_table(report)
        for entry in report["layers"]:
            assert entry["name"] in text
        line = next(x for x in text.splitlines() if x.startswith("mask-logits "))
        # mask's own output layer: the other heads' gradient is printed as an exact 0.
        assert line.split()[-3:-1] == ["0", "0"]
        assert "mask|boundary" in text and "attach layers:" in text

    def test_conflict_is_named(self, report):
        conflicted = copy.deepcopy(report)
        conflicted["cosine"]["mask|shape"] = -0.42
        conflicted["layers"][0]["cosine"]["mask|shape"] = -0.9
        text = format_table(conflicted)
        line = next(x for x in text.splitlines() if x.strip().startswith("mask|shape "))
        assert "-0.420" in line and "CONFLICT" in line
        assert f"most at {report['layers'][0]['name']}" in text

    @pytest.mark.parametrize("cosine, verdict", [
        (-0.42, "CONFLICT"), (-0.1, "CONFLICT"), (-0.014, "unrelated"), (0.0, "unrelated"),
        (0.099, "unrelated"), (0.1, "agree"), (0.6, "agree")])
    def test_cosine_verdicts(self, report, cosine, verdict):
        changed = copy.deepcopy(report)
        changed["cosine"]["mask|shape"] = cosine
        line = next(x for x in format_table(changed).splitlines()
                    if x.strip().startswith("mask|shape "))
        assert verdict in line
        assert ("CONFLICT" in line) == (verdict == "CONFLICT")


class TestFiles:
    def test_all_formats(self, report, tmp_path):
        written = write_report(report, tmp_path / "out", FORMATS)
        names = sorted(os.path.basename(p) for p in written)
        assert names == sorted(["gradflow.json", "gradflow.txt"] + [
            f"gradflow_{f}.{ext}" for f in ("norms", "network", "conflict")
            for ext in ("png", "svg")])
        for path in written:
            data = open(path, "rb").read()
            if path.endswith(".png"):
                assert data.startswith(b"\x89PNG")
            if path.endswith(".svg"):
                assert b"<svg" in data[:2000]

    def test_formats_parsed(self):
        assert parse_formats("png, json") == ("png", "json")
        with pytest.raises(ValueError, match="unknown output format pdf"):
            parse_formats("png,pdf")


class TestTool:
    def test_without_the_environment_says_how_to_run_it(self, tmp_path):
        """Run by a python3 that lacks Keras: exit 2 and what to do, not a traceback."""
        script = ("import runpy, sys; sys.modules['keras'] = None;"
                  f" sys.argv = [{TOOL!r}, 'recipes/shapes.yaml', '--out', {str(tmp_path)!r}];"
                  f" runpy.run_path({TOOL!r}, run_name='__main__')")
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              cwd=REPO, timeout=60)
        assert proc.returncode == 2, proc.stderr
        assert "has no module 'keras'" in proc.stderr and ".venv/bin/activate" in proc.stderr
        assert "Traceback" not in proc.stderr

    def test_runs_end_to_end_as_a_script(self, tmp_path):
        assert os.access(TOOL, os.X_OK)
        assert open(TOOL).readline().strip() == "#!/usr/bin/env python3"
        out = tmp_path / "gf"
        sets = [arg for o in TINY_OVERRIDES for arg in ("--set", o)]
        # The shebang finds the python3 of the environment the suite runs in, activated or not.
        path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
        proc = subprocess.run([TOOL, "recipes/shapes.yaml", "--out", str(out), *sets],
                              capture_output=True, text=True, cwd=REPO, timeout=300,
                              env={**os.environ, "PATH": path})
        assert proc.returncode == 0, proc.stderr
        assert "trunk-enc0-conv0" in proc.stdout and "cosine" in proc.stdout
        files = sorted(os.listdir(out))
        assert files == sorted(["gradflow.json", "gradflow.txt", "gradflow_norms.png",
                                "gradflow_norms.svg", "gradflow_network.png",
                                "gradflow_network.svg", "gradflow_conflict.png",
                                "gradflow_conflict.svg"])
        data = json.loads((out / "gradflow.json").read_text())
        assert data["recipe"] == "shapes-multitask" and data["heads"] == ["mask", "boundary",
                                                                          "shape"]

    def test_recipe_error_exits_2(self, capsys):
        code = _tool().main([os.path.join(REPO, "recipes", "shapes.yaml"), "--out", "unused",
                             "--set", "heads.mask.loss_weight=-1"])
        err = capsys.readouterr().err
        assert code == 2
        assert err.startswith("error: heads.mask.loss_weight: must be >= 0")
        assert "Traceback" not in err

    @pytest.mark.parametrize("args, message", [
        (["--format", "png,gif"], "unknown output format gif"),
        (["--batches", "99"], "--batches 99: the training set has only 2 batches"),
        (["--run", "no/such/run"], "--run no/such/run: no such directory"),
    ])
    def test_usage_errors_exit_2(self, args, message, tmp_path, capsys):
        sets = [arg for o in TINY_OVERRIDES for arg in ("--set", o)]
        code = _tool().main([os.path.join(REPO, "recipes", "shapes.yaml"), "--out",
                             str(tmp_path), *sets, *args])
        assert code == 2
        assert message in capsys.readouterr().err

    def test_grad_scale_zero_shows_in_the_outputs(self, tmp_path, capsys):
        sets = [arg for o in TINY_OVERRIDES for arg in ("--set", o)]
        code = _tool().main([os.path.join(REPO, "recipes", "shapes.yaml"), "--out",
                             str(tmp_path), "--format", "json,txt", "--raw", *sets,
                             "--set", "heads.boundary.grad_scale=0"])
        assert code == 0
        out = capsys.readouterr().out
        assert "boundary (w 0.5, grad_scale 0)" in out
        assert "mask|boundary" in out and "undefined: one head sends no gradient" in out
        data = json.loads((tmp_path / "gradflow.json").read_text())
        assert data["mode"] == "raw" and data["grad_scale"]["boundary"] == 0.0
        assert data["trunk"]["grad_norm"]["boundary"] == 0.0
        assert data["branch"]["boundary"]["grad_norm"] > 0
        assert all(data["layers"][i]["grad_norm"]["boundary"] == 0.0
                   for i, e in enumerate(data["layers"]) if e["owner"] == SHARED)

    def test_trained_run(self, trained_tiny, tmp_path, capsys):
        # --run alone: the run's recipe and its trained weights.
        code = _tool().main(["--run", trained_tiny.run_dir, "--out", str(tmp_path),
                             "--format", "json"])
        assert code == 0, capsys.readouterr().err
        data = json.loads((tmp_path / "gradflow.json").read_text())
        trained = {w.path.split("/")[0]: 0.0 for w in trained_tiny.model.trainable_variables}
        for w in trained_tiny.model.trainable_variables:
            trained[w.path.split("/")[0]] += float(np.sum(np.square(np.asarray(w))))
        for entry in data["layers"]:
            assert entry["weight_norm"] == pytest.approx(math.sqrt(trained[entry["name"]]),
                                                         rel=1e-5)


def _events(logdir: str) -> EventAccumulator:
    acc = EventAccumulator(logdir, size_guidance={"tensors": 0, "images": 0,
                                                  "histograms": 0})
    acc.Reload()
    return acc


class TestGradflowLogger:
    def test_training_writes_tensorboard(self, tiny_raw):
        # Through train(): train.gradflow.every turns the logger on (multiseg.train wires it).
        from multiseg.train import train

        raw = copy.deepcopy(tiny_raw)
        raw["train"]["gradflow"] = {"every": 1}  # 16 samples / batch 8: steps 1 and 2
        result = train(from_dict(raw), verbose=0)
        logdir = os.path.join(result.run_dir, "logs", "gradflow")
        acc = _events(logdir)
        tensors = acc.Tags()["tensors"]
        for head in ("mask", "boundary", "shape"):
            for tag in (f"attach_norm/{head}", f"trunk_norm/{head}", f"branch_norm/{head}",
                        f"loss/{head}"):
                assert tag in tensors, tag
                assert [e.step for e in acc.Tensors(tag)] == [1, 2]
        for pair in ("mask|boundary", "mask|shape", "boundary|shape"):
            assert f"cosine/{pair}" in tensors
        value = float(acc.Tensors("cosine/mask|boundary")[0].tensor_proto.float_val[0])
        lines = open(os.path.join(logdir, "gradflow.jsonl")).read().splitlines()
        # The logged value is step 1's measured cosine (stored as float32).
        measured = json.loads(lines[0])["cosine"]["mask|boundary"]
        assert measured is not None and value == pytest.approx(measured, rel=1e-6, abs=1e-7)
        # Histograms written with the TF-free writer are tensors of the histograms plugin.
        assert "grad_mask/trunk-enc0-conv0" in tensors and "grad_shape/shape" in tensors
        assert "grad_shape/trunk-dec0-conv0" not in tensors  # not reached: nothing to show
        histogram = acc.Tensors("grad_mask/mask-logits")[0].tensor_proto
        assert [d.size for d in histogram.tensor_shape.dim][1] == 3  # (buckets, [lo, hi, n])
        assert "table" in tensors
        assert acc.Tags()["images"] == ["charts/grad_norm"]
        assert acc.Images("charts/grad_norm")[0].encoded_image_string.startswith(b"\x89PNG")
        assert [json.loads(x)["step"] for x in lines] == [1, 2]

    def test_snapshot_steps_and_resume_offset(self, tiny_recipe, tmp_path):
        from multiseg.models.build import build_model, compile_model, head_losses

        model = build_model(tiny_recipe, channels=3)
        compile_model(model, tiny_recipe)
        rng = np.random.default_rng(0)
        x = rng.normal(size=(8, 32, 32, 3)).astype(np.float32)
        y = {"mask": rng.integers(0, 4, (8, 32, 32, 1)).astype(np.float32),
             "boundary": (rng.random((8, 32, 32, 1)) < 0.2).astype(np.float32),
             "shape": rng.integers(0, 3, (8,)).astype(np.int32)}
        logger = GradflowLogger(losses=head_losses(tiny_recipe),
                                loss_weights={h: s.loss_weight
                                              for h, s in tiny_recipe.heads.items()},
                                batch=(x[:4], {h: v[:4] for h, v in y.items()}), every=3,
                                logdir=str(tmp_path), histograms=False, image=False)
        model.fit(x, y, batch_size=2, epochs=2, verbose=0, callbacks=[logger])  # 8 steps
        assert [r["step"] for r in logger.reports] == [3, 6]
        # A second fit continues from the optimizer's step count, as a resumed run does.
        model.fit(x, y, batch_size=2, epochs=1, verbose=0, callbacks=[logger])  # steps 9-12
        assert [r["step"] for r in logger.reports] == [3, 6, 9, 12]
        assert logger.seconds > 0
        # The last snapshot came after the last update: it saw the live weights (on JAX they
        # live in the trainer's state during fit), the same as a fresh probe sees now.
        fresh = summarise(GradientProbe(model, logger.losses, logger.loss_weights).gradients(
            *logger.batch), learning_rate=0.01)
        assert logger.last_report["trunk"]["grad_norm"] == pytest.approx(
            fresh["trunk"]["grad_norm"], rel=1e-6)
        assert logger.reports[0]["trunk"] != logger.reports[-1]["trunk"]

    def test_bad_arguments(self, tmp_path):
        with pytest.raises(ValueError, match="every must be >= 1"):
            GradflowLogger(losses={}, loss_weights={}, batch=None, every=0, logdir=str(tmp_path))
        with pytest.raises(ValueError, match="mode must be"):
            GradflowLogger(losses={}, loss_weights={}, batch=None, every=5,
                           logdir=str(tmp_path), mode="both")



@pytest.fixture(scope="module")
def dwa_run(tmp_path_factory):
    """A tiny DWA run with a gradflow snapshot at its last step (5)."""
    from conftest import TINY_RAW

    from multiseg.data import build_data
    from multiseg.train import train
    from multiseg.weighting.model import current_weights

    raw = copy.deepcopy(TINY_RAW)
    raw["output"] = str(tmp_path_factory.mktemp("dwa") / "run")
    # DWA keeps the static weights for two epochs (two steps each); step 5 has its own.
    raw["train"].update(epochs=3, weighting={"method": "dwa", "temperature": 0.5})
    recipe = from_dict(raw)
    logger = GradflowLogger.from_recipe(recipe, data=build_data(recipe), every=5,
                                        logdir=str(tmp_path_factory.mktemp("logs")))
    result = train(recipe, verbose=0, extra_callbacks=[logger])
    return recipe, result, logger, current_weights(result.model)


class TestLearnedWeights:
    """With a learned train.weighting, the weighted norms are those of the weights in force:
    during training the current ones, on a finished run its final ones (not the recipe's)."""

    def test_final_weights_are_not_the_recipes(self, dwa_run):
        recipe, _, _, final = dwa_run
        priors = {h: s.loss_weight for h, s in recipe.heads.items()}
        assert max(abs(final[h] - priors[h]) for h in priors) > 1e-3

    def test_training_snapshot_uses_the_weights_of_its_step(self, dwa_run):
        # Step 5 is the last: its weights are the run's final ones.
        _, _, logger, final = dwa_run
        assert [r["step"] for r in logger.reports] == [5]
        assert logger.last_report["loss_weights"] == pytest.approx(final, rel=1e-6)

    def test_tool_on_the_run_uses_its_final_weights(self, dwa_run):
        recipe, result, _, final = dwa_run
        report = recipe_report(recipe, run_dir=result.run_dir)
        assert report["loss_weights"] == pytest.approx(final, rel=1e-6)
        for entry in report["layers"]:
            for head in entry["reach"]:
                assert entry["grad_norm_weighted"][head] == pytest.approx(
                    final[head] * entry["grad_norm_raw"][head], rel=1e-5)
