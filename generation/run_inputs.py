"""A run's input images between acceptance and submit: written to the image store (so a
restart keeps queued runs with images), reference-counted while runs need them, read back and
prepared (resized, mask fitted, data URI or upload) when the run is dispatched."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from generation.errors import InterruptedError_
from generation.images import (
    ImageMemoryBudget,
    aprepare_image,
    aprepare_mask,
    decoded_size_estimate,
    image_input_value,
)
from generation.models import RunRecord
from generation.ports import Backend, ImageStore
from generation.request import IMAGE_FIELDS, GenerationRequest, InputImage

log = logging.getLogger(__name__)

Spawn = Callable[[Coroutine[Any, Any, None]], object]


def request_from_record(data: Mapping[str, Any]) -> GenerationRequest:
    """Rebuild a request from its stored form (images are not stored: they come back None)."""
    fields = {
        k: v
        for k, v in data.items()
        if k in GenerationRequest.model_fields and k not in IMAGE_FIELDS
    }
    return GenerationRequest.model_validate(fields)


def record_had_images(data: Mapping[str, Any]) -> bool:
    return any(data.get(name) for name in IMAGE_FIELDS)


def image_refs(data: Mapping[str, Any]) -> list[str]:
    """The image-store refs a run record holds."""
    refs: list[str] = []
    for name in IMAGE_FIELDS:
        meta = data.get(name)
        if isinstance(meta, Mapping) and isinstance(meta.get("ref"), str):
            refs.append(meta["ref"])
    return refs


def images_stored(data: Mapping[str, Any]) -> bool:
    """Every image of the record is in the image store (has a ref)."""
    metas = [data.get(name) for name in IMAGE_FIELDS if data.get(name)]
    return bool(metas) and all(isinstance(m, Mapping) and m.get("ref") for m in metas)


def without_images(request: GenerationRequest) -> GenerationRequest:
    return request.model_copy(update={name: None for name in IMAGE_FIELDS})


class RunInputs:
    """Input images of accepted runs: on disk in ``store`` (None keeps them in memory, and a
    restart loses queued runs with images) until the last run needing them ends."""

    def __init__(
        self,
        store: ImageStore | None,
        backend: Backend,
        *,
        spawn: Spawn,
        memory_max_bytes: int,
        inline_max_bytes: int,
    ) -> None:
        self.store = store
        self.backend = backend
        self._spawn = spawn
        self.budget = ImageMemoryBudget(memory_max_bytes)
        self._inline_max_bytes = inline_max_bytes
        self._run_refs: dict[str, list[str]] = {}  # run id → image refs it holds on disk
        self.ref_counts: Counter[str] = Counter()

    async def store_images(self, request: GenerationRequest, record: dict[str, Any]) -> list[str]:
        """Write the request's images to the image store; their refs go into ``record``."""
        if self.store is None:
            return []
        refs: list[str] = []
        for name in IMAGE_FIELDS:
            img: InputImage | None = getattr(request, name)
            if img is None:
                continue
            ref = await self.store.put(img.data)
            record[name] = {**(record.get(name) or {}), "ref": ref}
            refs.append(ref)
        return refs

    def hold(self, run_id: str, refs: list[str]) -> None:
        if not refs or run_id in self._run_refs:
            return
        self._run_refs[run_id] = list(refs)
        self.ref_counts.update(refs)

    def release_run(self, run_id: str) -> None:
        """``run_id`` ended: its refs no other run holds are deleted (in the background)."""
        refs = self._run_refs.pop(run_id, None)
        if not refs:
            return
        unused: list[str] = []
        for ref in refs:
            self.ref_counts[ref] -= 1
            if self.ref_counts[ref] <= 0:
                del self.ref_counts[ref]
                unused.append(ref)
        if unused and self.store is not None:
            self._spawn(self.drop_unused(unused))

    async def drop_unused(self, refs: list[str]) -> None:
        if self.store is None:
            return
        for ref in dict.fromkeys(refs):
            if self.ref_counts.get(ref, 0) > 0:
                continue  # another run still needs the same bytes
            try:
                await self.store.delete(ref)
            except Exception:
                log.warning("could not delete a stored input image", exc_info=True)

    async def sweep(self, keep: set[str]) -> None:
        """Delete stored images neither ``keep`` nor a held run names (after a restart)."""
        if self.store is None:
            return
        removed = await self.store.sweep(keep | set(self.ref_counts))
        if removed:
            log.info("removed %d stored input images no run needs", removed)

    async def load(self, run: RunRecord, request: GenerationRequest) -> GenerationRequest:
        """``request`` with the images of ``run`` read back from the image store."""
        if self.store is None or not images_stored(run.request):
            return request
        updates: dict[str, InputImage] = {}
        for name in IMAGE_FIELDS:
            meta = run.request.get(name)
            if not isinstance(meta, Mapping) or not meta.get("ref"):
                continue
            data = await self.store.get(str(meta["ref"]))
            if data is None:
                raise InterruptedError_("a stored input image is gone", field=name)
            updates[name] = InputImage(
                data=data,
                mime_type=str(meta.get("mime_type") or "image/png"),
                filename=str(meta.get("filename") or "image.png"),
                width=meta.get("width"),
                height=meta.get("height"),
            )
        return request.model_copy(update=updates)

    async def values(self, request: GenerationRequest) -> dict[str, str]:
        """Prepare every input image of ``request`` (off the event loop) and turn it into a
        data URI or an uploaded URL, keyed by input name (``input_image``, ``input_mask``...).
        The mask is sized to the prepared photo."""
        estimate = sum(
            decoded_size_estimate(img.data)
            for name in IMAGE_FIELDS
            if (img := getattr(request, name)) is not None
        )
        async with self.budget.hold(estimate):
            return await self._prepare_values(request)

    async def _prepare_values(self, request: GenerationRequest) -> dict[str, str]:
        values: dict[str, str] = {}
        photo: InputImage | None = None
        if request.image is not None:
            photo = await aprepare_image(request.image, field="image")
        for name in IMAGE_FIELDS:
            img: InputImage | None = getattr(request, name)
            if img is None:
                continue
            if name == "image":
                img = photo
            elif name == "mask":
                if photo is not None and photo.width and photo.height:
                    size = (photo.width, photo.height)
                else:
                    size = (request.width, request.height)
                img = await aprepare_mask(img, size=size, field="mask")
            else:
                img = await aprepare_image(img, field=name)
            assert img is not None
            values[f"input_{name}"] = await image_input_value(
                img, self.backend, inline_max_bytes=self._inline_max_bytes
            )
        return values
