"""The web chat in a real headless Chromium: the view follows media to the bottom once it has
loaded, and old toasts are not shown again after a reload. Fixtures (Chromium, local mode on
127.0.0.1 with the preview backend) come from tests/test_webchat_browser.py."""

from __future__ import annotations

from pathlib import Path

from bot.local.runner import LocalRuntime
from tests.test_webchat_browser import CHROMIUM_ARGS, TIMEOUT_MS, chromium, runtime

__all__ = ["chromium", "runtime"]  # fixtures used by name

AT_BOTTOM = (
    "() => { const c = document.getElementById('chat');"
    " return c.scrollHeight > c.clientHeight + 200"
    " && c.scrollHeight - c.scrollTop - c.clientHeight < 4; }"
)
PHOTOS_LOADED = (
    "(n) => [...document.querySelectorAll('#messages li.msg.in[data-kind=photo] img')]"
    ".filter(i => i.complete && i.naturalWidth > 0).length >= n"
)


async def test_media_scrolls_to_the_bottom_and_toasts_do_not_replay(
    chromium: str, runtime: LocalRuntime, tmp_path: Path
) -> None:
    from playwright.async_api import async_playwright

    i18n = runtime.application.bot_data["services"].i18n
    again_text = i18n.t("en", "actions.again")
    toast_text = i18n.t("en", "actions.started")

    async with async_playwright() as pw:
        context = await pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=chromium,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 700, "height": 520},
            locale="en-US",
        )
        try:
            page = context.pages[0] if context.pages else await context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(runtime.url)
            await page.wait_for_selector("#welcome:not([hidden])")
            for n in range(1, 4):  # fill more than a screen first
                await page.fill("#input", "/help")
                await page.keyboard.press("Enter")
                await page.wait_for_function(
                    "(n) => document.querySelectorAll('#messages li.msg.in').length >= n", arg=n
                )

            await page.fill("#input", "/make a lighthouse at dusk")
            await page.keyboard.press("Enter")
            await page.wait_for_function(PHOTOS_LOADED, arg=1)
            await page.wait_for_function(AT_BOTTOM)  # the loaded image is in view

            photo = page.locator('#messages li.msg.in[data-kind="photo"]').last
            await photo.get_by_role("button", name=again_text).click()
            await page.wait_for_selector("#toast:not([hidden])")
            assert await page.locator("#toast").inner_text() == toast_text
            await page.wait_for_function(PHOTOS_LOADED, arg=2)
            await page.wait_for_function(AT_BOTTOM)

            # reload: the chat is drawn again, at the bottom, and the old toast stays hidden
            await page.reload()
            await page.wait_for_function(PHOTOS_LOADED, arg=2)
            assert await page.locator("#toast").is_hidden()
            await page.wait_for_function(AT_BOTTOM)
            assert await page.locator("#toast").is_hidden()
            assert not errors, errors
        finally:
            await context.close()
