"""The ComfyUI double behaves like the recorded real server (shared/reference/comfyui)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.comfyui_support import png
from tests.fakes.comfyui import FakeComfyUI

_REPO = Path(__file__).resolve().parents[1]
# shared/ lies beside the repository (CI) or beside the folder of the work trees
RECORDED = next(
    (
        p / "shared" / "reference" / "comfyui"
        for p in (_REPO.parent, _REPO.parent.parent)
        if (p / "shared" / "reference" / "comfyui").is_dir()
    ),
    _REPO.parent / "shared" / "reference" / "comfyui",
)
CLIENT = "92d3192912a040a29e7770e99796ad4b"

T2I = {
    "1": {
        "class_type": "EmptyImage",
        "inputs": {"width": 512, "height": 512, "batch_size": 1, "color": 3368652},
    },
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "ImageBlur", "inputs": {"image": ["2", 0], "blur_radius": 4, "sigma": 1.5}},
    "4": {
        "class_type": "SaveImage",
        "inputs": {"images": ["3", 0], "filename_prefix": "tgbot/t2i"},
    },
}


@pytest.fixture
async def fake() -> AsyncIterator[FakeComfyUI]:
    server = FakeComfyUI()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def http(fake: FakeComfyUI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=fake.url, timeout=5) as client:
        yield client


def _collapse(types: list[str]) -> list[str]:
    out: list[str] = []
    for kind in types:
        if not out or out[-1] != kind:
            out.append(kind)
    return out


async def _frames_until_done(ws: Any, prompt_id: str) -> list[dict[str, Any]]:
    frames = []
    async with asyncio.timeout(5):
        while True:
            frame = json.loads(await ws.recv())
            frames.append(frame)
            data = frame["data"]
            if (
                frame["type"] == "executing"
                and data.get("node") is None
                and data.get("prompt_id") == prompt_id
            ):
                return frames


async def _submit(http: httpx.AsyncClient, prompt: dict[str, Any], **extra: Any) -> httpx.Response:
    return await http.post("/prompt", json={"prompt": prompt, "client_id": CLIENT, **extra})


async def test_message_order_matches_the_recorded_server(
    fake: FakeComfyUI, http: httpx.AsyncClient
) -> None:
    recorded_path = RECORDED / "exchange-basic.json"
    if not recorded_path.exists():
        pytest.skip("shared/reference/comfyui is not beside the repository")
    recorded = json.loads(recorded_path.read_text())
    pid = "36a1310b-af50-4908-886e-9e8b4723a2fd"
    expected = _collapse(
        [
            e["ws"]["type"]
            for e in recorded["events"]
            if e["ws"]["data"].get("prompt_id") == pid
            or (e["ws"]["type"] == "status" and 7.7 < e["t"] < 8.04)
        ]
    )
    async with connect(f"ws://127.0.0.1:{fake.port}/ws?clientId={CLIENT}") as ws:
        hello = json.loads(await ws.recv())
        assert hello["type"] == "status" and hello["data"]["sid"] == CLIENT
        await ws.send(json.dumps({"type": "feature_flags", "data": {}}))
        flags = json.loads(await ws.recv())
        assert flags == {
            "type": "feature_flags",
            "data": {"supports_preview_metadata": True, "max_upload_size": 104857600},
        }
        answer = await _submit(http, T2I)
        assert answer.status_code == 200
        body = answer.json()
        assert set(body) == {"prompt_id", "number", "node_errors"} and body["node_errors"] == {}
        frames = await _frames_until_done(ws, body["prompt_id"])
    assert _collapse([f["type"] for f in frames]) == expected
    executed = next(f for f in frames if f["type"] == "executed")
    item = executed["data"]["output"]["images"][0]
    assert (
        item["subfolder"] == "tgbot"
        and item["type"] == "output"
        and item["filename"].startswith("t2i_")
    )
    view = await http.get("/view", params={**item})
    assert view.status_code == 200 and view.content.startswith(b"\x89PNG")


async def test_identical_graphs_are_cached_and_point_to_the_same_file(
    fake: FakeComfyUI, http: httpx.AsyncClient
) -> None:
    first = (await _submit(http, T2I)).json()["prompt_id"]
    await fake.wait_idle()
    second = (await _submit(http, T2I)).json()["prompt_id"]
    await fake.wait_idle()
    h1 = (await http.get(f"/history/{first}")).json()[first]
    h2 = (await http.get(f"/history/{second}")).json()[second]
    assert h1["outputs"] == h2["outputs"]
    cached = next(m for m in h2["status"]["messages"] if m[0] == "execution_cached")
    assert cached[1]["nodes"] == ["1", "2", "3", "4"]
    changed = json.loads(json.dumps(T2I))
    changed["3"]["inputs"]["blur_radius"] = 6
    third = (await _submit(http, changed)).json()["prompt_id"]
    await fake.wait_idle()
    h3 = (await http.get(f"/history/{third}")).json()[third]
    assert next(m for m in h3["status"]["messages"] if m[0] == "execution_cached")[1]["nodes"] == [
        "1",
        "2",
    ]
    assert (
        h3["outputs"]["4"]["images"][0]["filename"] != h1["outputs"]["4"]["images"][0]["filename"]
    )


async def test_validation_errors_have_the_recorded_shapes(http: httpx.AsyncClient) -> None:
    unknown = await _submit(http, {"1": {"class_type": "NoSuchNode", "inputs": {}}})
    assert unknown.status_code == 400
    assert unknown.json() == {
        "error": {
            "type": "invalid_prompt",
            "message": "Cannot execute because node NoSuchNode does not exist.",
            "details": "Node ID '#1'",
            "extra_info": {},
        },
        "node_errors": {},
    }
    no_out = await _submit(
        http,
        {
            "1": {
                "class_type": "EmptyImage",
                "inputs": {"width": 512, "height": 512, "batch_size": 1, "color": 0},
            }
        },
    )
    assert no_out.status_code == 400 and no_out.json()["error"]["type"] == "prompt_no_outputs"
    bad = await _submit(
        http,
        {
            "1": {"class_type": "LoadImage", "inputs": {"image": "does_not_exist.png"}},
            "2": {
                "class_type": "ImageScale",
                "inputs": {
                    "image": ["1", 0],
                    "upscale_method": "bilinear",
                    "width": 99999,
                    "height": 480,
                    "crop": "disabled",
                },
            },
            "3": {
                "class_type": "SaveImage",
                "inputs": {"images": ["2", 0], "filename_prefix": "tgbot/i2i"},
            },
        },
    )
    assert bad.status_code == 400
    body = bad.json()
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    assert body["node_errors"]["1"]["errors"][0]["type"] == "custom_validation_failed"
    assert body["node_errors"]["1"]["class_type"] == "LoadImage"
    width = body["node_errors"]["2"]["errors"][0]
    assert width["type"] == "value_bigger_than_max"
    assert width["message"] == "Value 99999 bigger than max of 16384"
    assert width["extra_info"]["input_name"] == "width"
    assert body["node_errors"]["2"]["dependent_outputs"] == ["3"]
    none = await http.post("/prompt", json={"client_id": CLIENT})
    assert none.status_code == 400 and none.json()["error"]["type"] == "no_prompt"


async def test_runtime_error_reports_like_the_server(
    fake: FakeComfyUI, http: httpx.AsyncClient
) -> None:
    graph = json.loads(json.dumps(T2I))
    graph["4"]["inputs"]["filename_prefix"] = "../../escape"
    async with connect(f"ws://127.0.0.1:{fake.port}/ws?clientId={CLIENT}") as ws:
        await ws.recv()
        pid = (await _submit(http, graph)).json()["prompt_id"]
        frames = await _frames_until_done(ws, pid)
    error = next(f for f in frames if f["type"] == "execution_error")["data"]
    assert error["node_type"] == "SaveImage" and error["exception_type"] == "Exception"
    assert "outside the output folder" in error["exception_message"]
    assert "traceback" in error and "current_inputs" in error
    entry = (await http.get(f"/history/{pid}")).json()[pid]
    assert entry["status"]["status_str"] == "error" and entry["status"]["completed"] is False
    assert entry["outputs"] == {}


async def test_interrupt_only_hits_the_running_prompt_and_delete_only_pending(
    fake: FakeComfyUI, http: httpx.AsyncClient
) -> None:
    fake.pause()
    a = (await _submit(http, T2I)).json()["prompt_id"]
    changed = json.loads(json.dumps(T2I))
    changed["1"]["inputs"]["color"] = 1
    b = (await _submit(http, changed)).json()["prompt_id"]
    front = (
        await _submit(
            http,
            {**changed, "1": {**changed["1"], "inputs": {**changed["1"]["inputs"], "color": 2}}},
            front=True,
        )
    ).json()
    assert front["number"] < 0
    fake.resume()
    await fake.wait_running(a)
    fake.pause()
    queue = (await http.get("/queue")).json()
    assert [item[1] for item in queue["queue_running"]] == [a]
    assert [item[1] for item in queue["queue_pending"]] == [front["prompt_id"], b]  # front first
    assert (await http.get("/prompt")).json() == {"exec_info": {"queue_remaining": 3}}
    assert (await http.post("/interrupt", json={"prompt_id": b})).status_code == 200  # no-op
    assert (await http.post("/queue", json={"delete": [b]})).status_code == 200
    assert (await http.post("/interrupt", json={"prompt_id": a})).status_code == 200
    fake.resume()
    await fake.wait_idle()
    entry = (await http.get(f"/history/{a}")).json()[a]
    assert entry["status"]["status_str"] == "error"
    assert [m[0] for m in entry["status"]["messages"]][-1] == "execution_interrupted"
    assert (await http.get(f"/history/{b}")).json() == {}  # deleted: no history, ever
    assert b not in fake.executed_prompts and front["prompt_id"] in fake.executed_prompts
    assert (await http.get("/api/queue")).json() == {"queue_running": [], "queue_pending": []}


async def test_uploads_are_renamed_unless_identical(
    fake: FakeComfyUI, http: httpx.AsyncClient
) -> None:
    def upload(data: bytes, **fields: str) -> Any:
        return http.post(
            "/upload/image", files={"image": ("bot_src.png", data, "image/png")}, data=fields
        )

    first = (await upload(png("red"))).json()
    assert first == {"name": "bot_src.png", "subfolder": "", "type": "input"}
    assert (await upload(png("red"))).json()["name"] == "bot_src.png"  # same bytes
    assert (await upload(png("blue"))).json()["name"] == "bot_src (1).png"
    assert (await upload(png("green"), overwrite="true")).json()["name"] == "bot_src.png"
    assert (await http.post("/upload/image")).status_code == 400
    view = await http.get("/view", params={"filename": "bot_src (1).png", "type": "input"})
    assert view.content == png("blue")


async def test_history_is_lost_on_restart(fake: FakeComfyUI, http: httpx.AsyncClient) -> None:
    pid = (await _submit(http, T2I)).json()["prompt_id"]
    await fake.wait_idle()
    assert (await http.get(f"/history/{pid}")).json()
    await fake.restart()
    async with httpx.AsyncClient(base_url=fake.url) as fresh:
        assert (await fresh.get(f"/history/{pid}")).json() == {}
        assert (await fresh.get("/queue")).json() == {"queue_running": [], "queue_pending": []}


async def test_origin_mismatch_is_403_on_http_and_websocket(
    fake: FakeComfyUI, http: httpx.AsyncClient
) -> None:
    assert (await http.get("/queue", headers={"Origin": "http://evil.example"})).status_code == 403
    same = await http.get("/queue", headers={"Origin": f"http://127.0.0.1:{fake.port}"})
    assert same.status_code == 200
    with pytest.raises(Exception) as info:
        async with connect(
            f"ws://127.0.0.1:{fake.port}/ws?clientId=x", origin="http://evil.example"
        ):
            pass
    assert "403" in str(info.value)


async def test_reconnecting_client_is_told_the_running_node(
    fake: FakeComfyUI, http: httpx.AsyncClient
) -> None:
    async with connect(f"ws://127.0.0.1:{fake.port}/ws?clientId={CLIENT}") as ws:
        await ws.recv()
        fake.pause()
        pid = (await _submit(http, T2I)).json()["prompt_id"]
        await fake.wait_running(pid)
    async with connect(f"ws://127.0.0.1:{fake.port}/ws?clientId={CLIENT}") as ws:
        assert json.loads(await ws.recv())["type"] == "status"
        replay = json.loads(await ws.recv())
        assert replay["type"] == "executing" and "prompt_id" not in replay["data"]
    fake.resume()
