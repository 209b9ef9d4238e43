"""The README a bot owner follows: the two set-up commands first, the sections in the order of
going live, every setting in the configuration table, every command listed, and the workflow
contract as generated from the code."""

from __future__ import annotations

import re
from pathlib import Path

from bot.config import Settings
from generation.contract import render_markdown

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
SECTIONS = [
    "Go live in 10 minutes",
    "Your own ComfyUI",
    "Webhooks and HTTPS",
    "Running as a service (Docker, systemd)",
    "Charging for generations",
    "Backups and upgrades",
    "Operating it",
    "Configuration",
    "Commands",
    "The workflow contract",
]


def test_the_two_commands_come_first_exactly() -> None:
    blocks = re.findall(r"```bash\n(.+?)\n```", README, re.S)
    assert blocks[:2] == [
        "pip install -e . && python -m bot",
        'pip install -e ".[dev]" && python -m pytest',
    ]
    first_section = README.index("\n## ")
    assert README.index(blocks[1]) < first_section
    assert "Python 3.11" in README[:first_section]


def test_sections_in_the_order_of_going_live() -> None:
    headings = re.findall(r"^## (.+)$", README, re.M)
    positions = [headings.index(title) for title in SECTIONS]
    assert positions == sorted(positions), headings


def test_every_setting_is_in_the_configuration_table() -> None:
    table = README.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", table))
    missing = {name.upper() for name in Settings.model_fields} - documented
    assert not missing, missing


def test_the_workflow_contract_is_the_generated_one() -> None:
    start = README.index("<!-- workflow-contract:start")
    end = README.index("<!-- workflow-contract:end -->")
    block = README[README.index("\n", start) + 1 : end]
    assert block == render_markdown(level=2)


def test_operator_commands_are_documented() -> None:
    for command in ("python -m bot doctor", "python -m bot backup", "python -m bot restore"):
        assert command in README
    for command in ("/checkpoint add", "/checkpoints", "/deployment add"):
        assert command in README.split("## Commands", 1)[1]
