"""/start, /help, /balance through the real PTB Application, FakeTelegram and real storage.

Also home of :class:`Harness`, the small Application fixture the settings and admin handler
tests share (a real ``Application`` talking to ``FakeTelegram``; updates are fed with
``process_update`` so every test is deterministic, without polling or sleeps).
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from telegram import Update
from telegram.ext import Application, ApplicationBuilder

from handlers.account import register_account
from handlers.admin import register_admin
from handlers.context import CONTEXT_TYPES
from handlers.deps import SERVICES_KEY, HandlerConfig, Services
from handlers.i18n import Translator
from handlers.lookup import register_lookup
from handlers.menus import register_menus
from storage import Storage
from tests.fakes.telegram import FakeMessage, FakeTelegram, FakeUser

ADMIN_ID = 42


class StubGeneration:
    """Stand-in for GenerationService: these handlers only read ``scheduler`` (for /stats)."""

    scheduler: Any = None


@dataclass
class Harness:
    fake: FakeTelegram
    app: Application
    services: Services
    i18n: Translator
    _cq: itertools.count = field(default_factory=lambda: itertools.count(900_000))

    @property
    def storage(self) -> Storage:
        return self.services.storage

    async def feed(self, update: dict[str, Any]) -> dict[str, Any]:
        await self.app.process_update(Update.de_json(update, self.app.bot))
        return update

    async def command(self, user: FakeUser, text: str, chat_id: int | None = None) -> FakeMessage:
        """Send ``text`` as ``user`` and return the bot's last message in that chat."""
        await self.feed(user.send_command(text, chat_id, queue=False))
        msg = self.fake.last_message(user.id if chat_id is None else chat_id)
        assert msg is not None, f"no reply to {text!r}"
        return msg

    async def text(self, user: FakeUser, text: str, chat_id: int | None = None) -> None:
        await self.feed(user.send_text(text, chat_id, queue=False))

    async def tap(self, user: FakeUser, message: FakeMessage, button: str) -> dict[str, Any]:
        """Press a button (by text or data); returns how the callback query was answered."""
        update = await self.feed(user.tap(message, button, queue=False))
        answer = user.callback_answer(update)
        assert answer is not None, "the callback query was not answered"
        return answer

    async def tap_data(self, user: FakeUser, message: FakeMessage, data: str) -> dict[str, Any]:
        """Press a button with arbitrary data (an old keyboard, another bot version)."""
        query_id = str(next(self._cq))
        self.fake.callback_queries[query_id] = {
            "answered": False,
            "user_id": user.id,
            "data": data,
            "message_id": message.message_id,
        }
        payload = {
            "callback_query": {
                "id": query_id,
                "from": user.to_dict(),
                "message": self.fake.message_dict(message),
                "chat_instance": str(abs(message.chat_id)),
                "data": data,
            }
        }
        update = await self.feed(self.fake.push_update(payload, queue=False))
        answer = user.callback_answer(update)
        assert answer is not None, "the callback query was not answered"
        return answer

    def t(self, lang: str, key: str, **params: object) -> str:
        return self.i18n.t(lang, key, **params)


@asynccontextmanager
async def make_harness(
    storage: Storage, *, starting_balance: int = 0, backend: Any = None
) -> AsyncIterator[Harness]:
    fake = FakeTelegram()
    app = (
        ApplicationBuilder()
        .token(fake.token)
        .request(fake.request())
        .get_updates_request(fake.request())
        .updater(None)
        .context_types(CONTEXT_TYPES)
        .build()
    )
    i18n = Translator.load()
    services = Services(
        storage=storage,
        generation=StubGeneration(),  # type: ignore[arg-type]
        i18n=i18n,
        config=HandlerConfig(admin_ids=frozenset({ADMIN_ID}), starting_balance=starting_balance),
        backend=backend,
    )
    app.bot_data[SERVICES_KEY] = services
    register_lookup(app)  # usernames seen, for the admin commands' lookups
    register_account(app)
    register_menus(app)
    register_admin(app)
    errors: list[BaseException] = []

    async def on_error(update: object, context: Any) -> None:
        errors.append(context.error)

    app.add_error_handler(on_error)
    async with app:
        yield Harness(fake, app, services, i18n)
    assert not errors, f"handler errors: {errors!r}"


