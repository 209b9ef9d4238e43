"""Fuzzing admin command arguments (issue #5 point 5) with hypothesis.

Every admin command gets random arguments (numbers out of range, huge values, unicode, quotes,
uuids, negative ids, empty) from the admin and from a non-admin. Nothing may crash (no ERROR
record); a non-admin changes nothing (deployments, LoRAs, prices and balances unchanged); the
ledger stays consistent (balances equal the ledger's sum) whatever the admin did.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.e2e.inprocess import ADMIN_ID, E2E
from tests.test_fuzz_updates import _describe, fuzz_session

EXAMPLES = 1000
OUTSIDER = 9001
COMMANDS = [
    "deployments", "deployment", "loras", "lora", "price", "setbalance", "grant", "stats",
]  # fmt: skip
WORDS = [
    "add", "remove", "enable", "disable", "MAKE", "I2I", "INPAINT", "make_style", "default",
    "cook", "api", "0", "1", "-1", "99999999999999999999", "1e9", "0.5", "nan", "inf", "-0",
    str(ADMIN_ID), str(OUTSIDER), "pixel,art", '"two words"', "'", '"', "SDXL", "<lora:x:1>",
]  # fmt: skip

args = st.lists(
    st.one_of(
        st.sampled_from(WORDS),
        st.integers(-(10**20), 10**20).map(str),
        st.uuids().map(str),
        st.text(min_size=1, max_size=30).filter(lambda t: t.strip() == t and " " not in t),
    ),
    max_size=6,
)


async def _state(env: E2E) -> tuple[Any, ...]:
    rows = []
    async with env.storage.db.read() as conn:  # a read-only snapshot of every admin table
        for table in ("deployments", "loras", "prices", "ledger", "users"):
            rows.append(await conn.execute_fetchall(f"SELECT * FROM {table} ORDER BY 1"))
    return tuple(tuple(map(tuple, r)) for r in rows)


def test_random_admin_arguments(tmp_path: Path) -> None:
    ran = [0]
    with fuzz_session(tmp_path) as (loop, env, errors):
        admin = env.fake.user(ADMIN_ID)
        outsider = env.fake.user(OUTSIDER)
        loop.run_until_complete(env.add_deployment())
        loop.run_until_complete(env.storage.users.get_or_create(OUTSIDER, language_code="en"))

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        @given(command=st.sampled_from(COMMANDS), words=args, as_admin=st.booleans())
        def one(command: str, words: list[str], as_admin: bool) -> None:
            text = " ".join([f"/{command}", *words])
            before = len(errors.records)

            async def feed() -> None:
                snapshot = None if as_admin else await _state(env)
                sent = len(env.fake.messages(OUTSIDER if not as_admin else ADMIN_ID))
                await env.command(admin if as_admin else outsider, text)
                chat = ADMIN_ID if as_admin else OUTSIDER
                assert len(env.fake.messages(chat)) > sent, "no answer"
                if not as_admin:
                    assert await _state(env) == snapshot
                    assert env.fake.last_message(chat).text == env.t("admin.refused")

            loop.run_until_complete(asyncio.wait_for(feed(), 10))
            ran[0] += 1
            new = errors.records[before:]
            assert not new, f"{_describe(new[0])}\nfor {text!r}"

        one()
        assert ran[0] >= EXAMPLES
        assert loop.run_until_complete(env.storage.ledger.check_consistency()) == []
        print(f"\nfuzzed admin commands: {ran[0]} examples")
