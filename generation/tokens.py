"""Per-run webhook tokens.

ComfyDeploy webhooks carry no signature (docs/comfydeploy.md), so each run's webhook URL
holds our own run id and an HMAC of it. Only someone who knows the secret can forge a token,
and a token is only valid for the run it was made for.
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

TOKEN_LENGTH = 32


def webhook_token(secret: str, run_id: str) -> str:
    """HMAC-SHA256 of ``run_id`` keyed by ``secret``, hex, truncated to 32 characters."""
    digest = hmac.new(secret.encode(), run_id.encode(), hashlib.sha256).hexdigest()
    return digest[:TOKEN_LENGTH]


def verify_webhook_token(secret: str, run_id: str, token: str | None) -> bool:
    """True when ``token`` is the token of ``run_id`` (constant-time comparison)."""
    if not secret or not run_id or not token:
        return False
    return hmac.compare_digest(webhook_token(secret, run_id).encode(), token.encode())


def webhook_url(base: str, run_id: str, secret: str) -> str:
    """``base`` with ``r=<run_id>&t=<token>`` added to its query string (existing kept)."""
    parts = urlsplit(base)
    query = [
        (k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in ("r", "t")
    ]
    query += [("r", run_id), ("t", webhook_token(secret, run_id))]
    return urlunsplit(parts._replace(query=urlencode(query)))
