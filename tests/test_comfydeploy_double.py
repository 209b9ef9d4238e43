"""The ComfyDeploy test double itself: faithful shapes, timelines, webhook knobs, server mode."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from PIL import Image

from generation.client import ComfyDeployClient
from generation.models import MediaType, RunStatus
from tests.fakes.comfydeploy import DEFAULT_TICKS, FakeComfyDeploy, Timeline

KEY = "test-api-key"
WEBHOOK_KEYS = {"event_type", "status", "live_status", "progress", "run_id", "outputs"}


class Sink:
    """Collects webhooks; answers with ``status``."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.calls: list[tuple[str, dict[str, Any] | None]] = []

    async def __call__(self, url: str, payload: dict[str, Any] | None) -> int:
        self.calls.append((url, payload))
        return self.status

    @property
    def payloads(self) -> list[dict[str, Any]]:
        return [p for _, p in self.calls if p is not None]

    def statuses(self) -> list[tuple[str, float]]:
        return [(p["status"], p["progress"]) for p in self.payloads]


@pytest.fixture
async def fake() -> AsyncIterator[FakeComfyDeploy]:
    async with FakeComfyDeploy(auth_token=KEY) as fake:
        yield fake


@pytest.fixture
def sink(fake: FakeComfyDeploy) -> Sink:
    fake.webhook_sink = sink = Sink()
    return sink


@pytest.fixture
async def http(fake: FakeComfyDeploy) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=fake.transport,
        base_url=fake.base_url,
        headers={"Authorization": f"Bearer {KEY}"},
    ) as client:
        yield client


async def create(
    http: httpx.AsyncClient,
    dep: str,
    *,
    webhook: str | None = "http://bot.test/wh",
    flag: bool = True,
) -> str:
    response = await http.post(
        "/run/deployment/queue",
        json={
            "deployment_id": dep,
            "inputs": {"input_prompt": "fox"},
            "webhook": webhook,
            "webhook_intermediate_status": flag,
        },
    )
    assert response.status_code == 200, response.text
    return response.json()["run_id"]


# --------------------------------------------------------------------------- timelines


async def test_success_timeline_with_intermediate_status(
    fake: FakeComfyDeploy, sink: Sink, http: httpx.AsyncClient
) -> None:
    dep = fake.add_deployment(timeline=Timeline.success("png"))
    run_id = await create(http, dep, flag=True)
    assert fake.runs[run_id].status == "not-started"
    await fake.run_to_end(run_id)
    assert sink.statuses() == [
        ("queued", 0.0),
        ("started", 0.0),
        ("running", 0.0),
        ("running", 0.14),
        ("running", 0.57),
        ("running", 0.86),
        ("success", 0.86),  # progress never reaches 1.0 (§1.5)
    ]
    assert all(set(p) == WEBHOOK_KEYS for p in sink.payloads)
    assert all(p["event_type"] == "run.updated" and p["run_id"] == run_id for p in sink.payloads)
    assert [p["live_status"] for p in sink.payloads][3:5] == [
        "Executing CLIPTextEncode",
        "Executing KSampler",
    ]
    assert all(p["outputs"] == [] for p in sink.payloads[:-1])
    (output,) = sink.payloads[-1]["outputs"]
    (item,) = output["data"]["images"]
    assert item["url"].startswith(fake.base_url + "/files/")
    assert {"url", "type", "filename", "subfolder", "is_public", "upload_duration"} <= set(item)
    assert {url for url, _ in sink.calls} == {"http://bot.test/wh"}


async def test_without_intermediate_flag_only_status_changes_are_sent(
    fake: FakeComfyDeploy, sink: Sink, http: httpx.AsyncClient
) -> None:
    dep = fake.add_deployment(timeline=Timeline.success("png"))
    run_id = await create(http, dep, flag=False)
    await fake.run_to_end(run_id)
    assert [s for s, _ in sink.statuses()] == ["queued", "started", "running", "success"]


