"""Instrumented loopback doubles: the test fakes plus timestamps (``time.perf_counter``).

Every benchmark request carries a tag ``bench-<n>`` in its prompt. The doubles record, per tag:

* ``created``: the create-run request reached ComfyDeploy (inside the double's create handler);
* ``reply``: the first message to the requesting chat reached Telegram (the bot's progress
  message, the baseline's answer);
* ``success``: the success became visible to the program: the double is about to post the
  run's ``success`` webhook (webhook mode), or answered a ``GET /run/{id}`` with it (polling);
* ``done``: the result reached Telegram (``sendPhoto`` with the tag in its caption, or, for
  the baseline, ``sendMessage`` with the tag and its ``done_prefix``).

Waiters get an :class:`asyncio.Future` per tag and event, so the load generators never poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import Counter
from typing import Any

import httpx

from tests.fakes.comfydeploy import FakeComfyDeploy, FakeRun, Step, Timeline, _Resp
from tests.fakes.telegram import FakeTelegram

TAG = re.compile(r"bench-(\d+)")
# Near-instant generation: the output is stored and the run succeeds FINISH_DELAY seconds
# after the create call was answered.
INSTANT = Timeline((Step.out("png"), Step.to("success")))
FINISH_DELAY = 0.02


def tag_of(text: Any) -> int | None:
    match = TAG.search(str(text or ""))
    return int(match.group(1)) if match else None


class Probes:
    """Timestamps and futures keyed by (event, tag)."""

    def __init__(self) -> None:
        self.stamps: dict[str, dict[int, float]] = {
            "created": {},
            "reply": {},
            "success": {},
            "done": {},
        }
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
        self.finish_delay = FINISH_DELAY

    def _create(self, body: Any) -> _Resp:
        now = time.perf_counter()
        resp = super()._create(body)
        if resp.status != 200 or not isinstance(body, dict):
            return resp
        tag = tag_of((body.get("inputs") or {}).get("input_prompt"))
        if tag is not None:
            self.probes.mark("created", tag, now)
        run = self._last_run
        if run is not None:  # with or without a webhook (polling mode reads it with GET)
            task = asyncio.get_running_loop().create_task(self._finish(run))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        return resp

    def _get(self, run_id: str, query: dict[str, str], loc: list[str]) -> _Resp:
        resp = super()._get(run_id, query, loc)
        run = self.runs.get(run_id)
        if resp.status == 200 and run is not None and run.status == "success":
            tag = tag_of(run.inputs.get("input_prompt"))
            if tag is not None:  # polling mode: success becomes visible to the program here
                self.probes.mark("success", tag, time.perf_counter())
        return resp

    @property
    def _last_run(self) -> FakeRun | None:
        # dicts keep insertion order: the run just created is the last one
        return self.runs[next(reversed(self.runs))] if self.runs else None

    async def _finish(self, run: FakeRun) -> None:
        # Let the create answer go out and be read first: a real run takes seconds, so its
        # webhooks never overtake the create answer (they would send every run through the
        # bot's unknown-backend-run check: generation/tracker.py foreign_webhook).
        await asyncio.sleep(self.finish_delay)
        await self.run_to_end(run.id)
        self.finished.append(run.id)

    async def _deliver(self, run: FakeRun, payloads: list[dict[str, Any]], *, final: bool) -> None:
        if final and run.status == "success" and run.webhook:
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
    """The Telegram double with the ``reply`` and ``done`` probes and counts of calls.

    ``reply``: the first message sent to a chat registered with :meth:`expect_reply` (the bot's
    progress message, the baseline's answer). ``done``: ``sendPhoto`` with the tag in its
    caption, or — for the baseline, which sends text only — ``sendMessage`` whose text starts
    with ``done_prefix`` and carries the tag."""

    def __init__(self, probes: Probes, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.probes = probes
        self.done_prefix: str | None = None
        self.status_counts: Counter[int] = Counter()
        self.method_counts: Counter[str] = Counter()  # every call, whatever its answer
        self.limited: Counter[str] = Counter()  # 429 answers per method
        self._awaiting: dict[int, int] = {}  # chat id -> tag whose reply is awaited

    def expect_reply(self, chat_id: int, tag: int) -> None:
        self._awaiting[chat_id] = tag

    def forget_reply(self, chat_id: int) -> None:
        self._awaiting.pop(chat_id, None)

    async def _answer(
        self, request: httpx.Request, method: str, params: dict[str, Any], files: dict[str, Any]
    ) -> httpx.Response:
        now = time.perf_counter()
        response = await super()._answer(request, method, params, files)
        self.status_counts[response.status_code] += 1
        self.method_counts[method] += 1
        if response.status_code == 429:
            self.limited[method] += 1
        if response.status_code == 200 and method.startswith("send"):
            self._probe(method, params, now)
        return response

    def _probe(self, method: str, params: dict[str, Any], now: float) -> None:
        with contextlib.suppress(TypeError, ValueError):
            tag = self._awaiting.pop(int(str(params.get("chat_id"))), None)
            if tag is not None:
                self.probes.mark("reply", tag, now)
        if method == "sendPhoto":
            tag = tag_of(params.get("caption"))
        elif method == "sendMessage" and self.done_prefix is not None:
            text = str(params.get("text") or "")
            tag = tag_of(text) if text.startswith(self.done_prefix) else None
        else:
            tag = None
        if tag is not None:
            self.probes.mark("done", tag, now)

    def api_calls(self) -> int:
        """Bot API calls so far, ``getUpdates`` (polling itself) excluded."""
        return sum(n for m, n in self.method_counts.items() if m != "getUpdates")

    def set_flood_control(self, on: bool) -> None:
        from tests.fakes.telegram import FloodControl, _Window

        self.flood = FloodControl() if on else None
        self._buckets.clear()
        self._group_windows.clear()
        self._overall = _Window(30, 1.0)

    def trim(self) -> None:
        """Drop the call log and the stored messages of finished chats (long runs)."""
        self.call_log.clear()
        for chat_id, messages in self._messages.items():
            if chat_id != 1:  # keep the admin chat
                messages.clear()
        self.files.clear()
        self._files_by_path.clear()
