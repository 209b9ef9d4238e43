from urllib.parse import parse_qs, urlsplit

from generation.tokens import TOKEN_LENGTH, verify_webhook_token, webhook_token, webhook_url

SECRET = "s3cret"


def test_token_is_truncated_hex_and_deterministic() -> None:
    token = webhook_token(SECRET, "run1")
    assert len(token) == TOKEN_LENGTH
    int(token, 16)  # hex
    assert token == webhook_token(SECRET, "run1")


def test_token_depends_on_run_and_secret() -> None:
    assert webhook_token(SECRET, "run1") != webhook_token(SECRET, "run2")
    assert webhook_token(SECRET, "run1") != webhook_token("other", "run1")


def test_verify_accepts_own_token_only() -> None:
    token = webhook_token(SECRET, "run1")
    assert verify_webhook_token(SECRET, "run1", token)
    assert not verify_webhook_token(SECRET, "run2", token)
    assert not verify_webhook_token("other", "run1", token)
    assert not verify_webhook_token(SECRET, "run1", token[:-1] + ("0" if token[-1] != "0" else "1"))
    assert not verify_webhook_token(SECRET, "run1", None)
    assert not verify_webhook_token(SECRET, "run1", "")
    assert not verify_webhook_token("", "run1", webhook_token("", "run1"))


def test_webhook_url_appends_query() -> None:
    url = webhook_url("https://bot.example/cd/webhook", "run1", SECRET)
    parts = urlsplit(url)
    assert parts.scheme == "https" and parts.netloc == "bot.example"
    assert parts.path == "/cd/webhook"
    assert parse_qs(parts.query) == {"r": ["run1"], "t": [webhook_token(SECRET, "run1")]}


def test_webhook_url_keeps_existing_query() -> None:
    url = webhook_url("http://h:8080/hook?target_events=run.output,run.updated&r=old", "x", SECRET)
    query = parse_qs(urlsplit(url).query)
    assert query["target_events"] == ["run.output,run.updated"]
    assert query["r"] == ["x"]
    assert query["t"] == [webhook_token(SECRET, "x")]


def test_token_key_is_not_the_raw_secret() -> None:
    """Issue 11 point 2: the Telegram secret_token (sent in every update header) must not be
    the HMAC key of the per-run tokens: the plain HMAC of the run id with it is not a token."""
    import hashlib
    import hmac as _hmac

    plain = _hmac.new(SECRET.encode(), b"run1", hashlib.sha256).hexdigest()[:TOKEN_LENGTH]
    assert webhook_token(SECRET, "run1") != plain
    assert not verify_webhook_token(SECRET, "run1", plain)
