"""No user-facing text is hard-coded in handlers: an AST scan of ``handlers/*.py`` finds no
string literal with letters passed as text or caption to a Bot API send/edit/answer call.
All such text must come from a Translator lookup."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

HANDLERS = Path(__file__).resolve().parent.parent / "handlers"
SEND_METHODS = {
    "reply_text",
    "reply_photo",
    "reply_document",
    "reply_animation",
    "reply_video",
    "send_message",
    "send_photo",
    "send_document",
    "send_animation",
    "send_video",
    "edit_message_text",
    "edit_message_caption",
    "edit_text",
    "edit_caption",
    "answer",
    "answer_callback_query",
    "set_my_description",
    "set_my_short_description",
}
TEXT_KEYWORDS = {"text", "caption", "description", "short_description"}


def _has_letters(node: ast.AST) -> bool:
    """A literal (or f-string / concatenation / %-format) that contains letters."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return any(ch.isalpha() for ch in node.value)
    if isinstance(node, ast.JoinedStr):
        return any(_has_letters(v) for v in node.values)
    if isinstance(node, ast.BinOp):
        return _has_letters(node.left) or _has_letters(node.right)
    return False


def offending_calls(source: str) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        if node.func.attr not in SEND_METHODS:
            continue
        candidates = list(node.args[:2]) if node.func.attr.startswith("send_") else node.args[:1]
        candidates += [kw.value for kw in node.keywords if kw.arg in TEXT_KEYWORDS]
        for arg in candidates:
            if _has_letters(arg):
                found.append((node.lineno, node.func.attr))
    return found


def test_scanner_catches_literals() -> None:
    bad = (
        "async def f(m, bot, q):\n"
        "    await m.reply_text('Hello there')\n"
        "    await bot.send_message(1, f'Hi {x}')\n"
        "    await q.answer(text='Oops')\n"
        "    await bot.send_photo(1, b'', caption='cap' + y)\n"
    )
    assert [name for _, name in offending_calls(bad)] == [
        "reply_text",
        "send_message",
        "answer",
        "send_photo",
    ]
    good = "async def f(m, t):\n    await m.reply_text(t('en', 'gen.make_usage'))\n"
    assert offending_calls(good) == []


@pytest.mark.parametrize("path", sorted(HANDLERS.glob("*.py")), ids=lambda p: p.name)
def test_handler_module_has_no_hardcoded_text(path: Path) -> None:
    assert offending_calls(path.read_text(encoding="utf-8")) == []


KEY_METHODS = {"reply", "answer_query", "text"}  # handlers/context.py: BotContext, by locale key


def literal_keys(source: str) -> list[tuple[int, str]]:
    """String literals passed as the key to ``context.reply/answer_query/text``."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        target = node.func.value
        if node.func.attr not in KEY_METHODS or not isinstance(target, ast.Name):
            continue
        if target.id != "context" or not node.args:
            continue
        first = node.args[0]
        if isinstance(first, ast.Constant) and isinstance(first.value, str):
            found.append((node.lineno, first.value))
    return found


@pytest.mark.parametrize("path", sorted(HANDLERS.glob("*.py")), ids=lambda p: p.name)
def test_context_replies_use_existing_locale_keys(path: Path) -> None:
    import json

    english = json.loads((HANDLERS.parent / "locales" / "en.json").read_text(encoding="utf-8"))
    keys = literal_keys(path.read_text(encoding="utf-8"))
    assert [(line, key) for line, key in keys if key not in english] == []


def test_key_scanner_finds_keys() -> None:
    source = "async def f(context):\n    await context.reply('gen.make_usage', a=1)\n"
    assert literal_keys(source) == [(2, "gen.make_usage")]
