"""The Telegram file id of every result item the bot delivered (``result_files``).

Result actions (⬆️ Upscale, 🎨 Vary, 📎 Original) work on one output of a stored run. The file
id Telegram returned for the sent photo/document lets the bot fetch that output again without
the backend (whose output URLs may expire), also after a restart; the stored output URL is the
fallback. One row per (run, item, kind): a photo and its original document are two rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import aiosqlite

from storage.database import Database
from storage.validation import require_int, require_text

KINDS = ("photo", "document", "animation", "video")
# Which kind to use when a caller wants "the image": the original file first (lossless).
IMAGE_PREFERENCE = ("document", "photo")


@dataclass(frozen=True, slots=True)
class ResultFile:
    run_id: str
    item: int
    kind: str
    file_id: str
    chat_id: int
    message_id: int
    created_at: float


def _row(r: aiosqlite.Row) -> ResultFile:
    return ResultFile(
        run_id=r["run_id"],
        item=int(r["item"]),
        kind=r["kind"],
        file_id=r["file_id"],
        chat_id=int(r["chat_id"]),
        message_id=int(r["message_id"]),
        created_at=float(r["created_at"]),
    )


class ResultFileRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def record(
        self, run_id: str, item: int, kind: str, file_id: str, *, chat_id: int, message_id: int
    ) -> None:
        """Remember one delivered item (a repeat overwrites: the newest message wins)."""
        run_id = require_text(run_id, "run_id", max_length=64)
        item = require_int(item, "item", minimum=0)
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}")
        file_id = require_text(file_id, "file_id", max_length=512)
        await self._db.write_one(
            "INSERT INTO result_files(run_id, item, kind, file_id, chat_id, message_id,"
            " created_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT(run_id, item, kind) DO UPDATE SET file_id = excluded.file_id,"
            " chat_id = excluded.chat_id, message_id = excluded.message_id,"
            " created_at = excluded.created_at",
            (
                run_id,
                item,
                kind,
                file_id,
                require_int(chat_id, "chat_id"),
                require_int(message_id, "message_id"),
                self._db.clock(),
            ),
        )

    async def for_run(self, run_id: str) -> list[ResultFile]:
        async with self._db.read() as conn:
            rows = await conn.execute_fetchall(
                "SELECT * FROM result_files WHERE run_id = ? ORDER BY item, kind", (run_id,)
            )
        return [_row(r) for r in rows]

    async def best(
        self, run_id: str, item: int, kinds: tuple[str, ...] = IMAGE_PREFERENCE
    ) -> ResultFile | None:
        """The item's file in the first of ``kinds`` that was delivered, else ``None``."""
        found = {f.kind: f for f in await self.for_run(run_id) if f.item == item}
        return next((found[k] for k in kinds if k in found), None)

    async def run_for_message(self, chat_id: int, message_id: int) -> str | None:
        """The run whose result is the message ``message_id`` (a reply to a result)."""
        async with self._db.read() as conn:
            rows = await conn.execute_fetchall(
                "SELECT run_id FROM result_files WHERE chat_id = ? AND message_id = ? LIMIT 1",
                (chat_id, message_id),
            )
        return str(rows[0][0]) if rows else None
