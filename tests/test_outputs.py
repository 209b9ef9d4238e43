"""Output parsing: every outputs[].data.<key>[] item with a url, typed by extension."""

from __future__ import annotations

from typing import Any

import pytest

from generation.models import MediaType
from generation.outputs import media_type_for, parse_outputs


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.png", MediaType.IMAGE),
        ("a.PNG", MediaType.IMAGE),
        ("a.jpg", MediaType.IMAGE),
        ("a.JPEG", MediaType.IMAGE),
        ("a.webp", MediaType.IMAGE),
        ("a.gif", MediaType.ANIMATION),
        ("a.mp4", MediaType.VIDEO),
        ("a.webm", MediaType.VIDEO),
        ("a.MOV", MediaType.VIDEO),
        ("a.txt", MediaType.UNKNOWN),
        ("a.glb", MediaType.UNKNOWN),
        ("noext", MediaType.UNKNOWN),
        ("", MediaType.UNKNOWN),
        (
            "https://b.s3.amazonaws.com/outputs/runs/r/x.png?X-Amz-Signature=abc.mp4",
            MediaType.IMAGE,
        ),
        ("https://cdn.example/x.gif#frag.mp4", MediaType.ANIMATION),
        ("https://cdn.example/file.mp4?download=1", MediaType.VIDEO),
        ("https://cdn.example/dir.png/file", MediaType.UNKNOWN),
        ("x.png?v=2", MediaType.IMAGE),
    ],
)
def test_media_type_for(name: str, expected: MediaType) -> None:
    assert media_type_for(name) is expected


def _out(key: str, *items: Any, **extra: Any) -> dict[str, Any]:
    return {"id": "o", "data": {key: list(items), **extra}}


@pytest.mark.parametrize(
    ("key", "url", "media_type"),
    [
        ("images", "https://s3/x/ComfyUI_00001_.png", MediaType.IMAGE),
        ("images", "https://s3/x/ComfyDeploy_00001_.webp", MediaType.IMAGE),
        ("gifs", "https://s3/x/AnimateDiff_00001.gif", MediaType.ANIMATION),
        ("gifs", "https://s3/x/AnimateDiff_00001.mp4", MediaType.VIDEO),
        ("images", "https://s3/x/ComfyUI_00001_.mp4", MediaType.VIDEO),
        ("videos", "https://s3/x/clip.mov", MediaType.VIDEO),
        ("files", "https://s3/x/model.glb", MediaType.UNKNOWN),
        ("model_file", "https://s3/x/a.safetensors", MediaType.UNKNOWN),
    ],
)
def test_every_key_is_read_and_typed_by_extension(
    key: str, url: str, media_type: MediaType
) -> None:
    (media,) = parse_outputs([_out(key, {"url": url, "type": "output", "filename": "f"})])
    assert media.url == url
    assert media.media_type is media_type
    assert media.key == key
    assert media.filename == "f"


def test_metadata_kept_only_when_well_typed() -> None:
    items = [
        {
            "url": "https://s/a.mp4",
            "filename": "a.mp4",
            "format": "video/h264-mp4",
            "width": 512,
            "height": 768,
            "size": 1234,
        },
        {"url": "https://s/b.png", "width": "512", "height": True, "size": 1.5, "format": 3},
    ]
    first, second = parse_outputs([_out("gifs", *items)])
    assert (first.format, first.width, first.height, first.size) == (
        "video/h264-mp4",
        512,
        768,
        1234,
    )
    assert (second.format, second.width, second.height, second.size) == (None, None, None, None)
    assert second.filename is None


def test_extensionless_url_falls_back_to_filename() -> None:
    (media,) = parse_outputs(
        [_out("images", {"url": "https://cdn/x/abc?sig=1", "filename": "ComfyUI_1.png"})]
    )
    assert media.media_type is MediaType.IMAGE


def test_garbage_items_are_skipped_and_urls_deduplicated() -> None:
    outputs = [
        None,
        "text",
        {"data": None},
        {"data": {"images": "notalist"}},
        {"no_data": True},
        _out(
            "images",
            "a string",
            True,
            None,
            {"filename": "no-url.png"},
            {"url": ""},
            {"url": 42},
            {"url": "https://s/1.png"},
            {"url": "https://s/1.png"},
            animated=[True],
            text=["hello"],
        ),
        _out("gifs", {"url": "https://s/1.png"}, {"url": "https://s/2.gif"}),
    ]
    result = parse_outputs(outputs)
    assert [m.url for m in result] == ["https://s/1.png", "https://s/2.gif"]
    assert [m.key for m in result] == ["images", "gifs"]


@pytest.mark.parametrize("outputs", [None, 5, "x", {}, [], [[]], {"data": {"images": [1]}}])
def test_malformed_top_level_never_raises(outputs: Any) -> None:
    assert parse_outputs(outputs) == ()


def test_single_output_mapping_is_accepted() -> None:
    result = parse_outputs({"data": {"images": [{"url": "https://s/x.jpg"}]}})
    assert [m.media_type for m in result] == [MediaType.IMAGE]


def test_order_is_preserved_across_outputs() -> None:
    outputs = [
        _out("images", {"url": f"https://s/{i}.png"}, {"url": f"https://s/{i}b.png"})
        for i in range(3)
    ]
    assert [m.url.rsplit("/", 1)[1] for m in parse_outputs(outputs)] == [
        "0.png",
        "0b.png",
        "1.png",
        "1b.png",
        "2.png",
        "2b.png",
    ]
