"""Hold reconciliation, run pruning and in-process counters (issue 11, point 10)."""

from __future__ import annotations

from pathlib import Path

from generation import GenerationContext, RunStatus
from generation.counters import GenerationCounters
from generation.maintenance import DAY, Maintenance
from generation.models import ChargeState, DeliveryState, RunRecord
from storage import Storage
from tests.test_service import USER, Env, env, make_request

__all__ = ["env"]


def _run(run_id: str, status: RunStatus, *, finished: float, price: int = 0) -> RunRecord:
    return RunRecord(
        id=run_id,
        user_id=USER,
        chat_id=USER,
        type="MAKE",
        request={"prompt": "x"},
        status=status,
        price=price,
        created_at=finished - 10,
        updated_at=finished,
        finished_at=finished if status.is_terminal else None,
    )


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_a_failed_release_is_resolved_without_waiting_for_a_restart(tmp_path: Path) -> None:
    clock = Clock(1_700_000_000.0)
    async with await Storage.open(tmp_path / "db.sqlite3", clock=clock) as storage:
        await storage.users.get_or_create(USER, starting_balance=10)
        for run_id, status in (("failed", RunStatus.FAILED), ("ok", RunStatus.SUCCESS)):
            await storage.runs.create_run(
                _run(run_id, RunStatus.QUEUED, finished=clock.now, price=3), hold_amount=3
            )
            # terminal, but the hold was never resolved (release_hold raised, or a crash)
            await storage.runs.update_run(run_id, status=status, finished_at=clock.now)
        await storage.runs.update_run("ok", delivery_state=DeliveryState.DELIVERED)
        await storage.runs.create_run(
            _run("waiting", RunStatus.QUEUED, finished=clock.now, price=2), hold_amount=2
        )
        await storage.runs.update_run("waiting", status=RunStatus.SUCCESS)  # delivery pending
        assert await storage.ledger.get_balance(USER) == 2

        counters = GenerationCounters()
        m = Maintenance(storage.runs, storage.ledger, clock=clock, counters=counters)
        assert await m.reconcile_holds() == 2
        assert (await storage.runs.get_run("failed")).charge_state is ChargeState.RELEASED
        assert (await storage.runs.get_run("ok")).charge_state is ChargeState.SETTLED
        assert (await storage.runs.get_run("waiting")).charge_state is ChargeState.HELD
        assert await storage.ledger.get_balance(USER) == 10 - 3 - 2
        assert await m.reconcile_holds() == 0  # exactly once
        assert counters.total("generation_holds_reconciled_total") == 2
        assert await storage.ledger.check_consistency() == []


async def test_old_runs_are_pruned_and_the_ledger_is_kept(tmp_path: Path) -> None:
    clock = Clock(1_700_000_000.0)
    async with await Storage.open(tmp_path / "db.sqlite3", clock=clock) as storage:
        await storage.users.get_or_create(USER, starting_balance=10)
        old = clock.now - 91 * DAY
        await storage.runs.create_run(
            _run("old-charged", RunStatus.QUEUED, finished=old, price=1), hold_amount=1
        )
        await storage.runs.update_run(
            "old-charged",
            status=RunStatus.SUCCESS,
            finished_at=old,
            delivery_state=DeliveryState.DELIVERED,
        )
        await storage.ledger.settle_hold("old-charged")
        await storage.runs.update_run("old-charged", updated_at=old)
        await storage.runs.create_run(_run("old-failed", RunStatus.FAILED, finished=old))
        await storage.runs.create_run(_run("old-undelivered", RunStatus.SUCCESS, finished=old))
        await storage.runs.create_run(_run("recent", RunStatus.FAILED, finished=clock.now - DAY))
        await storage.runs.create_run(_run("old-but-running", RunStatus.RUNNING, finished=old))
        history_before = await storage.ledger.history(USER)

        m = Maintenance(storage.runs, storage.ledger, clock=clock, retention_days=90)
        assert await m.prune() == 2
        for gone in ("old-charged", "old-failed"):
            assert await storage.runs.get_run(gone) is None
        for kept in ("old-undelivered", "recent", "old-but-running"):
            assert await storage.runs.get_run(kept) is not None
        assert await storage.ledger.history(USER) == history_before
        assert await storage.ledger.get_balance(USER) == 9
        assert await storage.ledger.check_consistency() == []


async def test_counters_follow_the_runs_without_the_database(env: Env) -> None:
    env.deployment()
    env.store.set_balance(USER, 5)
    service = env.make()
    run = await service.generate(make_request(), GenerationContext(price=1))
    await service.cancel_generation(run.id)
    snap = service.metrics_snapshot()
    counters = snap["counters"]
    assert sum(counters["generation_runs_created_total"].values()) == 1
    finished = counters["generation_runs_finished_total"]
    assert finished == {(("code", "CANCELLED"), ("status", "cancelled")): 1}
    assert snap["gauges"]["generation_queued"] == 0


async def test_prompts_and_presigned_urls_never_reach_info_logs(env: Env, caplog) -> None:
    import logging

    from tests.fakes.comfydeploy import Timeline

    env.fake.presigned_outputs = True
    env.deployment(timeline=Timeline.success("png"))
    service = env.make()
    prompt = "a very private prompt 7f3a"
    with caplog.at_level(logging.INFO):
        run = await service.generate(make_request(prompt=prompt), GenerationContext())
        item = service.scheduler.try_take()
        assert item is not None
        await service.dispatch(item)
        backend_id = (await env.store.get_run(run.id)).backend_run_id  # type: ignore[union-attr]
        await env.fake.run_to_end(backend_id)  # type: ignore[arg-type]
    final = await env.store.get_run(run.id)
    assert final is not None and "X-Amz-Signature" in final.outputs[0].url
    texts = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert texts  # the run did log
    assert not any(prompt in t or "X-Amz-Signature" in t for t in texts)
