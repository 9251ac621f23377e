"""Faults with a stateful train.weighting: a killed run resumes with the method's state."""

from __future__ import annotations

import pytest
import yaml

from tests.test_faults import _assert_matches_uninterrupted_run, _run, _state, _val

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
def test_killed_weighted_run_resumes_exactly(tmp_path, tiny_raw, weighting):
    tiny_raw["train"].update(epochs=3, deterministic=True, weighting=weighting)
    tiny_raw["data"]["train"] = 24  # 3 steps per epoch
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tiny_raw, sort_keys=False))
    proc = _run(tmp_path, path, "kill", epoch=1, batch=1)  # SIGKILL in epoch 2
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert _state(tiny_raw["output"])["epoch"] == 1
    assert _run(tmp_path, path).returncode == 0
    # weighted_loss = the final effective weight x the raw loss: both must agree.
    _assert_matches_uninterrupted_run(tmp_path, tiny_raw, _val(tiny_raw["output"]),
                                      figures=("loss", "weighted_loss"))
