"""Texts of ``/id`` and ``/user`` (no Telegram calls here)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from storage.directory import UserProfile

Translate = Callable[..., str]


def _when(unix: float | None) -> str:
    if not unix:
        return "—"
    return dt.datetime.fromtimestamp(unix, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def id_text(
    t: Translate,
    lang: str,
    *,
    own_id: int,
    other: tuple[int, str] | None = None,
    chat_id: int | None = None,
) -> str:
    """The caller's id; with ``other`` (id, name) the replied-to person's; in a group also
    the chat's id."""
    if other is not None:
        lines = [t(lang, "users.id_other", name=other[1], id=other[0])]
    else:
        lines = [t(lang, "users.id_self", id=own_id)]
    if chat_id is not None and chat_id != own_id:
        lines.append(t(lang, "users.id_chat", chat_id=chat_id))
    return "\n".join(lines)


def profile_text(t: Translate, lang: str, profile: UserProfile) -> str:
    runs = [
        t(
            lang,
            "users.run_line",
            when=_when(run.created_at),
            type=run.type,
            status=run.status.value,
            price=run.price,
        )
        for run in profile.recent_runs
    ]
    return t(
        lang,
        "users.profile",
        id=profile.user.id,
        username=f"@{profile.username}" if profile.username else "",
        language=profile.language or "—",
        available=profile.available,
        held=profile.held,
        created=_when(profile.user.created_at),
        seen=_when(profile.user.last_seen_at),
        runs="\n".join(runs) if runs else t(lang, "users.no_runs"),
    )
