"""Charging for generations, end to end: the real application (``bot.app``) with FakeTelegram
(which speaks Telegram Stars, ``bot.local.stars``), real storage and the real generation
service on FakeComfyDeploy.

/buy → invoice → pre-checkout → successful_payment → balance; a duplicated payment update; a
forged payload refused at pre-checkout; refunds (normal, already refunded at Telegram, credits
already spent → force); free daily credits across a day change (injected clock); each spending
guard; each access mode; /stats figures.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from generation.billing import DAY_SECONDS, next_reset
from generation.models import ChargeState
from tests.e2e.inprocess import ADMIN_ID, E2E, build_harness
from tests.fakes.telegram import FakeMessage, FakeUser

PACKAGES = "100:50,500:200"
DAY0 = 20_000 * DAY_SECONDS


class Clock:
    def __init__(self, now: float = DAY0 + 3600) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def world(
    tmp_path: Path, *, clock: Clock | None = None, **settings: Any
) -> AsyncIterator[E2E]:
    settings.setdefault("star_packages", PACKAGES)
    kwargs: dict[str, Any] = {}
    if clock is not None:
        kwargs["service_clock"] = clock
    env, close = await build_harness(tmp_path, **kwargs, **settings)
    if clock is not None:
        env.storage.db.clock = clock  # the ledger's UTC days and the daily run counts
    try:
        yield env
        assert await env.storage.ledger.check_consistency() == []
    finally:
        await close()


def invoices(e2e: E2E, chat_id: int) -> list[FakeMessage]:
    return [m for m in e2e.fake.messages(chat_id) if m.invoice is not None]


def last_text(e2e: E2E, chat_id: int) -> str:
    msg = e2e.fake.last_message(chat_id)
    assert msg is not None
    return msg.content


async def pay(e2e: E2E, user: FakeUser, invoice: FakeMessage) -> dict[str, Any]:
    """Press Pay; the bot answers the pre-checkout; Telegram sends successful_payment."""
    query = await e2e.feed(user.pay(invoice))
    answer = user.pre_checkout_answer(query)
    assert answer is not None and answer.ok, answer
    charge = e2e.fake.star_charges[answer.charge_id]
    await e2e.feed(charge.update)
    return charge.update


async def buy(e2e: E2E, user: FakeUser, button: str | None = None) -> str:
    """/buy (and the package button); pay; returns the charge id."""
    await e2e.command(user, "/buy")
    if button is not None:
        await e2e.tap(user, e2e.fake.last_message(user.id), button)
    update = await pay(e2e, user, invoices(e2e, user.id)[-1])
    return update["message"]["successful_payment"]["telegram_payment_charge_id"]


async def admin_says(e2e: E2E, text: str) -> str:
    admin = e2e.fake.users.get(ADMIN_ID) or e2e.fake.user(ADMIN_ID, "Root")
    await e2e.command(admin, text)
    return last_text(e2e, ADMIN_ID)


# -- buying -----------------------------------------------------------------------------------


async def test_buy_choose_package_pay_and_get_the_credits(tmp_path: Path) -> None:
    async with world(tmp_path) as e2e:
        alice = e2e.fake.user(1001)
        await e2e.command(alice, "/buy")
        menu = e2e.fake.last_message(alice.id)
        assert menu.text == e2e.t("pay.choose")
        assert menu.button_texts == [
            e2e.t("pay.package_button", credits=100, stars=50),
            e2e.t("pay.package_button", credits=500, stars=200),
        ]
        await e2e.tap(alice, menu, menu.button_texts[1])
        (invoice,) = invoices(e2e, alice.id)
        assert invoice.invoice["currency"] == "XTR" and invoice.invoice["total_amount"] == 200
        call = e2e.fake.calls("sendInvoice")[-1].params
        assert call["provider_token"] == "" and len(call["prices"]) == 1
        assert call["prices"][0]["amount"] == 200

        update = await pay(e2e, alice, invoice)
        charge = update["message"]["successful_payment"]["telegram_payment_charge_id"]
        assert last_text(e2e, alice.id) == e2e.t(
            "pay.receipt", credits=500, stars=200, balance=500, charge_id=charge
        )
        assert await e2e.storage.ledger.get_balance(alice.id) == 500
        (entry,) = [e for e in await e2e.storage.ledger.history(alice.id) if e.charge_id]
        assert (entry.reason, entry.amount, entry.charge_id) == ("purchase", 500, charge)
        payment = await e2e.storage.payments.get(charge)
        assert (payment.credits, payment.stars, payment.state) == (500, 200, "paid")


async def test_one_package_sends_the_invoice_at_once(tmp_path: Path) -> None:
    async with world(tmp_path, star_packages="100:50") as e2e:
        alice = e2e.fake.user(1001)
        await e2e.command(alice, "/buy")
        (invoice,) = invoices(e2e, alice.id)
        assert invoice.invoice["total_amount"] == 50
        assert invoice.invoice["title"] == e2e.t("pay.invoice_title", credits=100)


async def test_no_packages_no_buy(tmp_path: Path) -> None:
    async with world(tmp_path, star_packages="") as e2e:
        alice = e2e.fake.user(1001)
        await e2e.command(alice, "/buy")
        assert last_text(e2e, alice.id) == e2e.t("pay.disabled")
        assert not e2e.fake.calls("sendInvoice")


async def test_duplicated_payment_update_adds_nothing(tmp_path: Path) -> None:
    async with world(tmp_path, star_packages="100:50") as e2e:
        alice = e2e.fake.user(1001)
        await e2e.command(alice, "/buy")
        update = await pay(e2e, alice, invoices(e2e, alice.id)[0])
        messages = len(e2e.fake.messages(alice.id))
        await e2e.feed(update)  # the same update again (a redelivery)
        await e2e.feed(e2e.fake.push_update({"message": update["message"]}, queue=False))
        assert await e2e.storage.ledger.get_balance(alice.id) == 100
        assert len(e2e.fake.messages(alice.id)) == messages  # no second receipt


async def test_forged_payloads_are_refused_at_pre_checkout(tmp_path: Path) -> None:
    async with world(tmp_path) as e2e:
        alice, bob = e2e.fake.user(1001), e2e.fake.user(1002)
        await e2e.command(alice, "/buy")
        await e2e.tap(alice, e2e.fake.last_message(alice.id), "b:100:50")
        payload = e2e.fake.invoices[(alice.id, invoices(e2e, alice.id)[0].message_id)].payload
        forged = payload.replace(".100.50.", ".500.50.")
        cases = [
            (alice, forged, 50),  # more credits for the same price
            (alice, payload, 1),  # the price changed
            (bob, payload, 50),  # someone else's invoice
            (alice, "c1.1001.100.50.x.y", 50),  # made up
        ]
        for user, body, stars in cases:
            query = await e2e.feed(user.pre_checkout(body, stars))
            answer = user.pre_checkout_answer(query)
            assert answer is not None and answer.ok is False
            assert answer.error_message == e2e.t("pay.invalid")
        assert not e2e.fake.star_charges
        assert await e2e.storage.ledger.get_balance(alice.id) == 0


async def test_banned_user_cannot_pay(tmp_path: Path) -> None:
    async with world(tmp_path, star_packages="100:50") as e2e:
        alice = e2e.fake.user(1001)
        await e2e.command(alice, "/buy")
        invoice = invoices(e2e, alice.id)[0]
        assert await admin_says(e2e, f"/ban {alice.id}") == e2e.t(
            "access.banned_user", user_id=alice.id
        )
        query = await e2e.feed(alice.pay(invoice))
        answer = alice.pre_checkout_answer(query)
        assert answer.ok is False and answer.error_message == e2e.t("pay.refused_banned")


# -- refunds -----------------------------------------------------------------------------------


async def test_refund(tmp_path: Path) -> None:
    async with world(tmp_path, star_packages="100:50") as e2e:
        alice = e2e.fake.user(1001)
        charge = await buy(e2e, alice)
        reply = await admin_says(e2e, f"/refund {charge}")
        assert reply == e2e.t(
            "pay.refunded", stars=50, charge_id=charge, user_id=alice.id, taken=100
        )
        assert e2e.fake.star_charges[charge].refunded
        assert last_text(e2e, alice.id) == e2e.t("pay.refund_notice", stars=50, taken=100)
        assert await e2e.storage.ledger.get_balance(alice.id) == 0
        assert (await e2e.storage.payments.get(charge)).state == "refunded"
        # again: our books say refunded, Telegram is not asked twice
        calls = len(e2e.fake.calls("refundStarPayment"))
        assert await admin_says(e2e, f"/refund {charge}") == e2e.t(
            "pay.refund_already", charge_id=charge
        )
        assert len(e2e.fake.calls("refundStarPayment")) == calls
        assert await admin_says(e2e, "/refund nope") == e2e.t(
            "pay.refund_not_found", charge_id="nope"
        )
        assert await admin_says(e2e, "/refund") == e2e.t("pay.usage.refund")


async def test_refund_already_refunded_at_telegram(tmp_path: Path) -> None:
    async with world(tmp_path, star_packages="100:50") as e2e:
        alice = e2e.fake.user(1001)
        charge = await buy(e2e, alice)
        e2e.fake.star_charges[charge].refunded = True  # e.g. refunded from another tool
        reply = await admin_says(e2e, f"/refund {charge}")
        assert reply.split("\n") == [
            e2e.t("pay.refunded", stars=50, charge_id=charge, user_id=alice.id, taken=100),
            e2e.t("pay.refunded_at_telegram"),
        ]
        assert (await e2e.storage.payments.get(charge)).state == "refunded"
        assert await e2e.storage.ledger.get_balance(alice.id) == 0


async def test_refund_of_spent_credits_needs_force(tmp_path: Path) -> None:
    async with world(tmp_path, star_packages="100:50") as e2e:
        alice = e2e.fake.user(1001)
        charge = await buy(e2e, alice)
        await e2e.storage.ledger.hold(alice.id, 70, "spent")
        await e2e.storage.ledger.settle_hold("spent")
        reply = await admin_says(e2e, f"/refund {charge}")
        assert reply == e2e.t(
            "pay.refund_spent", user_id=alice.id, available=30, credits=100, charge_id=charge
        )
        assert not e2e.fake.calls("refundStarPayment")
        reply = await admin_says(e2e, f"/refund {charge} force")
        assert reply.split("\n") == [
            e2e.t("pay.refunded", stars=50, charge_id=charge, user_id=alice.id, taken=30),
            e2e.t("pay.refunded_short", shortfall=70),
        ]
        assert e2e.fake.star_charges[charge].refunded
        assert await e2e.storage.ledger.get_balance(alice.id) == 0


async def test_refund_is_for_admins_only(tmp_path: Path) -> None:
    async with world(tmp_path, star_packages="100:50") as e2e:
        alice = e2e.fake.user(1001)
        charge = await buy(e2e, alice)
        await e2e.command(alice, f"/refund {charge}")
        assert last_text(e2e, alice.id) == e2e.t("admin.refused")
        assert not e2e.fake.star_charges[charge].refunded


# -- free daily credits, guards --------------------------------------------------------------


async def _make(e2e: E2E, user: FakeUser, prompt: str = "a fox", chat_id: int | None = None) -> str:
    await e2e.command(user, f"/make {prompt}", chat_id)
    return last_text(e2e, user.id if chat_id is None else chat_id)


async def test_free_daily_credits_across_a_day_change(tmp_path: Path) -> None:
    clock = Clock()
    async with world(tmp_path, clock=clock, free_daily_credits=2) as e2e:
        await e2e.add_deployment()
        await e2e.storage.prices.set("MAKE", 1)
        alice = e2e.fake.user(1001)
        await e2e.command(alice, "/balance")
        assert last_text(e2e, alice.id) == e2e.t("pay.balance", available=2, free=2, paid=0, held=0)
        await _make(e2e, alice)
        run = await e2e.latest_run(alice.id)
        assert run.charge_state is ChargeState.HELD
        await e2e.finish(run.id)
        debits = [e for e in await e2e.storage.ledger.history(alice.id) if e.run_id == run.id]
        assert [(e.pot, e.amount) for e in debits] == [("free", -1)]  # free before paid
        await e2e.command(alice, "/balance")
        assert last_text(e2e, alice.id) == e2e.t("pay.balance", available=1, free=1, paid=0, held=0)
        clock.now = next_reset(clock.now) + 5
        await e2e.command(alice, "/balance")  # 2 again, not 3: nothing carried over
        assert last_text(e2e, alice.id) == e2e.t("pay.balance", available=2, free=2, paid=0, held=0)


async def test_per_user_guard_says_when_it_resets(tmp_path: Path) -> None:
    clock = Clock()  # 01:00 UTC: the limit resets in 23 h 0 min
    async with world(tmp_path, clock=clock, max_runs_per_user_per_day=1) as e2e:
        await e2e.add_deployment()
        alice, bob = e2e.fake.user(1001), e2e.fake.user(1002)
        await _make(e2e, alice)
        assert await _make(e2e, alice, "again") == e2e.t(
            "access.limit_user", limit=1, hours=23, minutes=0
        )
        assert len(await e2e.storage.runs.list_user_runs(alice.id, active_only=False)) == 1
        await _make(e2e, bob)  # the limit is per user
        assert len(await e2e.storage.runs.list_user_runs(bob.id, active_only=False)) == 1
        await e2e.command(alice, "/balance")
        assert e2e.t("access.runs_left", left=0, limit=1) in last_text(e2e, alice.id)
        clock.now = next_reset(clock.now) + 1
        await _make(e2e, alice, "next day")
        assert len(await e2e.storage.runs.list_user_runs(alice.id, active_only=False)) == 2


async def test_whole_bot_guard(tmp_path: Path) -> None:
    clock = Clock(DAY0 + 23 * 3600 + 30 * 60)  # 23:30 UTC
    async with world(tmp_path, clock=clock, max_runs_per_day=1) as e2e:
        await e2e.add_deployment()
        alice, bob = e2e.fake.user(1001), e2e.fake.user(1002)
        await _make(e2e, alice)
        assert await _make(e2e, bob) == e2e.t("access.limit_bot", limit=1, hours=0, minutes=30)


# -- access modes ----------------------------------------------------------------------------


async def test_open_mode_ban_is_one_refusal_then_silence(tmp_path: Path) -> None:
    async with world(tmp_path) as e2e:
        await e2e.add_deployment()
        alice = e2e.fake.user(1001)
        await admin_says(e2e, f"/ban {alice.id}")
        bot_user = e2e.fake.bot_user
        member = {  # alice blocks and unblocks the bot: no message, the refusal is kept
            "chat": e2e.fake._chat_dict(alice.id),
            "from": alice.to_dict(),
            "date": 0,
            "old_chat_member": {"status": "member", "user": bot_user},
            "new_chat_member": {"status": "kicked", "user": bot_user, "until_date": 0},
        }
        await e2e.feed(e2e.fake.push_update({"my_chat_member": member}, queue=False))
        await e2e.command(alice, "/make a fox")
        assert last_text(e2e, alice.id) == e2e.t("access.banned")
        count = len(e2e.fake.messages(alice.id))
        await e2e.command(alice, "/make a fox")
        await e2e.command(alice, "/help")
        assert len(e2e.fake.messages(alice.id)) == count  # silence
        assert not await e2e.storage.runs.list_user_runs(alice.id, active_only=False)
        assert await admin_says(e2e, f"/ban {ADMIN_ID}") == e2e.t("access.cannot_ban_admin")
        await admin_says(e2e, f"/unban {alice.id}")
        await _make(e2e, alice)
        assert await e2e.storage.runs.list_user_runs(alice.id, active_only=False)


async def test_allowlist_mode(tmp_path: Path) -> None:
    async with world(tmp_path, access="allowlist") as e2e:
        await e2e.add_deployment()
        alice, bob, carol = e2e.fake.user(1001), e2e.fake.user(1002), e2e.fake.user(1003)
        assert await _make(e2e, alice) == e2e.t("access.denied", user_id=alice.id)
        assert not await e2e.storage.runs.list_user_runs(alice.id, active_only=False)
        assert await admin_says(e2e, f"/allow {alice.id}") == e2e.t(
            "access.allowed_user", user_id=alice.id
        )
        await _make(e2e, alice)
        assert await e2e.storage.runs.list_user_runs(alice.id, active_only=False)

        group = e2e.fake.group(-1001, "Artists")
        admin = e2e.fake.users[ADMIN_ID]
        await e2e.command(admin, "/allow", group.id)
        assert last_text(e2e, group.id) == e2e.t("access.allowed_chat", chat_id=group.id)
        await _make(e2e, bob, "in the group", group.id)  # writing in an allowed group
        assert await e2e.storage.runs.list_user_runs(bob.id, active_only=False)
        assert await _make(e2e, carol) == e2e.t("access.denied", user_id=carol.id)
        e2e.fake.members[(group.id, carol.id)] = "member"  # a member, in a private chat
        e2e.app.bot_data.pop("access_membership_cache", None)  # forget the cached "left"
        await _make(e2e, carol)
        assert await e2e.storage.runs.list_user_runs(carol.id, active_only=False)
        await admin_says(e2e, f"/unban {group.id}")
        assert last_text(e2e, ADMIN_ID) == e2e.t("access.disallowed_chat", chat_id=group.id)


async def test_paid_mode(tmp_path: Path) -> None:
    async with world(tmp_path, access="paid", star_packages="100:50") as e2e:
        await e2e.add_deployment()
        alice = e2e.fake.user(1001)
        assert await _make(e2e, alice) == e2e.t("error.PAID_ACCESS_ONLY")
        assert not await e2e.storage.runs.list_user_runs(alice.id, active_only=False)
        await buy(e2e, alice)  # /buy works for everyone
        await _make(e2e, alice)
        assert await e2e.storage.runs.list_user_runs(alice.id, active_only=False)


# -- texts, help, stats ------------------------------------------------------------------------


async def test_paysupport_and_terms(tmp_path: Path) -> None:
    async with world(tmp_path, paysupport_text="Write to @owner") as e2e:
        alice = e2e.fake.user(1001, language_code="de")
        await e2e.command(alice, "/paysupport")
        assert last_text(e2e, alice.id) == "Write to @owner"
        await e2e.command(alice, "/terms")
        assert last_text(e2e, alice.id) == e2e.t("pay.terms_default", "de")
        await e2e.command(alice, "/help")
        assert e2e.t("pay.help_user", "de") in last_text(e2e, alice.id)


async def test_stats_show_money_figures(tmp_path: Path) -> None:
    async with world(tmp_path, star_packages="100:50") as e2e:
        await e2e.add_deployment()
        alice = e2e.fake.user(1001)
        charge = await buy(e2e, alice)
        await _make(e2e, alice)
        text = await admin_says(e2e, "/stats")
        lines = text.split("\n")
        assert e2e.t("pay.stats_runs", runs="MAKE: 1") in lines
        assert e2e.t("pay.stats_stars", today=50, week=50, total=50, refunded=0) in lines
        top = e2e.t("pay.stats_top_line", user_id=alice.id, runs=1, credits=0)
        assert e2e.t("pay.stats_top", users=top) in lines
        listed = await admin_says(e2e, f"/payments {alice.id}")
        assert charge in listed and e2e.t("pay.state_paid") in listed


MENU: Callable[[E2E], list[str]] = lambda e2e: [  # noqa: E731
    c["command"] for c in e2e.fake.commands.get((('{"type": "default"}'), ""), [])
]


async def test_buy_is_in_the_menu_only_when_selling(tmp_path: Path) -> None:
    async with world(tmp_path) as e2e:
        assert {"buy", "paysupport", "terms"} <= set(MENU(e2e))
    async with world(tmp_path / "b", star_packages="") as e2e:
        assert "buy" not in MENU(e2e)


@pytest.mark.parametrize("lang", ["en", "ru", "es", "de"])
async def test_invoice_is_localized(tmp_path: Path, lang: str) -> None:
    async with world(tmp_path, star_packages="100:50") as e2e:
        alice = e2e.fake.user(1001, language_code=lang)
        await e2e.command(alice, "/buy")
        (invoice,) = invoices(e2e, alice.id)
        assert invoice.invoice["title"] == e2e.t("pay.invoice_title", lang, credits=100)


async def test_stale_package_button(tmp_path: Path) -> None:
    async with world(tmp_path) as e2e:
        alice = e2e.fake.user(1001)
        await e2e.command(alice, "/buy")
        menu = e2e.fake.last_message(alice.id)
        update = await e2e.feed(e2e.fake._callback_query(alice.to_dict(), menu, "b:999:1"))
        answer = alice.callback_answer(update)
        assert answer is not None and answer["text"] == e2e.t("pay.package_gone")
        assert not e2e.fake.calls("sendInvoice")


async def test_paid_payload_that_no_longer_verifies_still_credits(tmp_path: Path) -> None:
    """The user paid (Telegram says so): if the signing key was lost meanwhile, the package
    at that price is credited rather than nothing."""
    async with world(tmp_path) as e2e:
        alice = e2e.fake.user(1001)
        payment = {
            "currency": "XTR",
            "total_amount": 200,
            "invoice_payload": "c1.1001.500.200.abcd.000000000000000000000000",
            "telegram_payment_charge_id": "stxLOSTKEY",
            "provider_payment_charge_id": "p1",
        }
        update = e2e.fake._user_service_message(
            alice.id, alice.to_dict(), successful_payment=payment
        )
        await e2e.feed(update)
        assert await e2e.storage.ledger.get_balance(alice.id) == 500
        assert last_text(e2e, alice.id) == e2e.t(
            "pay.receipt", credits=500, stars=200, balance=500, charge_id="stxLOSTKEY"
        )
