"""The bare baseline: a minimal python-telegram-bot program that only receives ``/make``, posts
the create-run to ComfyDeploy and answers.

Two modes, chosen like the bot's (``PUBLIC_URL`` set or not):

* webhook: updates arrive the way the real bot gets them in webhook mode (uvicorn + starlette
  posting into PTB's ``update_queue``); it answers ``queued <run id>: <prompt>`` after the
  create call and does nothing more (no webhook is asked for);
* polling: PTB's ``Updater`` long-polls ``getUpdates`` (PTB's defaults, as the bot's
  ``run_polling``); after the same answer it polls ``GET /run/{id}`` every
  ``RUN_POLL_INTERVAL`` seconds until the run ends, then sends ``result: <prompt>``.

So the comparison isolates the bot's own work: no storage, no queue, no tracker, no rate
limiter, no logging. Configured by the same environment variables as the bot
(``TELEGRAM_BOT_TOKEN``, ``TELEGRAM_API_URL``, ``COMFYDEPLOY_API_KEY``, ``COMFYDEPLOY_API_URL``,
``PUBLIC_URL``, ``LISTEN_PORT``, ``WEBHOOK_SECRET``, ``RUN_POLL_INTERVAL``) plus
``BASELINE_DEPLOYMENT_ID``. Run: ``python -m bench.baseline_bot``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from telegram import Update
from telegram.ext import Application, CommandHandler, ContextTypes

TERMINAL = {"success", "failed", "cancelled", "timeout"}
MAX_POLLS = 600  # a run the double never ends stops being polled


def build(env: dict[str, str], comfy: httpx.AsyncClient, polling: bool) -> Application:  # type: ignore[type-arg]
    root = env["TELEGRAM_API_URL"].rstrip("/")
    deployment_id = env["BASELINE_DEPLOYMENT_ID"]
    interval = float(env.get("RUN_POLL_INTERVAL") or 3.0)
    builder = (
        Application.builder()
        .token(env["TELEGRAM_BOT_TOKEN"])
        .base_url(f"{root}/bot")
        .base_file_url(f"{root}/file/bot")
        .concurrent_updates(256)
    )
    if not polling:
        builder = builder.updater(None)
    application = builder.build()

    async def follow(chat_id: int, run_id: str, prompt: str) -> None:
        for _ in range(MAX_POLLS):
            await asyncio.sleep(interval)
            response = await comfy.get(f"/run/{run_id}", params={"queue_position": "true"})
            if response.status_code == 200 and response.json().get("status") in TERMINAL:
                await application.bot.send_message(chat_id, f"result: {prompt}")
                return

    async def make(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.effective_message
        assert message is not None and message.text is not None
        prompt = message.text.partition(" ")[2]
        response = await comfy.post(
            "/run/deployment/queue",
            json={"deployment_id": deployment_id, "inputs": {"input_prompt": prompt}},
        )
        run_id = response.json().get("run_id")
        await context.bot.send_message(message.chat_id, f"queued {run_id}: {prompt}")
        if polling and run_id:
            context.application.create_task(follow(message.chat_id, run_id, prompt))

    application.add_handler(CommandHandler("make", make))
    return application


async def serve_webhook(application: Application, env: dict[str, str]) -> None:  # type: ignore[type-arg]
    secret = env["WEBHOOK_SECRET"]

    async def telegram(request: Request) -> Response:
        if request.headers.get("X-Telegram-Bot-Api-Secret-Token") != secret:
            return Response(status_code=403)
        update = Update.de_json(json.loads(await request.body()), application.bot)
        await application.update_queue.put(update)
        return Response(status_code=200)

    app = Starlette(routes=[Route("/telegram", telegram, methods=["POST"])])
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=int(env["LISTEN_PORT"]),
        log_level="warning",
        access_log=False,
        lifespan="off",
    )
    server = uvicorn.Server(config)
    await application.start()
    serving = asyncio.create_task(server.serve())
    for _ in range(1000):  # bounded readiness wait (≤ 10 s)
        if server.started or serving.done():
            break
        await asyncio.sleep(0.01)
    if not serving.done():
        await application.bot.set_webhook(f"{env['PUBLIC_URL']}/telegram", secret_token=secret)
    await serving  # returns on SIGTERM/SIGINT (uvicorn's handlers)
    await application.stop()


async def serve_polling(application: Application) -> None:  # type: ignore[type-arg]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    assert application.updater is not None
    await application.bot.delete_webhook()
    await application.updater.start_polling()
    await application.start()
    await stop.wait()
    await application.updater.stop()
    await application.stop()


async def main() -> None:
    env = dict(os.environ)
    polling = not env.get("PUBLIC_URL")
    comfy = httpx.AsyncClient(
        base_url=env["COMFYDEPLOY_API_URL"].rstrip("/"),
        headers={"Authorization": f"Bearer {env['COMFYDEPLOY_API_KEY']}"},
        timeout=30.0,
        limits=httpx.Limits(max_connections=256, max_keepalive_connections=256),
    )
    application = build(env, comfy, polling)
    async with application:
        if polling:
            await serve_polling(application)
        else:
            await serve_webhook(application, env)
    await comfy.aclose()


if __name__ == "__main__":
    asyncio.run(main())