async def test_no_webhook_url_sends_nothing(
    fake: FakeComfyDeploy, sink: Sink, http: httpx.AsyncClient
) -> None:
    dep = fake.add_deployment()
    run_id = await create(http, dep, webhook=None)
    await fake.run_to_end(run_id)
    assert fake.runs[run_id].status == "success"
    assert sink.calls == []


async def test_run_output_events_only_with_target_events(
    fake: FakeComfyDeploy, sink: Sink, http: httpx.AsyncClient
) -> None:
    dep = fake.add_deployment(timeline=Timeline.success("png", "gif"))
    run_id = await create(http, dep, webhook="http://bot.test/wh?t=1&target_events=run.output")
    await fake.run_to_end(run_id)
    output_events = [p for p in sink.payloads if p["event_type"] == "run.output"]
    assert [list(p["outputs"][0]["data"]) for p in output_events] == [["images"], ["gifs"]]
    assert sink.payloads[-1]["status"] == "success"
    assert len(sink.payloads[-1]["outputs"]) == 2


@pytest.mark.parametrize(
    ("timeline", "final"),
    [(Timeline.failed(), "failed"), (Timeline.timeout(), "timeout")],
)
async def test_failure_variants(
    fake: FakeComfyDeploy, sink: Sink, http: httpx.AsyncClient, timeline: Timeline, final: str
) -> None:
    dep = fake.add_deployment(timeline=timeline)
    run_id = await create(http, dep)
    await fake.run_to_end(run_id)
    body = (await http.get(f"/run/{run_id}")).json()
    assert body["status"] == final and body["outputs"] == [] and body["ended_at"]
    assert sink.payloads[-1]["status"] == final
    assert sink.payloads[-1]["outputs"] == []  # no reason anywhere


async def test_stall_stays_not_started_with_queue_position(
    fake: FakeComfyDeploy, sink: Sink, http: httpx.AsyncClient
) -> None:
    dep = fake.add_deployment(timeline=Timeline.stall())
    run_id = await create(http, dep)
    assert await fake.advance(run_id, steps=5) == 0
    await fake.run_to_end(run_id)
    body = (await http.get(f"/run/{run_id}", params={"queue_position": "true"})).json()
    assert body["status"] == "not-started" and body["queue_position"] == 0
    assert (await http.get(f"/run/{run_id}")).json()["queue_position"] is None
    assert sink.calls == []


async def test_advance_all_runs_one_step(
    fake: FakeComfyDeploy, sink: Sink, http: httpx.AsyncClient
) -> None:
    dep = fake.add_deployment()
    ids = [await create(http, dep) for _ in range(3)]
    assert await fake.advance() == 3
    assert [fake.runs[i].status for i in ids] == ["queued"] * 3
    assert await fake.advance(ids[0], steps=2) == 2
    assert fake.runs[ids[0]].status == "running" and fake.runs[ids[1]].status == "queued"


async def test_uploading_status_can_be_emitted(
    fake: FakeComfyDeploy, sink: Sink, http: httpx.AsyncClient
) -> None:
    dep = fake.add_deployment(timeline=Timeline.success("png", uploading=True))
    await fake.run_to_end(await create(http, dep, flag=False))
    assert [s for s, _ in sink.statuses()] == [
        "queued",
        "started",
        "running",
        "uploading",
        "success",
    ]


# --------------------------------------------------------------------------- webhook knobs


async def test_duplicate_webhooks(
    fake: FakeComfyDeploy, sink: Sink, http: httpx.AsyncClient
) -> None:
    fake.duplicate_webhooks = True
    dep = fake.add_deployment()
    await fake.run_to_end(await create(http, dep, flag=False))
    assert [s for s, _ in sink.statuses()] == [
        "queued",
        "queued",
        "started",
        "started",
        "running",
        "running",
        "success",
        "success",
    ]


