"""The web chat's invoice in a real headless Chromium: /buy shows the invoice with its
"Pay (test)" button; pressing it runs the Stars flow and the receipt appears (see
tests/test_webchat_browser.py for how Chromium is found)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.local.runner import LocalRuntime
from handlers.deps import services_of
from tests.e2e.local import local_runtime
from tests.test_webchat_browser import CHROMIUM_ARGS, TIMEOUT_MS, chromium

__all__ = ["chromium"]  # the fixture, shared


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[LocalRuntime]:
    async with local_runtime(tmp_path, star_packages="100:50") as rt:
        yield rt


async def test_pay_test_button_in_a_real_browser(
    chromium: str, runtime: LocalRuntime, tmp_path: Path
) -> None:
    from playwright.async_api import async_playwright

    services = services_of(runtime.application)
    async with async_playwright() as pw:
        context = await pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=chromium,
            headless=True,
            args=CHROMIUM_ARGS,
            locale="en-US",
        )
        try:
            page = context.pages[0] if context.pages else await context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(runtime.url)
            await page.fill("#input", "/buy")
            await page.keyboard.press("Enter")
            invoice = page.locator("#messages li.msg.in .invoice").first
            await invoice.wait_for()
            title = services.i18n.t("en", "pay.invoice_title", credits=100)
            assert await invoice.locator(".invoice-title").inner_text() == title
            await invoice.locator(".pay-button").click()
            thanks = services.i18n.t("en", "pay.receipt").split("{", 1)[0].strip()
            await page.get_by_text(thanks, exact=False).first.wait_for()
            assert await page.get_by_text("Paid 50 Stars (test)").count() == 1
            assert not errors, errors
        finally:
            await context.close()
    assert await services.storage.ledger.get_balance(runtime.user_id) == 100
