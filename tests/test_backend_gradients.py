"""Per-head gradients agree across backends: TensorFlow, JAX and PyTorch, given the same
weights and the same batch, report the same gradflow figures (per layer and head the gradient
norm, per shared layer and pair of heads the cosine, the trunk cosines, the head losses) to
float32 tolerance, and the same exact zeros (where a head's loss does not reach).

Keras picks its backend at import, so each backend runs in its own child process (all at
once); this process writes the weights and the batch they share. The TensorFlow-JAX comparison
always runs; the PyTorch one is skipped, saying so, where torch is not installed.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import TINY_RAW

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAS_TORCH = importlib.util.find_spec("torch") is not None
# float32 gradients through BatchNorm and three backends' own convolutions and reductions:
# the worst seen over layers, heads and pairs was 1.2e-5 (norms, relative) and 1.0e-5 (cosines,
# absolute), TensorFlow against the others; the tolerances leave room for other CPUs and
# library versions.
NORM_RTOL = 1e-4
NORM_ATOL = 1e-7  # norms of order 1e-2..1: a gradient of 1e-7 is rounding
COSINE_ATOL = 1e-4
LOSS_RTOL = 1e-5

# The child: the recipe, the weights (.weights.h5, by position) and the batch (npz) from argv;
# prints the figures compared here.
CHILD = textwrap.dedent("""
    import json, sys
    import keras, numpy as np
    from multiseg.gradients import GradientProbe, summarise
    from multiseg.models.build import build_model, head_losses
    from multiseg.recipe import from_dict

    recipe = from_dict(json.load(open(sys.argv[1])))
    model = build_model(recipe, channels=3)
    model.load_weights(sys.argv[2])
    batch = np.load(sys.argv[3])
    probe = GradientProbe(model, head_losses(recipe),
                          {h: s.loss_weight for h, s in recipe.heads.items()})
    report = summarise(probe.gradients(batch["images"], {h: batch[h] for h in recipe.heads}),
                       learning_rate=0.01, mode="raw")
    keep = ("backend", "heads", "loss", "cosine", "cosine_common", "reach", "grad_scale")
    print(json.dumps({**{k: report[k] for k in keep}, "layers": [
        {k: e[k] for k in ("name", "owner", "grad_norm", "cosine")}
        for e in report["layers"]]}))
""")


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """{backend: figures} of one probe on each backend, same weights and batch."""
    import keras

    from multiseg.data import build_data
    from multiseg.models.build import build_model
    from multiseg.recipe import from_dict

    tmp = tmp_path_factory.mktemp("backends")
    raw = copy.deepcopy(TINY_RAW)
    raw["output"] = str(tmp / "run")
    raw["heads"]["shape"]["grad_scale"] = 0.5  # GradientScale on every backend too
    recipe = from_dict(raw)
    (tmp / "recipe.json").write_text(json.dumps(raw))
    keras.utils.set_random_seed(3)
    build_model(recipe, channels=3).save_weights(str(tmp / "model.weights.h5"))
    images, targets = build_data(recipe, frequencies=False, log_report=False).train.batch(0, 0)
    np.savez(tmp / "batch.npz", images=images, **targets)

    backends = ["tensorflow", "jax"] + (["torch"] if HAS_TORCH else [])
    children = {}
    for backend in backends:
        env = {**os.environ, "KERAS_BACKEND": backend, "JAX_PLATFORMS": "cpu"}
        if backend == "jax":
            # XLA's CPU code generation at -O0: the initialisers' compiles take 3 s instead of
            # 30; what is computed is the same (the figures moved by 9e-7 relative at most).
            env["XLA_FLAGS"] = " ".join(filter(None, (
                env.get("XLA_FLAGS"), "--xla_backend_optimization_level=0")))
        children[backend] = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(tmp / "recipe.json"),
             str(tmp / "model.weights.h5"), str(tmp / "batch.npz")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    found = {}
    for backend, child in children.items():
        out, err = child.communicate(timeout=300)
        assert child.returncode == 0, (backend, err[-3000:])
        found[backend] = json.loads(out.strip().splitlines()[-1])
        assert found[backend]["backend"] == backend
    return found


def _agree(a: dict, b: dict) -> dict[str, float]:
    """Asserts that two backends' figures agree; returns the largest differences."""
    assert a["heads"] == b["heads"] and a["grad_scale"] == b["grad_scale"]
    assert a["reach"] == b["reach"]  # the same exact zeros
    worst = {"norm_rel": 0.0, "cosine_abs": 0.0, "loss_rel": 0.0}
    for head in a["heads"]:
        x, y = a["loss"][head]["raw"], b["loss"][head]["raw"]
        assert x == pytest.approx(y, rel=LOSS_RTOL), head
        worst["loss_rel"] = max(worst["loss_rel"], abs(x - y) / abs(y))
    assert [e["name"] for e in a["layers"]] == [e["name"] for e in b["layers"]]
    for la, lb in zip(a["layers"], b["layers"], strict=True):
        for head in a["heads"]:
            x, y = la["grad_norm"][head], lb["grad_norm"][head]
            assert (x == 0.0) == (y == 0.0), (la["name"], head)
            assert x == pytest.approx(y, rel=NORM_RTOL, abs=NORM_ATOL), (la["name"], head)
            if y:
                worst["norm_rel"] = max(worst["norm_rel"], abs(x - y) / y)
        for pair, x in la["cosine"].items():
            y = lb["cosine"][pair]
            assert (x is None) == (y is None), (la["name"], pair)
            if x is not None:
                assert x == pytest.approx(y, abs=COSINE_ATOL), (la["name"], pair)
                worst["cosine_abs"] = max(worst["cosine_abs"], abs(x - y))
    for key in ("cosine", "cosine_common"):
        for pair, x in a[key].items():
            assert x == pytest.approx(b[key][pair], abs=COSINE_ATOL), (key, pair)
            worst["cosine_abs"] = max(worst["cosine_abs"], abs(x - b[key][pair]))
    return worst


def test_reports_are_not_trivial(reports):
    # Every head reaches the trunk and its own branch; shape (at the bottleneck) not the
    # decoder: the comparisons below compare nonzero figures and exact zeros alike.
    report = reports["tensorflow"]
    assert report["grad_scale"]["shape"] == 0.5
    shared = [e for e in report["layers"] if e["owner"] == "shared"]
    assert all(e["grad_norm"]["mask"] > 0 for e in shared)
    assert any(e["grad_norm"]["shape"] == 0.0 for e in shared)
    assert all(v is not None for v in report["cosine"].values())


def test_tensorflow_and_jax_agree(reports):
    worst = _agree(reports["jax"], reports["tensorflow"])
    print("jax vs tensorflow:", worst)


@pytest.mark.skipif(not HAS_TORCH, reason="torch not installed")
def test_torch_agrees(reports):
    worst = _agree(reports["torch"], reports["tensorflow"])
    print("torch vs tensorflow:", worst)
    worst = _agree(reports["torch"], reports["jax"])
    print("torch vs jax:", worst)
