"""Per-run webhook tokens.

ComfyDeploy webhooks carry no signature (docs/comfydeploy.md), so each run's webhook URL
holds our own run id and an HMAC of it. Only someone who knows the secret can forge a token,
and a token is only valid for the run it was made for.

The HMAC key is never the secret itself: it is derived from it with its own label
(:func:`token_key`). The bot may use the same secret as Telegram's ``secret_token``, which
Telegram sends in the header of every update; knowing that header value must not be enough to
compute a run's webhook token from the raw secret with the plain formula.
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

TOKEN_LENGTH = 32
TOKEN_KEY_LABEL = b"comfydeploy-run-webhook-token/v1"


def token_key(secret: str) -> bytes:
    """The per-run token key: HMAC-SHA256 of a fixed label keyed by ``secret``."""
    return hmac.new(secret.encode(), TOKEN_KEY_LABEL, hashlib.sha256).digest()


def webhook_token(secret: str, run_id: str) -> str:
    """HMAC-SHA256 of ``run_id`` keyed by :func:`token_key` of ``secret``, hex, 32 chars."""
    digest = hmac.new(token_key(secret), run_id.encode(), hashlib.sha256).hexdigest()
    return digest[:TOKEN_LENGTH]


def verify_webhook_token(secret: str, run_id: str, token: str | None) -> bool:
    """True when ``token`` is the token of ``run_id`` (constant-time comparison)."""
    if not secret or not run_id or not token:
        return False
    if len(token) != TOKEN_LENGTH:
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
