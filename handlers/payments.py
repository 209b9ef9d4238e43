"""Telegram Stars: /buy, the invoice, pre-checkout, the successful payment, /refund,
/payments, /paysupport and /terms.

The money rules live below the Telegram side: ``generation.billing`` (packages, signed
payloads, the pre-checkout decision) and ``storage.payments`` (each charge credited once,
refunds in the ledger). This module only moves between them and Telegram:

* ``/buy`` sends the invoice at once for a single package, else one button per package
  (``b:<credits>:<stars>``); the invoice is ``currency="XTR"``, one ``LabeledPrice``, an empty
  provider token and a payload signed for the user and the package.
* ``pre_checkout_query`` is answered at once (Telegram allows 10 s): ``ok=True`` only for a
  payload that names an offered package for that user at that price, from a user not banned.
* ``successful_payment`` credits the payload's package once per ``telegram_payment_charge_id``
  (a redelivered update adds nothing and sends no second receipt).
* ``/refund <charge_id> [force]`` (admins) checks first, then ``refundStarPayment``, then takes
  the credits back in the ledger (never below what is on hold); ``CHARGE_ALREADY_REFUNDED``
  from Telegram still records the refund.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence

from telegram import InlineKeyboardButton, InlineKeyboardMarkup, LabeledPrice, Message, Update
from telegram.error import BadRequest, TelegramError
from telegram.ext import (
    Application,
    CallbackQueryHandler,
    CommandHandler,
    MessageHandler,
    PreCheckoutQueryHandler,
    filters,
)

from generation.billing import STARS_CURRENCY, StarPackage, check_checkout, find_package
from generation.errors import (
    AlreadyRefundedError,
    CreditsSpentError,
    PaymentInvalidError,
    PaymentNotFoundError,
)
from handlers.access import named_user
from handlers.admin_base import Reply, UsageError, admin_only, parse_int
from handlers.callbacks import BuyAction
from handlers.context import BotContext, Caller
from handlers.deps import Services

log = logging.getLogger(__name__)

MAX_PAYMENTS_LISTED = 15
MAX_CHARGE_ID = 256


class _EmptyToken(str):
    """The empty ``provider_token`` of a Stars invoice, as one that survives PTB 22.8's
    ``Defaults`` handling: ``ExtBot._insert_defaults`` takes any empty sequence for a list of
    poll options and sends ``""`` as ``"[]"`` (which Telegram refuses). Iterating this one
    yields itself, so it is left alone and goes out as ``provider_token=``."""

    def __iter__(self):  # type: ignore[override]
        return iter((str(self),))


STARS_PROVIDER_TOKEN = _EmptyToken("")


# -- /buy ---------------------------------------------------------------------------------------


def packages_keyboard(services: Services, lang: str) -> InlineKeyboardMarkup:
    t = services.i18n.t
    return InlineKeyboardMarkup(
        [
            [
                InlineKeyboardButton(
                    t(lang, "pay.package_button", credits=p.credits, stars=p.stars),
                    callback_data=BuyAction(p.credits, p.stars).pack(),
                )
            ]
            for p in services.config.star_packages
        ]
    )


async def send_invoice(
    context: BotContext, chat_id: int, caller: Caller, package: StarPackage
) -> None:
    services = context.services
    assert services.signer is not None
    t, lang = services.i18n.t, caller.lang
    await context.bot.send_invoice(
        chat_id,
        title=t(lang, "pay.invoice_title", credits=package.credits)[:32],
        description=t(
            lang, "pay.invoice_description", credits=package.credits, stars=package.stars
        )[:255],
        payload=services.signer.sign(caller.user_id, package),
        currency=STARS_CURRENCY,
        prices=[LabeledPrice(t(lang, "pay.invoice_label", credits=package.credits), package.stars)],
        provider_token=STARS_PROVIDER_TOKEN,  # "" on the wire: Stars take no provider
    )


async def buy_command(update: Update, context: BotContext) -> None:
    message = update.effective_message
    caller = await context.caller()
    if message is None or caller is None:
        return
    services = context.services
    packages = services.config.star_packages
    if not packages or services.signer is None:
        await context.reply("pay.disabled")
        return
    if len(packages) == 1:
        await send_invoice(context, message.chat_id, caller, packages[0])
        return
    await context.reply("pay.choose", reply_markup=packages_keyboard(services, caller.lang))


async def buy_button(update: Update, context: BotContext) -> None:
    query = update.callback_query
    caller = await context.caller()
    if query is None or caller is None or query.message is None:
        return
    services = context.services
    match = BuyAction.regex.match(query.data or "")
    package = (
        find_package(services.config.star_packages, int(match.group(1)), int(match.group(2)))
        if match
        else None
    )
    if package is None or services.signer is None:
        await context.answer_query("pay.package_gone", show_alert=True)
        return
    try:
        await query.answer()
    except TelegramError:
        log.debug("could not answer the package button", exc_info=True)
    await send_invoice(context, query.message.chat.id, caller, package)


# -- the payment ---------------------------------------------------------------------------------


async def pre_checkout(update: Update, context: BotContext) -> None:
    """Answer at once: Telegram cancels the payment when no answer comes within 10 s."""
    query = update.pre_checkout_query
    if query is None:
        return
    services = context.services
    lang = await context.language()
    error_key: str | None = None
    try:
        if services.signer is None:
            raise PaymentInvalidError("payments are off", reason="package")
        if (await services.storage.access.get(query.from_user.id)).banned:
            error_key = "pay.refused_banned"
        else:
            check_checkout(
                services.signer,
                services.config.star_packages,
                payload=query.invoice_payload,
                user_id=query.from_user.id,
                currency=query.currency,
                total_amount=query.total_amount,
            )
    except PaymentInvalidError as exc:
        log.warning("pre-checkout refused for user %s: %s", query.from_user.id, exc.reason)
        error_key = "pay.invalid"
    except Exception:  # never leave the query unanswered
        log.exception("pre-checkout check failed for user %s", query.from_user.id)
        error_key = "pay.invalid"
    if error_key is None:
        await query.answer(ok=True)
    else:
        await query.answer(ok=False, error_message=services.i18n.t(lang, error_key))


def _credits_of(services: Services, payload: str, stars: int) -> int:
    """The credits a paid payload buys. The signature makes them trustworthy; a payload that
    no longer verifies (the signing key was lost) falls back to the package at that price."""
    if services.signer is not None:
        try:
            return services.signer.verify(payload).credits
        except PaymentInvalidError:
            log.warning("a paid payload does not verify; using the package at %s stars", stars)
    for package in services.config.star_packages:
        if package.stars == stars:
            return package.credits
    log.error("paid payload does not verify and no package costs %s stars: 0 credits", stars)
    return 0


async def successful_payment(update: Update, context: BotContext) -> None:
    message = update.effective_message
    if message is None or message.successful_payment is None or message.from_user is None:
        return
    payment = message.successful_payment
    services = context.services
    await context.caller()  # a first-time payer is created as usual (starting balance)
    credits = _credits_of(services, payment.invoice_payload, payment.total_amount)
    result = await services.storage.payments.record_payment(
        charge_id=payment.telegram_payment_charge_id,
        user_id=message.from_user.id,
        credits=credits,
        stars=payment.total_amount,
        payload=payment.invoice_payload,
        provider_charge_id=payment.provider_payment_charge_id or None,
    )
    if not result.created:
        log.info("payment %s seen before: nothing added", payment.telegram_payment_charge_id)
        return
    log.info(
        "payment %s: user %s bought %s credits for %s stars",
        payment.telegram_payment_charge_id,
        message.from_user.id,
        credits,
        payment.total_amount,
    )
    await context.reply(
        "pay.receipt",
        credits=credits,
        stars=payment.total_amount,
        balance=result.balances.available,
        charge_id=payment.telegram_payment_charge_id,
    )


async def refunded_payment(update: Update, context: BotContext) -> None:
    """Telegram's service message after a refund: /refund already told everyone."""


