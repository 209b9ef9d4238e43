"""The generation request model (pydantic) and the per-call context."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

DEFAULT_NEGATIVE_PROMPT = (
    "lowres, bad anatomy, bad hands, text, error, missing fingers, extra digit, fewer digits, "
    "cropped, worst quality, low quality, jpeg artifacts, signature, watermark, blurry"
)
MAX_PROMPT_LENGTH = 2000
MAX_SEED = 2**32 - 1
MIN_SIDE, MAX_SIDE = 64, 2048


class RequestMode(StrEnum):
    DEFAULT = "default"
    COOK = "cook"
    API = "api"


class InputImage(BaseModel):
    """An input image held in memory. Never a Telegram URL (it contains the bot token)."""

    model_config = ConfigDict(frozen=True)

    data: bytes = Field(repr=False)
    mime_type: str = "image/png"
    filename: str = "image.png"
    width: int | None = None
    height: int | None = None


# The request fields that hold an InputImage (the one list; storage keeps their metadata).
IMAGE_FIELDS = ("image", "mask", "control_image", "style_image", "pose_image")


class GenerationRequest(BaseModel):
    """What a user asked for. Defaults follow the seed plan (1024×1024, 30 steps, seed −1)."""

    model_config = ConfigDict(validate_assignment=True, extra="forbid")

    type: str = "MAKE"
    prompt: str = ""
    negative_prompt: str | None = None  # None → DEFAULT_NEGATIVE_PROMPT
    image: InputImage | None = None
    mask: InputImage | None = None
    inpaint_target: str | None = None  # text description of the area (legacy inpaint)
    control_image: InputImage | None = None
    style_image: InputImage | None = None
    pose_image: InputImage | None = None
    width: int = Field(1024, ge=MIN_SIDE, le=MAX_SIDE)
    height: int = Field(1024, ge=MIN_SIDE, le=MAX_SIDE)
    seed: int = Field(-1, ge=-1, le=MAX_SEED)
    steps: int = Field(30, ge=1, le=150)
    cfg: float = Field(7.0, ge=0.0, le=30.0)
    strength: float = Field(0.6, ge=0.0, le=1.0)
    checkpoint: str | None = None
    batch: int = Field(1, ge=1, le=8)
    control: bool = False
    style: bool = False
    pose: bool = False
    mode: RequestMode = RequestMode.DEFAULT
    priority: int = 0
    user_id: int = 0
    chat_id: int = 0

    @field_validator("type")
    @classmethod
    def _upper_type(cls, v: str) -> str:
        v = v.strip().upper()
        if not v or len(v) > 64:
            raise ValueError("type must be 1..64 characters")
        return v

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: str) -> str:
        v = v.strip()
        if len(v) > MAX_PROMPT_LENGTH:
            raise ValueError(f"prompt is longer than {MAX_PROMPT_LENGTH} characters")
        return v

    @property
    def effective_negative_prompt(self) -> str:
        return DEFAULT_NEGATIVE_PROMPT if self.negative_prompt is None else self.negative_prompt

    def with_concrete_seed(self) -> GenerationRequest:
        """Seed −1 means random: draw the concrete seed here so it can be recorded and shown."""
        if self.seed >= 0:
            return self
        return self.model_copy(update={"seed": secrets.randbelow(MAX_SEED + 1)})

    def to_record(self) -> dict[str, Any]:
        """JSON-safe form for storage: images are replaced by their metadata."""
        data = self.model_dump(
            mode="json",
            exclude=set(IMAGE_FIELDS),
        )
        for name in IMAGE_FIELDS:
            img: InputImage | None = getattr(self, name)
            data[name] = (
                None
                if img is None
                else {
                    "mime_type": img.mime_type,
                    "filename": img.filename,
                    "width": img.width,
                    "height": img.height,
                    "bytes": len(img.data),
                }
            )
        return data


@dataclass(slots=True)
class GenerationContext:
    """Facts about the caller that are not part of the request itself.

    ``price`` is held on the user's balance when the request is accepted. ``balance`` is the
    balance used for LoRA gating; ``None`` means "read it from the BalanceStore".
    ``meta`` is stored on the run record for the caller (the bot keeps chat details there).
    """

    price: int = 0
    balance: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)
