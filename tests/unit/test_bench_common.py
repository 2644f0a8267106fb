"""The benchmarks' pure helpers: statistics, target verdicts, result files, hold-out folds (nothing timed)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from bench import common
from bench.localization import folds


def test_median_and_ratio() -> None:
    assert common.median([3.0, 1.0, 2.0]) == 2.0
    assert common.median([1.0, 2.0, 3.0, 10.0]) == 2.5
    assert common.ratio(3.0, 2.0) == 1.5
    assert math.isnan(common.ratio(1.0, 0.0))
    assert common.fmt_ratio(float("nan")) == "n/a"
    with pytest.raises(ValueError):
        common.median([])


def test_verdicts_read_the_target_text() -> None:
    assert common.verdict(1.05, "<= 1.10") == "met"
    assert common.verdict(1.2, "<= 1.10") == "missed"
    assert common.verdict(1.3, ">= 1.3") == "met"
    assert common.verdict(0.97, "1.00 +- 0.05") == "met"
    assert common.verdict(1.07, "1.00 +- 0.05") == "missed"
    assert common.verdict(float("nan"), ">= 1.3") == "n/a"


def test_time_call_counts_calls_after_warmup() -> None:
    calls = []
    times = common.time_call(lambda: calls.append(1), repeats=3, warmup=2)
    assert len(times) == 3 and len(calls) == 5 and all(t >= 0 for t in times)
    rounds = common.time_interleaved({"a": lambda: None, "b": lambda: None}, repeats=2, warmup=0)
    assert {k: len(v) for k, v in rounds.items()} == {"a": 2, "b": 2}


def test_peak_memory_on_cpu_names_its_method() -> None:
    peak, method = common.peak_memory(lambda: torch.ones(1024, 1024).sum(), torch.device("cpu"))
    assert peak >= 0 and ("RSS" in method)


def test_write_result_records_when_where_and_how(tmp_path: Path) -> None:
    path = common.write_result("demo", {"ratios": {"x": 1.25, "bad": float("nan")}, "where": Path("/tmp")},
                               out_dir=tmp_path, argv=["python", "bench/demo.py", "--fast"])
    assert path == tmp_path / "demo.json"
    data = json.loads(path.read_text())
    assert data["benchmark"] == "demo"
    assert data["command"] == "python bench/demo.py --fast"
    assert data["date"] and data["machine"]["torch"] == torch.__version__
    assert {"platform", "cpu_count", "device"} <= set(data["machine"])
    assert data["ratios"] == {"x": 1.25, "bad": None} and data["where"] == "/tmp"
    assert not list(tmp_path.glob("*.tmp"))


def test_holdout_folds_never_train_on_held_out_images() -> None:
    assert folds(5, 0, False) == [([0, 1, 2, 3], [4])]
    assert folds(6, 2, False) == [([0, 1, 2, 3], [4, 5])]
    loo = folds(3, 0, True)
    assert loo == [([1, 2], [0]), ([0, 2], [1]), ([0, 1], [2])]
    for train, held in loo + folds(5, 9, False):
        assert held and train and not set(train) & set(held)
    with pytest.raises(SystemExit):
        folds(1, 0, False)
