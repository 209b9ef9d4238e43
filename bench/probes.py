"""Instrumented loopback doubles: the test fakes plus timestamps (``time.perf_counter``).

Every benchmark request carries a tag ``bench-<n>`` in its prompt. The doubles record, per tag:

* ``created``: the create-run request reached ComfyDeploy (inside the double's create handler);
* ``success``: the double is about to post the run's ``success`` webhook to the bot;
* ``done``: the bot's result reached Telegram (``sendPhoto`` with the tag in its caption, or,
  for the baseline, ``sendMessage`` with the tag in its text).

Waiters get an :class:`asyncio.Future` per tag and event, so the load generators never poll.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from typing import Any

import httpx

from tests.fakes.comfydeploy import FakeComfyDeploy, FakeRun, Step, Timeline, _Resp
from tests.fakes.telegram import FakeTelegram

TAG = re.compile(r"bench-(\d+)")
# Near-instant generation: the output is stored and the run succeeds right after creation.
INSTANT = Timeline((Step.out("png"), Step.to("success")))


def tag_of(text: Any) -> int | None:
    match = TAG.search(str(text or ""))
    return int(match.group(1)) if match else None


class Probes:
    """Timestamps and futures keyed by (event, tag)."""

    def __init__(self) -> None:
        self.stamps: dict[str, dict[int, float]] = {"created": {}, "success": {}, "done": {}}
        self._futures: dict[tuple[str, int], asyncio.Future[float]] = {}

    def mark(self, event: str, tag: int, when: float) -> None:
        self.stamps[event].setdefault(tag, when)
        future = self._futures.pop((event, tag), None)
        if future is not None and not future.done():
            future.set_result(when)

    def wait(self, event: str, tag: int) -> asyncio.Future[float]:
        loop = asyncio.get_running_loop()
        if tag in self.stamps[event]:
            future: asyncio.Future[float] = loop.create_future()
            future.set_result(self.stamps[event][tag])
            return future
        return self._futures.setdefault((event, tag), loop.create_future())

    def forget(self, tag: int) -> None:
        for stamps in self.stamps.values():
            stamps.pop(tag, None)
        for event in self.stamps:
            self._futures.pop((event, tag), None)


class BenchComfyDeploy(FakeComfyDeploy):
    """The ComfyDeploy double; each created run plays its whole timeline at once (in a
    background task, after the create answer is on its way)."""

    def __init__(self, probes: Probes, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.probes = probes
        self.finished: list[str] = []  # run ids whose timeline has played out

    def _create(self, body: Any) -> _Resp:
        now = time.perf_counter()
        resp = super()._create(body)
        if resp.status != 200 or not isinstance(body, dict):
            return resp
        tag = tag_of((body.get("inputs") or {}).get("input_prompt"))
        if tag is not None:
            self.probes.mark("created", tag, now)
        run = self._last_run
        if run is not None and run.webhook:
            task = asyncio.get_running_loop().create_task(self._finish(run))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        return resp

    @property
    def _last_run(self) -> FakeRun | None:
        # dicts keep insertion order: the run just created is the last one
        return self.runs[next(reversed(self.runs))] if self.runs else None

    async def _finish(self, run: FakeRun) -> None:
        await asyncio.sleep(0)  # let the create answer go out first
        await self.run_to_end(run.id)
        self.finished.append(run.id)

    async def _deliver(self, run: FakeRun, payloads: list[dict[str, Any]], *, final: bool) -> None:
        if final and run.status == "success":
            tag = tag_of(run.inputs.get("input_prompt"))
            if tag is not None:
                self.probes.mark("success", tag, time.perf_counter())
        await super()._deliver(run, payloads, final=final)

    def trim(self, keep: int = 1000) -> None:
        """Drop request logs, and runs and output files of all but the ``keep`` most recently
        finished runs (their outputs may still be downloading), so long runs stay small."""
        self.requests.clear()
        self.create_calls.clear()
        self.webhooks_sent.clear()
        old, self.finished = self.finished[:-keep], self.finished[-keep:]
        for run_id in old:
            self.runs.pop(run_id, None)
        dropped = set(old)
        for name in [n for n in self.files if n.split("_", 1)[0] in dropped]:
            self.files.pop(name, None)


class BenchTelegram(FakeTelegram):
    """The Telegram double with a ``done`` probe and a count of 429 answers."""

    def __init__(self, probes: Probes, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.probes = probes
        self.status_counts: Counter[int] = Counter()
        self.method_counts: Counter[str] = Counter()
        self.limited: Counter[str] = Counter()  # 429 answers per method

    async def _handle(self, request: httpx.Request) -> httpx.Response:
        now = time.perf_counter()
        response = await super()._handle(request)
        self.status_counts[response.status_code] += 1
        if not self.call_log:
            return response
        call = self.call_log[-1]
        if response.status_code == 429:
            self.limited[call.method] += 1
        if response.status_code != 200:
            return response
        self.method_counts[call.method] += 1
        if call.method == "sendPhoto":
            tag = tag_of(call.params.get("caption"))
        elif call.method == "sendMessage":
            tag = tag_of(call.params.get("text"))
        else:
            tag = None
        if tag is not None:
            self.probes.mark("done", tag, now)
        return response

    def set_flood_control(self, on: bool) -> None:
        from tests.fakes.telegram import FloodControl, _Window

        self.flood = FloodControl() if on else None
        self._buckets.clear()
        self._group_windows.clear()
        self._overall = _Window(30, 1.0)

    def trim(self) -> None:
        """Drop the call log and the stored messages of finished chats (memory runs)."""
        self.call_log.clear()
        for chat_id, messages in self._messages.items():
            if chat_id != 1:  # keep the admin chat
                messages.clear()
        self.files.clear()
        self._files_by_path.clear()
