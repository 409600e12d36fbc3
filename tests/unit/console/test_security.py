"""Same-origin checks and page-bound tokens (shared.console.security)."""

from __future__ import annotations

import pytest

from shared.console.security import (
    COOKIE,
    ForbiddenError,
    browser_token,
    check_form_token,
    check_same_origin,
    cookie_header,
    form_token,
)

HOST = {"Host": "127.0.0.1:7071"}


@pytest.mark.parametrize(
    "headers",
    [
        {**HOST, "Origin": "http://127.0.0.1:7071"},
        {**HOST, "Origin": "http://127.0.0.1:7071", "Sec-Fetch-Site": "same-origin"},
        {**HOST, "Sec-Fetch-Site": "same-origin"},
        {"Host": "internal:80", "X-Forwarded-Host": "app.example.net", "Origin": "https://app.example.net"},
        {"host": "127.0.0.1:7071", "origin": "http://127.0.0.1:7071"},  # header names in any case
    ],
)
def test_same_origin_requests_pass(headers: dict[str, str]) -> None:
    check_same_origin(headers)


@pytest.mark.parametrize(
    "headers",
    [
        {**HOST, "Origin": "http://evil.example"},
        {**HOST, "Origin": "http://127.0.0.1:7072"},
        {**HOST, "Origin": "null"},
        {**HOST, "Origin": "http://127.0.0.1:7071", "Sec-Fetch-Site": "cross-site"},
        {**HOST, "Origin": "http://127.0.0.1:7071", "Sec-Fetch-Site": "same-site"},
        {**HOST, "Sec-Fetch-Site": "none"},
        HOST,
        {**HOST, "Referer": "http://127.0.0.1:7071/"},  # no Origin, no Sec-Fetch-Site: refused
    ],
)
def test_other_origins_are_refused(headers: dict[str, str]) -> None:
    with pytest.raises(ForbiddenError):
        check_same_origin(headers)


def test_browser_token_is_reused_or_made() -> None:
    made, fresh = browser_token({})
    assert fresh and len(made) >= 32
    kept, fresh2 = browser_token({"Cookie": f"other=1; {COOKIE}={made}"})
    assert kept == made and not fresh2
    for junk in ("conveyor_csrf=short", 'conveyor_csrf="; x', "\x00"):
        assert browser_token({"Cookie": junk})[1]
    assert "Secure" in cookie_header(made, "/api/console", secure=True)
    assert "Secure" not in cookie_header(made, "/", secure=False)


def test_form_tokens_are_bound_to_cookie_action_and_target() -> None:
    cookie, _ = browser_token({})
    headers = {"Cookie": f"{COOKIE}={cookie}"}
    token = form_token(cookie, "rerun", "run-1")
    check_form_token(headers, token, "rerun", "run-1")
    for given, action, target in [
        (token, "cancel", "run-1"),
        (token, "rerun", "run-2"),
        ("", "rerun", "run-1"),
        (None, "rerun", "run-1"),
        (form_token("x" * 43, "rerun", "run-1"), "rerun", "run-1"),
    ]:
        with pytest.raises(ForbiddenError):
            check_form_token(headers, given, action, target)
    with pytest.raises(ForbiddenError):
        check_form_token({}, token, "rerun", "run-1")
