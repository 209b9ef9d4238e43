"""Telegram Stars in the Bot API double (``bot.local.stars``, shared by the strict test fake
and the local-mode emulator), driven through a real python-telegram-bot ``Bot``: invoices,
pre-checkout queries answered within 10 s, successful payments, refunds."""

from __future__ import annotations

import pytest
from telegram import Bot, InlineKeyboardButton, InlineKeyboardMarkup, LabeledPrice, Update
from telegram.error import BadRequest
from telegram.request import HTTPXRequest

from bot.local.emulator import BotApiEmulator
from tests.fakes.telegram import FakeTelegram

pytestmark = pytest.mark.filterwarnings("ignore::telegram.warnings.PTBDeprecationWarning")

USER = 1001
_NOT_PAY = InlineKeyboardButton("x", callback_data="y")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def fake(clock: Clock) -> FakeTelegram:
    fake = FakeTelegram(clock=clock)
    fake.user(USER)
    return fake


@pytest.fixture
async def bot(fake: FakeTelegram) -> Bot:
    bot = fake.bot()
    await bot.initialize()
    yield bot
    await bot.shutdown()


async def _invoice(bot: Bot, stars: int = 50, payload: str = "pl-1") -> int:
    msg = await bot.send_invoice(
        USER,
        "100 credits",
        "Credits for image generations",
        payload,
        currency="XTR",
        prices=[LabeledPrice("100 credits", stars)],
        provider_token="",
    )
    assert msg.invoice is not None and msg.invoice.total_amount == stars
    assert msg.invoice.currency == "XTR"
    return msg.message_id


async def test_invoice_pre_checkout_payment_and_refund(fake: FakeTelegram, bot: Bot) -> None:
    message_id = await _invoice(bot)
    invoice_msg = fake.message(USER, message_id)
    assert invoice_msg is not None and invoice_msg.invoice["total_amount"] == 50

    update = fake.users[USER].pay(invoice_msg)
    query = Update.de_json(update, bot).pre_checkout_query
    assert query is not None and query.invoice_payload == "pl-1" and query.total_amount == 50
    assert query.from_user.id == USER and query.currency == "XTR"
    assert fake.users[USER].pre_checkout_answer(update) is None

    assert await bot.answer_pre_checkout_query(query.id, ok=True)
    answer = fake.users[USER].pre_checkout_answer(update)
    assert answer is not None and answer.ok is True
    paid = Update.de_json(fake.pending_updates[-1], bot).message
    assert paid is not None and paid.successful_payment is not None
    payment = paid.successful_payment
    assert (payment.total_amount, payment.invoice_payload) == (50, "pl-1")
    charge = payment.telegram_payment_charge_id
    assert charge in fake.star_charges and paid.from_user.id == USER

    with pytest.raises(BadRequest, match="too old"):  # answered already
        await bot.answer_pre_checkout_query(query.id, ok=True)

    assert await bot.refund_star_payment(USER, charge)
    refunded = Update.de_json(fake.pending_updates[-1], bot).message
    assert refunded is not None and refunded.refunded_payment is not None
    assert refunded.refunded_payment.telegram_payment_charge_id == charge
    with pytest.raises(BadRequest, match=r"(?i)CHARGE_ALREADY_REFUNDED"):
        await bot.refund_star_payment(USER, charge)
    with pytest.raises(BadRequest, match=r"(?i)CHARGE_NOT_FOUND"):
        await bot.refund_star_payment(USER, "stxnope")
    with pytest.raises(BadRequest, match=r"(?i)CHARGE_NOT_FOUND"):  # another user's charge
        await bot.refund_star_payment(USER + 1, charge)


async def test_pre_checkout_must_be_answered_within_10_seconds(
    fake: FakeTelegram, bot: Bot, clock: Clock
) -> None:
    message_id = await _invoice(bot)
    update = fake.users[USER].pay(fake.message(USER, message_id))
    clock.now += 10.5
    before = len(fake.pending_updates)
    with pytest.raises(BadRequest, match="too old"):
        await bot.answer_pre_checkout_query(update["pre_checkout_query"]["id"], ok=True)
    assert len(fake.pending_updates) == before and not fake.star_charges  # nothing charged


