"""/settings: inline menus for size, steps, seed, negative prompt, checkpoint, language, PNG.

Each press edits the menu message in place (no edit when nothing would change) and answers the
callback. Buttons carry the owner's id (:class:`MenuAction`); presses by anyone else are refused
with a polite alert. A typed seed or negative prompt is collected with a pending-input flag in
``user_data`` read by a text handler in group -1 (before the generation flows), which stops
further handling only when it consumed the message; ``/cancel`` drops a pending input.
Unknown or stale callback data gets a polite answer, never an exception.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from telegram import CallbackQuery, InlineKeyboardMarkup, Update
from telegram.error import BadRequest
from telegram.ext import (
    Application,
    ApplicationHandlerStop,
    CallbackQueryHandler,
    CommandHandler,
    MessageHandler,
    filters,
)

from generation.request import MAX_PROMPT_LENGTH, MAX_SEED
from handlers import keyboards as kb
from handlers.callbacks import MenuAction, SettingsAction, parse
from handlers.context import BotContext
from handlers.deps import Services
from storage.users import UserSettings

log = logging.getLogger(__name__)

PENDING_KEY = "settings_pending_input"
INPUT_GROUP = -1  # runs before the generation flows' text handlers
SUMMARY_NEGATIVE_CHARS = 120


@dataclass(slots=True)
class PendingInput:
    """The bot waits for a typed value for ``field`` ("seed" or "neg") in ``chat_id``."""

    field: str
    chat_id: int
    message_id: int | None
    expires_at: float  # time.monotonic()


def render_summary(services: Services, lang: str, settings: UserSettings) -> str:
    t = services.i18n.t
    if settings.negative_prompt is None:
        negative = t(lang, "settings.value.default")
    elif settings.negative_prompt == "":
        negative = t(lang, "settings.value.none")
    else:
        negative = settings.negative_prompt
        if len(negative) > SUMMARY_NEGATIVE_CHARS:
            negative = negative[: SUMMARY_NEGATIVE_CHARS - 1] + "…"
    return t(
        lang,
        "settings.summary",
        size=f"{settings.width}×{settings.height}",
        steps=settings.steps,
        seed=t(lang, "settings.value.random") if settings.seed == -1 else settings.seed,
        negative=negative,
        checkpoint=settings.checkpoint or t(lang, "settings.value.default"),
        language=kb.LANGUAGE_NAMES.get(lang, lang),
        png=t(lang, "settings.value.on" if settings.png_as_file else "settings.value.off"),
    )


_HINTS = {
    kb.SIZE: "settings.choose_size",
    kb.STEPS: "settings.choose_steps",
    kb.SEED: "settings.choose_seed",
    kb.NEG: "settings.choose_negative",
    kb.CKPT: "settings.choose_checkpoint",
    kb.LANG: "settings.choose_language",
}


async def checkpoint_names(services: Services) -> tuple[str, ...]:
    """The checkpoints admins configured (cached by storage), for the menu."""
    return tuple(c.name for c in await services.storage.checkpoints.list_checkpoints())


async def render_menu(
    services: Services, lang: str, owner: int, settings: UserSettings, menu: str = kb.HOME
) -> tuple[str, InlineKeyboardMarkup]:
    """Text and keyboard of one menu view."""
    text = render_summary(services, lang, settings)
    if hint := _HINTS.get(menu):
        text += "\n\n" + services.i18n.t(lang, hint)
    if menu == kb.CKPT:
        names = await checkpoint_names(services)
        if not names:
            text += "\n" + services.i18n.t(lang, "checkpoint.menu_empty")
        keyboard = kb.checkpoint_keyboard(services.i18n, lang, owner, settings, names)
    else:
        build = kb.MENU_KEYBOARDS.get(menu, kb.home_keyboard)
        keyboard = build(services.i18n, lang, owner, settings)
    return text, keyboard


async def settings_command(update: Update, context: BotContext) -> None:
    message, tg_user = update.effective_message, update.effective_user
    if message is None or tg_user is None:
        return
    services = context.services
    caller = await context.caller()
    assert caller is not None  # effective_user checked above
    user, lang = caller.user, caller.lang
    if context.user_data is not None:
        context.user_data.pop(PENDING_KEY, None)
    text, keyboard = await render_menu(services, lang, tg_user.id, user.settings)
    await message.reply_text(text, reply_markup=keyboard, parse_mode=None)


async def _edit(query: CallbackQuery, text: str, keyboard: InlineKeyboardMarkup | None) -> None:
    """Edit the menu message unless it already shows exactly this."""
    current = query.message
    if current is not None and current.text == text and current.reply_markup == keyboard:
        return
    try:
        await query.edit_message_text(text, reply_markup=keyboard, parse_mode=None)
    except BadRequest as exc:  # a race with another client tap; the content is already right
        if "not modified" not in str(exc).lower():
            raise


async def _answer(query: CallbackQuery, text: str | None = None, *, alert: bool = False) -> None:
    try:
        await query.answer(text, show_alert=alert)
    except BadRequest as exc:  # answering a too-old query is not worth an error
        log.info("could not answer callback query: %s", exc)


def _apply(menu: str, value: str, checkpoints: Sequence[str] = ()) -> dict[str, Any] | None:
    """Settings changes for a button value; ``None`` when the value is not a valid choice."""
    if menu == kb.SIZE and (size := kb.parse_size(value)):
        return {"width": size[0], "height": size[1]}
    if menu == kb.STEPS and value.isdigit() and int(value) in kb.STEP_PRESETS:
        return {"steps": int(value)}
    if menu == kb.SEED and value == kb.SEED_RANDOM:
        return {"seed": -1}
    if menu == kb.NEG and value in (kb.NEG_DEFAULT, kb.NEG_CLEAR):
        return {"negative_prompt": None if value == kb.NEG_DEFAULT else ""}
    if menu == kb.CKPT and value == kb.DEFAULT_CHECKPOINT:
        return {"checkpoint": None}
    if menu == kb.CKPT and (name := kb.checkpoint_for(value, checkpoints)):
        return {"checkpoint": name}
    if menu == kb.LANG and value in kb.LANGUAGE_NAMES:
        return {"language": value}
    if menu == kb.PNG and value in ("on", "off"):
        return {"png_as_file": value == "on"}
    return None


def _changed(settings: UserSettings, changes: dict[str, Any]) -> bool:
    current = settings.model_dump()
    return any(current[key] != value for key, value in changes.items())


async def menu_callback(update: Update, context: BotContext) -> None:
    query = update.callback_query
    if query is None:
        return
    services = context.services
    tg_user = query.from_user
    caller = await context.caller()
    assert caller is not None  # effective_user checked above
    user, lang = caller.user, caller.lang
    action = parse(query.data)
    owner = _owner_of(action, query)
    if owner is None or not isinstance(action, (MenuAction, SettingsAction)):
        await _answer(query, services.i18n.t(lang, "settings.stale"), alert=True)
        return
    if owner != tg_user.id:
        await _answer(query, services.i18n.t(lang, "settings.not_yours"), alert=True)
        return
    menu, value = action.menu, action.value
    settings = user.settings
    user_data = context.user_data if context.user_data is not None else {}

    if menu == kb.CLOSE:
        user_data.pop(PENDING_KEY, None)
        await _edit(query, services.i18n.t(lang, "settings.closed"), None)
        await _answer(query)
        return
    if value == kb.ASK and menu in (kb.SEED, kb.NEG):
        chat_id = query.message.chat.id if query.message else tg_user.id
        message_id = query.message.message_id if query.message else None
        user_data[PENDING_KEY] = PendingInput(
            menu, chat_id, message_id, time.monotonic() + services.config.conversation_timeout
        )
        key = "settings.ask_seed" if menu == kb.SEED else "settings.ask_negative"
        text = services.i18n.t(lang, key, max=MAX_SEED, limit=MAX_PROMPT_LENGTH)
        await _edit(query, text, kb.cancel_input_keyboard(services.i18n, lang, tg_user.id))
        await _answer(query)
        return
    if not value:  # open a submenu (or go back home)
        if menu not in kb.MENU_KEYBOARDS:
            await _answer(query, services.i18n.t(lang, "settings.stale"), alert=True)
            return
        user_data.pop(PENDING_KEY, None)
        await _edit(query, *await render_menu(services, lang, tg_user.id, settings, menu))
        await _answer(query)
        return

    choices = await checkpoint_names(services) if menu == kb.CKPT else ()
    changes = _apply(menu, value, choices)
    if changes is None:
        await _answer(query, services.i18n.t(lang, "settings.stale"), alert=True)
        return
    toast = None
    if _changed(settings, changes):
        user = await services.storage.users.update_settings(tg_user.id, **changes)
        settings = user.settings
        lang = services.i18n.resolve_language(settings.language, tg_user.language_code)
        toast = services.i18n.t(lang, "settings.saved")
    view = kb.HOME if menu == kb.PNG else menu
    await _edit(query, *await render_menu(services, lang, tg_user.id, settings, view))
    await _answer(query, toast)


def _owner_of(action: object, query: CallbackQuery) -> int | None:
    """The menu's owner: in the data, or (``SettingsAction`` menus) the private chat's user or
    the sender of the /settings message the menu replies to (PTB quotes it in groups)."""
    if isinstance(action, MenuAction):
        return action.owner
    if isinstance(action, SettingsAction) and query.message is not None:
        if query.message.chat.type == "private":
            return query.message.chat.id
        replied = query.message.reply_to_message
        if replied is not None and replied.from_user is not None:
            return replied.from_user.id
    return None


async def unknown_callback(update: Update, context: BotContext) -> None:
    """A button whose data none of our patterns understands (old keyboard, other version)."""
    query = update.callback_query
    if query is None:
        return
    services = context.services
    lang = await context.language()
    await _answer(query, services.i18n.t(lang, "settings.stale"), alert=True)


def _take_pending(context: BotContext, chat_id: int) -> PendingInput | None:
    user_data = context.user_data
    if not user_data:
        return None
    pending = user_data.get(PENDING_KEY)
    if not isinstance(pending, PendingInput):
        return None
    if pending.expires_at < time.monotonic():
        user_data.pop(PENDING_KEY, None)
        return None
    return pending if pending.chat_id == chat_id else None


async def _show_home_again(
    context: BotContext,
    services: Services,
    pending: PendingInput,
    lang: str,
    owner: int,
    settings: UserSettings,
) -> None:
    if pending.message_id is None:
        return
    text, keyboard = await render_menu(services, lang, owner, settings)
    try:
        await context.bot.edit_message_text(
            text,
            chat_id=pending.chat_id,
            message_id=pending.message_id,
            reply_markup=keyboard,
            parse_mode=None,
        )
    except BadRequest as exc:  # menu deleted or unchanged: the reply below says it all
        log.info("could not re-render the settings menu: %s", exc)


async def pending_text(update: Update, context: BotContext) -> None:
    """A typed seed or negative prompt; anything else passes through to later groups."""
    message, tg_user = update.effective_message, update.effective_user
    if message is None or tg_user is None or message.text is None:
        return
    pending = _take_pending(context, message.chat.id)
    if pending is None:
        return
    services = context.services
    caller = await context.caller()
    assert caller is not None  # effective_user checked above
    user, lang = caller.user, caller.lang
    t = services.i18n.t
    text = message.text.strip()
    if pending.field == kb.SEED:
        if not text.isdigit() or int(text) > MAX_SEED:
            await message.reply_text(t(lang, "settings.bad_seed", max=MAX_SEED), parse_mode=None)
            raise ApplicationHandlerStop
        user = await services.storage.users.update_settings(tg_user.id, seed=int(text))
        reply = t(lang, "settings.seed_saved", seed=int(text))
    else:
        if not text or len(text) > MAX_PROMPT_LENGTH:
            await message.reply_text(
                t(lang, "settings.bad_negative", limit=MAX_PROMPT_LENGTH), parse_mode=None
            )
            raise ApplicationHandlerStop
        user = await services.storage.users.update_settings(tg_user.id, negative_prompt=text)
        reply = t(lang, "settings.negative_saved")
    assert context.user_data is not None
    context.user_data.pop(PENDING_KEY, None)
    await _show_home_again(context, services, pending, lang, tg_user.id, user.settings)
    await message.reply_text(reply, parse_mode=None)
    raise ApplicationHandlerStop


async def pending_cancel(update: Update, context: BotContext) -> None:
    """/cancel while a typed value is awaited drops the wait (and nothing else)."""
    message, tg_user = update.effective_message, update.effective_user
    if message is None or tg_user is None:
        return
    pending = _take_pending(context, message.chat.id)
    if pending is None:
        return  # the generation /cancel handles it
    assert context.user_data is not None
    context.user_data.pop(PENDING_KEY, None)
    services = context.services
    caller = await context.caller()
    assert caller is not None  # effective_user checked above
    user, lang = caller.user, caller.lang
    await _show_home_again(context, services, pending, lang, tg_user.id, user.settings)
    await message.reply_text(services.i18n.t(lang, "settings.input_cancelled"), parse_mode=None)
    raise ApplicationHandlerStop


def _is_unknown(data: object) -> bool:
    return isinstance(data, str) and parse(data) is None


def register_menus(application: Application) -> None:
    """/settings, its buttons, typed-value input, and the polite answer to unknown buttons."""
    application.add_handler(CommandHandler("cancel", pending_cancel), group=INPUT_GROUP)
    application.add_handler(
        MessageHandler(filters.TEXT & ~filters.COMMAND, pending_text), group=INPUT_GROUP
    )
    application.add_handler(CommandHandler("settings", settings_command))
    application.add_handler(CallbackQueryHandler(menu_callback, pattern=MenuAction.pattern()))
    application.add_handler(CallbackQueryHandler(menu_callback, pattern=SettingsAction.pattern()))
    # Also data with our prefix that no longer parses (e.g. a removed menu), and data nobody
    # understands at all: both get the same polite "this menu is outdated" answer.
    application.add_handler(CallbackQueryHandler(unknown_callback, pattern=_is_unknown))