@pytest.fixture
async def h(storage: Storage) -> AsyncIterator[Harness]:
    async with make_harness(storage, starting_balance=5) as harness:
        yield harness


async def test_start_in_english_creates_user_with_starting_balance(h: Harness) -> None:
    alice = h.fake.user(1001, "Alice", language_code="en-US")
    reply = await h.command(alice, "/start")
    assert reply.text == h.t("en", "account.start", name="Alice")
    assert "/make" in reply.text and "/settings" in reply.text
    user = await h.storage.users.get(1001)
    assert user is not None
    assert await h.storage.ledger.get_balance(1001) == 5


async def test_start_in_russian_from_language_code(h: Harness) -> None:
    ivan = h.fake.user(1002, "Иван", language_code="ru")
    reply = await h.command(ivan, "/start")
    assert reply.text == h.t("ru", "account.start", name="Иван")
    assert reply.text != h.t("en", "account.start", name="Иван")


@pytest.mark.parametrize("code", ["xx", None, "zh-hans"])
async def test_start_with_unknown_language_falls_back_to_english(
    h: Harness, code: str | None
) -> None:
    user = h.fake.user(1003, "Bo", language_code=code)
    reply = await h.command(user, "/start")
    assert reply.text == h.t("en", "account.start", name="Bo")


async def test_second_start_does_not_credit_again(h: Harness) -> None:
    alice = h.fake.user(1001, "Alice")
    await h.command(alice, "/start")
    await h.command(alice, "/start")
    assert await h.storage.ledger.get_balance(1001) == 5


async def test_help_lists_user_commands_and_hides_admin_ones(h: Harness) -> None:
    alice = h.fake.user(1001, "Alice", language_code="de")
    reply = await h.command(alice, "/help")
    assert reply.text.startswith(h.t("de", "help.user"))
    assert h.t("de", "params.help_title") in reply.text  # the inline parameters
    assert h.t("de", "params.help.ar", range="1:8–8:1") in reply.text
    assert "/grant" not in reply.text


async def test_help_in_a_group_is_short(h: Harness) -> None:
    alice = h.fake.user(1001, "Alice", language_code="ru")
    group = -100123
    h.fake.add_chat(group, title="Team")
    await h.feed(alice.send_command("/help@" + h.fake.bot_username, group, queue=False))
    assert h.fake.last_message(group).text == h.t("ru", "groups.help")
    await h.feed(alice.send_command("/help@other_bot", group, queue=False))
    assert len(h.fake.messages(group)) == 1  # another bot's /help is not answered


async def test_help_for_admin_includes_admin_commands(h: Harness) -> None:
    admin = h.fake.user(ADMIN_ID, "Root", language_code="es")
    contract = await h.command(admin, "/help")  # the last message: the workflow contract
    reply = h.fake.messages(admin.id)[-2]
    assert reply.text.startswith(h.t("es", "help.user"))
    commands = ("/deployment add", "/lora add", "/price", "/setbalance", "/grant", "/stats")
    for command in (*commands, "/checkpoint add", "/checkpoints"):
        assert command in reply.text
    intro = h.t("es", "contract.help", types="").strip()
    assert contract.text.startswith(intro)
    assert "\nI2I: input_prompt*, " in contract.text and "input_image*" in contract.text


async def test_balance_without_hold(h: Harness) -> None:
    alice = h.fake.user(1001, "Alice")
    reply = await h.command(alice, "/balance")
    assert reply.text == h.t("en", "account.balance", balance=5)


async def test_balance_shows_available_and_held(h: Harness) -> None:
    alice = h.fake.user(1001, "Alice", language_code="ru")
    await h.command(alice, "/start")
    await h.storage.ledger.credit(1001, 10, reason="test")
    await h.storage.ledger.hold(1001, 4, "0" * 32)
    reply = await h.command(alice, "/balance")
    assert reply.text == h.t("ru", "account.balance_with_hold", balance=11, held=4)
