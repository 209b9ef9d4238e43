"""Migration 3 money: free daily credits (a second pot, spent first, never carried over),
Stars payments exactly once by charge id, refunds (normal, spent, forced, already refunded),
access state, and the daily run guards. The clock is injected (``Storage.open(clock=...)``)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from typing import Any

import pytest

from generation.billing import DAY_SECONDS, AccessMode, next_reset
from generation.errors import (
    AccessDeniedError,
    AlreadyRefundedError,
    BannedError,
    BotDailyLimitError,
    CreditsSpentError,
    DailyLimitError,
    ErrorCode,
    InsufficientBalanceError,
    PaidAccessOnlyError,
    PaymentNotFoundError,
)
from generation.models import RunRecord, RunStatus
from storage import RunLimits, Storage
from storage.ledger import POT_FREE, REASON_FREE_EXPIRY, REASON_FREE_GRANT

DAY0 = 20_000 * DAY_SECONDS


class Clock:
    def __init__(self, now: float = DAY0 + 3600) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def next_day(self) -> None:
        self.now = next_reset(self.now) + 60


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def store(clock: Clock) -> AsyncIterator[Storage]:
    s = await Storage.open(":memory:", clock=clock, free_daily_credits=5)
    try:
        yield s
    finally:
        await s.close()


def _run(run_id: str, user_id: int = 1, *, created_at: float, **kw: Any) -> RunRecord:
    return RunRecord(
        id=run_id,
        user_id=user_id,
        chat_id=user_id,
        type=kw.pop("type", "MAKE"),
        request={"prompt": "x"},
        created_at=created_at,
        **kw,
    )


async def _ok(store: Storage) -> None:
    assert await store.ledger.check_consistency() == []


# -- free daily credits ----------------------------------------------------------------------


async def test_free_credits_are_spent_before_paid_and_ledger_says_which(store: Storage) -> None:
    await store.users.get_or_create(1, starting_balance=10)
    b = await store.ledger.balances(1)
    assert (b.free, b.paid, b.held, b.available) == (5, 10, 0, 15)
    await store.ledger.hold(1, 7, "r1")  # 5 free + 2 paid
    hold = await store.ledger.get_hold("r1")
    assert hold is not None and hold.free_amount == 5
    b = await store.ledger.balances(1)
    assert (b.free_available, b.paid_available, b.held) == (0, 8, 7)
    assert await store.ledger.settle_hold("r1")
    debits = [e for e in await store.ledger.history(1) if e.reason == "generation"]
    assert sorted((e.pot, e.amount) for e in debits) == [("free", -5), ("paid", -2)]
    b = await store.ledger.balances(1)
    assert (b.free, b.paid, b.held) == (0, 8, 0)
    await _ok(store)


async def test_free_credits_are_not_carried_over(store: Storage, clock: Clock) -> None:
    await store.users.get_or_create(1)
    await store.ledger.hold(1, 2, "r1")
    assert await store.ledger.settle_hold("r1")
    assert (await store.ledger.balances(1)).free == 3
    clock.next_day()
    assert (await store.ledger.balances(1)).free == 5  # not 8: yesterday's 3 are gone
    b = await store.ledger.refresh(1)
    assert (b.free, b.paid) == (5, 0)
    rows = [(e.reason, e.amount, e.pot) for e in await store.ledger.history(1)]
    assert rows[:2] == [(REASON_FREE_GRANT, 5, POT_FREE), (REASON_FREE_EXPIRY, -3, POT_FREE)]
    assert (await store.ledger.refresh(1)).free == 5  # a second refresh the same day: no-op
    assert len(await store.ledger.history(1)) == len(rows)
    with pytest.raises(InsufficientBalanceError) as err:
        await store.ledger.hold(1, 6, "r2")
    assert err.value.available == 5
    await _ok(store)


async def test_hold_across_midnight_then_release_expires_its_free_part(
    store: Storage, clock: Clock
) -> None:
    await store.users.get_or_create(1, starting_balance=1)
    await store.ledger.hold(1, 4, "r1")  # 4 free of day 0
    clock.next_day()
    b = await store.ledger.balances(1)
    assert (b.free, b.free_held, b.free_available) == (9, 4, 5)  # held 4 + today's 5
    assert await store.ledger.release_hold("r1")
    b = await store.ledger.balances(1)
    assert (b.free, b.free_held, b.paid) == (5, 0, 1)  # the 4 of yesterday did not come back
    await _ok(store)


async def test_release_after_todays_roll_expires_the_old_free_part(
    store: Storage, clock: Clock
) -> None:
    await store.users.get_or_create(1)
    await store.ledger.hold(1, 4, "r1")
    clock.next_day()
    await store.ledger.hold(1, 1, "r2")  # rolls the day: today's 5 granted
    assert await store.ledger.release_hold("r1")
    expiry = [e for e in await store.ledger.history(1) if e.run_id == "r1"]
    assert [(e.reason, e.amount) for e in expiry] == [(REASON_FREE_EXPIRY, -4)]
    assert (await store.ledger.balances(1)).free_available == 4
    assert await store.ledger.settle_hold("r2")
    await _ok(store)


async def test_settle_across_midnight_debits_the_old_free_part(
    store: Storage, clock: Clock
) -> None:
    await store.users.get_or_create(1)
    await store.ledger.hold(1, 5, "r1")
    clock.next_day()
    assert await store.ledger.settle_hold("r1")
    b = await store.ledger.refresh(1)
    assert (b.free, b.free_held, b.paid) == (5, 0, 0)
    await _ok(store)


async def test_free_credits_turned_off_expire_leftovers(store: Storage, clock: Clock) -> None:
    await store.users.get_or_create(1)
    await store.ledger.refresh(1)
    store.configure_money(free_daily_credits=0)
    clock.next_day()
    b = await store.ledger.refresh(1)
    assert (b.free, b.total) == (0, 0)
    await _ok(store)


async def test_admin_movements_touch_only_paid_credits(store: Storage) -> None:
    await store.users.get_or_create(1, starting_balance=3)
    await store.ledger.hold(1, 6, "r1")  # 5 free + 1 paid
    assert await store.ledger.set_balance(1, 1, actor=9) == 1  # paid may not drop below held 1
    with pytest.raises(ValueError):
        await store.ledger.set_balance(1, 0, actor=9)
    with pytest.raises(ValueError):
        await store.ledger.credit(1, -1, reason="admin")
    await store.ledger.credit(1, 4, reason="admin_grant", actor=9)
    b = await store.ledger.balances(1)
    assert (b.paid, b.free, b.held) == (5, 5, 6)
    await _ok(store)


async def test_the_database_refuses_an_inconsistent_pot(store: Storage) -> None:
    await store.users.get_or_create(1)
    await store.ledger.refresh(1)
    with pytest.raises(sqlite3.IntegrityError, match="pot out of range"):
        async with store.db.write() as conn:
            await conn.execute("UPDATE users SET free_held = 5 WHERE id = 1")


async def test_consistency_check_sees_tampered_free_pot(store: Storage) -> None:
    await store.users.get_or_create(1)
    await store.ledger.refresh(1)
    async with store.db.write() as conn:
        await conn.execute("UPDATE users SET free_balance = 4, balance = 4 WHERE id = 1")
        await conn.execute(
            "INSERT INTO ledger(user_id, amount, reason, created_at, pot)"
            " VALUES (1, 5, 'free_grant', ?, 'free')",
            (DAY0 + 3600,),
        )
    problems = await store.ledger.check_consistency()
    assert any("free grants on day" in p for p in problems)
    assert any("cached free 4 != free ledger sum 10" in p for p in problems)


# -- payments ----------------------------------------------------------------------------------


async def _pay(store: Storage, charge: str = "ch1", user: int = 1, credits: int = 100) -> Any:
    return await store.payments.record_payment(
        charge_id=charge, user_id=user, credits=credits, stars=50, payload="p"
    )


async def test_payment_is_credited_exactly_once(store: Storage) -> None:
    first = await _pay(store)
    assert first.created and first.balances.paid == 100 and first.balances.free == 5
    again = await _pay(store)
    assert not again.created and again.payment == first.payment
    assert (await store.ledger.balances(1)).paid == 100
    purchases = [e for e in await store.ledger.history(1) if e.reason == "purchase"]
    assert [(e.amount, e.charge_id) for e in purchases] == [(100, "ch1")]
    results = await asyncio.gather(*(_pay(store, "ch2") for _ in range(5)))
    assert sum(r.created for r in results) == 1
    assert (await store.ledger.balances(1)).paid == 200
    assert await store.payments.has_purchase(1)
    assert [p.charge_id for p in await store.payments.list_recent(1)] == ["ch2", "ch1"]
    assert await store.payments.list_recent(2) == []
    assert len(await store.payments.list_recent(limit=1)) == 1
    await _ok(store)


async def test_refund_normal(store: Storage) -> None:
    await _pay(store)
    plan = await store.payments.plan_refund("ch1")
    assert (plan.take, plan.shortfall) == (100, 0)
    result = await store.payments.apply_refund("ch1", actor=9)
    assert (result.taken_back, result.shortfall, result.balances.paid) == (100, 0, 0)
    assert result.payment.state == "refunded" and result.payment.refunded_by == 9
    for call in (store.payments.plan_refund, store.payments.apply_refund):
        with pytest.raises(AlreadyRefundedError) as err:
            await call("ch1")
        assert err.value.code is ErrorCode.ALREADY_REFUNDED
    assert not await store.payments.has_purchase(1)
    assert not (await _pay(store)).created  # a redelivered payment after the refund: nothing
    assert (await store.ledger.balances(1)).paid == 0
    await _ok(store)


async def test_refund_of_spent_credits_needs_force_and_never_goes_below_held(
    store: Storage,
) -> None:
    await _pay(store)
    await store.ledger.hold(1, 70, "r1")  # 5 free + 65 paid
    await store.ledger.settle_hold("r1")
    await store.ledger.hold(1, 10, "r2")  # paid only now: 35 paid, 10 of them held
    with pytest.raises(CreditsSpentError) as err:
        await store.payments.plan_refund("ch1")
    assert (err.value.credits, err.value.available, err.value.user_id) == (100, 25, 1)
    plan = await store.payments.plan_refund("ch1", force=True)
    assert (plan.take, plan.shortfall) == (25, 75)
    result = await store.payments.apply_refund("ch1")
    assert (result.taken_back, result.shortfall) == (25, 75)
    b = await store.ledger.balances(1)
    assert (b.paid, b.held, b.available) == (10, 10, 0)
    assert await store.ledger.settle_hold("r2")  # the hold is still covered
    await _ok(store)


async def test_refund_unknown_charge(store: Storage) -> None:
    with pytest.raises(PaymentNotFoundError):
        await store.payments.plan_refund("nope")
    with pytest.raises(PaymentNotFoundError):
        await store.payments.apply_refund("nope")


async def test_payment_consistency_checks(store: Storage) -> None:
    await _pay(store)
    async with store.db.write() as conn:
        await conn.execute(
            "INSERT INTO ledger(user_id, amount, reason, created_at, charge_id)"
            " VALUES (1, 100, 'purchase', 0, 'ch1')"
        )
        await conn.execute(
            "INSERT INTO ledger(user_id, amount, reason, created_at) VALUES (1, 5, 'refund', 0)"
        )
        await conn.execute("UPDATE users SET balance = balance + 105 WHERE id = 1")
    problems = await store.ledger.check_consistency()
    assert any("payment ch1: 2 purchase credits" in p for p in problems)
    assert any("purchase/refund without a payment" in p for p in problems)


# -- access ------------------------------------------------------------------------------------


async def test_access_modes(store: Storage) -> None:
    check = store.access.check
    await check(1, mode=AccessMode.OPEN)
    with pytest.raises(AccessDeniedError):
        await check(1, mode=AccessMode.ALLOWLIST, chat_id=1)
    await check(1, mode=AccessMode.ALLOWLIST, is_admin=True)
    await store.access.allow(1)
    await check(1, mode=AccessMode.ALLOWLIST)
    await check(1, mode=AccessMode.PAID)  # allowed users pass the paid mode too

    # groups: writing in an allowed group, or being a member of one
    assert await store.access.allow_chat(-100, actor=9)
    assert not await store.access.allow_chat(-100)
    await check(2, mode=AccessMode.ALLOWLIST, chat_id=-100)
    with pytest.raises(AccessDeniedError):
        await check(2, mode=AccessMode.ALLOWLIST, chat_id=2)

    async def member(group: int) -> bool:
        return group == -100

    await check(2, mode=AccessMode.ALLOWLIST, chat_id=2, is_member=member)
    assert await store.access.disallow_chat(-100)
    with pytest.raises(AccessDeniedError):
        await check(2, mode=AccessMode.ALLOWLIST, chat_id=-100, is_member=member)

    # paid: paid credits or a purchase; free credits do not count
    await store.users.get_or_create(3)
    await store.ledger.refresh(3)
    with pytest.raises(PaidAccessOnlyError):
        await check(3, mode=AccessMode.PAID)
    await _pay(store, "c3", user=3)
    await check(3, mode=AccessMode.PAID)
    await store.users.get_or_create(4, starting_balance=1)
    await check(4, mode=AccessMode.PAID)


async def test_banned_user_is_told_once_then_silence(store: Storage) -> None:
    await store.access.ban(5)  # an id the bot has not seen: created
    firsts = []
    for mode in (AccessMode.OPEN, AccessMode.OPEN, AccessMode.PAID):
        with pytest.raises(BannedError) as err:
            await store.access.check(5, mode=mode)
        firsts.append(err.value.first)
    assert firsts == [True, False, False]
    assert await store.access.list_users("banned") == [5]
    await store.access.unban(5)
    await store.access.check(5, mode=AccessMode.OPEN)
    await store.access.ban(5)
    with pytest.raises(BannedError) as err:
        await store.access.check(5)
    assert err.value.first  # a new ban: one new refusal


# -- daily run guards ----------------------------------------------------------------------


async def test_per_user_limit_says_when_it_resets(store: Storage, clock: Clock) -> None:
    store.configure_money(run_limits=RunLimits(per_user=2))
    await store.users.get_or_create(1)
    for i in range(2):
        await store.runs.create_run(_run(f"a{i}", created_at=clock()))
    with pytest.raises(DailyLimitError) as err:
        await store.runs.create_run(_run("a2", created_at=clock()), hold_amount=1)
    assert err.value.code is ErrorCode.DAILY_LIMIT
    assert err.value.resets_at == DAY0 + DAY_SECONDS and err.value.limit == 2
    assert err.value.remaining == DAY_SECONDS - 3600  # the clock says 01:00 UTC
    assert await store.runs.get_run("a2") is None
    assert await store.ledger.get_held(1) == 0  # nothing written
    await store.runs.create_run(_run("b0", user_id=2, created_at=clock()))  # others unaffected
    clock.next_day()
    await store.runs.create_run(_run("a3", created_at=clock()))
    assert await store.usage.runs_today(1) == 1


async def test_runs_that_never_reached_the_backend_do_not_count(
    store: Storage, clock: Clock
) -> None:
    store.configure_money(run_limits=RunLimits(per_user=1))
    await store.runs.create_run(_run("a0", created_at=clock()))
    await store.runs.update_run("a0", status=RunStatus.FAILED)
    await store.runs.create_run(_run("a1", created_at=clock()))
    await store.runs.update_run("a1", status=RunStatus.FAILED, backend_run_id="b-1")
    with pytest.raises(DailyLimitError):
        await store.runs.create_run(_run("a2", created_at=clock()))


async def test_whole_bot_limit_is_atomic(store: Storage, clock: Clock) -> None:
    store.configure_money(run_limits=RunLimits(per_day=3))
    results = await asyncio.gather(
        *(store.runs.create_run(_run(f"r{i}", i, created_at=clock())) for i in range(6)),
        return_exceptions=True,
    )
    refused = [r for r in results if isinstance(r, BotDailyLimitError)]
    assert len(refused) == 3 and await store.usage.runs_today() == 3
    assert refused[0].code is ErrorCode.BOT_DAILY_LIMIT


async def test_usage_stats(store: Storage, clock: Clock) -> None:
    await store.users.get_or_create(1, starting_balance=10)
    await store.users.get_or_create(2)
    await store.runs.create_run(_run("a", 1, created_at=clock(), price=7), hold_amount=7)
    await store.runs.create_run(_run("b", 2, created_at=clock(), type="I2I"))
    await store.runs.create_run(_run("c", 1, created_at=clock(), type="I2I"))
    await store.ledger.settle_hold("a")
    await _pay(store, "p1", user=2)
    await _pay(store, "p2", user=2)
    await store.payments.apply_refund("p2")
    stats = await store.usage.stats()
    assert stats.runs_today == {"I2I": 2, "MAKE": 1}
    assert (stats.credits_spent_today, stats.free_credits_spent_today) == (7, 5)
    assert (stats.stars_today, stats.stars_week, stats.stars_total) == (50, 50, 50)
    assert stats.refunded_stars_total == 50
    assert stats.top_users == [(1, 2, 7), (2, 1, 0)]
    clock.now += 8 * DAY_SECONDS
    later = await store.usage.stats()
    assert (later.stars_today, later.stars_week, later.stars_total) == (0, 0, 50)
    assert later.runs_today == {}
