"""Input images on disk, content-addressed (issue 11, point 7).

A queued ``/i2i`` or ``/inpaint`` used to keep its photo (decoded sizes of 100 MB+ after
preparation) in memory until dispatch, and lost it in a restart. The service now writes each
input image here when the request is accepted and keeps only its reference (the SHA-256 of the
bytes) in the run record; it reads the bytes back when the run is dispatched and deletes them
when the run ends. Files live in a folder next to the database (``<db>.images/ab/abcdef…``),
written atomically (temporary file + rename). All disk work runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import tempfile
from pathlib import Path

_REF_RE = re.compile(r"^[0-9a-f]{64}$")


class FileImageStore:
    """Implements :class:`generation.ports.ImageStore` on a folder."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @classmethod
    def next_to(cls, database_path: str) -> FileImageStore:
        """The store of a database file (a temporary folder for ``:memory:``)."""
        if not database_path or database_path == ":memory:":
            return cls(tempfile.mkdtemp(prefix="bot-images-"))
        path = Path(database_path)
        return cls(path.with_name(path.name + ".images"))

    def _path(self, ref: str) -> Path:
        if not _REF_RE.fullmatch(ref):
            raise ValueError("not an image reference")
        return self.root / ref[:2] / ref

    async def put(self, data: bytes) -> str:
        """Store ``data``; returns its reference (the same bytes give the same reference)."""
        ref = hashlib.sha256(data).hexdigest()
        await asyncio.to_thread(self._write, ref, data)
        return ref

    def _write(self, ref: str, data: bytes) -> None:
        target = self._path(ref)
        if target.exists():
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    async def get(self, ref: str) -> bytes | None:
        """The bytes of ``ref``, or None when they are gone."""
        try:
            path = self._path(ref)
        except ValueError:
            return None
        return await asyncio.to_thread(self._read, path)

    @staticmethod
    def _read(path: Path) -> bytes | None:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None

    async def delete(self, ref: str) -> None:
        try:
            path = self._path(ref)
        except ValueError:
            return
        await asyncio.to_thread(path.unlink, missing_ok=True)

    async def sweep(self, keep: set[str]) -> int:
        """Delete every stored image not in ``keep`` (at start, before new requests)."""
        return await asyncio.to_thread(self._sweep, set(keep))

    def _sweep(self, keep: set[str]) -> int:
        removed = 0
        if not self.root.is_dir():
            return 0
        for path in self.root.glob("*/*"):
            if path.is_file() and path.name not in keep:
                path.unlink(missing_ok=True)
                removed += 1
        return removed
