"""Security (issue #5 point 7): admin commands only for ADMIN_IDS, buttons only for their owner,
and no secret anywhere.

A full run — /make with progress and photo, /i2i with a downloaded photo, a failed run, admin
commands, a non-admin trying them, a stranger pressing someone else's Cancel button, webhook
calls with a wrong Telegram secret and a forged run token — is captured with DEBUG logging on
the root logger (all loggers). Neither the bot token, the ComfyDeploy API key, the webhook
secret nor a Telegram file URL ("/file/bot") may appear in any log record (message, args,
exception text), any request the bot sent to ComfyDeploy, or any message sent to users.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from bot.app import get_runtime
from bot.config import Settings
from bot.logging_setup import REDACTED
from bot.server import COMFYDEPLOY_PATH, SECRET_HEADER, TELEGRAM_PATH, create_app
from generation.models import RunStatus
from tests.e2e.inprocess import ADMIN_ID, E2E, MAKE_INPUTS, build_harness, jpeg
from tests.fakes.comfydeploy import FakeComfyDeploy, Timeline

API_KEY = "cd_live_Zq8RkT2mVx9Lp4Hs7Wn3Jb6Yc1Fd5Gu0"
WEBHOOK_SECRET = "whsec_Ek3Mp9Rt7Qx2Vn5Bz8Lc4Hj6"


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def texts(self) -> Iterator[str]:
        for record in self.records:
            yield record.getMessage()
            yield repr(record.args)
            yield repr(record.msg)
            if record.exc_info:
                yield logging.Formatter().formatException(record.exc_info)
            if record.exc_text:
                yield record.exc_text


@pytest.fixture
def capture() -> Iterator[Capture]:
    handler = Capture()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


@pytest.fixture
async def env(tmp_path: Path, capture: Capture) -> AsyncIterator[E2E]:
    harness, close = await build_harness(
        tmp_path, cd=FakeComfyDeploy(auth_token=API_KEY), webhook_secret=WEBHOOK_SECRET
    )
    try:
        yield harness
    finally:
        await close()


async def test_no_secret_in_logs_requests_or_messages(env: E2E, capture: Capture) -> None:
    token = env.fake.token
    assert get_runtime(env.app).webhook_secret == WEBHOOK_SECRET
    admin = env.fake.user(ADMIN_ID, "Ada")
    alice = env.fake.user(7101, "Alice")
    mallory = env.fake.user(7102, "Mallory")

    # admin commands (by the admin, then refused for a non-admin: nothing changes)
    dep = env.cd.add_deployment(inputs=MAKE_INPUTS, timeline=Timeline.success("png"))
    await env.command(admin, f"/deployment add MAKE {dep}")
    i2i = env.cd.add_deployment(inputs=(*MAKE_INPUTS, "input_image"))
    await env.command(admin, f"/deployment add I2I {i2i}")
    await env.command(admin, "/deployments")
    await env.command(admin, f"/grant {alice.id} 5")
    await env.command(admin, "/stats")
    for text in (f"/grant {mallory.id} 1000", f"/setbalance {mallory.id} 99", "/price MAKE 0",
                 f"/deployment remove {dep}"):  # fmt: skip
        await env.command(mallory, text)
        assert env.fake.last_message(mallory.id).text == env.t("admin.refused")
    assert await env.storage.ledger.get_balance(mallory.id) == 0
    assert len(await env.storage.deployments.list_deployments("MAKE")) == 1

    # /make: progress, photo; a stranger cannot cancel it with its button
    await env.command(alice, "/make a secret garden")
    run = await env.latest_run(alice.id)
    await env.backend_id(run.id)
    progress = env.progress_message(alice.id, await env.storage.runs.get_run(run.id))
    update = mallory.tap(progress, f"r:cx:{run.id}", queue=False)
    await env.feed(update)
    assert mallory.callback_answer(update)["text"] == env.t("cancel.not_yours")
    assert (await env.storage.runs.get_run(run.id)).status is not RunStatus.CANCELLED
    await env.finish(run.id)
    assert [m.media_kind for m in env.fake.sent_media(alice.id)] == ["photo"]

    # /i2i: the photo is downloaded through the Telegram file URL, which must go nowhere
    await env.feed(alice.send_photo(jpeg(), caption="/i2i in watercolour", queue=False))
    i2i_run = await env.latest_run(alice.id)
    await env.finish(i2i_run.id)

    # a failed run, and a run the backend refuses outright
    env.cd.deployments[dep].timeline = Timeline.failed()
    await env.command(alice, "/make doomed")
    await env.finish((await env.latest_run(alice.id)).id)
    env.cd.fail_next_creates(4, status=401)
    await env.command(alice, "/make unauthorized")
    await env.events.wait(lambda: any(e.name == "generation:failed" for e in env.events.items[-3:]))
    await env.settle()

    # webhook mode: a wrong Telegram secret and a forged run token are refused
    app = create_app(
        env.app,
        Settings(_env_file=None, public_url="http://bot.test"),
        env.services,
        webhook_secret=get_runtime(env.app).webhook_secret,
        run_webhook_key=get_runtime(env.app).run_webhook_key,
    )
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40002))
    async with httpx.AsyncClient(transport=transport, base_url="http://bot.test") as http:
        bad = await http.post(TELEGRAM_PATH, json={"update_id": 1}, headers={SECRET_HEADER: "x"})
        assert bad.status_code == 403
        forged = await http.post(f"{COMFYDEPLOY_PATH}?r={run.id}&t={'a' * 32}", json={})
        assert forged.status_code == 403
    await app.state.webhook_tasks.drain()

    secrets = {"bot token": token, "API key": API_KEY, "webhook secret": WEBHOOK_SECRET}
    forbidden = {**secrets, "Telegram file URL": "/file/bot"}
    # PTB logs its (redacted) file base URL at start-up: ".../file/bot***" is fine, a file URL
    # with anything else after "/file/bot" is not.
    file_url = re.compile(r"/file/bot(?!" + re.escape(REDACTED) + ")")
    assert len(capture.records) > 50  # the run was really logged (DEBUG included)

    # 1. logs
    for text in capture.texts():
        for what, value in secrets.items():
            assert value not in text, f"{what} in a log line: {text[:300]}"
        assert not file_url.search(text), f"a Telegram file URL in a log line: {text[:300]}"
    # 2. what the bot sent to ComfyDeploy (paths, queries, bodies; inputs are data URIs)
    assert env.cd.requests
    for request in env.cd.requests:
        blob = json.dumps([request.path, request.query, request.json], default=str)
        for what, value in forbidden.items():
            assert value not in blob, f"{what} sent to ComfyDeploy: {request.path}"
    i2i_inputs = next(c for c in env.cd.create_calls if "input_image" in c["inputs"])["inputs"]
    assert i2i_inputs["input_image"].startswith("data:image/")
    # 3. what users were sent (texts, captions, buttons) and every Bot API parameter
    for call in env.fake.call_log:
        blob = json.dumps(call.params, default=str)
        for what, value in forbidden.items():
            assert value not in blob, f"{what} in {call.method} to Telegram"