# -- admins -------------------------------------------------------------------------------------


def _charge_arg(args: Sequence[str], usage: str) -> tuple[str, bool]:
    if not 1 <= len(args) <= 2 or (len(args) == 2 and args[1].lower() != "force"):
        raise UsageError(usage)
    charge = args[0].strip()
    if not charge or len(charge) > MAX_CHARGE_ID:
        raise UsageError(usage)
    return charge, len(args) == 2


@admin_only
async def refund_command(
    reply: Reply, services: Services, args: Sequence[str], admin_id: int
) -> None:
    charge, force = _charge_arg(args, "pay.usage.refund")
    payments = services.storage.payments
    try:
        plan = await payments.plan_refund(charge, force=force)
    except PaymentNotFoundError:
        await reply("pay.refund_not_found", charge_id=charge)
        return
    except AlreadyRefundedError:
        await reply("pay.refund_already", charge_id=charge)
        return
    except CreditsSpentError as exc:
        await reply(
            "pay.refund_spent",
            user_id=exc.user_id,
            available=exc.available,
            credits=exc.credits,
            charge_id=charge,
        )
        return
    payment = plan.payment
    lines: list[str] = []
    bot = reply.update.get_bot()
    try:
        await bot.refund_star_payment(payment.user_id, charge)
    except BadRequest as exc:
        if "charge_already_refunded" not in str(exc).lower():
            log.warning("refundStarPayment %s failed: %s", charge, exc)
            await reply("pay.refund_failed", charge_id=charge, reason=str(exc))
            return
        lines.append(reply.t("pay.refunded_at_telegram"))  # sync our books with Telegram's
    try:
        result = await payments.apply_refund(charge, actor=admin_id)
    except AlreadyRefundedError:  # a concurrent /refund finished first
        await reply("pay.refund_already", charge_id=charge)
        return
    log.info("payment %s refunded by %s: %s credits back", charge, admin_id, result.taken_back)
    lines.insert(
        0,
        reply.t(
            "pay.refunded",
            stars=payment.stars,
            charge_id=charge,
            user_id=payment.user_id,
            taken=result.taken_back,
        ),
    )
    if result.shortfall:
        lines.append(reply.t("pay.refunded_short", shortfall=result.shortfall))
    await reply.text("\n".join(lines))
    await _notify_refund(reply, services, payment.user_id, payment.stars, result.taken_back)


