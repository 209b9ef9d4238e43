"""Admin commands through the real Application + FakeTelegram + real storage."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from generation.models import DeploymentInfo, DeploymentRole, RunStatus
from handlers.admin_base import known_types
from storage import Storage
from tests.test_handlers_account import ADMIN_ID, Harness, make_harness

DEP = "123e4567-e89b-12d3-a456-426614174000"
DEP2 = "00000000-0000-4000-8000-000000000002"
USER = 1001


class FakeBackend:
    """Only what /deployment add uses: list_deployments (or a failure)."""

    def __init__(self, infos: list[DeploymentInfo] | None = None, fail: bool = False) -> None:
        self.infos = infos or []
        self.fail = fail
        self.calls = 0

    async def list_deployments(self) -> list[DeploymentInfo]:
        self.calls += 1
        if self.fail:
            raise RuntimeError("backend down")
        return self.infos


@pytest.fixture
async def h(storage: Storage) -> AsyncIterator[Harness]:
    await storage.users.get_or_create(ADMIN_ID)  # so snapshots compare like with like
    async with make_harness(storage) as harness:
        yield harness


async def admin_says(h: Harness, text: str) -> str:
    admin = h.fake.user(ADMIN_ID, "Root", language_code="en")
    reply = await h.command(admin, text)
    assert reply.text is not None
    return reply.text


async def snapshot(storage: Storage) -> dict[str, Any]:
    return {
        "deployments": await storage.deployments.list_deployments(),
        "loras": await storage.loras.list_loras(),
        "prices": await storage.prices.all(),
        "balance": await storage.ledger.get_balance(USER),
        "users": await storage.users.count(),
    }


# ---------------------------------------------------------------- deployments


async def test_deployment_add_with_declared_inputs(storage: Storage) -> None:
    backend = FakeBackend([DeploymentInfo(DEP, "make", ("input_prompt", "input_seed"))])
    async with make_harness(storage, backend=backend) as h:
        text = await admin_says(h, f"/deployment add make {DEP} cook 3")
        assert text == h.t(
            "en",
            "admin.deployment_added",
            type="MAKE",
            id=DEP,
            role="cook",
            weight=3,
            inputs="input_prompt, input_seed",
        )
        dep = await storage.deployments.get(DEP)
        assert dep is not None
        assert (dep.type, dep.role, dep.weight) == ("MAKE", DeploymentRole.COOK, 3)
        assert dep.inputs == ("input_prompt", "input_seed")
        assert backend.calls == 1


@pytest.mark.parametrize("backend", [None, FakeBackend(fail=True), FakeBackend([])])
async def test_deployment_add_when_inputs_cannot_be_checked(
    storage: Storage, backend: FakeBackend | None
) -> None:
    async with make_harness(storage, backend=backend) as h:
        text = await admin_says(h, f"/deployment add I2I {DEP.upper()}")
        assert text == h.t(
            "en",
            "admin.deployment_added_unchecked",
            type="I2I",
            id=DEP,
            role="default",
            weight=1,
        )
        dep = await storage.deployments.get(DEP)  # stored with the canonical lowercase id
        assert dep is not None and dep.inputs is None and dep.role == DeploymentRole.DEFAULT


async def test_deployment_list_enable_disable_remove(h: Harness) -> None:
    assert await admin_says(h, "/deployments") == h.t("en", "admin.no_deployments")
    await admin_says(h, f"/deployment add MAKE {DEP}")
    await admin_says(h, f"/deployment add UPSCALE {DEP2} api 2")
    listing = await admin_says(h, "/deployments")
    assert DEP in listing and DEP2 in listing  # full ids
    assert "🟢 UPSCALE · api · ×2 · ✔0 ✖0 · " + DEP2 in listing  # one compact line each
    assert listing.endswith(h.t("en", "actions.deployments_hint"))
    inputs = await admin_says(h, f"/deployment inputs {DEP2}")
    assert inputs == h.t(
        "en",
        "actions.deployment_inputs",
        type="UPSCALE",
        id=DEP2,
        inputs=h.t("en", "admin.inputs_unknown_short"),
    )

    text = await admin_says(h, f"/deployment disable {DEP}")
    assert text == h.t("en", "admin.deployment_disabled", id=DEP)
    assert (await h.storage.deployments.get(DEP)).enabled is False
    assert await admin_says(h, f"/deployment enable {DEP}") == h.t(
        "en", "admin.deployment_enabled", id=DEP
    )
    assert (await h.storage.deployments.get(DEP)).enabled is True

    assert await admin_says(h, f"/deployment remove {DEP}") == h.t(
        "en", "admin.deployment_removed", id=DEP
    )
    assert await h.storage.deployments.get(DEP) is None
    assert await admin_says(h, f"/deployment remove {DEP}") == h.t(
        "en", "admin.deployment_not_found", id=DEP
    )
    assert await admin_says(h, f"/deployment add UPSCALE {DEP2}") == h.t(
        "en", "admin.deployment_exists", id=DEP2
    )


@pytest.mark.parametrize(
    ("command", "key"),
    [
        ("/deployment", "admin.usage.deployment"),
        ("/deployment add MAKE", "admin.usage.deployment"),
        ("/deployment add MAKE not-a-uuid", "admin.bad_uuid"),
        (f"/deployment add MAKE {DEP} boss", "admin.usage.deployment"),
        (f"/deployment add MAKE {DEP} cook heavy", "admin.usage.deployment"),
        (f"/deployment add MAKE {DEP} cook 0", "admin.usage.deployment"),
        (f"/deployment add MAKE {DEP} cook 1 extra", "admin.usage.deployment"),
        (f"/deployment add MAKE-X {DEP}", "admin.usage.deployment"),
        (f"/deployment add {'A' * 33} {DEP}", "admin.usage.deployment"),
        ("/deployment remove 1234", "admin.bad_uuid"),
        (f"/deployment pause {DEP}", "admin.usage.deployment"),
        ("/deployment enable", "admin.usage.deployment"),
    ],
)
async def test_deployment_bad_arguments_get_usage(h: Harness, command: str, key: str) -> None:
    before = await snapshot(h.storage)
    assert await admin_says(h, command) == h.t("en", key, types=known_types())
    assert await snapshot(h.storage) == before


def test_usage_mentions_known_types() -> None:
    assert "MAKE" in known_types() and "INPAINT" in known_types()


# ---------------------------------------------------------------- loras


async def test_lora_add_list_remove(h: Harness) -> None:
    assert await admin_says(h, "/loras") == h.t("en", "admin.no_loras")
    text = await admin_says(h, '/lora add detail "fine detail,extra detail" 0.8 10 flux')
    assert text == h.t(
        "en",
        "admin.lora_added",
        name="detail",
        triggers="fine detail, extra detail",
        weight=0.8,
        min_balance=10,
        family="FLUX",
    )
    await admin_says(h, "/lora add pixel pixelart,8bit")
    loras = {lora.name: lora for lora in await h.storage.loras.list_loras()}
    assert loras["detail"].triggers == ("fine detail", "extra detail")
    assert (loras["detail"].default_weight, loras["detail"].min_balance) == (0.8, 10)
    assert loras["pixel"].triggers == ("pixelart", "8bit") and loras["pixel"].family is None
    listing = await admin_says(h, "/loras")
    assert "detail" in listing and "pixelart, 8bit" in listing
    assert await admin_says(h, "/lora add pixel x") == h.t("en", "admin.lora_exists", name="pixel")
    assert await admin_says(h, "/lora remove pixel") == h.t(
        "en", "admin.lora_removed", name="pixel"
    )
    assert await admin_says(h, "/lora remove pixel") == h.t(
        "en", "admin.lora_not_found", name="pixel"
    )
    assert [lora.name for lora in await h.storage.loras.list_loras()] == ["detail"]


@pytest.mark.parametrize(
    "command",
    [
        "/lora",
        "/lora add onlyname",
        "/lora add bad:name trig",
        "/lora add x trig heavy",
        "/lora add x trig 11",
        "/lora add x trig 1 -5",
        "/lora add x trig 1 5 FAM extra",
        "/lora add x , ",
        '/lora add x "unbalanced',
        "/lora drop x",
    ],
)
async def test_lora_bad_arguments_get_usage(h: Harness, command: str) -> None:
    before = await snapshot(h.storage)
    assert await admin_says(h, command) == h.t("en", "admin.usage.lora")
    assert await snapshot(h.storage) == before


# ---------------------------------------------------------------- prices and balances


async def test_price(h: Harness) -> None:
    assert await h.storage.prices.get("MAKE") == 0  # free until an admin sets a price
    assert await admin_says(h, "/price make 3") == h.t(
        "en", "admin.price_set", type="MAKE", credits=3
    )
    assert await h.storage.prices.get("MAKE") == 3
    await admin_says(h, "/price MAKE 0")
    assert await h.storage.prices.get("MAKE") == 0


@pytest.mark.parametrize("command", ["/price", "/price MAKE", "/price MAKE -1", "/price MAKE x"])
async def test_price_bad_arguments(h: Harness, command: str) -> None:
    before = await snapshot(h.storage)
    assert await admin_says(h, command) == h.t("en", "admin.usage.price", types=known_types())
    assert await snapshot(h.storage) == before


async def test_grant_and_setbalance_record_the_admin(h: Harness) -> None:
    await h.storage.users.get_or_create(USER)
    assert await admin_says(h, f"/grant {USER} 25") == h.t(
        "en", "admin.granted", user_id=USER, amount=25, balance=25
    )
    assert await admin_says(h, f"/setbalance {USER} 7") == h.t(
        "en", "admin.balance_set", user_id=USER, balance=7, held=0
    )
    assert await h.storage.ledger.get_balance(USER) == 7
    history = await h.storage.ledger.history(USER)
    assert {entry.actor for entry in history} == {ADMIN_ID}
    assert sorted(entry.amount for entry in history) == [-18, 25]


async def test_grant_to_an_unknown_user_is_refused(h: Harness) -> None:
    """No silent creation: an id or name the bot has never seen is refused, clearly."""
    assert await admin_says(h, "/grant 5555 10") == h.t("en", "users.unknown_id", query="5555")
    assert await h.storage.users.get(5555) is None
    assert await admin_says(h, "/setbalance @ghost_user 4") == h.t(
        "en", "users.unknown_username", query="@ghost_user"
    )
    assert await h.storage.users.count() == 1  # only the admin


async def test_grant_by_username_and_by_reply(h: Harness) -> None:
    bob = h.fake.user(USER, "Bob", username="bob_b")
    await h.command(bob, "/balance")  # Bob uses the bot: known, by name too
    assert await admin_says(h, "/grant @BOB_B 7") == h.t(
        "en", "admin.granted", user_id=USER, amount=7, balance=7
    )
    group = -100777
    h.fake.add_chat(group, title="Team")
    said = await h.feed(bob.send_text("hi", group, queue=False))
    admin = h.fake.users[ADMIN_ID]
    await h.feed(admin.reply_to(said["message"]["message_id"], "/grant 3", chat_id=group))
    assert h.fake.last_message(group).text == h.t(
        "en", "admin.granted", user_id=USER, amount=3, balance=10
    )
    await h.feed(admin.reply_to(said["message"]["message_id"], "/setbalance 1", chat_id=group))
    assert await h.storage.ledger.get_balance(USER) == 1


async def test_setbalance_cannot_go_below_held_credits(h: Harness) -> None:
    await h.storage.users.get_or_create(USER, starting_balance=10)
    await h.storage.ledger.hold(USER, 6, "1" * 32)
    assert await admin_says(h, f"/setbalance {USER} 2") == h.t(
        "en", "admin.balance_below_hold", user_id=USER, held=6
    )
    assert await h.storage.ledger.get_balance(USER) == 4


@pytest.mark.parametrize(
    ("command", "key"),
    [
        ("/grant", "admin.usage.grant"),
        (f"/grant {USER}", "admin.usage.grant"),
        (f"/grant {USER} -5", "admin.usage.grant"),
        (f"/grant {USER} 0", "admin.usage.grant"),
        (f"/grant {USER} 1.5", "admin.usage.grant"),
        (f"/setbalance {USER} -1", "admin.usage.setbalance"),
        (f"/setbalance {USER} many", "admin.usage.setbalance"),
        ("/setbalance", "admin.usage.setbalance"),
    ],
)
async def test_balance_bad_arguments(h: Harness, command: str, key: str) -> None:
    await h.storage.users.get_or_create(USER, starting_balance=3)
    before = await snapshot(h.storage)
    assert await admin_says(h, command) == h.t("en", key)
    assert await snapshot(h.storage) == before


# ---------------------------------------------------------------- stats


async def test_stats(h: Harness) -> None:
    await h.storage.users.get_or_create(USER)
    await admin_says(h, f"/deployment add MAKE {DEP}")
    await admin_says(h, f"/deployment disable {DEP}")
    text = await admin_says(h, "/stats")
    assert text.startswith(h.t("en", "admin.stats", users=2, runs="—", deployments=1, enabled=0))
    assert h.t("en", "pay.stats_runs", runs="—") in text.split("\n")


async def test_stats_with_runs_and_queue(h: Harness) -> None:
    from generation.models import RunRecord
    from generation.scheduler import FairScheduler, QueueItem

    await h.storage.users.get_or_create(USER)
    for n in range(3):
        await h.storage.runs.create_run(
            RunRecord(id=f"{n:032x}", user_id=USER, chat_id=USER, type="MAKE", request={})
        )
    await h.storage.runs.update_run(f"{0:032x}", status=RunStatus.SUCCESS)
    scheduler = FairScheduler()
    scheduler.submit(QueueItem(f"{1:032x}", USER, USER))
    h.services.generation.scheduler = scheduler
    text = await admin_says(h, "/stats")
    expected = [
        *h.t(
            "en", "admin.stats", users=2, runs="queued: 2, success: 1", deployments=0, enabled=0
        ).split("\n"),
        h.t("en", "admin.stats_queue", queued=1, in_flight=0),
        h.t("en", "pay.stats_runs", runs="MAKE: 3"),  # today's runs (handlers/admin.py)
    ]
    assert text.split("\n")[: len(expected)] == expected


# ---------------------------------------------------------------- refusal


@pytest.mark.parametrize(
    "command",
    [
        "/deployments",
        f"/deployment add MAKE {DEP}",
        f"/deployment remove {DEP}",
        f"/deployment disable {DEP}",
        "/loras",
        "/lora add x trig",
        "/lora remove keep",
        "/price MAKE 5",
        f"/setbalance {USER} 100",
        f"/grant {USER} 100",
        "/stats",
    ],
)
async def test_non_admin_is_refused_and_nothing_changes(h: Harness, command: str) -> None:
    await h.storage.users.get_or_create(USER, starting_balance=1)
    await h.storage.deployments.add("MAKE", DEP)
    await h.storage.loras.add("keep", ["kept"])
    before = await snapshot(h.storage)
    mallory = h.fake.user(USER, "Mallory", language_code="ru")
    reply = await h.command(mallory, command)
    assert reply.text == h.t("ru", "admin.refused")
    assert await snapshot(h.storage) == before
