"""Live progress from WebSocket messages and outcomes from history entries (recorded shapes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from generation.comfyui.progress import LiveState, error_text, history_outcome, output_items

_REPO = Path(__file__).resolve().parents[1]
RECORDED = next(
    (
        p / "shared" / "reference" / "comfyui" / "exchange-basic.json"
        for p in (_REPO.parent, _REPO.parent.parent)
        if (p / "shared" / "reference" / "comfyui" / "exchange-basic.json").exists()
    ),
    None,
)
GRAPH = {
    "1": {"class_type": "EmptyImage", "inputs": {}, "_meta": {"title": "Canvas"}},
    "2": {"class_type": "ImageInvert", "inputs": {}},
    "3": {"class_type": "KSampler", "inputs": {}, "_meta": {"title": "Sampler"}},
    "4": {"class_type": "SaveImage", "inputs": {}},
}


def test_progress_counts_nodes_and_sampler_steps() -> None:
    live = LiveState.for_graph("p", GRAPH)
    assert live.apply("execution_start", {"prompt_id": "p"})
    live.apply("execution_cached", {"nodes": ["1"], "prompt_id": "p"})
    live.apply("executing", {"node": "2", "prompt_id": "p"})
    assert live.progress == 0.25 and live.live_status == "ImageInvert"
    live.apply("executing", {"node": "3", "prompt_id": "p"})
    live.apply("progress", {"value": 5, "max": 20, "node": "3", "prompt_id": "p"})
    assert live.live_status == "Sampler 5/20"
    assert live.progress == pytest.approx((2 + 0.25) / 4, abs=0.001)
    live.apply(
        "progress_state",
        {"nodes": {"3": {"state": "finished"}, "4": {"state": "running", "value": 0, "max": 1}}},
    )
    assert live.running_node == "4" and live.progress == 0.75
    live.apply(
        "executed", {"node": "4", "output": {"images": [{"filename": "a.png", "type": "output"}]}}
    )
    assert live.apply("execution_success", {"prompt_id": "p"}) and live.progress == 1.0
    assert live.apply("executing", {"node": None, "prompt_id": "p"}) and live.finished
    assert [i["filename"] for i in output_items(live.outputs)] == ["a.png"]


def test_progress_stays_below_one_until_success() -> None:
    live = LiveState.for_graph("p", {"1": {"class_type": "A", "inputs": {}}})
    live.apply("progress_state", {"nodes": {"1": {"state": "finished"}}})
    assert live.progress < 1.0


def test_error_text_is_one_clean_line() -> None:
    text = error_text(
        {
            "exception_type": "Exception",
            "exception_message": "**** ERROR: bad\n  more\n",
            "node_type": "SaveImage",
            "traceback": ["secret frames"],
            "current_inputs": {"images": ["tensor([[...]])"]},
        }
    )
    assert text == "Exception in SaveImage: **** ERROR: bad more"


def test_outputs_skip_temp_files_unless_nothing_else() -> None:
    outputs = {
        "8": {"images": [{"filename": "prev.png", "type": "temp"}]},
        "5": {"images": [{"filename": "out.png", "type": "output"}]},
        "9": {"gifs": [{"filename": "clip.mp4", "type": "output"}]},
    }
    assert [i["filename"] for i in output_items(outputs)] == ["out.png", "clip.mp4"]
    assert [i["filename"] for i in output_items({"8": outputs["8"]})] == ["prev.png"]


@pytest.mark.skipif(
    RECORDED is None, reason="shared/reference/comfyui is not beside the repository"
)
def test_recorded_history_entries_map_to_outcomes() -> None:
    assert RECORDED is not None
    recorded = json.loads(RECORDED.read_text())
    by_label = {h["label"]: h for h in recorded["http"]}

    def entry(label: str) -> dict:
        body = by_label[label]["resp_json"]
        return next(iter(body.values()))

    assert history_outcome(entry("t2i run 1 history")) == ("success", None)
    outcome, error = history_outcome(entry("runtime error run history"))
    assert outcome == "error" and error.startswith("Exception in SaveImage: **** ERROR")
    assert history_outcome(entry("history of interrupted A")) == ("interrupted", None)
    items = output_items(entry("mask/inpaint run history")["outputs"])
    assert [i["type"] for i in items] == ["output"]  # the PreviewImage temp file is skipped
