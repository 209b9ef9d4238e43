"""A hypothesis state machine over the money rules: random sequences of purchases, duplicated
payment updates, refunds (forced or not), holds, settles, releases, admin grants and UTC day
changes, against a plain model. After every step the stored balances equal the model's and
``check_consistency`` finds nothing: no negative balance, no double credit, free credits
never carried over to another day."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from generation.billing import DAY_SECONDS, next_reset, utc_day
from generation.errors import (
    AlreadyRefundedError,
    CreditsSpentError,
    InsufficientBalanceError,
    PaymentNotFoundError,
)
from storage import Storage

DAILY = 3
USERS = (1, 2)
RUNS = tuple(f"r{i}" for i in range(6))
CHARGES = tuple(f"ch{i}" for i in range(4))


@dataclass
class UserModel:
    paid: int = 0
    free_day: int | None = None
    free_left: int = 0  # today's unheld free credits (valid when free_day is today)

    def free_available(self, today: int) -> int:
        return self.free_left if self.free_day == today else DAILY

    def roll(self, today: int) -> None:
        if self.free_day != today:
            self.free_day, self.free_left = today, DAILY


@dataclass
class Model:
    users: dict[int, UserModel] = field(default_factory=lambda: {u: UserModel() for u in USERS})
    holds: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)  # open only
    used_runs: set[str] = field(default_factory=set)
    charges: dict[str, tuple[int, int, bool]] = field(default_factory=dict)  # user, credits, ref

    def held(self, user: int) -> tuple[int, int]:
        mine = [h for h in self.holds.values() if h[0] == user]
        return sum(h[1] for h in mine), sum(h[2] for h in mine)


class MoneyMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.now = 20_000 * DAY_SECONDS + 1000.0
        self.store: Storage = self.loop.run_until_complete(
            Storage.open(":memory:", clock=lambda: self.now, free_daily_credits=DAILY)
        )
        for user in USERS:
            self.run(self.store.users.get_or_create(user))
        self.model = Model()

    def run(self, coro):  # type: ignore[no-untyped-def]
        return self.loop.run_until_complete(coro)

    @property
    def today(self) -> int:
        return utc_day(self.now)

    def teardown(self) -> None:
        self.run(self.store.close())
        self.loop.close()

    # -- rules --------------------------------------------------------------------------------

    @rule(user=st.sampled_from(USERS), charge=st.sampled_from(CHARGES), credits=st.integers(1, 9))
    def purchase(self, user: int, charge: str, credits: int) -> None:
        """A successful_payment update (a charge id seen before is a duplicated update)."""
        known = self.model.charges.get(charge)
        result = self.run(
            self.store.payments.record_payment(
                charge_id=charge,
                user_id=known[0] if known else user,
                credits=known[1] if known else credits,
                stars=credits,
                payload="p",
            )
        )
        assert result.created is (known is None)
        if known is None:
            self.model.charges[charge] = (user, credits, False)
            self.model.users[user].paid += credits

    @rule(charge=st.sampled_from(CHARGES), force=st.booleans())
    def refund(self, charge: str, force: bool) -> None:
        known = self.model.charges.get(charge)
        try:
            self.run(self.store.payments.plan_refund(charge, force=force))
            result = self.run(self.store.payments.apply_refund(charge))
        except PaymentNotFoundError:
            assert known is None
            return
        except AlreadyRefundedError:
            assert known is not None and known[2]
            return
        except CreditsSpentError as exc:
            assert known is not None and not force
            user = self.model.users[known[0]]
            available = user.paid - (self.model.held(known[0])[0] - self.model.held(known[0])[1])
            assert exc.available == available < known[1]
            return
        assert known is not None and not known[2]
        owner, credits, _ = known
        user = self.model.users[owner]
        held, free_held = self.model.held(owner)
        take = min(credits, user.paid - (held - free_held))
        assert result.taken_back == take and result.shortfall == credits - take
        user.paid -= take
        self.model.charges[charge] = (owner, credits, True)

    @rule(user=st.sampled_from(USERS), run=st.sampled_from(RUNS), amount=st.integers(0, 8))
    def hold(self, user: int, run: str, amount: int) -> None:
        m = self.model.users[user]
        held, free_held = self.model.held(user)
        available = m.paid - (held - free_held) + m.free_available(self.today)
        try:
            self.run(self.store.ledger.hold(user, amount, run))
        except InsufficientBalanceError:
            assert run not in self.model.used_runs and available < amount
            return
        except ValueError:  # DuplicateError: the run id was used before
            assert run in self.model.used_runs
            return
        assert run not in self.model.used_runs and available >= amount
        m.roll(self.today)
        free_part = min(amount, m.free_left)
        m.free_left -= free_part
        self.model.holds[run] = (user, amount, free_part, self.today)
        self.model.used_runs.add(run)

    @rule(run=st.sampled_from(RUNS))
    def settle(self, run: str) -> None:
        assert self.run(self.store.ledger.settle_hold(run)) is (run in self.model.holds)
        if run in self.model.holds:
            user, amount, free_part, _day = self.model.holds.pop(run)
            self.model.users[user].paid -= amount - free_part

    @rule(run=st.sampled_from(RUNS))
    def release(self, run: str) -> None:
        assert self.run(self.store.ledger.release_hold(run)) is (run in self.model.holds)
        if run in self.model.holds:
            user, _amount, free_part, day = self.model.holds.pop(run)
            m = self.model.users[user]
            if day == self.today:
                m.free_left += free_part  # still today's: back in the pot
            # else: expired, never carried over

    @rule(user=st.sampled_from(USERS), amount=st.integers(1, 5))
    def grant(self, user: int, amount: int) -> None:
        self.run(self.store.ledger.credit(user, amount, reason="admin_grant", actor=9))
        self.model.users[user].paid += amount

    @rule(minutes=st.sampled_from([1, 60, 24 * 60]))
    def time_passes(self, minutes: int) -> None:
        self.now = min(self.now + minutes * 60, next_reset(self.now) + 30)

    # -- invariants -------------------------------------------------------------------------

    @invariant()
    def balances_match_the_model(self) -> None:
        for user in USERS:
            b = self.run(self.store.ledger.balances(user))
            m = self.model.users[user]
            held, free_held = self.model.held(user)
            assert (b.paid, b.held, b.free_held) == (m.paid, held, free_held)
            assert b.free_available == m.free_available(self.today) <= DAILY
            assert min(b.paid_available, b.free_available, b.available) >= 0

    @invariant()
    def consistent(self) -> None:
        assert self.run(self.store.ledger.check_consistency()) == []


MoneyMachine.TestCase.settings = settings(max_examples=40, stateful_step_count=30, deadline=None)
TestMoneyMachine = MoneyMachine.TestCase
