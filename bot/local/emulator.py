"""An embedded emulator of the Telegram Bot API methods the bot uses (local mode).

The bot talks to it through :attr:`BotApiEmulator.transport`, an ``httpx`` transport that
answers ``/bot<token>/<method>`` and ``/file/bot<token>/<path>`` in process, so the real PTB
``Application`` runs unchanged (long polling included) with no socket and no Telegram account.
The web chat (:mod:`bot.local.webchat`) is the user side: it posts messages, photos and button
presses here, which become Telegram-shaped updates for ``getUpdates``, and it reads the chat
back (long-polling :meth:`BotApiEmulator.wait_changed`) to show text, keyboards, live edits and
the media the bot sent.

It answers like Telegram where the bot could notice a difference: "message is not modified",
empty texts, unknown messages, callback data of 1-64 bytes, unknown callback queries.
Memory is bounded: old messages and files are dropped first.

:class:`BotApiCore` holds the Bot API semantics (storage, parsing, checks, the ``_m_*``
methods); :class:`BotApiEmulator` adds the local user side, and the strict test fake
(``tests/fakes/telegram.py``) subclasses the core with the test controls.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.parser
import email.policy
import io
import itertools
import json
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import httpx

from bot.local.stars import StarsPayments

log = logging.getLogger(__name__)

LOCAL_TOKEN = "1:local"
BOT_USERNAME = "local_comfy_bot"
MAX_TEXT = 4096
MAX_CAPTION = 1024
MAX_CALLBACK_DATA = 64
MAX_UPLOAD = 20 * 1024 * 1024
MAX_MESSAGES_PER_CHAT = 500
MAX_FILES = 300
MAX_NOTICES = 20
MAX_QUERIES = 200
TYPING_SECONDS = 5.0
NOT_MODIFIED = (
    "message is not modified: specified new message content and reply markup are exactly the "
    "same as a current content and reply markup of the message"
)
MEDIA_KINDS = ("photo", "document", "animation", "video")
_METHOD_RE = re.compile(r"/bot([^/]+)/([A-Za-z]+)")
_FILE_RE = re.compile(r"/file/bot([^/]+)/(.+)")
_IMAGE_TYPES = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "webp": "image/webp"}
_CONTENT_TYPES = {**_IMAGE_TYPES, "gif": "image/gif", "mp4": "video/mp4", "webm": "video/webm"}


class ApiError(Exception):
    """An error answer of the Bot API (``ok: false``)."""

    def __init__(self, code: int, description: str, retry_after: int | None = None) -> None:
        super().__init__(description)
        self.code = code
        self.description = description
        self.retry_after = retry_after

    def response(self) -> httpx.Response:
        body: dict[str, Any] = {
            "ok": False,
            "error_code": self.code,
            "description": self.description,
        }
        if self.retry_after is not None:
            body["parameters"] = {"retry_after": self.retry_after}
        return httpx.Response(self.code, json=body)


def bad_request(description: str) -> ApiError:
    return ApiError(400, f"Bad Request: {description}")


@dataclass(slots=True)
class StoredFile:
    file_id: str
    file_unique_id: str
    data: bytes
    file_path: str
    content_type: str


@dataclass(slots=True)
class Message:
    """One message of a chat, from the bot or from the local user."""

    message_id: int
    chat_id: int
    from_bot: bool
    sender: dict[str, Any]
    date: int
    text: str | None = None
    caption: str | None = None
    entities: list[dict[str, Any]] | None = None
    reply_markup: dict[str, Any] | None = None
    media_kind: str | None = None
    file_id: str | None = None
    filename: str | None = None
    width: int | None = None
    height: int | None = None
    reply_to: int | None = None
    edit_count: int = 0
    deleted: bool = False
    media_fields: dict[str, Any] = field(default_factory=dict)  # "photo": [...], ...


@dataclass(slots=True)
class Notice:
    """A callback answer with text (shown as a toast by the page)."""

    id: int
    chat_id: int
    text: str
    alert: bool


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def command_entities(text: str | None) -> list[dict[str, Any]] | None:
    """The ``bot_command`` entity Telegram adds to a text/caption starting with ``/cmd``."""
    if not text or not text.startswith("/"):
        return None
    head = text.split(maxsplit=1)[0]
    if not re.fullmatch(r"/[A-Za-z0-9_]{1,32}(@[A-Za-z0-9_]{1,64})?", head):
        return None
    return [{"type": "bot_command", "offset": 0, "length": utf16_len(head)}]


def image_size(data: bytes) -> tuple[int, int] | None:
    """Width and height of an image (header only: cheap enough for the event loop)."""
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as img:
            return img.size
    except Exception:
        return None


def parse_multipart(content_type: str, body: bytes) -> tuple[dict[str, str], dict[str, Any]]:
    """Fields and files (``name -> (filename, bytes)``) of a multipart/form-data body."""
    parser = email.parser.BytesParser(policy=email.policy.HTTP)
    msg = parser.parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    fields: dict[str, str] = {}
    files: dict[str, tuple[str | None, bytes]] = {}
    for part in msg.iter_parts():
        name = str(part.get_param("name", header="content-disposition"))
        payload = part.get_payload(decode=True) or b""
        filename = part.get_filename()
        if filename is not None or part.get_content_type() != "text/plain":
            files[name] = (filename, payload)
        else:
            fields[name] = payload.decode("utf-8")
    return fields, files


def _decode_value(value: str) -> Any:
    """Form values are strings; nested objects (markup, reply parameters) arrive as JSON."""
    if value[:1] in ("{", "["):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _int(params: dict[str, Any], name: str, *, required: bool = True) -> int | None:
    value = params.get(name)
    if value is None or value == "":
        if required:
            raise bad_request(f"{name} is empty")
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise bad_request(f"invalid {name} specified") from None


def media_fields(
    kind: str | None, base: dict[str, Any], width: int, height: int, filename: str | None
) -> dict[str, Any]:
    """The message fields of a sent ``kind`` of media (``base``: file_id, unique id, size)."""
    dims = {"width": width, "height": height}
    if kind == "photo":
        return {"photo": [{**base, **dims}]}
    if kind == "document":
        return {"document": {**base, "file_name": filename or "file"}}
    if kind == "animation":
        anim = {**base, **dims, "duration": 1, "file_name": filename or "animation.gif"}
        return {"animation": anim, "document": dict(base)}
    if kind == "video":
        return {"video": {**base, **dims, "duration": 1}}
    return {}


class BotApiCore(StarsPayments):
    """The Bot API semantics shared by the local emulator and the test fake: chats and
    messages, files, the update queue, request parsing, Telegram's checks and the ``_m_*``
    methods (Stars payments in :mod:`bot.local.stars`). Subclasses choose the message/file
    classes and hook in their extras."""

    message_cls: type[Any] = Message
    max_messages_per_chat: int | None = None
    max_files: int | None = None
    can_join_groups = False
    accepts_urls = False  # sending media by http(s) URL
    _media_group_seq = itertools.count(13_000_000_000_000_000)

    def __init__(
        self,
        token: str,
        *,
        bot_username: str,
        bot_name: str,
        clock: Callable[[], float] = time.monotonic,
        long_poll_cap: float = 10.0,
        auto_queue: bool = True,
    ) -> None:
        self.token = token
        self.bot_id = int(token.split(":", 1)[0])
        self.bot_username = bot_username
        self.bot_name = bot_name
        self.clock = clock
        self.long_poll_cap = long_poll_cap
        self.auto_queue = auto_queue
        self.chats: dict[int, Any] = {}
        self._messages: dict[int, OrderedDict[int, Any]] = {}
        self._next_id: dict[int, int] = {}
        self._files: OrderedDict[str, Any] = OrderedDict()
        self._files_by_path: dict[str, Any] = {}
        self._file_seq = itertools.count(1)
        self._updates: list[dict[str, Any]] = []
        self._update_seq = itertools.count(1)
        self._updates_arrived = asyncio.Event()
        self.callback_queries: dict[str, dict[str, Any]] = {}  # id -> {"answered": bool, ...}
        self._cq_seq = itertools.count(1)
        self.commands: dict[Any, list[dict[str, Any]]] = {}
        self.version = 0
        self._changed = asyncio.Event()
        self.closing = False  # set at shutdown: long polls answer at once
        self._init_stars()

    _bad_request = staticmethod(bad_request)  # for the mixins (bot.local.stars)

    @property
    def bot_user(self) -> dict[str, Any]:
        return {
            "id": self.bot_id,
            "is_bot": True,
            "first_name": self.bot_name,
            "username": self.bot_username,
        }

    # ----------------------------------------------------------------- state

    def _touch(self) -> None:
        self.version += 1
        self._changed.set()
        self._changed = asyncio.Event()

    def _open_chat(self, chat_id: int, chat: Any) -> Any:
        self.chats[chat_id] = chat
        self._messages[chat_id] = OrderedDict()
        self._next_id[chat_id] = 1
        return chat

    def _chat_dict(self, chat_id: int) -> dict[str, Any]:
        return self.chats[chat_id]

    def push_update(self, payload: dict[str, Any], *, queue: bool | None = None) -> dict[str, Any]:
        """Give ``payload`` (without ``update_id``) an id; queue it for getUpdates."""
        update = {"update_id": next(self._update_seq), **payload}
        if self.auto_queue if queue is None else queue:
            self._updates.append(update)
            self._updates_arrived.set()
            self._touch()
        return update

    def _new_id(self, chat_id: int) -> int:
        n = self._next_id[chat_id]
        self._next_id[chat_id] = n + 1
        return n

    def _store(self, msg: Any) -> Any:
        chat = self._messages[msg.chat_id]
        chat[msg.message_id] = msg
        while self.max_messages_per_chat is not None and len(chat) > self.max_messages_per_chat:
            chat.popitem(last=False)
        self._touch()
        return msg

    def _add_message(
        self,
        chat_id: int,
        *,
        from_bot: bool,
        sender: dict[str, Any],
        reply_to: int | None,
        **fields: Any,
    ) -> Any:
        msg = self.message_cls(
            message_id=self._new_id(chat_id),
            chat_id=chat_id,
            from_bot=from_bot,
            sender=sender,
            date=int(time.time()),
            **fields,
        )
        msg.reply_to = reply_to
        return self._store(msg)

    def _new_file(self, n: int, data: bytes, kind: str, ext: str) -> Any:
        return StoredFile(
            file_id=f"{kind[:3].upper()}{n:06d}local",
            file_unique_id=f"U{n:06d}",
            data=data,
            file_path=f"{kind}s/file_{n}.{ext}",
            content_type=_CONTENT_TYPES.get(ext, "application/octet-stream"),
        )

    def register_file(self, data: bytes, *, kind: str = "file", ext: str = "bin") -> Any:
        stored = self._new_file(next(self._file_seq), data, kind, ext)
        self._files[stored.file_id] = stored
        self._files_by_path[stored.file_path] = stored
        while self.max_files is not None and len(self._files) > self.max_files:
            _, old = self._files.popitem(last=False)
            self._files_by_path.pop(old.file_path, None)
        return stored

    def _callback_query(self, sender: dict[str, Any], msg: Any, data: str, **kw: Any) -> Any:
        """Store an unanswered query for the button ``data`` of ``msg``; queue its update."""
        query_id = f"{sender['id']}{next(self._cq_seq):08d}"
        self.callback_queries[query_id] = {
            "answered": False,
            "user_id": sender["id"],
            "chat_id": msg.chat_id,
            "data": data,
            "message_id": msg.message_id,
        }
        payload = {
            "callback_query": {
                "id": query_id,
                "from": sender,
                "message": self.message_dict(msg),
                "chat_instance": str(abs(msg.chat_id)),
                "data": data,
            }
        }
        return self.push_update(payload, **kw)

    # ----------------------------------------------------------------- reading

    def message(self, chat_id: int, message_id: int) -> Any:
        return self._messages.get(chat_id, {}).get(message_id)

    def message_dict(self, msg: Any, *, with_reply: bool = True) -> dict[str, Any]:
        """The message as the Bot API describes it."""
        out: dict[str, Any] = {
            "message_id": msg.message_id,
            "date": msg.date,
            "chat": self._chat_dict(msg.chat_id),
            "from": msg.sender,
        }
        if msg.text is not None:
            out["text"] = msg.text
        if msg.caption is not None:
            out["caption"] = msg.caption
        if msg.entities:
            out["entities" if msg.text is not None else "caption_entities"] = msg.entities
        if msg.reply_markup:
            out["reply_markup"] = msg.reply_markup
        if msg.edit_count:
            out["edit_date"] = msg.date + msg.edit_count
        if with_reply and msg.reply_to is not None:
            target = self.message(msg.chat_id, msg.reply_to)
            if target is not None:
                out["reply_to_message"] = self.message_dict(target, with_reply=False)
        out.update(msg.media_fields)
        return out

    # ----------------------------------------------------------------- transport

    async def handle(self, request: httpx.Request) -> httpx.Response:
        """Answer one Bot API request (the ``httpx.MockTransport`` handler)."""
        path = request.url.path
        if request.method == "GET" and path.startswith("/file/bot"):
            return self._download(path)
        match = _METHOD_RE.fullmatch(path)
        if match is None:
            return ApiError(404, "Not Found").response()
        token, method = match.groups()
        if token != self.token:
            return ApiError(401, "Unauthorized").response()
        try:
            params, files = self._parse(request)
        except ApiError as exc:
            return exc.response()
        return await self._answer(request, method, params, files)

    async def _answer(
        self, request: httpx.Request, method: str, params: dict[str, Any], files: dict[str, Any]
    ) -> httpx.Response:
        try:
            result = await self._call(method, params, files)
        except ApiError as exc:
            return exc.response()
        return httpx.Response(200, json={"ok": True, "result": result})

    async def _call(self, method: str, params: dict[str, Any], files: dict[str, Any]) -> Any:
        handler = getattr(self, f"_m_{method}", None)
        if handler is None:
            self._unknown_method(method)
            raise ApiError(404, "Not Found")
        result = handler(params, files)
        if asyncio.iscoroutine(result):
            result = await result
        return result

    def _unknown_method(self, method: str) -> None:
        """Called before a 404 for a method no ``_m_*`` implements."""

    @staticmethod
    def _parse(request: httpx.Request) -> tuple[dict[str, Any], dict[str, Any]]:
        content_type = request.headers.get("content-type", "")
        body = request.content
        files: dict[str, tuple[str | None, bytes]] = {}
        if content_type.startswith("multipart/form-data"):
            raw, files = parse_multipart(content_type, body)
        elif content_type.startswith("application/json"):
            try:
                return json.loads(body or b"{}"), files
            except ValueError:
                raise bad_request("can't parse JSON") from None
        else:
            raw = dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
        return {k: _decode_value(v) for k, v in raw.items()}, files

    def _download(self, path: str) -> httpx.Response:
        match = _FILE_RE.fullmatch(path)
        if match is None or match.group(1) != self.token:
            return ApiError(401, "Unauthorized").response()
        stored = self._files_by_path.get(match.group(2))
        if stored is None:
            return ApiError(404, "Not Found").response()
        return httpx.Response(200, headers=self._file_headers(stored), content=stored.data)

    def _file_headers(self, stored: Any) -> dict[str, str]:
        return {}

    # ----------------------------------------------------------------- validation

    def _known_chat(self, params: dict[str, Any]) -> int:
        chat_id = _int(params, "chat_id")
        assert chat_id is not None
        if chat_id not in self.chats:
            raise bad_request("chat not found")
        return chat_id

    @staticmethod
    def _markup(value: Any) -> dict[str, Any] | None:
        if value is None or value == "":
            return None
        if not isinstance(value, dict):
            raise bad_request("can't parse reply keyboard markup JSON object")
        for row in value.get("inline_keyboard", []) or []:
            for button in row:
                if not button.get("text"):
                    raise bad_request("BUTTON_TEXT_INVALID")
                data = button.get("callback_data")
                if data is not None and not 1 <= len(str(data).encode()) <= MAX_CALLBACK_DATA:
                    raise bad_request("BUTTON_DATA_INVALID")
        return value or None

    @staticmethod
    def _text(value: Any) -> str:
        if value is None or not str(value).strip():
            raise bad_request("message text is empty")
        if len(str(value)) > MAX_TEXT:
            raise bad_request("message is too long")
        return str(value)

    @staticmethod
    def _caption(value: Any) -> str | None:
        if value is None or value == "":
            return None
        if len(str(value)) > MAX_CAPTION:
            raise bad_request("message caption is too long")
        return str(value)

    def _reply_to(self, chat_id: int, params: dict[str, Any]) -> int | None:
        reply = params.get("reply_parameters")
        target, allow_missing = None, False
        if isinstance(reply, dict) and reply.get("message_id") is not None:
            target = int(reply["message_id"])
            allow_missing = bool(reply.get("allow_sending_without_reply"))
        elif params.get("reply_to_message_id") not in (None, ""):
            target = int(params["reply_to_message_id"])
            allow_missing = str(params.get("allow_sending_without_reply")).lower() == "true"
        if target is None:
            return None
        msg = self.message(chat_id, target)
        if msg is None or msg.deleted:
            if allow_missing:
                return None
            raise bad_request("message to be replied not found")
        return target

    def _bot_fields(self, params: dict[str, Any]) -> dict[str, Any]:
        """Extra message fields a subclass records from a send's parameters."""
        return {}

    def _bot_message(self, chat_id: int, params: dict[str, Any], **fields: Any) -> Any:
        markup = self._markup(params.get("reply_markup"))
        reply_to = self._reply_to(chat_id, params)
        fields.update(self._bot_fields(params))
        return self._add_message(
            chat_id,
            from_bot=True,
            sender=self.bot_user,
            reply_to=reply_to,
            reply_markup=markup,
            **fields,
        )

    def _editable(self, params: dict[str, Any]) -> Any:
        if params.get("inline_message_id"):
            raise bad_request("MESSAGE_ID_INVALID")
        chat_id = _int(params, "chat_id")
        message_id = _int(params, "message_id")
        assert chat_id is not None and message_id is not None
        msg = self.message(chat_id, message_id)
        if msg is None or msg.deleted:
            raise bad_request("message to edit not found")
        if not msg.from_bot:
            raise bad_request("message can't be edited")
        return msg

    def _edited(self, msg: Any, **changes: Any) -> dict[str, Any]:
        for name, value in changes.items():
            setattr(msg, name, value)
        msg.edit_count += 1
        self._touch()
        return self.message_dict(msg)

    # ----------------------------------------------------------------- methods

    def _m_getMe(self, params: dict[str, Any], files: dict[str, Any]) -> dict[str, Any]:
        return {
            **self.bot_user,
            "can_join_groups": self.can_join_groups,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }

    async def _m_getUpdates(self, params: dict[str, Any], files: dict[str, Any]) -> list[Any]:
        offset = _int(params, "offset", required=False) or 0
        limit = _int(params, "limit", required=False) or 100
        timeout = float(params.get("timeout") or 0)
        if offset:
            self._updates = [u for u in self._updates if u["update_id"] >= offset]
        if not self._updates and timeout > 0 and not self.closing:
            self._updates_arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._updates_arrived.wait(), min(timeout, self.long_poll_cap)
                )
        return self._updates[:limit]

    def _m_deleteWebhook(self, params: dict[str, Any], files: dict[str, Any]) -> bool:
        if str(params.get("drop_pending_updates", "")).lower() == "true":
            self._updates.clear()
        return True

    def _m_getWebhookInfo(self, params: dict[str, Any], files: dict[str, Any]) -> dict[str, Any]:
        return {"url": "", "has_custom_certificate": False, "pending_update_count": 0}

    def _commands_key(self, params: dict[str, Any]) -> Any:
        return str(params.get("language_code") or "")

    def _m_setMyCommands(self, params: dict[str, Any], files: dict[str, Any]) -> bool:
        commands = params.get("commands")
        if not isinstance(commands, list):
            raise bad_request("commands are invalid")
        self.commands[self._commands_key(params)] = commands
        self._touch()
        return True

    def _m_getMyCommands(self, params: dict[str, Any], files: dict[str, Any]) -> list[Any]:
        return self.commands.get(self._commands_key(params), [])

    def _m_deleteMyCommands(self, params: dict[str, Any], files: dict[str, Any]) -> bool:
        self.commands.pop(self._commands_key(params), None)
        return True

    def _m_sendMessage(self, params: dict[str, Any], files: dict[str, Any]) -> dict[str, Any]:
        chat_id = self._known_chat(params)
        text = self._text(params.get("text"))
        return self.message_dict(self._bot_message(chat_id, params, text=text))

    def _m_editMessageText(self, params: dict[str, Any], files: dict[str, Any]) -> dict[str, Any]:
        msg = self._editable(params)
        text = self._text(params.get("text"))
        if msg.text is None:
            raise bad_request("there is no text in the message to edit")
        markup = self._markup(params.get("reply_markup"))
        if text == msg.text and markup == msg.reply_markup:
            raise bad_request(NOT_MODIFIED)
        return self._edited(msg, text=text, reply_markup=markup, **self._text_edit_fields(params))

    def _text_edit_fields(self, params: dict[str, Any]) -> dict[str, Any]:
        """Extra message fields a subclass updates on editMessageText."""
        return {}

    def _m_editMessageCaption(
        self, params: dict[str, Any], files: dict[str, Any]
    ) -> dict[str, Any]:
        msg = self._editable(params)
        if msg.media_kind is None:
            raise bad_request("there is no caption in the message to edit")
        caption = self._caption(params.get("caption"))
        markup = self._markup(params.get("reply_markup"))
        if caption == msg.caption and markup == msg.reply_markup:
            raise bad_request(NOT_MODIFIED)
        return self._edited(msg, caption=caption, reply_markup=markup)

    def _m_editMessageReplyMarkup(
        self, params: dict[str, Any], files: dict[str, Any]
    ) -> dict[str, Any]:
        msg = self._editable(params)
        markup = self._markup(params.get("reply_markup"))
        if markup == msg.reply_markup:
            raise bad_request(NOT_MODIFIED)
        return self._edited(msg, reply_markup=markup)

    def _m_deleteMessage(self, params: dict[str, Any], files: dict[str, Any]) -> bool:
        chat_id = _int(params, "chat_id")
        message_id = _int(params, "message_id")
        assert chat_id is not None and message_id is not None
        msg = self.message(chat_id, message_id)
        if msg is None or msg.deleted:
            raise bad_request("message to delete not found")
        msg.deleted = True
        self._touch()
        return True

    def _m_answerCallbackQuery(self, params: dict[str, Any], files: dict[str, Any]) -> bool:
        query = self.callback_queries.get(str(params.get("callback_query_id") or ""))
        if query is None or query["answered"]:
            raise bad_request(
                "query is too old and response timeout expired or query ID is invalid"
            )
        text = params.get("text")
        alert = str(params.get("show_alert", "")).lower() == "true"
        query.update(answered=True, text=text, show_alert=alert)
        self._answered(query, text, alert)
        self._touch()
        return True

    def _answered(self, query: dict[str, Any], text: Any, alert: bool) -> None:
        """Called when a callback query was answered."""

    def _m_sendChatAction(self, params: dict[str, Any], files: dict[str, Any]) -> bool:
        self._known_chat(params)
        return True

    def _m_getFile(self, params: dict[str, Any], files: dict[str, Any]) -> dict[str, Any]:
        stored = self._files.get(str(params.get("file_id") or ""))
        if stored is None:
            raise bad_request("invalid file_id")
        return {
            "file_id": stored.file_id,
            "file_unique_id": stored.file_unique_id,
            "file_size": len(stored.data),
            "file_path": stored.file_path,
        }

    # media ----------------------------------------------------------------

    def _media_input(
        self, kind: str, params: dict[str, Any], files: dict[str, Any]
    ) -> tuple[bytes | None, str | None, str | None]:
        """(bytes, filename, reference) of the ``kind`` parameter: an upload (no reference),
        a known file_id or, with :attr:`accepts_urls`, a URL (no bytes)."""
        value = params.get(kind)
        name = kind
        if isinstance(value, str) and value.startswith("attach://"):
            name = value.removeprefix("attach://")
        if name in files:
            filename, data = files[name]
            return data, filename, None
        if not value:
            raise bad_request(f"there is no {kind} in the request")
        value = str(value)
        if self.accepts_urls and value.startswith(("http://", "https://")):
            return None, None, value
        known = self._files.get(value)
        if known is None:
            raise bad_request("wrong file identifier/HTTP URL specified")
        return known.data, None, value

    def _media_size(self, kind: str, data: bytes | None, ref: str | None) -> tuple[int, int] | None:
        """Check the media; its width and height when known."""
        size = image_size(data or b"") if kind == "photo" else None
        if kind == "photo" and size is None:
            raise bad_request("IMAGE_PROCESS_FAILED")
        return size

    def _media_file(
        self, kind: str, data: bytes | None, filename: str | None, ref: str | None
    ) -> Any:
        """The stored file a send of media refers to (None for a URL)."""
        if ref is not None:
            return self._files[ref]
        ext = filename.rsplit(".", 1)[-1].lower() if filename and "." in filename else "bin"
        return self.register_file(data or b"", kind=kind, ext=ext)

    def _media_message_fields(self, data: bytes | None, ref: str | None) -> dict[str, Any]:
        return {}

    def _send_media(self, kind: str, params: dict[str, Any], files: dict[str, Any]) -> Any:
        chat_id = self._known_chat(params)
        data, filename, ref = self._media_input(kind, params, files)
        caption = self._caption(params.get("caption"))
        size = self._media_size(kind, data, ref)
        stored = self._media_file(kind, data, filename, ref)
        msg = self._bot_message(
            chat_id,
            params,
            caption=caption,
            media_kind=kind,
            file_id=stored.file_id if stored is not None else ref,
            filename=filename,
            width=size[0] if size else None,
            height=size[1] if size else None,
            **self._media_message_fields(data, ref),
        )
        base: dict[str, Any] = {
            "file_id": msg.file_id or "URL",
            "file_unique_id": stored.file_unique_id if stored is not None else "UURL",
        }
        if stored is not None:
            base["file_size"] = len(stored.data)
        width, height = size or (512, 512)
        msg.media_fields = media_fields(kind, base, width, height, filename)
        return self.message_dict(msg)

    def _m_sendMediaGroup(self, params: dict[str, Any], files: dict[str, Any]) -> list[Any]:
        """An album: 2–10 photos/videos (or documents only) sent as separate messages that
        share one ``media_group_id``, each with its own caption, all replying to the same
        message in the same topic; albums carry no reply markup."""
        items = params.get("media")
        if not isinstance(items, list) or not 2 <= len(items) <= 10:
            raise bad_request("wrong number of media items: a group holds 2 to 10")
        kinds = []
        for item in items:
            kind = item.get("type") if isinstance(item, dict) else None
            if kind not in ("photo", "video", "document", "audio") or not item.get("media"):
                raise bad_request("wrong media type in the group")
            kinds.append(kind)
        if not (set(kinds) <= {"photo", "video"} or len(set(kinds)) == 1):
            raise bad_request("documents and audio can only be grouped with their own kind")
        self._known_chat(params)
        group_id = str(next(self._media_group_seq))
        shared = {
            k: params[k]
            for k in ("chat_id", "reply_parameters", "reply_to_message_id", "message_thread_id")
            if k in params
        }
        sent: list[Any] = []
        for item, kind in zip(items, kinds, strict=True):
            one = {**shared, kind: item["media"]}
            if item.get("caption") is not None:
                one["caption"] = item["caption"]
            result = self._send_media(kind, one, files)
            msg = self.message(result["chat"]["id"], result["message_id"])
            msg.media_fields = {**msg.media_fields, "media_group_id": group_id}
            sent.append(self.message_dict(msg))
        return sent

    def _m_sendPhoto(self, params: dict[str, Any], files: dict[str, Any]) -> Any:
        return self._send_media("photo", params, files)

    def _m_sendDocument(self, params: dict[str, Any], files: dict[str, Any]) -> Any:
        return self._send_media("document", params, files)

    def _m_sendAnimation(self, params: dict[str, Any], files: dict[str, Any]) -> Any:
        return self._send_media("animation", params, files)

    def _m_sendVideo(self, params: dict[str, Any], files: dict[str, Any]) -> Any:
        return self._send_media("video", params, files)


