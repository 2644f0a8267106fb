"""The training-history store behind GET /textual_localization/train_history (no ComfyUI needed)."""

from __future__ import annotations

import pytest

from textloc.training import history as train_history


@pytest.fixture(scope="module")
def web_routes():
    return train_history


def _step(step: int, node: str = "4", run: str = "tl_ball", total: float = 1.0) -> dict:
    return {"step": step, "total": total, "denoise": 0.5, "prior": 0.0, "attention": 0.25, "node": node,
            "max": 10, "eta_seconds": 10.0 - step, "run": run}


def test_steps_of_the_running_prompt_are_kept_per_node(web_routes) -> None:
    history = web_routes.TrainHistory()
    for step in (1, 2, 3):
        history.record(web_routes.TRAIN_STEP_EVENT, _step(step), "prompt-a")
    history.record(web_routes.TRAIN_STEP_EVENT, _step(1, node="9"), "prompt-a")
    history.record("progress", {"node": "4", "value": 3}, "prompt-a")
    entry = history.get("4")
    assert [s["step"] for s in entry["steps"]] == [1, 2, 3]
    assert entry["steps"][0] == {"step": 1, "total": 1.0, "denoise": 0.5, "prior": 0.0, "attention": 0.25}
    assert (entry["run"], entry["max"], entry["eta_seconds"], entry["prompt_id"]) == ("tl_ball", 10, 7.0, "prompt-a")
    assert set(history.get()) == {"4", "9"}


def test_a_new_prompt_or_run_starts_a_new_history(web_routes) -> None:
    history = web_routes.TrainHistory()
    history.record(web_routes.TRAIN_STEP_EVENT, _step(1), "prompt-a")
    history.record(web_routes.TRAIN_STEP_EVENT, _step(2), "prompt-a")
    history.record(web_routes.TRAIN_STEP_EVENT, _step(1, node="9"), "prompt-b")
    assert history.get("4")["steps"] == []  # cleared by the new prompt
    history.record(web_routes.TRAIN_STEP_EVENT, _step(1, node="9", run="tl_ball_2"), "prompt-b")
    assert [s["step"] for s in history.get("9")["steps"]] == [1]
    assert history.get("9")["run"] == "tl_ball_2"


def test_long_runs_keep_a_bounded_number_of_points(web_routes) -> None:
    history = web_routes.TrainHistory(max_points=100)
    for step in range(1, 1001):
        history.record(web_routes.TRAIN_STEP_EVENT, _step(step), "prompt-a")
    steps = [s["step"] for s in history.get("4")["steps"]]
    assert len(steps) <= 100
    assert steps[0] == 1 and steps[-1] == 1000
    assert steps == sorted(steps)


def test_returned_entries_are_copies(web_routes) -> None:
    history = web_routes.TrainHistory()
    history.record(web_routes.TRAIN_STEP_EVENT, _step(1), "prompt-a")
    history.get("4")["steps"].clear()
    assert len(history.get("4")["steps"]) == 1


def test_the_console_progress_line_says_step_losses_and_time_left() -> None:
    from textloc.training.loop import StepLosses, progress_line

    line = progress_line("tl_ball", StepLosses(step=40, total=0.12345, denoise=0.1, prior=0.02, attention=0.003),
                         400, 125.4)
    assert line == ("tl_ball: step 40/400, loss 0.1235 (denoise 0.1000, prior 0.0200, attention 0.0030), "
                    "2m05s left")
