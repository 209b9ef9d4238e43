"""The ledger: credits, debits, holds exactly once, concurrency, restart, consistency."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from generation.errors import InsufficientBalanceError
from storage import DuplicateError, NotFoundError, Storage, ValidationError


async def _user(storage: Storage, user_id: int = 1, balance: int = 0) -> None:
    await storage.users.get_or_create(user_id, starting_balance=balance)


async def test_credit_debit_and_set_balance(storage: Storage) -> None:
    await _user(storage)
    assert await storage.ledger.credit(1, 30, reason="grant", actor=99) == 30
    assert await storage.ledger.credit(1, -10, reason="refund_reversal") == 20
    assert await storage.ledger.set_balance(1, 75, actor=99) == 75
    assert await storage.ledger.set_balance(1, 75, actor=99) == 75  # no-op: no movement
    assert await storage.ledger.get_balance(1) == 75
    history = await storage.ledger.history(1)
    assert [(e.amount, e.reason, e.actor) for e in history] == [
        (55, "set_balance", 99),
        (-10, "refund_reversal", None),
        (30, "grant", 99),
    ]
    assert [e.amount for e in await storage.ledger.history(1, limit=1)] == [55]
    assert await storage.ledger.check_consistency() == []


@pytest.mark.parametrize("amount", [True, 1.5, 0, "5", None])
async def test_bad_amounts_write_nothing(storage: Storage, amount: object) -> None:
    await _user(storage, balance=10)
    with pytest.raises(ValidationError):
        await storage.ledger.credit(1, amount, reason="grant")  # type: ignore[arg-type]
    assert len(await storage.ledger.history(1)) == 1
    assert await storage.ledger.get_total(1) == 10


async def test_rejected_movements_write_nothing(storage: Storage) -> None:
    await _user(storage, balance=10)
    with pytest.raises(ValidationError, match="exceeds"):
        await storage.ledger.credit(1, -11, reason="debit")
    with pytest.raises(ValidationError):
        await storage.ledger.set_balance(1, -1, actor=None)
    with pytest.raises(ValidationError):
        await storage.ledger.set_balance(1, 2.0, actor=None)  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        await storage.ledger.credit(1, 5, reason="  ")
    with pytest.raises(NotFoundError):
        await storage.ledger.credit(404, 5, reason="grant")
    with pytest.raises(NotFoundError):
        await storage.ledger.set_balance(404, 5, actor=1)
    assert len(await storage.ledger.history(1)) == 1
    assert await storage.ledger.get_total(1) == 10
    assert await storage.users.get(404) is None


async def test_unknown_user_has_zero(storage: Storage) -> None:
    assert await storage.ledger.get_balance(12345) == 0
    assert await storage.ledger.get_held(12345) == 0
    with pytest.raises(InsufficientBalanceError):
        await storage.ledger.hold(12345, 1, "r1")


async def test_hundred_concurrent_holds_never_overdraw(storage: Storage) -> None:
    await _user(storage, balance=50)
    results = await asyncio.gather(
        *(storage.ledger.hold(1, 1, f"run-{i}") for i in range(100)), return_exceptions=True
    )
    ok = [r for r in results if r is None]
    refused = [r for r in results if isinstance(r, InsufficientBalanceError)]
    assert len(ok) == 50 and len(refused) == 50
    assert all(e.required == 1 and e.available == 0 for e in refused)
    assert await storage.ledger.get_balance(1) == 0
    assert await storage.ledger.get_held(1) == 50
    assert await storage.ledger.get_total(1) == 50
    assert len(await storage.ledger.list_open_holds()) == 50
    assert await storage.ledger.check_consistency() == []


async def test_hold_insufficient_and_duplicate(storage: Storage) -> None:
    await _user(storage, balance=10)
    with pytest.raises(InsufficientBalanceError) as info:
        await storage.ledger.hold(1, 11, "r1")
    assert (info.value.required, info.value.available) == (11, 10)
    await storage.ledger.hold(1, 4, "r1")
    with pytest.raises(DuplicateError):
        await storage.ledger.hold(1, 4, "r1")
    with pytest.raises(ValidationError):
        await storage.ledger.hold(1, -1, "r2")
    with pytest.raises(ValidationError):
        await storage.ledger.hold(1, 1.0, "r3")  # type: ignore[arg-type]
    assert await storage.ledger.get_held(1) == 4
    assert await storage.ledger.get_balance(1) == 6
    # credits on hold cannot be debited or set away
    with pytest.raises(ValidationError):
        await storage.ledger.credit(1, -7, reason="debit")
    with pytest.raises(ValidationError, match="on hold"):
        await storage.ledger.set_balance(1, 3, actor=1)


async def test_settle_exactly_once(storage: Storage) -> None:
    await _user(storage, balance=10)
    await storage.ledger.hold(1, 4, "r1")
    assert await storage.ledger.settle_hold("r1") is True
    assert await storage.ledger.settle_hold("r1") is False
    assert await storage.ledger.release_hold("r1") is False
    assert await storage.ledger.get_total(1) == 6
    assert await storage.ledger.get_balance(1) == 6
    assert await storage.ledger.get_held(1) == 0
    debits = [e for e in await storage.ledger.history(1) if e.reason == "generation"]
    assert [(e.amount, e.run_id) for e in debits] == [(-4, "r1")]
    hold = await storage.ledger.get_hold("r1")
    assert hold is not None and hold.state == "settled"
    assert await storage.ledger.check_consistency() == []


async def test_release_exactly_once(storage: Storage) -> None:
    await _user(storage, balance=10)
    await storage.ledger.hold(1, 4, "r1")
    assert await storage.ledger.release_hold("r1") is True
    assert await storage.ledger.release_hold("r1") is False
    assert await storage.ledger.settle_hold("r1") is False
    assert await storage.ledger.get_balance(1) == 10
    assert len(await storage.ledger.history(1)) == 1  # only the starting balance
    assert await storage.ledger.settle_hold("never-held") is False
    assert await storage.ledger.release_hold("never-held") is False


async def test_concurrent_settle_and_release_resolve_once(storage: Storage) -> None:
    await _user(storage, balance=10)
    await storage.ledger.hold(1, 3, "r1")
    results = await asyncio.gather(
        *(
            storage.ledger.settle_hold("r1") if i % 2 else storage.ledger.release_hold("r1")
            for i in range(20)
        )
    )
    assert results.count(True) == 1
    assert await storage.ledger.get_held(1) == 0
    assert await storage.ledger.get_total(1) in (7, 10)
    assert await storage.ledger.check_consistency() == []


async def test_open_hold_survives_restart(tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite3"
    store = await Storage.open(path)
    await store.users.get_or_create(1, starting_balance=10)
    await store.ledger.hold(1, 4, "crashed-run")
    await store.ledger.hold(1, 2, "finished-run")
    await store.ledger.settle_hold("finished-run")
    await store.close()  # "crash"

    store = await Storage.open(path)
    try:
        open_holds = await store.ledger.list_open_holds()
        assert [(h.run_id, h.user_id, h.amount) for h in open_holds] == [("crashed-run", 1, 4)]
        assert await store.ledger.get_balance(1) == 4
        assert await store.ledger.release_hold("crashed-run")
        assert await store.ledger.list_open_holds() == []
        assert await store.ledger.get_balance(1) == 8
        assert await store.ledger.check_consistency() == []
    finally:
        await store.close()


async def test_consistency_check_finds_tampering(storage: Storage) -> None:
    await _user(storage, balance=10)
    await storage.ledger.hold(1, 2, "r1")
    assert await storage.ledger.check_consistency() == []
    async with storage.db.write() as conn:
        await conn.execute("UPDATE users SET balance = balance + 5 WHERE id = 1")
        await conn.execute("UPDATE holds SET amount = 3 WHERE run_id = 'r1'")
    problems = await storage.ledger.check_consistency()
    assert any("cached balance 15 != ledger sum 10" in p for p in problems)
    assert any("cached held 2 != open holds 3" in p for p in problems)


async def test_ledger_is_append_only(storage: Storage) -> None:
    await _user(storage, balance=10)
    for sql in ("UPDATE ledger SET amount = 1000", "DELETE FROM ledger"):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            async with storage.db.write() as conn:
                await conn.execute(sql)
    assert await storage.ledger.get_total(1) == 10
    assert await storage.ledger.check_consistency() == []


_ops = st.lists(
    st.tuples(
        st.sampled_from(["credit", "hold", "settle", "release", "set"]),
        st.integers(min_value=-20, max_value=20),
        st.integers(min_value=0, max_value=5),
    ),
    max_size=25,
)


@settings(max_examples=25, deadline=None)
@given(ops=_ops)
def test_random_operations_keep_invariants(ops: list[tuple[str, int, int]]) -> None:
    """Whatever mix of operations (valid or refused), money adds up and never goes negative."""

    async def scenario() -> None:
        store = await Storage.open(":memory:")
        try:
            await store.users.get_or_create(1, starting_balance=10)
            ledger = store.ledger
            for op, amount, run in ops:
                run_id = f"r{run}"
                try:
                    if op == "credit":
                        await ledger.credit(1, amount, reason="test")
                    elif op == "hold":
                        await ledger.hold(1, abs(amount), run_id)
                    elif op == "settle":
                        await ledger.settle_hold(run_id)
                    elif op == "release":
                        await ledger.release_hold(run_id)
                    else:
                        await ledger.set_balance(1, abs(amount), actor=None)
                except (ValidationError, DuplicateError, InsufficientBalanceError):
                    pass
                assert await ledger.get_balance(1) >= 0
            assert await ledger.check_consistency() == []
            open_sum = sum(h.amount for h in await ledger.list_open_holds())
            assert await ledger.get_held(1) == open_sum
        finally:
            await store.close()

    asyncio.run(scenario())