class BotApiEmulator(BotApiCore):
    """The Bot API in process. See the module docstring."""

    max_messages_per_chat = MAX_MESSAGES_PER_CHAT
    max_files = MAX_FILES

    def __init__(
        self,
        token: str = LOCAL_TOKEN,
        *,
        bot_username: str = BOT_USERNAME,
        bot_name: str = "ComfyDeploy bot",
        clock: Callable[[], float] = time.monotonic,
        long_poll_cap: float = 10.0,
    ) -> None:
        super().__init__(
            token,
            bot_username=bot_username,
            bot_name=bot_name,
            clock=clock,
            long_poll_cap=long_poll_cap,
        )
        self.transport = httpx.MockTransport(self.handle)
        self._notices: list[Notice] = []
        self._notice_seq = itertools.count(1)
        self._typing_until: dict[int, float] = {}

    # ----------------------------------------------------------------- change notification

    async def wait_changed(self, since: int, max_wait: float) -> int:
        """Wait (at most ``max_wait`` s) until :attr:`version` moved past ``since``; returns
        the version."""
        if self.version != since or max_wait <= 0 or self.closing:
            return self.version
        event = self._changed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), max_wait)
        return self.version

    def close(self) -> None:
        """Answer every waiting long poll now (and the later ones at once): the web server
        can then stop without waiting for the page's open requests."""
        self.closing = True
        self._updates_arrived.set()
        self._touch()

    # ----------------------------------------------------------------- the user side

    def _chat(self, chat_id: int, user: dict[str, Any] | None = None) -> dict[str, Any]:
        chat = self.chats.get(chat_id)
        if chat is None:
            chat = {"id": chat_id, "type": "private"}
            if user is not None:
                chat["first_name"] = user.get("first_name", "")
            self._open_chat(chat_id, chat)
        return chat

    def _user_message(self, user: dict[str, Any], reply_to: int | None, **fields: Any) -> Message:
        chat_id = int(user["id"])
        self._chat(chat_id, user)
        if reply_to is not None:
            target = self.message(chat_id, reply_to)
            reply_to = target.message_id if target is not None and not target.deleted else None
        msg = self._add_message(chat_id, from_bot=False, sender=user, reply_to=reply_to, **fields)
        self.push_update({"message": self.message_dict(msg)})
        return msg

    def send_text(self, user: dict[str, Any], text: str, *, reply_to: int | None = None) -> Message:
        """The user sends ``text`` (a leading ``/command`` gets its entity)."""
        text = text.strip()
        if not text:
            raise ValueError("empty message")
        if len(text) > MAX_TEXT:
            raise ValueError("message is too long")
        return self._user_message(user, reply_to, text=text, entities=command_entities(text))

    def send_photo(
        self,
        user: dict[str, Any],
        data: bytes,
        *,
        caption: str | None = None,
        filename: str | None = None,
        as_document: bool = False,
        reply_to: int | None = None,
    ) -> Message:
        """The user sends an image: a photo (like Telegram's compressed photos) or, with
        ``as_document``, the file as is (what a mask should be)."""
        if not data:
            raise ValueError("empty file")
        if len(data) > MAX_UPLOAD:
            raise ValueError("file is too big")
        size = image_size(data)
        if size is None:
            raise ValueError("not an image")
        caption = (caption or "").strip() or None
        if caption is not None and len(caption) > MAX_CAPTION:
            raise ValueError("caption is too long")
        ext = (filename or "").rsplit(".", 1)[-1].lower() if filename and "." in filename else ""
        ext = ext if ext in _IMAGE_TYPES else "png"
        stored = self.register_file(data, kind="document" if as_document else "photo", ext=ext)
        base = {
            "file_id": stored.file_id,
            "file_unique_id": stored.file_unique_id,
            "file_size": len(data),
        }
        if as_document:
            kind = "document"
            media = {
                "document": {
                    **base,
                    "file_name": filename or f"image.{ext}",
                    "mime_type": _IMAGE_TYPES[ext],
                }
            }
        else:
            kind = "photo"
            media = {"photo": [{**base, "width": size[0], "height": size[1]}]}
        return self._user_message(
            user,
            reply_to,
            caption=caption,
            entities=command_entities(caption),
            media_kind=kind,
            file_id=stored.file_id,
            filename=filename,
            width=size[0],
            height=size[1],
            media_fields=media,
        )

    def press(self, user: dict[str, Any], message_id: int, data: str) -> dict[str, Any]:
        """The user presses the inline button with ``callback_data == data``."""
        chat_id = int(user["id"])
        msg = self.message(chat_id, message_id)
        if msg is None or msg.deleted:
            raise LookupError("no such message")
        buttons = [b for row in (msg.reply_markup or {}).get("inline_keyboard", []) for b in row]
        if not any(b.get("callback_data") == data for b in buttons):
            raise LookupError("no such button")
        while len(self.callback_queries) >= MAX_QUERIES:
            del self.callback_queries[next(iter(self.callback_queries))]
        return self._callback_query(user, msg, data)

    # ----------------------------------------------------------------- reading the chat

    def messages(self, chat_id: int) -> list[Message]:
        return [m for m in self._messages.get(chat_id, {}).values() if not m.deleted]

    def file(self, file_id: str) -> StoredFile | None:
        return self._files.get(file_id)

    def notices(self, chat_id: int, after: int = 0) -> list[Notice]:
        return [n for n in self._notices if n.chat_id == chat_id and n.id > after]

    def typing(self, chat_id: int) -> bool:
        return self._typing_until.get(chat_id, 0.0) > self.clock()

    # ----------------------------------------------------------------- hooks of the core

    def _unknown_method(self, method: str) -> None:
        log.warning("local mode: the Bot API emulator does not implement %s", method)

    def _file_headers(self, stored: StoredFile) -> dict[str, str]:
        return {"content-type": stored.content_type}

    def _bot_message(self, chat_id: int, params: dict[str, Any], **fields: Any) -> Message:
        msg = super()._bot_message(chat_id, params, **fields)
        self._typing_until.pop(chat_id, None)
        return msg

    def _media_size(self, kind: str, data: bytes | None, ref: str | None) -> tuple[int, int] | None:
        return super()._media_size(kind, data, ref) or (512, 512)

    def _answered(self, query: dict[str, Any], text: Any, alert: bool) -> None:
        if text:
            notice = Notice(next(self._notice_seq), query["chat_id"], str(text)[:200], alert)
            self._notices.append(notice)
            del self._notices[:-MAX_NOTICES]

    def _m_sendChatAction(self, params: dict[str, Any], files: dict[str, Any]) -> bool:
        chat_id = self._known_chat(params)
        self._typing_until[chat_id] = self.clock() + TYPING_SECONDS
        self._touch()
        return True
