"""Plain domain records shared by the generation module and storage.

These are the shapes that cross the boundary between ``generation/`` and ``storage/``
(see :mod:`generation.ports`). They are frozen dataclasses: cheap, typed, comparable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class RunStatus(StrEnum):
    """Our normalized run state (a superset of the backend's, with our own pre-submit states)."""

    QUEUED = "queued"  # waiting in the bot's own fair queue; nothing sent yet
    SUBMITTING = "submitting"  # create-run call in flight; may or may not have reached backend
    WAITING = "waiting"  # backend: not-started / queued (waiting for a GPU)
    STARTING = "starting"  # backend: started (machine booting)
    RUNNING = "running"  # backend: running / uploading (progress 0..1, live_status)
    SUCCESS = "success"
    FAILED = "failed"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES

    @property
    def rank(self) -> int:
        """Order used to ignore out-of-order updates: a lower rank never replaces a higher."""
        return _RANK[self]


TERMINAL_STATUSES = frozenset(
    {RunStatus.SUCCESS, RunStatus.FAILED, RunStatus.TIMEOUT, RunStatus.CANCELLED}
)
_RANK = {
    RunStatus.QUEUED: 0,
    RunStatus.SUBMITTING: 1,
    RunStatus.WAITING: 2,
    RunStatus.STARTING: 3,
    RunStatus.RUNNING: 4,
    RunStatus.SUCCESS: 9,
    RunStatus.FAILED: 9,
    RunStatus.TIMEOUT: 9,
    RunStatus.CANCELLED: 9,
}


class ChargeState(StrEnum):
    NONE = "none"  # nothing held (price 0)
    HELD = "held"
    SETTLED = "settled"
    RELEASED = "released"


class DeliveryState(StrEnum):
    PENDING = "pending"  # result not yet handed to the user
    DELIVERED = "delivered"
    FAILED = "failed"  # delivery gave up; the user was told


class DeploymentRole(StrEnum):
    DEFAULT = "default"
    COOK = "cook"
    API = "api"


class MediaType(StrEnum):
    IMAGE = "image"
    ANIMATION = "animation"
    VIDEO = "video"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class DeploymentConfig:
    """One ComfyDeploy deployment configured by an admin for a generation type."""

    deployment_id: str  # ComfyDeploy UUID
    type: str  # the deployment_key / type name it serves, e.g. "MAKE"
    role: DeploymentRole = DeploymentRole.DEFAULT
    weight: int = 1
    enabled: bool = True
    inputs: tuple[str, ...] | None = None  # declared input names when known
    success_count: int = 0
    failure_count: int = 0
    consecutive_failures: int = 0
    last_failure_at: float | None = None  # unix time
    # Which backend runs it: "comfydeploy" (a ComfyDeploy deployment UUID) or "comfyui" (a
    # workflow on the bot's own ComfyUI servers, id "workflow:<name>").
    backend: str = "comfydeploy"


@dataclass(frozen=True, slots=True)
class WorkflowRecord:
    """An API-format ComfyUI workflow registered by an admin (``/workflow add``).

    It serves its type like a deployment: the matching :class:`DeploymentConfig` has
    ``deployment_id == "workflow:<name>"`` and ``backend == "comfyui"``. ``input_map`` is the
    analysis of the graph (``generation.comfyui.graph.WorkflowInput.to_dict`` per input)."""

    deployment_id: str
    name: str
    type: str
    graph: dict[str, Any]
    input_map: tuple[dict[str, Any], ...] = ()
    created_at: float = 0.0

    @property
    def inputs(self) -> tuple[str, ...]:
        names: list[str] = []
        for item in self.input_map:
            name = str(item.get("name"))
            if name not in names:
                names.append(name)
        return tuple(names)


@dataclass(frozen=True, slots=True)
class LoraEntry:
    """A LoRA in the catalogue. Triggers are matched whole-word, case-insensitively."""

    name: str
    triggers: tuple[str, ...]
    default_weight: float = 1.0
    min_balance: int = 0
    family: str | None = None  # e.g. "FLUX", "SDXL", "SD1.5", "PONYXL"
    enabled: bool = True


@dataclass(frozen=True, slots=True)
class MediaOutput:
    """One result file of a run."""

    url: str
    media_type: MediaType
    filename: str | None = None
    format: str | None = None
    width: int | None = None
    height: int | None = None
    size: int | None = None
    key: str | None = None  # the outputs[].data key it came from ("images", "gifs", ...)

    def to_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "media_type": self.media_type.value,
            "filename": self.filename,
            "format": self.format,
            "width": self.width,
            "height": self.height,
            "size": self.size,
            "key": self.key,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MediaOutput:
        return cls(
            url=data["url"],
            media_type=MediaType(data.get("media_type", "unknown")),
            filename=data.get("filename"),
            format=data.get("format"),
            width=data.get("width"),
            height=data.get("height"),
            size=data.get("size"),
            key=data.get("key"),
        )


@dataclass(frozen=True, slots=True)
class RunSnapshot:
    """What the backend says about a run at one moment (from GET or a webhook)."""

    backend_run_id: str
    status: RunStatus  # normalized
    raw_status: str
    progress: float = 0.0  # 0..1
    live_status: str | None = None
    queue_position: int | None = None
    outputs: tuple[MediaOutput, ...] = ()
    # The webhook URL the run was created with, when the backend reports it (GET /run/{id}):
    # proves that a backend run id we do not track was created for one of our runs.
    webhook: str | None = None


@dataclass(frozen=True, slots=True)
class DeploymentInfo:
    """A deployment as ComfyDeploy lists it (GET /deployments)."""

    id: str
    name: str | None = None
    inputs: tuple[str, ...] = ()  # the input_ids of its external nodes


@dataclass(frozen=True, slots=True)
class RunRecord:
    """Everything needed to track, deliver and resume one generation after a crash.

    ``id`` is our own id (uuid4 hex), assigned before anything is sent; it keys the balance
    hold and the per-run webhook token. ``backend_run_id`` is ComfyDeploy's run id.
    ``request`` is the JSON form of the ``GenerationRequest`` (with the concrete seed and
    final prompt; image bytes are not stored). ``meta`` is free-form data of the caller
    (the bot keeps language, reply-to message id, chat type there).
    """

    id: str
    user_id: int
    chat_id: int
    type: str
    request: dict[str, Any]
    status: RunStatus = RunStatus.QUEUED
    deployment_id: str | None = None
    backend_run_id: str | None = None
    progress: float = 0.0
    live_status: str | None = None
    queue_position: int | None = None
    outputs: tuple[MediaOutput, ...] = ()
    error_code: str | None = None
    error_message: str | None = None
    price: int = 0
    charge_state: ChargeState = ChargeState.NONE
    delivery_state: DeliveryState = DeliveryState.PENDING
    progress_message_id: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    created_at: float = 0.0  # unix time
    updated_at: float = 0.0
    submitted_at: float | None = None
    finished_at: float | None = None
    deadline_at: float | None = None

    @property
    def is_terminal(self) -> bool:
        return self.status.is_terminal


# Fields of RunRecord that RunStore.update_run accepts.
RUN_UPDATABLE_FIELDS = frozenset(
    {
        "status",
        "deployment_id",
        "backend_run_id",
        "progress",
        "live_status",
        "queue_position",
        "outputs",
        "error_code",
        "error_message",
        "charge_state",
        "delivery_state",
        "progress_message_id",
        "meta",
        "request",
        "updated_at",
        "submitted_at",
        "finished_at",
        "deadline_at",
    }
)
