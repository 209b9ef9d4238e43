"""Live state of one prompt from the WebSocket, and the mapping to :class:`RunSnapshot`.

Progress shown to the user: ``(nodes done + value/max of the running node) / nodes to run``.
Nodes done come from ``execution_cached``, ``progress_state`` (``finished``) and ``executing``
(the previous node is done when the next starts); ``value/max`` comes from ``progress``
(samplers) or the running node's ``progress_state`` entry. The live status is the running
node's title (``_meta.title``, else its class), with the sampler step when there is one.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from generation.models import MediaOutput, RunSnapshot, RunStatus
from generation.outputs import media_type_for

OUTPUT_KEYS = ("images", "gifs", "videos", "video", "animated")


@dataclass(slots=True)
class LiveState:
    prompt_id: str
    titles: dict[str, str] = field(default_factory=dict)  # node id → title
    total: int = 0  # nodes that can run (0 = unknown)
    done: set[str] = field(default_factory=set)
    running_node: str | None = None
    step: tuple[float, float] | None = None  # value, max of the running node
    started: bool = False
    finished: bool = False  # executing{node: null} seen
    terminal: str | None = None  # "success" | "error" | "interrupted"
    error: str | None = None
    outputs: dict[str, Mapping[str, Any]] = field(default_factory=dict)  # from executed
    updated_at: float = field(default_factory=time.monotonic)

    @classmethod
    def for_graph(cls, prompt_id: str, graph: Mapping[str, Mapping[str, Any]]) -> LiveState:
        titles = {}
        for node_id, node in graph.items():
            meta = node.get("_meta")
            title = meta.get("title") if isinstance(meta, Mapping) else None
            titles[node_id] = title if isinstance(title, str) and title else str(node["class_type"])
        return cls(prompt_id=prompt_id, titles=titles, total=len(graph))

    @property
    def progress(self) -> float:
        if self.terminal == "success":
            return 1.0
        total = self.total or max(len(self.done) + (1 if self.running_node else 0), 1)
        fraction = 0.0
        if self.running_node and self.step and self.step[1] > 0:
            fraction = min(1.0, max(0.0, self.step[0] / self.step[1]))
        running = self.running_node if self.running_node not in self.done else None
        value = (len(self.done) + (fraction if running else 0.0)) / total
        return round(min(0.99, max(0.0, value)), 3)

    @property
    def live_status(self) -> str | None:
        node = self.running_node
        if node is None:
            return None
        title = self.titles.get(node.split(".", 1)[0], node)
        if self.step and self.step[1] > 1:
            return f"{title} {int(self.step[0])}/{int(self.step[1])}"
        return title

    def apply(self, kind: str, data: Mapping[str, Any]) -> bool:
        """Fold one message in. True when something worth telling the user changed (or the
        prompt ended)."""
        self.updated_at = time.monotonic()
        if kind == "execution_start":
            self.started = True
            return True
        if kind == "execution_cached":
            self.started = True
            self.done.update(str(n) for n in data.get("nodes") or [])
            return False
        if kind == "executing":
            node = data.get("node")
            if node is None:
                self.finished = True
                self.running_node = None
                return True
            if self.running_node and self.running_node != str(node):
                self.done.add(self.running_node)
            self.running_node = str(node)
            self.step = None
            self.started = True
            return True
        if kind == "progress":
            self._step(data.get("value"), data.get("max"))
            return True
        if kind == "progress_state":
            return self._progress_state(data.get("nodes"))
        if kind == "executed":
            node = data.get("node")
            output = data.get("output")
            if node is not None and isinstance(output, Mapping):
                self.outputs[str(node)] = output
                self.done.add(str(node))
            return False
        if kind == "execution_success":
            self.terminal = "success"
            return True
        if kind == "execution_error":
            self.terminal = "error"
            self.error = error_text(data)
            return True
        if kind == "execution_interrupted":
            self.terminal = "interrupted"
            return True
        return False

    def _step(self, value: Any, maximum: Any) -> None:
        try:
            self.step = (float(value), float(maximum))
        except (TypeError, ValueError):
            self.step = None

    def _progress_state(self, nodes: Any) -> bool:
        if not isinstance(nodes, Mapping):
            return False
        before = (len(self.done), self.running_node)
        for node_id, state in nodes.items():
            if not isinstance(state, Mapping):
                continue
            if state.get("state") == "finished":
                self.done.add(str(node_id))
            elif state.get("state") == "running":
                self.running_node = str(node_id)
                self._step(state.get("value"), state.get("max"))
        return (len(self.done), self.running_node) != before


def error_text(data: Mapping[str, Any]) -> str:
    """``exception_type: exception_message`` (one line, bounded) — never the traceback or
    ``current_inputs`` (tensor dumps)."""
    kind = str(data.get("exception_type") or "error")
    message = " ".join(str(data.get("exception_message") or "").split())
    node = data.get("node_type") or data.get("node_id")
    where = f" in {node}" if node else ""
    return f"{kind}{where}: {message}"[:300]


def history_outcome(entry: Mapping[str, Any]) -> tuple[str, str | None]:
    """(``success`` | ``error`` | ``interrupted`` | ``running``, error text) of a history
    entry. An interrupt also reads ``status_str: error``: only ``messages`` tell it apart."""
    status = entry.get("status") if isinstance(entry.get("status"), Mapping) else {}
    messages = status.get("messages") if isinstance(status.get("messages"), list) else []
    error = None
    for message in messages:
        if not isinstance(message, list | tuple) or len(message) != 2:
            continue
        kind, data = message
        if kind == "execution_interrupted":
            return "interrupted", None
        if kind == "execution_error" and isinstance(data, Mapping):
            error = error_text(data)
    status_str = status.get("status_str")
    if status_str == "success" or (status_str is None and status.get("completed")):
        return "success", None
    if status_str == "error" or error:
        return "error", error or "execution error"
    if not status:  # older servers write no status: outputs alone mean success
        return ("success", None) if entry.get("outputs") else ("running", None)
    return "running", None


def output_items(outputs: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """File items of a history ``outputs`` (or ``executed`` outputs) in node order: images,
    animations and videos (``images``/``gifs``/``videos`` keys). ``temp`` files (PreviewImage)
    only when there is nothing else."""
    items: list[tuple[str, Mapping[str, Any]]] = []

    def order(node_id: str) -> tuple[int, str]:
        return (int(node_id), "") if node_id.isdigit() else (10**9, node_id)

    for node_id in sorted((str(k) for k in outputs), key=order):
        output = outputs.get(node_id)
        if not isinstance(output, Mapping):
            continue
        for key in OUTPUT_KEYS:
            for item in output.get(key) or []:
                if isinstance(item, Mapping) and isinstance(item.get("filename"), str):
                    items.append((key, {**item, "_key": key}))
    kept = [item for _, item in items if item.get("type", "output") != "temp"]
    return kept or [item for _, item in items]


def media_outputs(items: list[Mapping[str, Any]], view_url: Any) -> tuple[MediaOutput, ...]:
    result = []
    for item in items:
        filename = str(item["filename"])
        url = view_url(item)
        result.append(
            MediaOutput(
                url=url,
                media_type=media_type_for(filename),
                filename=filename,
                format=filename.rsplit(".", 1)[-1].lower() if "." in filename else None,
                key=str(item.get("_key") or "images"),
            )
        )
    return tuple(result)


def snapshot(
    backend_run_id: str,
    status: RunStatus,
    raw: str,
    *,
    live: LiveState | None = None,
    queue_position: int | None = None,
    outputs: tuple[MediaOutput, ...] = (),
) -> RunSnapshot:
    progress = 1.0 if status is RunStatus.SUCCESS else (live.progress if live else 0.0)
    return RunSnapshot(
        backend_run_id=backend_run_id,
        status=status,
        raw_status=raw,
        progress=progress,
        live_status=live.live_status if live and status is RunStatus.RUNNING else None,
        queue_position=queue_position,
        outputs=outputs,
    )
