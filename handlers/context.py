"""The custom ``CallbackContext`` every handler receives (``ContextTypes(context=BotContext)``).

``context.services`` is the typed :class:`~handlers.deps.Services`; ``await context.caller()``
loads (or creates) the user behind the update once per update; ``await context.reply(key)``
answers the update's message with localized text, ``await context.answer_query(key)`` a callback
query. Texts are sent as plain text (``parse_mode=None``) because they carry user prompts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from telegram import Message, ReplyParameters, Update
from telegram.ext import Application, CallbackContext, ContextTypes, ExtBot

from generation.models import RunRecord
from handlers.callbacks import RunAction
from handlers.deps import Services, services_of
from storage.users import User, UserSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Caller:
    """The user behind an update, with the language their messages should be in."""

    user: User
    lang: str

    @property
    def user_id(self) -> int:
        return self.user.id

    @property
    def settings(self) -> UserSettings:
        return self.user.settings


def reply_to(message_id: int | None) -> ReplyParameters | None:
    """Reply parameters that still send when the original message is gone."""
    if message_id is None:
        return None
    return ReplyParameters(message_id=message_id, allow_sending_without_reply=True)


class BotContext(CallbackContext[ExtBot[None], dict[Any, Any], dict[Any, Any], dict[Any, Any]]):
    def __init__(
        self,
        application: Application[Any, Any, Any, Any, Any, Any],
        chat_id: int | None = None,
        user_id: int | None = None,
    ) -> None:
        super().__init__(application=application, chat_id=chat_id, user_id=user_id)
        self._update: Update | None = None
        self._caller: Caller | None = None

    @classmethod
    def from_update(
        cls, update: object, application: Application[Any, Any, Any, Any, Any, Any]
    ) -> BotContext:
        context = super().from_update(update, application)
        if isinstance(update, Update):
            context._update = update
        return context

    @property
    def services(self) -> Services:
        return services_of(self.application)

    async def caller(self) -> Caller | None:
        """The user of this update (created with ``STARTING_BALANCE`` on first contact)."""
        tg_user = self._update.effective_user if self._update is not None else None
        if tg_user is None:
            return None
        if self._caller is None or self._caller.user_id != tg_user.id:
            services = self.services
            user, _created = await services.storage.users.get_or_create(
                tg_user.id,
                language_code=tg_user.language_code,
                starting_balance=services.config.starting_balance,
            )
            lang = services.i18n.resolve_language(user.settings.language, tg_user.language_code)
            self._caller = Caller(user, lang)
        return self._caller

    async def button_run(self) -> RunRecord | None:
        """The run a run button (``RunAction`` callback data) is about; a stale or unknown
        one is answered politely and gives ``None``."""
        query = self._update.callback_query if self._update is not None else None
        match = RunAction.regex.match(query.data or "") if query is not None else None
        run = await self.services.storage.runs.get_run(match.group(2)) if match else None
        if run is None:
            await self.answer_query("common.stale_button")
        return run

    async def language(self) -> str:
        """Best-effort language of the update's user; never raises (the error handler)."""
        tg_user = self._update.effective_user if self._update is not None else None
        i18n = self.services.i18n
        if tg_user is None:
            return i18n.resolve_language(None, None)
        if self._caller is not None:
            return self._caller.lang
        try:
            user = await self.services.storage.users.get(tg_user.id)
        except Exception:  # storage trouble must not hide the original error
            user = None
        chosen = user.settings.language if user is not None else None
        return i18n.resolve_language(chosen, tg_user.language_code)

    async def text(self, key: str, /, **params: object) -> str:
        """The localized text of ``key`` in the caller's language."""
        return self.services.i18n.t(await self.language(), key, **params)

    async def reply(
        self, key: str, /, reply_markup: Any = None, quote: bool = True, **params: object
    ) -> Message | None:
        """Answer the update's message with the localized text of ``key`` (as a reply to it
        unless ``quote=False``)."""
        message = self._update.effective_message if self._update is not None else None
        if message is None:
            return None
        return await message.reply_text(
            await self.text(key, **params),
            reply_markup=reply_markup,
            parse_mode=None,
            reply_parameters=reply_to(message.message_id) if quote else None,
        )

    async def answer_query(self, key: str, /, show_alert: bool = False, **params: object) -> None:
        """Answer the callback query with localized text (always answer: it stops the
        spinner; an expired query cannot be answered, which is not fatal)."""
        query = self._update.callback_query if self._update is not None else None
        if query is None:
            return
        try:
            await query.answer(await self.text(key, **params), show_alert=show_alert)
        except Exception:
            log.debug("could not answer callback query", exc_info=True)


CONTEXT_TYPES = ContextTypes(context=BotContext)
