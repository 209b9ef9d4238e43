"""A strict in-process fake of the Telegram Bot API, served through ``httpx.MockTransport``.

Wire it into PTB with ``HTTPXRequest(httpx_kwargs={"transport": fake.transport})`` for both the
request and the get-updates request (``fake.request()`` builds one). Methods live at
``<any host>/bot<token>/<method>``, files at ``/file/bot<token>/<path>``.

It is strict where real Telegram is strict, so bugs surface in tests rather than in production:
"message is not modified", callback data of 1–64 bytes, text/caption lengths, empty text,
photo/document/getFile size limits (and photo dimensions), unknown messages and chats, unknown
callback query ids, getUpdates while a webhook is set, an optional flood-control model with an
injectable clock, and scripted faults (``fail_next``).

The user side (``fake.user(...)``) builds updates as real clients produce them and queues them
for ``getUpdates`` (and returns them, for ``Application.process_update`` or webhook posts).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx

# The Bot API semantics live in the local-mode emulator's core; this module adds the test side.
from bot.local.emulator import MAX_CALLBACK_DATA as MAX_CALLBACK_DATA
from bot.local.emulator import MAX_CAPTION as MAX_CAPTION
from bot.local.emulator import MAX_TEXT as MAX_TEXT
from bot.local.emulator import NOT_MODIFIED as _NOT_MODIFIED
from bot.local.emulator import ApiError, BotApiCore, _int, bad_request, image_size, utf16_len

DEFAULT_TOKEN = "123456789:AAFakeTokenForTestsOnly_abcdefghijklm"

MAX_CALLBACK_ANSWER = 200
PHOTO_UPLOAD_LIMIT = 10 * 1024 * 1024
FILE_UPLOAD_LIMIT = 50 * 1024 * 1024
FILE_DOWNLOAD_LIMIT = 20 * 1024 * 1024

NOT_MODIFIED = f"Bad Request: {_NOT_MODIFIED}"

CHAT_ACTIONS = {
    "typing",
    "upload_photo",
    "record_video",
    "upload_video",
    "record_voice",
    "upload_voice",
    "upload_document",
    "choose_sticker",
    "find_location",
    "record_video_note",
    "upload_video_note",
}
_COMMAND_RE = re.compile(r"^[a-z0-9_]{1,32}$")
_SECRET_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{1,256}$")
MEDIA_KINDS = ("photo", "document", "animation", "video", "sticker")


@dataclass(slots=True)
class Call:
    """One Bot API call as the fake received it (params decoded, uploads as bytes)."""

    method: str
    params: dict[str, Any]
    files: dict[str, tuple[str | None, bytes]]
    status: int = 200


@dataclass(slots=True)
class FakeFile:
    file_id: str
    file_unique_id: str
    data: bytes
    file_path: str
    size: int


@dataclass(slots=True)
class FakeChat:
    id: int
    type: str  # private | group | supergroup
    title: str | None = None
    first_name: str | None = None
    username: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "type": self.type}
        if self.title is not None:
            out["title"] = self.title
        if self.first_name is not None:
            out["first_name"] = self.first_name
        if self.username is not None:
            out["username"] = self.username
        return out


@dataclass(slots=True)
class FakeMessage:
    """A message in a chat — sent by the bot or by a fake user."""

    message_id: int
    chat_id: int
    from_bot: bool
    sender: dict[str, Any]
    date: int
    text: str | None = None
    caption: str | None = None
    entities: list[dict[str, Any]] | None = None
    reply_markup: dict[str, Any] | None = None
    media_kind: str | None = None  # photo | document | animation | video | sticker
    media: bytes | None = None  # uploaded bytes (None when sent by file_id/URL)
    media_ref: str | None = None  # file_id or URL when not uploaded
    filename: str | None = None
    mime_type: str | None = None
    file_id: str | None = None
    width: int | None = None
    height: int | None = None
    reply_to_message_id: int | None = None
    message_thread_id: int | None = None
    parse_mode: str | None = None
    edit_count: int = 0
    deleted: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def reply_to(self) -> int | None:  # the core's name
        return self.reply_to_message_id

    @reply_to.setter
    def reply_to(self, value: int | None) -> None:
        self.reply_to_message_id = value

    @property
    def media_fields(self) -> dict[str, Any]:  # the core's name
        return self.extra

    @media_fields.setter
    def media_fields(self, value: dict[str, Any]) -> None:
        self.extra = value

    @property
    def buttons(self) -> list[dict[str, Any]]:
        """All inline buttons, row by row."""
        if not self.reply_markup:
            return []
        rows = self.reply_markup.get("inline_keyboard") or []
        return [button for row in rows for button in row]

    @property
    def button_texts(self) -> list[str]:
        return [b.get("text", "") for b in self.buttons]

    @property
    def invoice(self) -> dict[str, Any] | None:
        """The ``invoice`` of a message the bot sent with sendInvoice."""
        return self.extra.get("invoice")

    @property
    def content(self) -> str:
        """Text or caption (whichever the message has)."""
        return self.text if self.text is not None else (self.caption or "")


@dataclass(slots=True)
class _Gate:
    """A held route/method: requests wait on ``event``; ``drop`` (set on release) makes the
    requests held before handling vanish, as if they never arrived."""

    event: asyncio.Event
    after_handling: bool
    drop: bool = False
    passes: int = 0  # calls still let through before the gate closes


@dataclass(slots=True)
class _Fault:
    status: int
    retry_after: int | None
    description: str | None
    timeout: bool


class _TokenBucket:
    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def take(self, now: float) -> float:
        """0 when a token was taken, else seconds until one is available."""
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class _Window:
    def __init__(self, limit: int, period: float) -> None:
        self.limit = limit
        self.period = period
        self.stamps: deque[float] = deque()

    def check(self, now: float) -> float:
        while self.stamps and now - self.stamps[0] >= self.period:
            self.stamps.popleft()
        if len(self.stamps) < self.limit:
            return 0.0
        return self.period - (now - self.stamps[0])

    def add(self, now: float) -> None:
        self.stamps.append(now)


@dataclass(slots=True)
class FloodControl:
    """Telegram's (undocumented, approximate) limits: ~1 msg/s per private chat with a short
    burst, 20 per minute per group, 30 per second overall."""

    private_rate: float = 1.0
    private_burst: float = 3.0
    group_per_minute: int = 20
    overall_per_second: int = 30


_LIMITED_METHODS = {
    "sendMessage",
    "sendPhoto",
    "sendDocument",
    "sendAnimation",
    "sendVideo",
    "sendSticker",
    "editMessageText",
    "editMessageCaption",
    "editMessageReplyMarkup",
}


class FakeTelegram(BotApiCore):
    """The fake Bot API: the core's semantics plus the test controls. See the module
    docstring."""

    message_cls = FakeMessage
    can_join_groups = True
    accepts_urls = True

    def __init__(
        self,
        token: str = DEFAULT_TOKEN,
        *,
        bot_username: str = "fake_test_bot",
        clock: Callable[[], float] = time.monotonic,
        flood_control: FloodControl | bool | None = None,
        long_poll_cap: float = 0.05,
        strict_images: bool = True,
        auto_queue: bool = True,
    ) -> None:
        super().__init__(
            token,
            bot_username=bot_username,
            bot_name="Fake Bot",
            clock=clock,
            long_poll_cap=long_poll_cap,
            auto_queue=auto_queue,
        )
        self.strict_images = strict_images
        self.flood: FloodControl | None = (
            FloodControl() if flood_control is True else (flood_control or None)
        )
        self.transport = httpx.MockTransport(self._handle)
        self.files: dict[str, FakeFile] = self._files
        self.call_log: list[Call] = []
        self.webhook: dict[str, Any] | None = None
        # (unix time, message) of Telegram's last failed webhook delivery: getWebhookInfo's
        # last_error_date / last_error_message (Telegram keeps them after later successes).
        self.webhook_last_error: tuple[int, str] | None = None
        self._faults: dict[str, deque[_Fault]] = {}
        self._buckets: dict[int, _TokenBucket] = {}
        self._group_windows: dict[int, _Window] = {}
        self._overall = _Window(30, 1.0)
        self.users: dict[int, FakeUser] = {}
        # gates: hold calls of a method (see hold())
        self._gates: dict[str, _Gate] = {}
        self.members: dict[tuple[int, int], str] = {}  # (chat, user) -> getChatMember status
        self.held: dict[str, int] = {}  # method -> calls waiting at a gate right now
        self._outage: tuple[float, int] | None = None  # (until, status), see outage()

    # ------------------------------------------------------------------ wiring helpers
    def request(self, **kwargs: Any) -> Any:
        """A PTB ``HTTPXRequest`` bound to this fake."""
        from telegram.request import HTTPXRequest

        return HTTPXRequest(httpx_kwargs={"transport": self.transport}, **kwargs)

    def bot(self) -> Any:
        """A plain PTB ``Bot`` talking to this fake (call ``await bot.initialize()``)."""
        from telegram import Bot

        return Bot(self.token, request=self.request(), get_updates_request=self.request())

    @contextlib.asynccontextmanager
    async def serve(self) -> AsyncIterator[str]:
        """Serve this fake on 127.0.0.1 (free port); yields the Bot API root for
        ``TELEGRAM_API_URL`` (methods at ``{root}/bot{token}/{method}``)."""
        from tests.fakes.loopback import asgi_from_httpx_handler, serve_asgi

        async with serve_asgi(asgi_from_httpx_handler(self._handle)) as root:
            yield root

    # ------------------------------------------------------------------ test controls
    def hold(self, method: str, *, after_handling: bool = False, pass_first: int = 0) -> None:
        """Hold every call of ``method`` until :meth:`release`. Before handling the call has
        no effect yet; with ``after_handling`` it takes effect (a message is stored) and only
        the answer waits; the first ``pass_first`` calls pass freely. ``held[method]`` counts
        waiting calls (``wait_for`` sees changes)."""
        self._gates[method] = _Gate(asyncio.Event(), after_handling, passes=pass_first)

    def release(self, method: str | None = None, *, drop: bool = False) -> None:
        """Open the gate of ``method`` (all gates when None); later calls pass freely."""
        for name in [method] if method is not None else list(self._gates):
            gate = self._gates.pop(name, None)
            if gate is not None:
                gate.drop = drop
                gate.event.set()

    async def _pass_gate(self, method: str, *, after_handling: bool) -> bool:
        """Wait at the gate of ``method`` if any; True when the call is to be dropped."""
        gate = self._gates.get(method)
        if gate is None or gate.after_handling != after_handling:
            return False
        if gate.passes > 0:
            gate.passes -= 1
            return False
        self.held[method] = self.held.get(method, 0) + 1
        self._touch()
        try:
            await gate.event.wait()
        finally:
            self.held[method] -= 1
            self._touch()
        return gate.drop and not after_handling

    def fail_next(
        self,
        method: str,
        status: int = 429,
        retry_after: int | None = 1,
        *,
        description: str | None = None,
        times: int = 1,
        timeout: bool = False,
    ) -> None:
        """Script the next ``times`` calls of ``method`` to fail (429 with ``retry_after`` by
        default; any status with ``description``; or a transport timeout)."""
        for _ in range(times):
            self._faults.setdefault(method, deque()).append(
                _Fault(status, retry_after if status == 429 else None, description, timeout)
            )

    def outage(self, until: float, status: int = 502) -> None:
        """Every call answers ``status`` (a gateway error, like Telegram's own 502s during an
        incident) until the fake's clock reaches ``until``."""
        self._outage = (until, status)

    def add_chat(
        self, chat_id: int, *, type_: str | None = None, title: str | None = None
    ) -> FakeChat:
        chat = self.chats.get(chat_id)
        if chat is None:
            if type_ is None:
                type_ = (
                    "private" if chat_id > 0 else ("supergroup" if chat_id < -(10**12) else "group")
                )
            chat = FakeChat(
                chat_id, type_, title=title or (None if type_ == "private" else "Group")
            )
            self._open_chat(chat_id, chat)
        return chat

    def group(self, chat_id: int = -1001234567890, title: str = "Test group") -> FakeChat:
        """A group chat (negative id; ≤ -10**12 → supergroup)."""
        if chat_id >= 0:
            raise ValueError("group chat ids are negative")
        return self.add_chat(chat_id, title=title)

    def user(
        self,
        user_id: int = 1001,
        first_name: str = "Alice",
        *,
        language_code: str | None = "en",
        username: str | None = None,
    ) -> FakeUser:
        user = FakeUser(self, user_id, first_name, language_code, username)
        self.users[user_id] = user
        chat = self.add_chat(user_id, type_="private")
        chat.first_name = first_name
        chat.username = username
        return user

    # ------------------------------------------------------------------ queries
    def messages(self, chat_id: int, *, include_user: bool = False) -> list[FakeMessage]:
        """The bot's messages in a chat, oldest first (with ``include_user`` also the users')."""
        return [
            m
            for m in self._messages.get(chat_id, {}).values()
            if not m.deleted and (include_user or m.from_bot)
        ]

    def last_message(self, chat_id: int, *, include_user: bool = False) -> FakeMessage | None:
        msgs = self.messages(chat_id, include_user=include_user)
        return msgs[-1] if msgs else None

    def calls(self, method: str | None = None) -> list[Call]:
        return [c for c in self.call_log if method is None or c.method == method]

    def sent_media(self, chat_id: int) -> list[FakeMessage]:
        return [m for m in self.messages(chat_id) if m.media_kind is not None]

    @property
    def pending_updates(self) -> list[dict[str, Any]]:
        return list(self._updates)

    async def wait_for(
        self,
        predicate: Callable[[], Any],
        *,
        timeout: float = 3.0,  # noqa: ASYNC109 - a bounded test wait; timeout is the API
        what: str = "condition",
    ) -> Any:
        """Wait (event-driven, bounded by ``timeout``) until ``predicate()`` is truthy."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            result = predicate()
            if result:
                return result
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            event = self._changed
            try:
                await asyncio.wait_for(event.wait(), remaining)
            except TimeoutError:
                pass

    async def wait_for_message(
        self,
        chat_id: int,
        contains: str | None = None,
        *,
        predicate: Callable[[FakeMessage], bool] | None = None,
        timeout: float = 3.0,  # noqa: ASYNC109
    ) -> FakeMessage:
        """The first bot message in ``chat_id`` whose text/caption contains ``contains`` (and
        matches ``predicate``), waiting for it to appear or to be edited into shape."""

        def find() -> FakeMessage | None:
            for m in self.messages(chat_id):
                if contains is not None and contains not in m.content:
                    continue
                if predicate is not None and not predicate(m):
                    continue
                return m
            return None

        return await self.wait_for(find, timeout=timeout, what=f"a message {contains!r}")

    # ------------------------------------------------------------------ state changes
    def _new_message_id(self, chat_id: int) -> int:
        return self._new_id(chat_id)

    # ------------------------------------------------------------------ transport
    async def _handle(self, request: httpx.Request) -> httpx.Response:
        return await self.handle(request)

    async def _answer(
        self, request: httpx.Request, method: str, params: dict[str, Any], files: dict[str, Any]
    ) -> httpx.Response:
        """The core's answer wrapped in the test controls: call log, gates, scripted faults
        and flood control."""
        call = Call(method, params, files)
        self.call_log.append(call)
        if await self._pass_gate(method, after_handling=False):
            call.status = 502
            return ApiError(502, "Bad Gateway: dropped before it arrived (test gate)").response()
        if self._outage is not None and self.clock() < self._outage[0]:
            call.status = self._outage[1]
            return ApiError(self._outage[1], "Bad Gateway").response()
        try:
            fault = self._take_fault(method)
            if fault is not None:
                if fault.timeout:
                    raise httpx.ReadTimeout("scripted timeout", request=request)
                if fault.status == 429:
                    raise ApiError(
                        429,
                        fault.description or f"Too Many Requests: retry after {fault.retry_after}",
                        fault.retry_after,
                    )
                raise ApiError(fault.status, fault.description or "Scripted failure")
            if method in _LIMITED_METHODS:
                self._flood_check(params)
            result = await self._call(method, params, files)
        except ApiError as exc:
            call.status = exc.code
            return exc.response()
        await self._pass_gate(method, after_handling=True)
        return httpx.Response(200, json={"ok": True, "result": result})

    def _take_fault(self, method: str) -> _Fault | None:
        queue = self._faults.get(method)
        return queue.popleft() if queue else None

    # ------------------------------------------------------------------ flood control
    def _flood_check(self, params: dict[str, Any]) -> None:
        if self.flood is None:
            return
        chat_id = _int(params, "chat_id", required=False)
        now = self.clock()
        waits = [self._overall.check(now)]
        if chat_id is not None and chat_id < 0:
            window = self._group_windows.setdefault(
                chat_id, _Window(self.flood.group_per_minute, 60.0)
            )
            waits.append(window.check(now))
        wait = max(waits)
        if wait <= 0 and chat_id is not None and chat_id > 0:
            bucket = self._buckets.get(chat_id)
            if bucket is None:
                bucket = self._buckets[chat_id] = _TokenBucket(
                    self.flood.private_rate, self.flood.private_burst, now
                )
            wait = bucket.take(now)
        if wait > 0:
            retry_after = max(1, math.ceil(wait))
            raise ApiError(429, f"Too Many Requests: retry after {retry_after}", retry_after)
        self._overall.add(now)
        if chat_id is not None and chat_id < 0:
            self._group_windows[chat_id].add(now)

    # ------------------------------------------------------------------ the core's hooks
    def _chat_dict(self, chat_id: int) -> dict[str, Any]:
        return self.chats[chat_id].to_dict()

    def _new_file(self, n: int, data: bytes, kind: str, ext: str) -> FakeFile:
        return FakeFile(
            file_id=f"FAKE{kind.upper()}{n:06d}",
            file_unique_id=f"U{n:06d}",
            data=data,
            file_path=f"{kind}s/file_{n}.{ext}",
            size=len(data),
        )

    def message_dict(self, msg: FakeMessage, *, with_reply: bool = True) -> dict[str, Any]:
        out = super().message_dict(msg, with_reply=with_reply)
        if msg.message_thread_id is not None:
            out["message_thread_id"] = msg.message_thread_id
            out["is_topic_message"] = True
        return out

    def _bot_fields(self, params: dict[str, Any]) -> dict[str, Any]:
        entities = params.get("entities") or params.get("caption_entities")
        return {
            "message_thread_id": _int(params, "message_thread_id", required=False),
            "parse_mode": params.get("parse_mode") or None,
            "entities": entities if isinstance(entities, list) else None,
        }

    def _text_edit_fields(self, params: dict[str, Any]) -> dict[str, Any]:
        entities = params.get("entities")
        return {
            "entities": entities if isinstance(entities, list) else None,
            "parse_mode": params.get("parse_mode") or None,
        }

    def _media_size(self, kind: str, data: bytes | None, ref: str | None) -> tuple[int, int] | None:
        """Upload size limits; with ``strict_images`` a photo upload must be a valid image."""
        if data is None or ref is not None:
            return None
        if len(data) > (PHOTO_UPLOAD_LIMIT if kind == "photo" else FILE_UPLOAD_LIMIT):
            raise bad_request(f"{'photo' if kind == 'photo' else 'file'} is too big")
        if kind != "photo" or not self.strict_images:
            return None
        size = image_size(data)
        if size is None:
            raise bad_request("IMAGE_PROCESS_FAILED")
        width, height = size
        if width + height > 10000 or max(width, height) > 20 * min(width, height):
            raise bad_request("PHOTO_INVALID_DIMENSIONS")
        return size

    def _media_file(
        self, kind: str, data: bytes | None, filename: str | None, ref: str | None
    ) -> FakeFile | None:
        if data is None:
            return None
        ext = filename.rsplit(".", 1)[-1] if filename and "." in filename else "bin"
        return self.register_file(data, kind=kind, ext=ext)

    def _media_message_fields(self, data: bytes | None, ref: str | None) -> dict[str, Any]:
        return {"media": data if ref is None else None, "media_ref": ref, "mime_type": None}

    # ------------------------------------------------------------------ stricter methods
    async def _m_getUpdates(self, params: dict[str, Any], files: dict[str, Any]) -> list[Any]:
        if self.webhook is not None:
            raise ApiError(
                409,
                "Conflict: can't use getUpdates method while webhook is active; "
                "use deleteWebhook to delete the webhook first",
            )
        return await super()._m_getUpdates(params, files)

    def _m_deleteWebhook(self, params: dict[str, Any], files: dict[str, Any]) -> bool:
        self.webhook = None
        return super()._m_deleteWebhook(params, files)

    def _m_setWebhook(self, params: dict[str, Any], files: dict[str, Any]) -> bool:
        url = params.get("url") or ""
        if not url:
            self.webhook = None
            return True
        if not str(url).startswith(("https://", "http://")):
            raise bad_request("bad webhook: An HTTPS URL must be provided for webhook")
        secret = params.get("secret_token")
        if secret is not None and not _SECRET_TOKEN_RE.fullmatch(str(secret)):
            raise bad_request("bad webhook: secret token contains unallowed characters")
        self.webhook = {
            "url": url,
            "secret_token": secret,
            "allowed_updates": params.get("allowed_updates"),
        }
        self._touch()
        if str(params.get("drop_pending_updates", "")).lower() == "true":
            self._updates.clear()
        return True

    def _m_getWebhookInfo(self, params: dict[str, Any], files: dict[str, Any]) -> dict[str, Any]:
        info: dict[str, Any] = {
            "url": (self.webhook or {}).get("url", ""),
            "has_custom_certificate": False,
            "pending_update_count": len(self._updates),
        }
        if self.webhook and self.webhook.get("allowed_updates"):
            info["allowed_updates"] = self.webhook["allowed_updates"]
        if self.webhook_last_error is not None:
            info["last_error_date"], info["last_error_message"] = self.webhook_last_error
        return info

    def _commands_key(self, params: dict[str, Any]) -> tuple[str, str]:
        scope = params.get("scope") or {"type": "default"}
        return (json.dumps(scope, sort_keys=True), str(params.get("language_code") or ""))

    def _m_setMyCommands(self, params: dict[str, Any], files: dict[str, Any]) -> bool:
        commands = params.get("commands")
        if not isinstance(commands, list) or len(commands) > 100:
            raise bad_request("commands are invalid")
        for command in commands:
            if not _COMMAND_RE.fullmatch(str(command.get("command", ""))):
                raise bad_request("BOT_COMMAND_INVALID")
            description = str(command.get("description", ""))
            if not 1 <= len(description) <= 256:
                raise bad_request("BOT_COMMAND_DESCRIPTION_INVALID")
        language = str(params.get("language_code") or "")
        if language and not re.fullmatch(r"[a-z]{2}", language):
            raise bad_request("invalid language code specified")
        return super()._m_setMyCommands(params, files)

    def _m_editMessageReplyMarkup(
        self, params: dict[str, Any], files: dict[str, Any]
    ) -> dict[str, Any]:
        msg = self._editable(params)
        if not self._markup(params.get("reply_markup")) and not msg.reply_markup:
            raise bad_request(_NOT_MODIFIED)  # removing a keyboard the message has not
        return super()._m_editMessageReplyMarkup(params, files)

    def _m_answerCallbackQuery(self, params: dict[str, Any], files: dict[str, Any]) -> bool:
        text = params.get("text")
        query = self.callback_queries.get(str(params.get("callback_query_id") or ""))
        if query is not None and not query["answered"]:
            if text is not None and len(str(text)) > MAX_CALLBACK_ANSWER:
                raise bad_request("MESSAGE_TOO_LONG")
        return super()._m_answerCallbackQuery(params, files)

    def _m_sendChatAction(self, params: dict[str, Any], files: dict[str, Any]) -> bool:
        self._known_chat(params)
        if params.get("action") not in CHAT_ACTIONS:
            raise bad_request("wrong parameter action in request")
        return True

    def _m_getFile(self, params: dict[str, Any], files: dict[str, Any]) -> dict[str, Any]:
        fake_file = self.files.get(str(params.get("file_id") or ""))
        if fake_file is not None and fake_file.size > FILE_DOWNLOAD_LIMIT:
            raise bad_request("file is too big")
        return super()._m_getFile(params, files)

    def _m_getChatMember(self, params: dict[str, Any], files: dict[str, Any]) -> dict[str, Any]:
        """A member's status as set in :attr:`members`: ``member`` or ``left`` (the default);
        ``creator`` adds ``is_anonymous``."""
        chat_id = self._known_chat(params)
        user_id = _int(params, "user_id")
        assert user_id is not None
        status = self.members.get((chat_id, user_id), "left")
        user = self.users.get(user_id)
        user_dict = user.to_dict() if user else {"id": user_id, "is_bot": False, "first_name": "U"}
        out: dict[str, Any] = {"status": status, "user": user_dict}
        if status == "creator":
            out["is_anonymous"] = False
        return out


class FakeUser:
    """A Telegram user driving the bot: builds updates the way real clients send them."""

    def __init__(
        self,
        fake: FakeTelegram,
        user_id: int,
        first_name: str,
        language_code: str | None,
        username: str | None,
    ) -> None:
        self.fake = fake
        self.id = user_id
        self.first_name = first_name
        self.language_code = language_code
        self.username = username

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "is_bot": False, "first_name": self.first_name}
        if self.username:
            out["username"] = self.username
        if self.language_code:
            out["language_code"] = self.language_code
        return out

    # --------------------------------------------------------------- messages
    def _message(
        self,
        chat_id: int | None,
        reply_to: FakeMessage | int | None,
        queue: bool | None,
        **fields: Any,
    ) -> dict[str, Any]:
        chat_id = self.id if chat_id is None else chat_id
        chat = self.fake.add_chat(chat_id)
        reply_id = reply_to.message_id if isinstance(reply_to, FakeMessage) else reply_to
        if reply_id is not None and self.fake.message(chat_id, reply_id) is None:
            raise AssertionError(f"no message {reply_id} in chat {chat_id} to reply to")
        msg = self.fake._add_message(
            chat.id, from_bot=False, sender=self.to_dict(), reply_to=reply_id, **fields
        )
        return self.fake.push_update({"message": self.fake.message_dict(msg)}, queue=queue)

    def send_text(
        self,
        text: str,
        chat_id: int | None = None,
        *,
        reply_to: FakeMessage | int | None = None,
        queue: bool | None = None,
        thread_id: int | None = None,
    ) -> dict[str, Any]:
        """``thread_id``: the forum topic the message is posted in."""
        return self._message(chat_id, reply_to, queue, text=text, message_thread_id=thread_id)

    def send_command(
        self,
        text: str,
        chat_id: int | None = None,
        *,
        reply_to: FakeMessage | int | None = None,
        queue: bool | None = None,
        thread_id: int | None = None,
    ) -> dict[str, Any]:
        """``text`` starts with ``/command`` (optionally ``@botname``): a bot_command entity."""
        if not text.startswith("/"):
            raise ValueError("a command starts with '/'")
        length = len(text.split(maxsplit=1)[0])
        entity = {"type": "bot_command", "offset": 0, "length": utf16_len(text[:length])}
        return self._message(
            chat_id, reply_to, queue, text=text, entities=[entity], message_thread_id=thread_id
        )

    def send_photo(
        self,
        data: bytes,
        caption: str | None = None,
        reply_to: FakeMessage | int | None = None,
        chat_id: int | None = None,
        *,
        queue: bool | None = None,
        thread_id: int | None = None,
    ) -> dict[str, Any]:
        """A photo as Telegram delivers it: a list of PhotoSizes (largest last)."""
        fake_file = self.fake.register_file(data, kind="photo", ext="jpg")
        size = image_size(data) or (512, 512)
        sizes = [
            {
                "file_id": fake_file.file_id,
                "file_unique_id": fake_file.file_unique_id,
                "width": size[0],
                "height": size[1],
                "file_size": fake_file.size,
            }
        ]
        entities = _caption_command_entity(caption)
        return self._message(
            chat_id,
            reply_to,
            queue,
            caption=caption,
            entities=entities,
            media_kind="photo",
            media=data,
            file_id=fake_file.file_id,
            width=size[0],
            height=size[1],
            extra={"photo": sizes},
            message_thread_id=thread_id,
        )

    def send_document(
        self,
        data: bytes,
        filename: str = "file.png",
        mime_type: str = "image/png",
        caption: str | None = None,
        reply_to: FakeMessage | int | None = None,
        chat_id: int | None = None,
        *,
        queue: bool | None = None,
    ) -> dict[str, Any]:
        ext = filename.rsplit(".", 1)[-1] if "." in filename else "bin"
        fake_file = self.fake.register_file(data, kind="document", ext=ext)
        document = {
            "file_id": fake_file.file_id,
            "file_unique_id": fake_file.file_unique_id,
            "file_name": filename,
            "mime_type": mime_type,
            "file_size": fake_file.size,
        }
        return self._message(
            chat_id,
            reply_to,
            queue,
            caption=caption,
            entities=_caption_command_entity(caption),
            media_kind="document",
            media=data,
            filename=filename,
            mime_type=mime_type,
            file_id=fake_file.file_id,
            extra={"document": document},
        )

    def send_sticker(
        self, chat_id: int | None = None, *, queue: bool | None = None
    ) -> dict[str, Any]:
        fake_file = self.fake.register_file(b"RIFF....WEBP", kind="sticker", ext="webp")
        sticker = {
            "file_id": fake_file.file_id,
            "file_unique_id": fake_file.file_unique_id,
            "type": "regular",
            "width": 512,
            "height": 512,
            "is_animated": False,
            "is_video": False,
            "emoji": "🙂",
        }
        return self._message(
            chat_id,
            None,
            queue,
            media_kind="sticker",
            file_id=fake_file.file_id,
            extra={"sticker": sticker},
        )

    def reply_to(
        self,
        message: FakeMessage | int,
        text: str | None = None,
        *,
        photo: bytes | None = None,
        document: tuple[bytes, str, str] | None = None,
        chat_id: int | None = None,
        queue: bool | None = None,
    ) -> dict[str, Any]:
        """Reply to ``message`` with text (a ``/command`` gets its entity), a photo or a
        ``(data, filename, mime_type)`` document."""
        if isinstance(message, FakeMessage):
            chat_id = message.chat_id
        if photo is not None:
            return self.send_photo(
                photo, caption=text, reply_to=message, chat_id=chat_id, queue=queue
            )
        if document is not None:
            data, filename, mime = document
            return self.send_document(
                data, filename, mime, caption=text, reply_to=message, chat_id=chat_id, queue=queue
            )
        if text is None:
            raise ValueError("reply_to needs text, photo or document")
        if text.startswith("/"):
            return self.send_command(text, chat_id, reply_to=message, queue=queue)
        return self.send_text(text, chat_id, reply_to=message, queue=queue)

    # --------------------------------------------------------------- buttons
    def tap(
        self, message: FakeMessage, button: str, *, queue: bool | None = None
    ) -> dict[str, Any]:
        """Press the inline button whose text or callback_data is ``button``."""
        current = self.fake.message(message.chat_id, message.message_id) or message
        if current.deleted:
            raise AssertionError("cannot tap a button of a deleted message")
        for candidate in current.buttons:
            if button in (candidate.get("text"), candidate.get("callback_data")):
                data = candidate.get("callback_data")
                if data is None:
                    raise AssertionError(f"button {button!r} has no callback_data")
                break
        else:
            raise AssertionError(f"no button {button!r}; buttons: {current.button_texts}")
        return self.fake._callback_query(self.to_dict(), current, data, queue=queue)

    # --------------------------------------------------------------- Stars payments
    def pay(self, invoice: FakeMessage, *, complete: bool = True) -> dict[str, Any]:
        """Press Pay on an invoice the bot sent: a ``pre_checkout_query`` update. With
        ``complete``, the bot's ``ok=True`` answer charges the Stars and sends the
        ``successful_payment`` message (see :mod:`bot.local.stars`)."""
        if invoice.invoice is None:
            raise AssertionError(f"message {invoice.message_id} is not an invoice")
        return self.fake.press_pay(
            self.to_dict(), invoice.chat_id, invoice.message_id, complete=complete
        )

    def pre_checkout(
        self, payload: str, total_amount: int, *, currency: str = "XTR", complete: bool = True
    ) -> dict[str, Any]:
        """A ``pre_checkout_query`` with any payload (e.g. a forged one)."""
        self.fake.add_chat(self.id)
        return self.fake.pre_checkout(
            self.to_dict(),
            payload=payload,
            total_amount=total_amount,
            currency=currency,
            complete=complete,
        )

    def pre_checkout_answer(self, update: dict[str, Any]) -> Any:
        """How the bot answered the pre-checkout query of ``update`` (None if not yet)."""
        query = self.fake.pre_checkout_queries.get(update["pre_checkout_query"]["id"])
        return query if query is not None and query.answered else None

    def callback_answer(self, update: dict[str, Any]) -> dict[str, Any] | None:
        """How the bot answered the callback query of ``update`` (None if it did not)."""
        query = self.fake.callback_queries.get(update["callback_query"]["id"])
        return query if query and query["answered"] else None


def _caption_command_entity(caption: str | None) -> list[dict[str, Any]] | None:
    if caption and caption.startswith("/"):
        length = len(caption.split(maxsplit=1)[0])
        return [{"type": "bot_command", "offset": 0, "length": utf16_len(caption[:length])}]
    return None


def updates_of(fake: FakeTelegram, payloads: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Queue several raw update payloads at once (ids assigned in order)."""
    return [fake.push_update(p) for p in payloads]
