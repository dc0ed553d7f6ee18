"""common/: the wall-time budget of the fused GPU run, strict JSON, and the device helpers as
they run on the CPU (the CUDA branch of each is one line, exercised on a GPU)."""

import json
import math
import time

import numpy as np
import pytest
import torch

from jacobian_spectrum.common.budget import Budget
from jacobian_spectrum.common.device import free_bytes, new_stream, on_stream, seconds
from jacobian_spectrum.common.h5io import json_safe, write_json


def test_a_budget_starts_a_step_only_if_its_stretched_prediction_ends_in_time():
    budget = Budget(100.0, time.perf_counter() - 40.0, safety=1.5, margin=5.0)  # 40 s used
    assert budget.fits(30.0) and not budget.fits(40.0)  # 40 + 45 + 5 = 90 <= 100; 40 + 60 + 5 > 100
    assert not budget.fits(30.0, reserve=20.0)
    reason = budget.reason("train a", 40.0, reserve=20.0, reserved_for="the J_init spectrum")
    assert reason.startswith("train a: predicted 40.0 s (x1.5 margin) would pass the budget (40.")
    assert reason.endswith("of 100 s used, 20.0 s kept for the J_init spectrum)")
    budget.record("data", "done", seconds=1.0)
    budget.record("train a", "skipped", reason=reason)
    budget.record("spectrum", "kept", reason="")
    assert [e["step"] for e in budget.steps] == ["data", "train a", "spectrum"]
    assert budget.skipped == [{"step": "train a", "status": "skipped", "reason": reason}]


def test_json_safe_writes_strict_json(tmp_path):
    value = {1: [np.float32(0.5), math.nan, (np.int64(3), math.inf)], "x": {"y": np.float64(-math.inf)}}
    assert json_safe(value) == {"1": [0.5, None, [3, None]], "x": {"y": None}}
    write_json(tmp_path / "r.json", value)
    assert json.loads((tmp_path / "r.json").read_text()) == json_safe(value)


def test_device_helpers_on_the_cpu():
    cpu = torch.device("cpu")
    assert new_stream(cpu) is None
    with on_stream(None):
        assert seconds(lambda: time.sleep(0.01), cpu) == pytest.approx(0.01, abs=0.05)
    assert free_bytes(cpu) > 0