async def _notify_refund(
    reply: Reply, services: Services, user_id: int, stars: int, taken: int
) -> None:
    user = await services.storage.users.get(user_id)
    lang = services.i18n.resolve_language(
        user.settings.language if user else None, user.language if user else None
    )
    text = services.i18n.t(lang, "pay.refund_notice", stars=stars, taken=taken)
    try:
        await reply.update.get_bot().send_message(user_id, text, parse_mode=None)
    except TelegramError as exc:  # the user may have blocked the bot; the refund stands
        log.info("could not tell user %s about the refund: %s", user_id, exc)


@admin_only
async def payments_command(
    reply: Reply, services: Services, args: Sequence[str], admin_id: int
) -> None:
    """The latest payments (of one user), with the charge ids /refund needs."""
    if len(args) > 1:
        raise UsageError("pay.usage.payments")
    named = await named_user(reply, services, args)  # @username, or a reply to the user
    if named is None:
        return
    if named is not False:
        user_id: int | None = int(named)
    else:
        user_id = (
            parse_int(args[0], "pay.usage.payments", minimum=1, maximum=10**16) if args else None
        )
    found = await services.storage.payments.list_recent(user_id, limit=MAX_PAYMENTS_LISTED)
    if not found:
        await reply("pay.payments_none")
        return
    lines = [
        reply.t(
            "pay.payment_line",
            date=dt.datetime.fromtimestamp(p.created_at, dt.UTC).strftime("%Y-%m-%d %H:%M"),
            user_id=p.user_id,
            credits=p.credits,
            stars=p.stars,
            state=reply.t(f"pay.state_{p.state}"),
            charge_id=p.charge_id,
        )
        for p in found
    ]
    await reply.text("\n".join(lines))


# -- owner texts ----------------------------------------------------------------------------------


async def paysupport_command(update: Update, context: BotContext) -> None:
    await _owner_text(update, context, context.services.config.paysupport_text, "support")


async def terms_command(update: Update, context: BotContext) -> None:
    await _owner_text(update, context, context.services.config.terms_text, "terms")


async def _owner_text(update: Update, context: BotContext, text: str | None, kind: str) -> None:
    message = update.effective_message
    if message is None or await context.caller() is None:
        return
    if text is None:
        await context.reply(f"pay.{kind}_default")
    else:
        await message.reply_text(text, parse_mode=None)


class _RefundedPayment(filters.MessageFilter):
    """Telegram's ``refunded_payment`` service message (PTB 22 has no ready filter)."""

    def filter(self, message: Message) -> bool:
        return message.refunded_payment is not None


def register_payments(application: Application) -> None:  # type: ignore[type-arg]
    application.add_handler(PreCheckoutQueryHandler(pre_checkout))
    application.add_handler(MessageHandler(filters.SUCCESSFUL_PAYMENT, successful_payment))
    application.add_handler(MessageHandler(_RefundedPayment(), refunded_payment))
    application.add_handler(CommandHandler("buy", buy_command))
    application.add_handler(CallbackQueryHandler(buy_button, pattern=BuyAction.pattern()))
    application.add_handler(CommandHandler("refund", refund_command))
    application.add_handler(CommandHandler("payments", payments_command))
    application.add_handler(CommandHandler("paysupport", paysupport_command))
    application.add_handler(CommandHandler("terms", terms_command))
