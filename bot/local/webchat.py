"""The web chat of local mode: a page where a person talks to the real bot.

Routes (starlette):

* ``GET /`` and ``/static/*`` — the page (plain HTML/JS/CSS, no external resources).
* ``GET /api/state?since=<version>&wait=<s>&lang=<code>&notice=<id>`` — the chat as JSON; a
  long poll: it answers once the chat changed after ``since`` (a message, a live edit of the
  progress message, a callback answer) or after ``wait`` seconds.
* ``POST /api/send`` ``{"text", "lang", "reply_to"?}`` — a text message (``/command`` too).
* ``POST /api/upload`` (multipart: ``file``, ``caption``, ``lang``, ``as_file``) — a photo, or
  with ``as_file`` an image document (masks for /inpaint keep their exact pixels that way).
* ``POST /api/press`` ``{"message_id", "data", "lang"}`` — press an inline button.
* ``POST /api/pay`` ``{"message_id", "lang"}`` — "Pay (test)" on an invoice: the same Stars
  flow as Telegram's (``pre_checkout_query``, then ``successful_payment`` once the bot says
  ok), with no real Stars (``bot.local.stars``).
* ``GET /media/<file_id>`` — a file of the chat (what the bot sent, what the user uploaded).
* ``GET /healthz``.

Every POST needs the header ``X-Local-Chat: 1`` (a browser sends it cross-origin only after a
CORS preflight, which is never granted) and the ``Host`` must be one the server answers to (no
DNS rebinding): other web pages cannot drive the bot as the local admin. Off loopback every
request also needs ``LOCAL_MODE_TOKEN`` (``bot/local/guard.py``).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from bot.local.emulator import MAX_UPLOAD, BotApiEmulator, Message, parse_multipart
from bot.local.guard import LocalTokenMiddleware

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
MAX_WAIT = 25.0
LOCAL_HEADER = "x-local-chat"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
_LANG_RE = re.compile(r"[a-z]{2,3}")
_SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
        "style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


def language_code(value: Any) -> str | None:
    """The primary subtag of a browser language (``de-AT`` → ``de``); None when unusable."""
    if not isinstance(value, str):
        return None
    primary = value.strip().lower().replace("_", "-").split("-", 1)[0]
    return primary if _LANG_RE.fullmatch(primary) else None


def _snippet(msg: Message) -> str:
    text = msg.text if msg.text is not None else (msg.caption or "")
    if not text:
        text = {"photo": "🖼", "document": "📄", "animation": "🎞", "video": "🎬"}.get(
            msg.media_kind or "", ""
        )
    return text[:80]


def message_view(emulator: BotApiEmulator, msg: Message) -> dict[str, Any]:
    """What the page needs to draw one message."""
    out: dict[str, Any] = {
        "id": msg.message_id,
        "out": not msg.from_bot,
        "text": msg.text,
        "caption": msg.caption,
        "kind": msg.media_kind,
        "edits": msg.edit_count,
        "date": msg.date,
    }
    if msg.media_kind and msg.file_id:
        out["media"] = f"/media/{msg.file_id}"
        out["w"], out["h"] = msg.width, msg.height
        out["filename"] = msg.filename
    fields = msg.media_fields or {}
    if "invoice" in fields:
        invoice = fields["invoice"]
        out["invoice"] = {
            "title": invoice.get("title"),
            "description": invoice.get("description"),
            "stars": invoice.get("total_amount"),
        }
    for name in ("successful_payment", "refunded_payment"):
        if name in fields:
            out[name] = {"stars": fields[name].get("total_amount")}
    rows = (msg.reply_markup or {}).get("inline_keyboard") or []
    if rows:
        out["buttons"] = [
            [
                {k: b[k] for k in ("text", "callback_data", "url") if b.get(k) is not None}
                for b in row
            ]
            for row in rows
        ]
    if msg.reply_to is not None:
        target = emulator.message(msg.chat_id, msg.reply_to)
        if target is not None and not target.deleted:
            out["reply_to"] = {"id": target.message_id, "snippet": _snippet(target)}
    return out


def create_webchat_app(
    emulator: BotApiEmulator,
    *,
    user_id: int,
    first_name: str = "You",
    backend_label: str | None = None,
    loopback_only: bool = True,
    token: str | None = None,
    allowed_hosts: list[str] | None = None,
) -> Starlette:
    """The web chat for the single local user ``user_id`` (also the chat id). ``token``: every
    request needs it (``bot/local/guard.py``); ``allowed_hosts``: the Host check's list (loopback
    names, plus what a non-loopback bind answers to)."""
    chat = WebChat(emulator, user_id, first_name, backend_label)
    return chat.app(loopback_only=loopback_only, token=token, allowed_hosts=allowed_hosts)


class WebChat:
    """The routes of the web chat, over one emulator and its one local user."""

    def __init__(
        self,
        emulator: BotApiEmulator,
        user_id: int,
        first_name: str,
        backend_label: str | None,
    ) -> None:
        self.emulator = emulator
        self.user_id = user_id
        self.first_name = first_name
        self.backend_label = backend_label

    def user(self, lang: Any) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.user_id, "is_bot": False, "first_name": self.first_name}
        code = language_code(lang)
        if code:
            out["language_code"] = code
        return out

    @staticmethod
    def check_post(request: Request) -> Response | None:
        if request.headers.get(LOCAL_HEADER) != "1":
            return JSONResponse({"error": "missing X-Local-Chat header"}, status_code=403)
        return None

    @staticmethod
    async def json_body(request: Request) -> dict[str, Any] | None:
        try:
            body = await request.json()
        except ValueError:
            return None
        return body if isinstance(body, dict) else None

    @staticmethod
    async def index(request: Request) -> Response:
        response = FileResponse(STATIC_DIR / "index.html", media_type="text/html")
        response.headers["cache-control"] = "no-cache"
        return response

    async def state(self, request: Request) -> Response:
        q = request.query_params
        try:
            since = int(q.get("since", "-1"))
            wait = min(MAX_WAIT, max(0.0, float(q.get("wait", "0"))))
            notice_after = int(q.get("notice", "0"))
        except ValueError:
            return JSONResponse({"error": "bad query"}, status_code=400)
        version = await self.emulator.wait_changed(since, wait)
        lang = language_code(q.get("lang")) or ""
        commands = self.emulator.commands.get(lang) or self.emulator.commands.get("", [])
        return JSONResponse(
            {
                "version": version,
                "bot": {
                    "name": self.emulator.bot_user["first_name"],
                    "username": self.emulator.bot_user["username"],
                },
                "self.user_id": self.user_id,
                "backend": self.backend_label,
                "typing": self.emulator.typing(self.user_id),
                "commands": commands,
                "messages": [
                    message_view(self.emulator, m) for m in self.emulator.messages(self.user_id)
                ],
                "notices": [
                    {"id": n.id, "text": n.text, "alert": n.alert}
                    for n in self.emulator.notices(self.user_id, notice_after)
                ],
            },
            headers={"cache-control": "no-store"},
        )

    async def send(self, request: Request) -> Response:
        if (refused := self.check_post(request)) is not None:
            return refused
        body = await self.json_body(request)
        if body is None or not isinstance(body.get("text"), str):
            return JSONResponse({"error": "text is required"}, status_code=400)
        reply_to = body.get("reply_to")
        try:
            msg = self.emulator.send_text(
                self.user(body.get("lang")),
                body["text"],
                reply_to=reply_to if isinstance(reply_to, int) else None,
            )
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"message_id": msg.message_id})

    async def upload(self, request: Request) -> Response:
        if (refused := self.check_post(request)) is not None:
            return refused
        content_type = request.headers.get("content-type", "")
        if not content_type.startswith("multipart/form-data"):
            return JSONResponse({"error": "multipart/form-data expected"}, status_code=400)
        body = bytearray()
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > MAX_UPLOAD + 64 * 1024:
                return JSONResponse({"error": "file is too big"}, status_code=413)
        # The stdlib parser (like the emulator's): no extra dependency for one small form.
        fields, files = parse_multipart(content_type, bytes(body))
        if "file" not in files:
            return JSONResponse({"error": "file is required"}, status_code=400)
        filename, data = files["file"]
        reply_to = fields.get("reply_to", "")
        try:
            msg = self.emulator.send_photo(
                self.user(fields.get("lang")),
                data,
                caption=fields.get("caption"),
                filename=filename,
                as_document=fields.get("as_file") in ("1", "true", "on"),
                reply_to=int(reply_to) if reply_to.isdigit() else None,
            )
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"message_id": msg.message_id})

    async def press(self, request: Request) -> Response:
        if (refused := self.check_post(request)) is not None:
            return refused
        body = await self.json_body(request)
        if body is None or not isinstance(body.get("message_id"), int):
            return JSONResponse({"error": "message_id is required"}, status_code=400)
        if not isinstance(body.get("data"), str):
            return JSONResponse({"error": "data is required"}, status_code=400)
        try:
            self.emulator.press(self.user(body.get("lang")), body["message_id"], body["data"])
        except LookupError as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)
        return JSONResponse({"ok": True})

    async def pay(self, request: Request) -> Response:
        if (refused := self.check_post(request)) is not None:
            return refused
        body = await self.json_body(request)
        if body is None or not isinstance(body.get("message_id"), int):
            return JSONResponse({"error": "message_id is required"}, status_code=400)
        try:
            self.emulator.press_pay(self.user(body.get("lang")), self.user_id, body["message_id"])
        except LookupError as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)
        return JSONResponse({"ok": True})

    async def media(self, request: Request) -> Response:
        stored = self.emulator.file(request.path_params["file_id"])
        if stored is None:
            return PlainTextResponse("not found", status_code=404)
        headers = {"cache-control": "private, max-age=3600"}
        if request.query_params.get("download"):
            ext = stored.file_path.rsplit(".", 1)[-1]
            headers["content-disposition"] = f'attachment; filename="{stored.file_id}.{ext}"'
        return Response(stored.data, media_type=stored.content_type, headers=headers)

    @staticmethod
    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    def app(
        self,
        *,
        loopback_only: bool,
        token: str | None = None,
        allowed_hosts: list[str] | None = None,
    ) -> Starlette:
        middleware = [Middleware(SecurityHeaders)]
        # The Host check always applies (no DNS rebinding), on any bind.
        hosts = list(LOOPBACK_HOSTS) if loopback_only else [*LOOPBACK_HOSTS, *(allowed_hosts or [])]
        middleware.append(Middleware(TrustedHostMiddleware, allowed_hosts=hosts))
        if token:
            middleware.append(Middleware(LocalTokenMiddleware, token=token))
        return Starlette(
            routes=[
                Route("/", self.index),
                Route("/api/state", self.state),
                Route("/api/send", self.send, methods=["POST"]),
                Route("/api/upload", self.upload, methods=["POST"]),
                Route("/api/press", self.press, methods=["POST"]),
                Route("/api/pay", self.pay, methods=["POST"]),
                Route("/media/{file_id}", self.media),
                Route("/healthz", self.healthz),
                Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
            ],
            middleware=middleware,
        )


class SecurityHeaders:
    """ASGI middleware: a strict CSP (the page loads nothing from elsewhere) and friends."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                for name, value in _SECURITY_HEADERS.items():
                    if name.encode() not in present:
                        headers.append((name.encode(), value.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
