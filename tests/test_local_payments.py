"""Local mode sells too: the web chat shows an invoice with a "Pay (test)" button that drives
the same Stars flow (pre-checkout, then successful_payment) through the emulator, no Telegram
and no real Stars involved."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from bot.local.runner import LOCAL_USER_ID, LocalRuntime, bind_socket, local_mode
from handlers.deps import services_of
from tests.e2e.local import HEADERS, Chat, make_settings


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[LocalRuntime]:
    sock = bind_socket("127.0.0.1", 0)
    settings = make_settings(tmp_path, star_packages="100:50")
    async with local_mode(settings, sock=sock, preview_step_seconds=0.05) as rt:
        yield rt


async def test_pay_test_button_buys_credits(runtime: LocalRuntime) -> None:
    async with httpx.AsyncClient(base_url=runtime.url, headers=HEADERS, timeout=10) as client:
        chat = Chat(client)
        await chat.send("/buy")
        invoice = await chat.until(
            lambda ms: next((m for m in ms if m.get("invoice")), None), "the invoice"
        )
        assert invoice["invoice"]["stars"] == 50 and not invoice["out"]
        assert (await client.post("/api/pay", json={"message_id": 9999})).status_code == 404
        r = await client.post("/api/pay", json={"message_id": invoice["id"], "lang": "en"})
        assert r.status_code == 200, r.text
        paid = await chat.until(
            lambda ms: next((m for m in ms if m.get("successful_payment")), None), "the payment"
        )
        assert paid["out"] and paid["successful_payment"]["stars"] == 50
        receipt = await chat.until(
            lambda ms: next((m for m in ms if (m["text"] or "").startswith("Thank you")), None),
            "the receipt",
        )
        assert "100" in receipt["text"]
        services = services_of(runtime.application)
        assert await services.storage.ledger.get_balance(LOCAL_USER_ID) == 100
        no_header = await client.post(
            "/api/pay", json={"message_id": invoice["id"]}, headers={"X-Local-Chat": ""}
        )
        assert no_header.status_code in (400, 403)
