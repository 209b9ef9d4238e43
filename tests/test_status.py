"""Status normalization and run-body parsing (GET /run/{id} and webhook bodies)."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from generation.errors import BackendError
from generation.models import MediaType, RunStatus
from generation.status import normalize_status, snapshot_from_payload


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("not-started", RunStatus.WAITING),
        ("queued", RunStatus.WAITING),
        ("started", RunStatus.STARTING),
        ("running", RunStatus.RUNNING),
        ("uploading", RunStatus.RUNNING),
        ("success", RunStatus.SUCCESS),
        ("failed", RunStatus.FAILED),
        ("timeout", RunStatus.TIMEOUT),
        ("cancelled", RunStatus.CANCELLED),
        ("error", RunStatus.FAILED),
        ("SUCCESS", RunStatus.SUCCESS),
        (" running ", RunStatus.RUNNING),
    ],
)
def test_normalize_known_statuses(raw: str, expected: RunStatus) -> None:
    assert normalize_status(raw) is expected


@pytest.mark.parametrize("raw", ["processing", "completed", "", None, 42, ["success"]])
def test_unknown_status_is_waiting_and_logged(raw: Any, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="generation.status"):
        assert normalize_status(raw) is RunStatus.WAITING
    assert any("unknown ComfyDeploy run status" in r.getMessage() for r in caplog.records)


def test_get_body_parses_id_progress_queue_position_and_outputs() -> None:
    body = {
        "id": "6f1c",
        "status": "queued",
        "progress": 0.0,
        "live_status": None,
        "queue_position": 3,
        "outputs": [],
    }
    snap = snapshot_from_payload(body)
    assert snap.backend_run_id == "6f1c"
    assert snap.status is RunStatus.WAITING
    assert snap.raw_status == "queued"
    assert snap.queue_position == 3
    assert snap.outputs == ()


def test_webhook_body_uses_run_id() -> None:
    body = {
        "event_type": "run.updated",
        "status": "running",
        "live_status": "Executing KSampler",
        "progress": 0.57,
        "run_id": "abc",
        "outputs": [],
    }
    snap = snapshot_from_payload(body)
    assert snap.backend_run_id == "abc"
    assert snap.status is RunStatus.RUNNING
    assert snap.progress == pytest.approx(0.57)
    assert snap.live_status == "Executing KSampler"


def test_success_counts_as_full_progress_and_keeps_outputs() -> None:
    body = {
        "run_id": "r1",
        "status": "success",
        "progress": 0.86,
        "outputs": [{"data": {"images": [{"url": "https://x/a.png", "filename": "a.png"}]}}],
    }
    snap = snapshot_from_payload(body)
    assert snap.progress == 1.0
    assert [o.media_type for o in snap.outputs] == [MediaType.IMAGE]


@pytest.mark.parametrize(
    ("progress", "expected"),
    [
        (1.7, 1.0),
        (-0.5, 0.0),
        ("0.25", 0.25),
        ("abc", 0.0),
        (None, 0.0),
        (float("nan"), 0.0),
        (True, 0.0),
        ({"x": 1}, 0.0),
        (float("inf"), 0.0),
    ],
)
def test_progress_is_clamped_and_tolerant(progress: Any, expected: float) -> None:
    snap = snapshot_from_payload({"id": "r", "status": "running", "progress": progress})
    assert snap.progress == pytest.approx(expected)


@pytest.mark.parametrize(
    "body",
    [
        {"id": "r"},  # no status
        {"id": "r", "status": None, "live_status": 5, "queue_position": "3", "outputs": "x"},
        {"id": "r", "status": "running", "queue_position": -1, "outputs": [None, 1, {"data": 3}]},
        {"id": "r", "status": "running", "queue_position": True, "live_status": ""},
    ],
)
def test_garbage_fields_are_tolerated(body: dict[str, Any]) -> None:
    snap = snapshot_from_payload(body)
    assert snap.backend_run_id == "r"
    assert snap.queue_position is None
    assert snap.live_status is None
    assert snap.outputs == ()
    assert not snap.status.is_terminal


@pytest.mark.parametrize(
    "body",
    [None, [], "run", 5, {}, {"status": "success"}, {"id": ""}, {"id": 5}, {"run_id": None}],
)
def test_body_without_run_id_raises_backend_error(body: Any) -> None:
    with pytest.raises(BackendError):
        snapshot_from_payload(body)


def test_run_id_preferred_over_id_and_falls_back() -> None:
    assert snapshot_from_payload({"run_id": "a", "id": "b"}).backend_run_id == "a"
    assert snapshot_from_payload({"run_id": "", "id": "b"}).backend_run_id == "b"
