"""Money rules that need no database: Stars credit packages, signed invoice payloads,
UTC days, access modes and the pre-checkout decision.

The Telegram side sends an invoice whose ``payload`` is :meth:`PayloadSigner.sign` of the
user and the package; at ``pre_checkout_query`` :func:`check_checkout` answers whether the
payload names an existing package for that user at that price (an HMAC makes a payload
for 100 credits impossible to edit into one for 1000). Credits are added only on
``successful_payment`` (``storage.payments``), keyed by the Telegram charge id.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from generation.errors import PaymentInvalidError

STARS_CURRENCY = "XTR"
DAY_SECONDS = 86_400
PAYLOAD_VERSION = "c1"
MAX_PAYLOAD_BYTES = 128  # Bot API: invoice payload is 1-128 bytes
_SIG_CHARS = 24  # hex digits of the HMAC kept in the payload (96 bits)


class AccessMode(StrEnum):
    """``ACCESS``: who may generate."""

    OPEN = "open"  # everyone not banned
    ALLOWLIST = "allowlist"  # users an admin /allow-ed, and members of allowed groups
    PAID = "paid"  # users with paid credits or a purchase (plus allowed users)


# -- UTC days ------------------------------------------------------------------------------


def utc_day(ts: float) -> int:
    """The UTC day number of epoch seconds ``ts`` (day 0 = 1970-01-01)."""
    return int(ts // DAY_SECONDS)


def day_start(ts: float) -> float:
    """Epoch seconds of the UTC midnight that began the day of ``ts``."""
    return float(utc_day(ts) * DAY_SECONDS)


def next_reset(ts: float) -> float:
    """Epoch seconds of the next UTC midnight after ``ts`` (when daily counts restart)."""
    return float((utc_day(ts) + 1) * DAY_SECONDS)


def week_start(ts: float) -> float:
    """Epoch seconds of the Monday 00:00 UTC that began the ISO week of ``ts``."""
    day = utc_day(ts)
    return float((day - (day + 3) % 7) * DAY_SECONDS)  # 1970-01-01 was a Thursday


# -- packages ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StarPackage:
    credits: int
    stars: int

    @property
    def key(self) -> str:
        return f"{self.credits}:{self.stars}"


def parse_star_packages(text: str | None) -> tuple[StarPackage, ...]:
    """``STAR_PACKAGES``: comma-separated ``credits:stars`` pairs (e.g. ``100:50,500:200``).

    Empty or unset gives no packages (no ``/buy``). Raises ``ValueError`` with a clear
    message for a malformed pair, a non-positive number or a duplicate package.
    """
    if text is None or not text.strip():
        return ()
    packages: list[StarPackage] = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        credits_text, sep, stars_text = item.partition(":")
        try:
            if not sep:
                raise ValueError
            credits, stars = int(credits_text.strip()), int(stars_text.strip())
        except ValueError:
            raise ValueError(f"package {item!r} is not credits:stars (e.g. 100:50)") from None
        if credits <= 0 or stars <= 0:
            raise ValueError(f"package {item!r}: credits and stars must be positive")
        if stars > 100_000:
            raise ValueError(f"package {item!r}: Telegram caps one invoice at 100000 stars")
        package = StarPackage(credits, stars)
        if package in packages:
            raise ValueError(f"package {item!r} is listed twice")
        packages.append(package)
    return tuple(packages)


def find_package(packages: Iterable[StarPackage], credits: int, stars: int) -> StarPackage | None:
    for package in packages:
        if package.credits == credits and package.stars == stars:
            return package
    return None


# -- payloads ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InvoicePayload:
    user_id: int
    credits: int
    stars: int
    nonce: str

    @property
    def package(self) -> StarPackage:
        return StarPackage(self.credits, self.stars)


class PayloadSigner:
    """Signs and checks invoice payloads: ``c1.<user>.<credits>.<stars>.<nonce>.<hmac>``.

    The key is a secret the bot keeps (``storage.settings`` generates one); anyone without
    it cannot produce a payload for another user, package or price.
    """

    def __init__(self, key: str | bytes) -> None:
        raw = key.encode() if isinstance(key, str) else bytes(key)
        if len(raw) < 16:
            raise ValueError("the payload signing key must be at least 16 bytes")
        self._key = raw

    def _mac(self, body: str) -> str:
        return hmac.new(self._key, body.encode(), hashlib.sha256).hexdigest()[:_SIG_CHARS]

    def sign(self, user_id: int, package: StarPackage, *, nonce: str | None = None) -> str:
        nonce = nonce or secrets.token_hex(4)
        body = f"{PAYLOAD_VERSION}.{int(user_id)}.{package.credits}.{package.stars}.{nonce}"
        payload = f"{body}.{self._mac(body)}"
        assert len(payload.encode()) <= MAX_PAYLOAD_BYTES
        return payload

    def verify(self, payload: str) -> InvoicePayload:
        """The payload's contents; ``PaymentInvalidError(reason="signature")`` when it was not
        made by :meth:`sign` with this key (or is malformed)."""
        if not isinstance(payload, str) or len(payload.encode()) > MAX_PAYLOAD_BYTES:
            raise PaymentInvalidError("payload malformed", reason="signature")
        body, _, sig = payload.rpartition(".")
        parts = body.split(".")
        if len(parts) != 5 or parts[0] != PAYLOAD_VERSION:
            raise PaymentInvalidError("payload malformed", reason="signature")
        if not hmac.compare_digest(sig, self._mac(body)):
            raise PaymentInvalidError("payload signature mismatch", reason="signature")
        try:
            user_id, credits, stars = int(parts[1]), int(parts[2]), int(parts[3])
        except ValueError:  # signed by us, so unreachable unless the key leaked
            raise PaymentInvalidError("payload malformed", reason="signature") from None
        return InvoicePayload(user_id, credits, stars, parts[4])


def check_checkout(
    signer: PayloadSigner,
    packages: Sequence[StarPackage],
    *,
    payload: str,
    user_id: int,
    currency: str,
    total_amount: int,
) -> StarPackage:
    """The package a pre-checkout query buys, or ``PaymentInvalidError`` (``reason`` names
    why: signature, user, package, currency or amount). Banned users are checked apart."""
    data = signer.verify(payload)
    if data.user_id != user_id:
        raise PaymentInvalidError("invoice was made for another user", reason="user")
    if currency != STARS_CURRENCY:
        raise PaymentInvalidError(f"currency {currency!r} is not Stars", reason="currency")
    package = find_package(packages, data.credits, data.stars)
    if package is None:
        raise PaymentInvalidError("package no longer offered", reason="package")
    if total_amount != package.stars:
        raise PaymentInvalidError(
            f"paid {total_amount} stars for a {package.stars}-star package", reason="amount"
        )
    return package
