"""``/deployments`` as a compact list (one line per deployment, grouped by type) and
``/deployment inputs <id>`` for the declared inputs of one (no Telegram calls here)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from handlers.text_fit import fit

Translate = Callable[..., str]


def compact_list(t: Translate, lang: str, deployments: Sequence[Any]) -> str:
    """Title, one ``actions.deployment_compact`` line per deployment, the inputs hint; cut
    to Telegram's message limit (saying so) when an installation has very many."""
    lines = [t(lang, "admin.deployments_title", count=len(deployments))]
    for dep in sorted(deployments, key=lambda d: (d.type, not d.enabled, d.deployment_id)):
        lines.append(
            t(
                lang,
                "actions.deployment_compact",
                state="🟢" if dep.enabled else "⚪",
                type=dep.type,
                role=str(getattr(dep.role, "value", dep.role)),
                weight=dep.weight,
                ok=dep.success_count,
                failed=dep.failure_count,
                id=dep.deployment_id,
            )
        )
    lines.append("")
    lines.append(t(lang, "actions.deployments_hint"))
    return fit(t, lang, "\n".join(lines))


def inputs_text(t: Translate, lang: str, dep: Any) -> str:
    inputs = ", ".join(dep.inputs) if dep.inputs else t(lang, "admin.inputs_unknown_short")
    return fit(
        t,
        lang,
        t(lang, "actions.deployment_inputs", type=dep.type, id=dep.deployment_id, inputs=inputs),
    )