async def test_reorder_webhooks_delivers_earlier_status_after_later(
    fake: FakeComfyDeploy, sink: Sink, http: httpx.AsyncClient
) -> None:
    fake.reorder_webhooks = True
    dep = fake.add_deployment()
    await fake.run_to_end(await create(http, dep, flag=True))
    # every other step is held back and delivered after the next one
    assert sink.statuses() == [
        ("started", 0.0),
        ("queued", 0.0),
        ("running", 0.14),
        ("running", 0.0),
        ("running", 0.86),
        ("running", 0.57),
        ("success", 0.86),
    ]


async def test_reorder_can_deliver_a_tick_after_success(
    fake: FakeComfyDeploy, sink: Sink, http: httpx.AsyncClient
) -> None:
    fake.reorder_webhooks = True
    dep = fake.add_deployment(timeline=Timeline.success("png", ticks=DEFAULT_TICKS[:2]))
    await fake.run_to_end(await create(http, dep, flag=True))
    assert sink.statuses()[-2:] == [("success", 0.57), ("running", 0.57)]


async def test_drop_final_webhook_leaves_get_authoritative(
    fake: FakeComfyDeploy, sink: Sink, http: httpx.AsyncClient
) -> None:
    fake.drop_final_webhook = True
    dep = fake.add_deployment()
    run_id = await create(http, dep, flag=False)
    await fake.run_to_end(run_id)
    assert [s for s, _ in sink.statuses()] == ["queued", "started", "running"]
    assert [p["status"] for p in fake.webhooks_dropped] == ["success"]
    assert (await http.get(f"/run/{run_id}")).json()["status"] == "success"


@pytest.mark.parametrize(
    ("retry_as_get", "expected"), [(True, ["POST", "GET", "GET"]), (False, ["POST"])]
)
async def test_failed_delivery_retry_as_get(
    fake: FakeComfyDeploy, http: httpx.AsyncClient, retry_as_get: bool, expected: list[str]
) -> None:
    fake.webhook_sink = Sink(status=500)
    fake.retry_as_get = retry_as_get
    dep = fake.add_deployment()
    await fake.advance(await create(http, dep))
    assert [w.method for w in fake.webhooks_sent] == expected
    assert [w.payload is None for w in fake.webhooks_sent] == [m == "GET" for m in expected]


async def test_default_delivery_posts_json_over_http(
    fake: FakeComfyDeploy, http: httpx.AsyncClient
) -> None:
    received: list[tuple[str, str, bytes]] = []

    async def receiver(scope: Any, receive: Any, send: Any) -> None:
        message = await receive()
        received.append((scope["method"], scope["path"], message.get("body", b"")))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    fake.webhook_transport = httpx.ASGITransport(app=receiver)
    dep = fake.add_deployment()
    await fake.advance(await create(http, dep, webhook="http://bot.test/cd/webhook?t=x"))
    ((method, path, body),) = received
    assert (method, path) == ("POST", "/cd/webhook")
    assert b'"status": "queued"' in body or b'"status":"queued"' in body
    assert fake.webhooks_sent[0].status == 200


# --------------------------------------------------------------------------- API semantics


async def test_auth_required(fake: FakeComfyDeploy) -> None:
    dep = fake.add_deployment()
    async with httpx.AsyncClient(transport=fake.transport, base_url=fake.base_url) as anon:
        r = await anon.post("/run/deployment/queue", json={"deployment_id": dep})
        assert (r.status_code, r.json()) == (401, {"detail": "Invalid or missing token"})
        r = await anon.get("/deployments", headers={"Authorization": "Bearer nope"})
        assert r.status_code == 401
    assert fake.runs == {}


async def test_create_validation_and_not_found(
    fake: FakeComfyDeploy, http: httpx.AsyncClient
) -> None:
    r = await http.post("/run/deployment/queue", json={"deployment_id": "abc", "inputs": {}})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "deployment_id"]
    r = await http.post("/run/deployment/queue", json={"inputs": {}})
    assert r.status_code == 422
    r = await http.post(
        "/run/deployment/queue", json={"deployment_id": "0d3a8bbf-1111-4222-8333-444455556666"}
    )
    assert (r.status_code, r.json()) == (404, {"detail": "Deployment not found"})
    assert len(fake.create_calls) == 3 and fake.runs == {}


