"""Graceful shutdown on SIGTERM (issue #5 point 8): the real bot process stops taking
updates, finishes or persists in-flight work, closes its connections and exits 0 within a
bounded time; the next start recovers what was left (delivered exactly once, charged once).
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.e2e.process import USER_ID, BotWorld, bot_world, wait_until

LOCALE = json.loads((Path(__file__).resolve().parents[1] / "locales" / "en.json").read_text())
DONE = LOCALE["progress.done"]
PRICE = 5
BALANCE = 20
EXIT_WITHIN = 15.0  # seconds; the grace periods inside the bot are 10 s at most


async def _stopping(world: BotWorld) -> None:
    """The bot has begun its shutdown (PTB logged it): only then open a held gate, so the
    held work is finished *by the shutdown path*."""
    await wait_until(
        lambda: "Application is stopping" in world.logs(), what="the bot to start stopping"
    )


def _clean_exit_log(world: BotWorld) -> None:
    text = world.logs(tail=400)
    assert "Task was destroyed but it is pending" not in text, text
    assert "Traceback" not in text, text


async def _ledger(world: BotWorld, balance: int) -> None:
    problems, available, held = await world.ledger()
    assert problems == []
    assert (available, held) == (balance, 0)


async def _deliver_after_restart(world: BotWorld) -> dict:
    await world.start()
    backend = await world.wait_backend_run()
    await world.cd.run_to_end(backend.id)
    run = await world.wait_run(lambda r: r["delivery_state"] == "delivered", what="delivery")
    mid = run["progress_message_id"]
    await world.tg.wait_for(
        lambda: world.tg.message(USER_ID, mid).content == DONE, what="progress message done"
    )
    assert await world.terminate(EXIT_WITHIN) == 0
    return run


async def test_sigterm_with_run_in_flight_resumes_on_next_start(tmp_path: Path) -> None:
    async with bot_world(tmp_path) as world:
        await world.start()
        await world.make("a lighthouse at dusk")
        await world.wait_run(lambda r: r["status"] == "waiting" and r["progress_message_id"])
        assert await world.terminate(EXIT_WITHIN) == 0
        _clean_exit_log(world)
        run = await world.run()
        assert run is not None and run["status"] == "waiting" and run["backend_run_id"]
        assert run["charge_state"] == "held"
        updates_before = len(world.tg.calls("getUpdates"))

        await _deliver_after_restart(world)
        assert len(world.tg.calls("getUpdates")) > updates_before
        assert len(world.photos()) == 1
        assert len(world.cd.create_calls) == 1
        assert len(world.bot_texts()) == 1
        await _ledger(world, BALANCE - PRICE)


async def test_sigterm_lets_the_create_call_in_flight_finish(tmp_path: Path) -> None:
    """SIGTERM while the create call is in flight: the shutdown waits for its answer and
    persists the backend run id, so the run is tracked after the restart (not failed as
    SUBMIT_UNCERTAIN)."""
    async with bot_world(tmp_path) as world:
        world.cd.hold("create", after_handling=True)
        await world.start()
        await world.make("a lighthouse at dusk")
        await world.wait_run(lambda r: r["status"] == "submitting" and r["progress_message_id"])
        await wait_until(lambda: world.cd.held.get("create"), what="create held")
        world.sigterm()
        await _stopping(world)
        world.cd.release()
        assert await world.terminate(EXIT_WITHIN) == 0
        _clean_exit_log(world)
        run = await world.run()
        assert run is not None and run["status"] == "waiting" and run["backend_run_id"]

        await _deliver_after_restart(world)
        assert len(world.photos()) == 1
        assert world.cd.arrivals["create"] == 1
        await _ledger(world, BALANCE - PRICE)


async def test_sigterm_finishes_the_delivery_under_way(tmp_path: Path) -> None:
    """SIGTERM while the photo is being sent: the shutdown lets the delivery finish, settles
    the charge and shows the final state; the next start has nothing left to do."""
    async with bot_world(tmp_path) as world:
        await world.start()
        await world.make("a lighthouse at dusk")
        await world.wait_run(lambda r: r["progress_message_id"] is not None)
        world.tg.hold("sendPhoto")
        backend = await world.wait_backend_run()
        await world.cd.run_to_end(backend.id)
        await world.tg.wait_for(lambda: world.tg.held.get("sendPhoto"), what="sendPhoto held")
        world.sigterm()
        await _stopping(world)
        world.tg.release()
        assert await world.terminate(EXIT_WITHIN) == 0
        _clean_exit_log(world)
        run = await world.run()
        assert run is not None
        assert (run["delivery_state"], run["charge_state"]) == ("delivered", "settled")
        assert world.tg.message(USER_ID, run["progress_message_id"]).content == DONE

        await world.start()  # nothing to recover: no second photo
        assert await world.terminate(EXIT_WITHIN) == 0
        assert len(world.photos()) == 1
        await _ledger(world, BALANCE - PRICE)


async def test_sigterm_in_webhook_mode_shuts_down_cleanly(tmp_path: Path) -> None:
    """Webhook mode: uvicorn owns the signals; SIGTERM must still run the whole shutdown
    (PTB, the generation service, the database) and exit 0, not die on a re-raised signal."""
    import asyncio
    import os
    import signal
    import socket
    import sys

    from tests.e2e.process import REPO_ROOT, START_TIMEOUT

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with bot_world(tmp_path) as world:
        env = {
            **os.environ,
            "TELEGRAM_BOT_TOKEN": world.tg.token,
            "TELEGRAM_API_URL": world.tg_root,
            "COMFYDEPLOY_API_KEY": world.cd.auth_token,
            "COMFYDEPLOY_API_URL": world.cd_base,
            "DATABASE_PATH": world.db_path,
            "PUBLIC_URL": f"http://127.0.0.1:{port}",
            "LISTEN_HOST": "127.0.0.1",
            "LISTEN_PORT": str(port),
            "LOG_LEVEL": "INFO",
        }
        log_path = tmp_path / "webhook-bot.log"
        with open(log_path, "wb") as log:  # noqa: ASYNC230 - tiny, local
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bot",
                env=env,
                cwd=str(REPO_ROOT),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
            )
        try:
            await wait_until(
                lambda: world.tg.calls("setWebhook") or proc.returncode is not None,
                timeout=START_TIMEOUT,
                what="the bot to register its webhook",
            )
            assert proc.returncode is None, log_path.read_text()
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(EXIT_WITHIN):
                code = await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        text = log_path.read_text()
        assert code == 0, text
        assert "Traceback" not in text, text
        assert "Application is stopping" in text, text
        # The database was closed cleanly: SQLite removes the WAL file on the last close.
        assert not os.path.exists(world.db_path + "-wal"), text  # noqa: ASYNC240
