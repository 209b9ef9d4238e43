"""The bare baseline: a minimal python-telegram-bot program that only receives ``/make``, posts
the create-run to ComfyDeploy and sends one message.

It takes updates the same way the real bot does in webhook mode (uvicorn + starlette posting
into PTB's ``update_queue``) so that the comparison isolates the bot's own work: no storage, no
queue, no tracking, no rate limiter, no logging. Configured by the same environment variables
as the bot (``TELEGRAM_BOT_TOKEN``, ``TELEGRAM_API_URL``, ``COMFYDEPLOY_API_KEY``,
``COMFYDEPLOY_API_URL``, ``PUBLIC_URL``, ``LISTEN_PORT``, ``WEBHOOK_SECRET``) plus
``BASELINE_DEPLOYMENT_ID``. Run: ``python -m bench.baseline_bot``.
"""

from __future__ import annotations

import asyncio
import json
import os

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from telegram import Update
from telegram.ext import Application, CommandHandler, ContextTypes


async def main() -> None:
    env = os.environ
    token = env["TELEGRAM_BOT_TOKEN"]
    root = env["TELEGRAM_API_URL"].rstrip("/")
    secret = env["WEBHOOK_SECRET"]
    deployment_id = env["BASELINE_DEPLOYMENT_ID"]
    comfy = httpx.AsyncClient(
        base_url=env["COMFYDEPLOY_API_URL"].rstrip("/"),
        headers={"Authorization": f"Bearer {env['COMFYDEPLOY_API_KEY']}"},
        timeout=30.0,
        limits=httpx.Limits(max_connections=256, max_keepalive_connections=256),
    )
    application = (
        Application.builder()
        .token(token)
        .base_url(f"{root}/bot")
        .base_file_url(f"{root}/file/bot")
        .concurrent_updates(256)
        .updater(None)
        .build()
    )

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

    application.add_handler(CommandHandler("make", make))

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
    async with application:
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
    await comfy.aclose()


if __name__ == "__main__":
    asyncio.run(main())
