"""The web chat in a real headless Chromium (Debian's, driven by Playwright's Python package).

Local mode runs in process on 127.0.0.1 with the preview backend. The browser opens the page,
sends ``/make a lighthouse at dusk``, sees the progress message change, sees the image, presses
a result button and saves a screenshot under the test's output folder (and, with
``UPDATE_SCREENSHOT=1``, as docs/screenshot.png for the README).

Chromium: ``chromium`` from PATH (or ``CHROMIUM_PATH``); when missing, the test installs
Debian's package if it can (root + apt-get), and is skipped with a printed reason only when
that is impossible. Playwright's own browser download is never used.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.local.runner import LocalRuntime
from handlers.deps import services_of
from tests.e2e.local import local_runtime

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "/make a lighthouse at dusk"
TIMEOUT_MS = 20_000
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def _skip(reason: str) -> None:
    print(f"\nSKIPPED browser test: {reason}", file=sys.stderr)
    pytest.skip(reason)


def _find_chromium() -> str | None:
    configured = os.environ.get("CHROMIUM_PATH")
    if configured and Path(configured).exists():
        return configured
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _install_chromium() -> str | None:
    """Debian's chromium through apt-get, when we are root on a Debian-like system."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return None
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        try:
            subprocess.run(command, env=env, capture_output=True, timeout=900, check=True)
        except (subprocess.SubprocessError, OSError):
            return None
    return _find_chromium()


@pytest.fixture(scope="module")
def chromium() -> str:
    path = _find_chromium() or _install_chromium()
    if path is None:
        _skip("chromium is not installed and cannot be installed here (needs root + apt-get)")
    assert path is not None
    if importlib.util.find_spec("playwright") is None:
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "playwright"],
            capture_output=True,
            timeout=600,
            check=False,
        )
        if importlib.util.find_spec("playwright") is None:
            _skip("the playwright package is not installed and pip could not install it")
    return path


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[LocalRuntime]:
    async with local_runtime(tmp_path, step=0.2) as rt:
        yield rt


# Records every distinct text of the first bot message (the progress message), so a quick
# edit cannot slip by between two checks.
RECORD_PROGRESS = """
() => {
  window.__progress = [];
  const note = () => {
    const first = document.querySelector('#messages li.msg.in .text');
    if (first) {
      const text = first.textContent;
      if (window.__progress[window.__progress.length - 1] !== text) window.__progress.push(text);
    }
  };
  new MutationObserver(note).observe(document.getElementById('messages'),
    { childList: true, subtree: true, characterData: true });
}
"""


async def test_the_web_chat_in_a_real_browser(
    chromium: str, runtime: LocalRuntime, tmp_path: Path
) -> None:
    from playwright.async_api import async_playwright

    out_dir = tmp_path / "output"
    out_dir.mkdir()
    i18n = services_of(runtime.application).i18n
    again_text = i18n.t("en", "actions.again")

    async with async_playwright() as pw:
        context = await pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"),  # a fresh --user-data-dir
            executable_path=chromium,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 900, "height": 1000},
            device_scale_factor=1,
            locale="en-US",
            color_scheme="light",
        )
        try:
            page = context.pages[0] if context.pages else await context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(runtime.url)
            await page.wait_for_selector("#welcome:not([hidden])")
            assert await page.locator("#backend-badge").is_visible()
            await page.evaluate(RECORD_PROGRESS)

            await page.fill("#input", PROMPT)
            await page.keyboard.press("Enter")
            await page.wait_for_selector("#messages li.msg.out .text")
            assert await page.locator("#messages li.msg.out .text").first.inner_text() == PROMPT

            # the progress message appears and is edited live (at least one change seen)
            await page.wait_for_selector("#messages li.msg.in .text")
            await page.wait_for_function("() => window.__progress.length >= 2")
            progress: list[Any] = await page.evaluate("window.__progress")
            assert any("preview" in text for text in progress), progress

            # the image appears (and really loads)
            photo = page.locator('#messages li.msg.in[data-kind="photo"]').first
            await photo.locator("img").wait_for()
            await page.wait_for_function(
                "() => { const i = document.querySelector("
                "'#messages li.msg.in[data-kind=photo] img'); "
                "return i && i.complete && i.naturalWidth > 0; }"
            )
            assert "lighthouse at dusk" in await photo.locator(".text").inner_text()
            # the progress message reached its final state (no Cancel button any more)
            await page.wait_for_function(
                "() => { const p = document.querySelector('#messages li.msg.in');"
                " return p && !p.querySelector('.kb-button'); }"
            )
            assert not errors, errors
            shot = out_dir / "webchat.png"
            await page.evaluate(
                "() => { const c = document.getElementById('chat'); c.scrollTop = c.scrollHeight; }"
            )
            await page.wait_for_function(  # the edit highlight has faded
                "() => document.getAnimations().every(a => a.playState !== 'running')"
            )
            await page.screenshot(path=str(shot))

            # press a result button: "again with a new seed" makes a second image
            await photo.get_by_role("button", name=again_text).click()
            await page.wait_for_function(
                "() => [...document.querySelectorAll("
                "'#messages li.msg.in[data-kind=photo] img')]"
                ".filter(i => i.complete && i.naturalWidth > 0).length >= 2"
            )
            await page.wait_for_function(
                "() => !document.querySelector('#messages li.msg.in .kb-button.pending')"
            )
            assert not errors, errors
            await page.screenshot(path=str(out_dir / "webchat-again.png"))
        finally:
            await context.close()

    assert shot.stat().st_size > 10_000
    print(f"\nscreenshot: {shot}")
    if os.environ.get("UPDATE_SCREENSHOT") == "1":
        target = ROOT / "docs" / "screenshot.png"
        target.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, target)
        print(f"copied to {target}")
