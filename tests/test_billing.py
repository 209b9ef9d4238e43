"""Stars packages, signed invoice payloads, the pre-checkout decision and UTC day helpers."""

from __future__ import annotations

import pytest

from generation.billing import (
    DAY_SECONDS,
    MAX_PAYLOAD_BYTES,
    PayloadSigner,
    StarPackage,
    check_checkout,
    day_start,
    next_reset,
    parse_star_packages,
    utc_day,
    week_start,
)
from generation.errors import ErrorCode, PaymentInvalidError

KEY = "k" * 32
PACKAGES = (StarPackage(100, 50), StarPackage(500, 200))


def test_parse_packages() -> None:
    assert parse_star_packages("100:50, 500:200") == PACKAGES
    assert parse_star_packages("") == ()
    assert parse_star_packages(None) == ()
    assert parse_star_packages(" 10:1 ,") == (StarPackage(10, 1),)


@pytest.mark.parametrize("text", ["100", "100:x", "0:5", "5:0", "-1:5", "10:5,10:5", "1:200000"])
def test_parse_packages_refuses_bad_input(text: str) -> None:
    with pytest.raises(ValueError):
        parse_star_packages(text)


def test_payload_round_trip_and_size() -> None:
    signer = PayloadSigner(KEY)
    payload = signer.sign(2**40, StarPackage(100_000, 100_000))
    assert len(payload.encode()) <= MAX_PAYLOAD_BYTES
    data = signer.verify(payload)
    assert (data.user_id, data.credits, data.stars) == (2**40, 100_000, 100_000)
    assert signer.sign(1, PACKAGES[0]) != signer.sign(1, PACKAGES[0])  # fresh nonce each time


def test_forged_payloads_are_refused() -> None:
    signer = PayloadSigner(KEY)
    payload = signer.sign(7, PACKAGES[0])
    forged = payload.replace(".100.50.", ".500.50.")
    assert forged != payload
    for bad in (forged, payload[:-1] + ("0" if payload[-1] != "0" else "1"), "junk", ""):
        with pytest.raises(PaymentInvalidError) as err:
            signer.verify(bad)
        assert err.value.code is ErrorCode.PAYMENT_INVALID
        assert err.value.reason == "signature"
    with pytest.raises(PaymentInvalidError):  # another bot's key
        PayloadSigner("x" * 32).verify(payload)


def test_check_checkout() -> None:
    signer = PayloadSigner(KEY)
    payload = signer.sign(7, PACKAGES[1])
    ok = dict(payload=payload, user_id=7, currency="XTR", total_amount=200)
    assert check_checkout(signer, PACKAGES, **ok) == PACKAGES[1]
    cases = {
        "user": {**ok, "user_id": 8},
        "currency": {**ok, "currency": "USD"},
        "amount": {**ok, "total_amount": 50},
    }
    for reason, kwargs in cases.items():
        with pytest.raises(PaymentInvalidError) as err:
            check_checkout(signer, PACKAGES, **kwargs)
        assert err.value.reason == reason
    with pytest.raises(PaymentInvalidError) as err:  # the owner removed the package since
        check_checkout(signer, PACKAGES[:1], **ok)
    assert err.value.reason == "package"


def test_signer_needs_a_real_key() -> None:
    with pytest.raises(ValueError):
        PayloadSigner("short")


def test_utc_days() -> None:
    t = 20_000 * DAY_SECONDS + 3600.5  # 1:00:00.5 UTC on day 20000 (2024-10-04, a Friday)
    assert utc_day(t) == 20_000
    assert day_start(t) == 20_000 * DAY_SECONDS
    assert next_reset(t) == 20_001 * DAY_SECONDS
    assert next_reset(day_start(t)) == 20_001 * DAY_SECONDS
    monday = week_start(t)
    assert (t - monday) // DAY_SECONDS == 4  # Friday is 4 days after Monday
    import datetime as dt

    assert dt.datetime.fromtimestamp(monday, dt.UTC).weekday() == 0
