"""Settings from the environment and ``.env`` (the names are a promise: README, Configuration).

``load_settings()`` turns pydantic's multi-line validation report into one :class:`ConfigError`
line naming the first bad setting. Secret values are never echoed: the error text is built from
the field name and pydantic's message only, never from the input value.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from generation.billing import AccessMode, StarPackage, parse_star_packages

_WEBHOOK_SECRET_RE = re.compile(r"^[A-Za-z0-9_-]{1,256}$")
LOCAL_LISTEN_HOST = "127.0.0.1"  # local mode never listens on every interface by default
SECRET_FIELDS = (
    "telegram_bot_token",
    "comfydeploy_api_key",
    "webhook_secret",
    "local_mode_token",
    "metrics_token",
    "comfyui_auth",
)


class ConfigError(Exception):
    """A missing or invalid setting; ``str()`` is one line naming the setting."""


class Settings(BaseSettings):
    """Every environment variable (README: Configuration), with its default."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        case_sensitive=False,
        extra="ignore",
    )

    telegram_bot_token: SecretStr | None = None
    telegram_api_url: str = "https://api.telegram.org"
    comfydeploy_api_key: SecretStr | None = None
    comfydeploy_api_url: str = "https://api.comfydeploy.com/api"
    admin_ids: Annotated[frozenset[int], NoDecode] = frozenset()
    database_path: str = "data/bot.sqlite3"
    public_url: str | None = None
    listen_host: str = "0.0.0.0"
    listen_port: int = Field(default=8080, ge=1, le=65535)
    webhook_secret: SecretStr | None = None
    run_poll_interval: float = Field(default=3.0, gt=0)
    progress_edit_interval: float = Field(default=1.5, ge=0)
    starting_balance: int = Field(default=0, ge=0)
    max_active_per_user: int = Field(default=2, ge=1)
    max_queued_per_user: int = Field(default=5, ge=0)
    max_in_flight: int = Field(default=10, ge=1)
    log_level: str = "INFO"
    # auto: ComfyDeploy when COMFYDEPLOY_API_KEY is set, ComfyUI when COMFYUI_URL is set (both
    # when both are), else the local preview backend.
    generation_backend: Literal["auto", "comfydeploy", "comfyui", "preview"] = "auto"
    # Self-hosted ComfyUI (README "Your own ComfyUI"): servers, the proxy's Authorization value.
    comfyui_url: Annotated[tuple[str, ...], NoDecode] = ()
    comfyui_auth: SecretStr | None = None
    comfyui_max_queue: int | None = Field(default=10, ge=1)
    # Hardening (README: Reliability).
    lora_weight_max: float = Field(default=2.0, gt=0)
    output_url_allowlist: Annotated[frozenset[str], NoDecode] = frozenset()
    max_outputs_per_run: int = Field(default=16, ge=1)
    max_queued_total: int = Field(default=1000, ge=1)
    run_retention_days: float = Field(default=90.0, ge=0)
    delivery_retry_window: float = Field(default=900.0, ge=0)
    local_mode_token: SecretStr | None = None
    metrics_token: SecretStr | None = None
    # Charging for generations (README "Charging for generations").
    star_packages: Annotated[tuple[StarPackage, ...], NoDecode] = ()
    free_daily_credits: int = Field(default=0, ge=0)
    max_runs_per_user_per_day: int | None = Field(default=None, ge=0)
    max_runs_per_day: int | None = Field(default=None, ge=0)
    access: AccessMode = AccessMode.OPEN
    paysupport_text: str | None = None
    terms_text: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _blank_listen_host_is_unset(cls, data: Any) -> Any:
        """``LISTEN_HOST=`` (as in .env.example) means "the default of the mode": 0.0.0.0 for
        webhooks, 127.0.0.1 for local mode; dropping it keeps it out of ``model_fields_set``."""
        if isinstance(data, dict):
            for key in [k for k in data if str(k).lower() == "listen_host"]:
                value = data[key]
                if value is None or (isinstance(value, str) and not value.strip()):
                    data = {k: v for k, v in data.items() if k != key}
        return data

    @field_validator("generation_backend", mode="before")
    @classmethod
    def _norm_backend(cls, value: Any) -> Any:
        if isinstance(value, str):
            return value.strip().lower() or "auto"
        return value

    @field_validator("star_packages", mode="before")
    @classmethod
    def _parse_packages(cls, value: Any) -> Any:
        if value is None or isinstance(value, str):
            return parse_star_packages(value)
        return value

    @field_validator("max_runs_per_user_per_day", "max_runs_per_day", mode="before")
    @classmethod
    def _blank_limit_is_unlimited(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("access", mode="before")
    @classmethod
    def _norm_access(cls, value: Any) -> Any:
        if isinstance(value, str):
            return value.strip().lower() or AccessMode.OPEN.value
        return value

    @field_validator("paysupport_text", "terms_text", mode="before")
    @classmethod
    def _owner_text(cls, value: Any) -> Any:
        """Blank is unset (a localized default is shown); ``\\n`` in the value is a newline."""
        if isinstance(value, str):
            value = value.strip().replace("\\n", "\n")
            return value[:4000] or None
        return value

    @field_validator("admin_ids", mode="before")
    @classmethod
    def _parse_admin_ids(cls, value: Any) -> Any:
        if value is None:
            return frozenset()
        if isinstance(value, int):
            return frozenset({value})
        if isinstance(value, str):
            parts = [p.strip() for p in re.split(r"[,\s;]+", value) if p.strip()]
            try:
                return frozenset(int(p) for p in parts)
            except ValueError:
                raise ValueError("expected comma-separated integer user ids") from None
        return value

    @field_validator("comfyui_url", mode="before")
    @classmethod
    def _parse_comfyui_urls(cls, value: Any) -> Any:
        if value is None:
            return ()
        if isinstance(value, str):
            urls = tuple(p.strip().rstrip("/") for p in value.split(",") if p.strip())
            for url in urls:
                if not url.startswith(("http://", "https://")):
                    raise ValueError("expected comma-separated http(s):// URLs")
            return urls
        return value

    @field_validator("comfyui_max_queue", mode="before")
    @classmethod
    def _blank_queue_is_unlimited(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("output_url_allowlist", mode="before")
    @classmethod
    def _parse_hosts(cls, value: Any) -> Any:
        if value is None:
            return frozenset()
        if isinstance(value, str):
            return frozenset(p.strip().lower() for p in re.split(r"[,\s;]+", value) if p.strip())
        return value

    @field_validator(*SECRET_FIELDS, mode="before")
    @classmethod
    def _blank_secret_is_unset(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            return None
        return value.strip() if isinstance(value, str) else value

    @field_validator("public_url", mode="before")
    @classmethod
    def _normalize_public_url(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip().rstrip("/")
            if not value:
                return None
            if not value.startswith(("http://", "https://")):
                raise ValueError("must start with http:// or https://")
        return value

    @field_validator("telegram_api_url", "comfydeploy_api_url", mode="before")
    @classmethod
    def _strip_url(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip().rstrip("/")
            if not value.startswith(("http://", "https://")):
                raise ValueError("must start with http:// or https://")
        return value

    @field_validator("webhook_secret")
    @classmethod
    def _check_webhook_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not _WEBHOOK_SECRET_RE.fullmatch(value.get_secret_value()):
            raise ValueError("must be 1-256 characters of A-Z, a-z, 0-9, _ and -")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _check_log_level(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip().upper() or "INFO"
            if value not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
                raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return value

    @property
    def webhook_mode(self) -> bool:
        return self.public_url is not None

    @property
    def local_mode(self) -> bool:
        """No Telegram token: run the embedded Bot API emulator and the web chat."""
        return self.telegram_bot_token is None

    @property
    def backends(self) -> frozenset[str]:
        """The backends generations go to: ``preview``, or ``comfydeploy`` and/or ``comfyui``.

        ``auto``: ComfyDeploy when COMFYDEPLOY_API_KEY is set, ComfyUI when COMFYUI_URL is set
        (both when both are), the preview backend when neither is."""
        if self.generation_backend == "auto":
            kinds = set()
            if self.comfydeploy_api_key is not None:
                kinds.add("comfydeploy")
            if self.comfyui_url:
                kinds.add("comfyui")
            return frozenset(kinds or {"preview"})
        return frozenset({self.generation_backend})

    @property
    def preview_backend(self) -> bool:
        """Generations go to the local preview backend (no ComfyDeploy, no ComfyUI)."""
        return self.backends == {"preview"}

    @property
    def local_listen_host(self) -> str:
        """The web chat's host: LISTEN_HOST when set explicitly, else 127.0.0.1."""
        if "listen_host" in self.model_fields_set:
            return self.listen_host
        return LOCAL_LISTEN_HOST

    def secret_values(self) -> list[str]:
        """The plain secret values (for the log redaction filter)."""
        out = []
        for name in SECRET_FIELDS:
            secret = getattr(self, name)
            if secret is not None:
                out.append(secret.get_secret_value())
        return out


def _first_error_line(exc: ValidationError) -> str:
    err = exc.errors(include_url=False, include_input=False, include_context=False)[0]
    loc = err.get("loc") or ("?",)
    name = str(loc[0]).upper()
    message = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    return f"Invalid setting {name}: {message}"


def load_settings(**overrides: Any) -> Settings:
    """Read the settings; raise :class:`ConfigError` with one line naming a bad setting.

    ``overrides`` are passed to :class:`Settings` (tests use ``_env_file=...``).
    """
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_first_error_line(exc)) from None