async def test_fail_next_creates_does_not_create_runs(
    fake: FakeComfyDeploy, http: httpx.AsyncClient
) -> None:
    dep = fake.add_deployment()
    fake.fail_next_creates(2, status=502)
    body = {"deployment_id": dep, "inputs": {}}
    codes = [(await http.post("/run/deployment/queue", json=body)).status_code for _ in range(3)]
    assert codes == [502, 502, 200]
    assert len(fake.runs) == 1


async def test_get_shapes_and_legacy_route(fake: FakeComfyDeploy, http: httpx.AsyncClient) -> None:
    dep = fake.add_deployment()
    run_id = await create(http, dep)
    body = (await http.get(f"/run/{run_id}")).json()
    for key in (
        "id",
        "status",
        "progress",
        "live_status",
        "outputs",
        "created_at",
        "updated_at",
        "queued_at",
        "started_at",
        "ended_at",
        "webhook",
        "webhook_intermediate_status",
        "workflow_inputs",
        "queue_position",
        "modal_function_call_id",
    ):
        assert key in body
    assert body["workflow_inputs"] == {"input_prompt": "fox"}
    assert body["created_at"].endswith("Z")
    legacy = (await http.get("/run", params={"run_id": run_id})).json()
    assert legacy["id"] == run_id
    r = await http.get("/run/7b1c9f0e-0000-4000-8000-000000000000")
    assert (r.status_code, r.json()) == (404, {"detail": "Run not found"})
    assert (await http.get("/run/not-a-uuid")).status_code == 422
    fake.fail_next_gets(1)
    assert (await http.get(f"/run/{run_id}")).status_code == 500
    assert (await http.get(f"/run/{run_id}")).status_code == 200


async def test_cancel_semantics(fake: FakeComfyDeploy, sink: Sink, http: httpx.AsyncClient) -> None:
    dep = fake.add_deployment()
    run_id = await create(http, dep, flag=False)
    await fake.advance(run_id, steps=3)
    sink.calls.clear()
    r = await http.post(f"/run/{run_id}/cancel")
    assert (r.status_code, r.json()) == (
        200,
        {"status": "success", "message": "Function cancelled"},
    )
    await fake.flush_webhooks()
    assert [p["status"] for p in sink.payloads] == ["cancelled"]
    assert await fake.advance(run_id) == 0  # later status posts are ignored
    # terminal: same 200, nothing changes, no webhook
    r = await http.post(f"/run/{run_id}/cancel")
    assert r.status_code == 200
    await fake.flush_webhooks()
    assert len(sink.payloads) == 1
    r = await http.post("/run/7b1c9f0e-0000-4000-8000-000000000000/cancel")
    assert r.status_code == 500
    assert r.json()["detail"].startswith("Error cancel function 404")


async def test_cancel_after_success_changes_nothing(
    fake: FakeComfyDeploy, sink: Sink, http: httpx.AsyncClient
) -> None:
    dep = fake.add_deployment()
    run_id = await create(http, dep)
    await fake.run_to_end(run_id)
    before = len(sink.calls)
    assert (await http.post(f"/run/{run_id}/cancel")).status_code == 200
    await fake.flush_webhooks()
    assert fake.runs[run_id].status == "success" and len(sink.calls) == before


async def test_upload_and_rules(fake: FakeComfyDeploy, http: httpx.AsyncClient) -> None:
    r = await http.post("/file/upload", files={"file": ("in.jpg", b"\xff\xd8jpeg", "image/jpeg")})
    body = r.json()
    assert r.status_code == 200 and body["message"] == "File uploaded successfully"
    assert body["file_id"].startswith("img_") and len(body["file_id"]) == 20
    assert body["file_name"] == "in.jpg"
    got = await http.get(body["file_url"])
    assert got.content == b"\xff\xd8jpeg" and got.headers["content-type"] == "image/jpeg"
    r = await http.post("/file/upload", files={"file": ("a.unknownext", b"x", "text/plain")})
    assert (r.status_code, r.json()) == (400, {"detail": "Unsupported file type"})
    fake.upload_limit = 3
    r = await http.post("/file/upload", files={"file": ("big.png", b"1234", "image/png")})
    assert (r.status_code, r.json()) == (400, {"detail": "File size exceeds 250MB limit"})
    assert (await http.post("/file/upload", data={"other": "1"})).status_code == 422