async def test_refusal_needs_an_error_message_and_charges_nothing(
    fake: FakeTelegram, bot: Bot
) -> None:
    update = fake.users[USER].pre_checkout("forged", 50)
    query_id = update["pre_checkout_query"]["id"]
    with pytest.raises(BadRequest, match=r"(?i)ERROR_MESSAGE_EMPTY"):
        await bot.answer_pre_checkout_query(query_id, ok=False)
    assert await bot.answer_pre_checkout_query(query_id, ok=False, error_message="No.")
    answer = fake.users[USER].pre_checkout_answer(update)
    assert answer.ok is False and answer.error_message == "No."
    assert not fake.star_charges


async def test_duplicate_successful_payment_and_late_completion(
    fake: FakeTelegram, bot: Bot
) -> None:
    message_id = await _invoice(bot)
    update = fake.users[USER].pay(fake.message(USER, message_id), complete=False)
    await bot.answer_pre_checkout_query(update["pre_checkout_query"]["id"], ok=True)
    assert not fake.star_charges  # the test decides when the payment message arrives
    paid = fake.complete_payment(update["pre_checkout_query"]["id"])
    again = fake.complete_payment(update["pre_checkout_query"]["id"])
    assert paid == again and len(fake.star_charges) == 1
    duplicate = fake.push_update({"message": paid["message"]})  # Telegram delivering it twice
    assert duplicate["message"]["successful_payment"] == paid["message"]["successful_payment"]


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"provider_token": "123:TEST"}, "PAYMENT_PROVIDER_INVALID"),
        ({"currency": "USD"}, "PAYMENT_PROVIDER_INVALID"),
        ({"prices": [LabeledPrice("a", 1), LabeledPrice("b", 2)]}, "STARS_INVOICE_INVALID"),
        ({"prices": [LabeledPrice("a", 0)]}, "CURRENCY_TOTAL_AMOUNT_INVALID"),
        ({"payload": "x" * 129}, "INVOICE_PAYLOAD_INVALID"),
        ({"title": "t" * 33}, "TITLE_INVALID"),
        ({"reply_markup": InlineKeyboardMarkup([[_NOT_PAY]])}, "REPLY_MARKUP_BUY_EMPTY"),
    ],
)
async def test_invoice_rules(bot: Bot, kwargs: dict, error: str) -> None:
    args = {
        "chat_id": USER,
        "title": "Credits",
        "description": "Credits",
        "payload": "p",
        "currency": "XTR",
        "prices": [LabeledPrice("Credits", 5)],
        "provider_token": "",
        **kwargs,
    }
    with pytest.raises(BadRequest, match=f"(?i){error}"):
        await bot.send_invoice(**args)


async def test_invoice_with_pay_button_is_accepted(fake: FakeTelegram, bot: Bot) -> None:
    markup = InlineKeyboardMarkup([[InlineKeyboardButton("Pay 5 ⭐", pay=True)]])
    msg = await bot.send_invoice(
        USER, "Credits", "Credits", "p", "XTR", [LabeledPrice("Credits", 5)], reply_markup=markup
    )
    assert fake.message(USER, msg.message_id).button_texts == ["Pay 5 ⭐"]


async def test_the_local_emulator_shares_the_flow() -> None:
    emulator = BotApiEmulator()
    bot = Bot(
        emulator.token,
        request=HTTPXRequest(httpx_kwargs={"transport": emulator.transport}),
        get_updates_request=HTTPXRequest(httpx_kwargs={"transport": emulator.transport}),
    )
    await bot.initialize()
    try:
        user = {"id": 7, "is_bot": False, "first_name": "Web"}
        emulator.send_text(user, "/buy")
        msg = await bot.send_invoice(7, "Credits", "Credits", "p", "XTR", [LabeledPrice("C", 5)])
        update = emulator.press_pay(user, 7, msg.message_id)
        await bot.answer_pre_checkout_query(update["pre_checkout_query"]["id"], ok=True)
        last = emulator.messages(7)[-1]
        assert last.media_fields["successful_payment"]["total_amount"] == 5
        charge = last.media_fields["successful_payment"]["telegram_payment_charge_id"]
        assert await bot.refund_star_payment(7, charge)
    finally:
        await bot.shutdown()
