"""Faults with a stateful train.weighting: a stopped run resumes with the method's state."""

from __future__ import annotations

import pytest
import yaml
from conftest import copy_run_after

from multiseg.recipe import from_dict
from multiseg.train import train
from tests.test_faults import _run, _state, _val, assert_same_figures

# The stateful train.weighting methods whose resume no other test covers: their state (a step
# count, learned parameters, a generator) must come back from the checkpoint exactly, or the
# resumed weights drift. dwa, rlw, famo and gradnorm are resumed, state compared variable by
# variable, in tests/test_weighting.py::test_resume_restores_the_weighting_state.
STATEFUL_WEIGHTINGS = [
    {"method": "scheduled", "heads": {"shape": {"initial": 0.0, "end": 3}}},
    {"method": "uncertainty"},
    {"method": "pcgrad"},  # its random order of projections
]


@pytest.mark.parametrize("weighting", STATEFUL_WEIGHTINGS, ids=lambda w: w["method"])
def test_stopped_weighted_run_resumes_exactly_in_a_new_process(tmp_path, tiny_raw, weighting):
    tiny_raw["train"].update(epochs=3, deterministic=True, weighting=weighting)
    tiny_raw["data"]["train"] = 24  # 3 steps per epoch
    stopped = str(tmp_path / "stopped")
    # Trained straight here; its files after epoch 1 are those of a run killed in epoch 2.
    straight = train(from_dict(tiny_raw), verbose=0,
                     extra_callbacks=[copy_run_after(tiny_raw["output"], 1, stopped)])
    assert _state(stopped)["epoch"] == 1
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({**tiny_raw, "output": stopped}, sort_keys=False))
    resumed = _run(tmp_path, path)  # a new process: the method's state comes from the files
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _state(stopped)["epoch"] == 3
    # weighted_loss = the final effective weight x the raw loss: both must agree.
    assert_same_figures(_val(stopped), straight.metrics["val"], ("loss", "weighted_loss"))