async def test_deployments_list_has_input_types(
    fake: FakeComfyDeploy, http: httpx.AsyncClient
) -> None:
    dep = fake.add_deployment(inputs=["input_prompt", "input_image"], name="flux")
    (entry,) = (await http.get("/deployments")).json()
    assert entry["id"] == dep and entry["name"] == "flux"
    assert [t["input_id"] for t in entry["input_types"]] == ["input_prompt", "input_image"]


@pytest.mark.parametrize(
    ("variant", "key", "pil_format"),
    [("png", "images", "PNG"), ("webp", "images", "WEBP"), ("gif", "gifs", "GIF")],
)
async def test_served_image_outputs_are_real_images(
    fake: FakeComfyDeploy, http: httpx.AsyncClient, variant: str, key: str, pil_format: str
) -> None:
    dep = fake.add_deployment(timeline=Timeline.success(variant))
    run_id = await create(http, dep, webhook=None)
    await fake.run_to_end(run_id)
    (output,) = (await http.get(f"/run/{run_id}")).json()["outputs"]
    (item,) = output["data"][key]
    response = await http.get(item["url"])
    assert response.status_code == 200
    with Image.open(io.BytesIO(response.content)) as image:
        assert image.format == pil_format
        assert image.size[0] > 0


async def test_video_variants(fake: FakeComfyDeploy, http: httpx.AsyncClient) -> None:
    dep = fake.add_deployment(timeline=Timeline.success("mp4_gifs", "mp4_images"))
    run_id = await create(http, dep, webhook=None)
    await fake.run_to_end(run_id)
    first, second = (await http.get(f"/run/{run_id}")).json()["outputs"]
    gif_item = first["data"]["gifs"][0]
    assert gif_item["format"] == "video/h264-mp4" and gif_item["filename"].endswith(".mp4")
    assert second["data"]["animated"] == [True]
    for item in (gif_item, second["data"]["images"][0]):
        content = (await http.get(item["url"])).content
        assert content[4:8] == b"ftyp"
    assert (await http.get(fake.base_url + "/files/missing.png")).status_code == 404


# --------------------------------------------------------------------------- loopback server


async def test_loopback_server_with_real_client(fake: FakeComfyDeploy, sink: Sink) -> None:
    dep = fake.add_deployment(inputs=["input_prompt"], timeline=Timeline.success("png"))
    async with fake.serve() as base_url:
        assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/api")
        async with ComfyDeployClient(KEY, base_url, max_per_second=None) as client:
            assert [d.id for d in await client.list_deployments()] == [dep]
            url = await client.upload_file(b"\x89PNG", "in.png", "image/png")
            assert url.startswith(base_url)
            run_id = await client.create_run(
                dep, {"input_prompt": "fox", "input_image": url}, webhook="http://bot.test/wh"
            )
            assert (await client.get_run(run_id)).status is RunStatus.WAITING
            await fake.run_to_end(run_id)
            snap = await client.get_run(run_id)
            assert snap.status is RunStatus.SUCCESS
            (media,) = snap.outputs
            assert media.media_type is MediaType.IMAGE and media.url.startswith(base_url)
            async with httpx.AsyncClient() as plain:
                png = (await plain.get(media.url)).content
            assert png.startswith(b"\x89PNG\r\n\x1a\n")
            other = await client.create_run(dep, {}, webhook="http://bot.test/wh")
            await client.cancel_run(other)
            assert (await client.get_run(other)).status is RunStatus.CANCELLED
            await fake.flush_webhooks()
    assert fake.base_url.startswith("http://comfydeploy.test")
    assert sink.payloads[-1]["status"] == "cancelled"
    assert sink.payloads[-1]["run_id"] == other
