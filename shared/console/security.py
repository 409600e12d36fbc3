"""The console's browser protections: response headers, same-origin POSTs, page-bound CSRF tokens.

Every answer carries a Content-Security-Policy that allows scripts, styles and requests only
from the console's own origin (no inline script or style, no eval), plus nosniff, no framing
and a referrer only to the console itself (in Azure the function key rides in ``?code=``: it
never leaves in a Referer; ``no-referrer`` would make browsers send ``Origin: null`` on the
console's own form posts).

A state-changing POST (cancel, rerun, replay) must pass two checks of its own, whatever sits
in front of the console:

1. **same origin**: ``Sec-Fetch-Site`` (sent by every current browser) must be
   ``same-origin`` when present, and ``Origin`` must name this host (``Host``, or the
   ``X-Forwarded-Host``/``X-Original-Host`` a front end sets); a POST with neither is refused.
2. **a token bound to the page**: every page sets a random ``conveyor_csrf`` cookie
   (HttpOnly, SameSite=Strict) once per browser, and each form carries
   ``HMAC(cookie, action + target)``; the POST must carry the form token that matches its own
   cookie, action and target (a run id, a message id). A foreign page can neither read the
   cookie nor compute the token, and a token for one run's rerun does not cancel another.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from http.cookies import CookieError, SimpleCookie
from urllib.parse import urlsplit

from shared.errors import ConveyorError

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
COOKIE = "conveyor_csrf"
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{32,64}$")


class ForbiddenError(ConveyorError):
    """A state-changing request that failed the same-origin or token check (HTTP 403)."""


def security_headers() -> dict[str, str]:
    return {
        "Content-Security-Policy": CSP,
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "same-origin",
        "Cross-Origin-Opener-Policy": "same-origin",
        "Cross-Origin-Resource-Policy": "same-origin",
    }


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for k, v in headers.items():
        if k.lower() == name.lower():
            return v
    return None


def check_same_origin(headers: Mapping[str, str]) -> None:
    """Raise ForbiddenError unless the request comes from a page of this host."""
    site = _header(headers, "Sec-Fetch-Site")
    if site is not None and site.strip().lower() != "same-origin":
        raise ForbiddenError(f"cross-site request refused (Sec-Fetch-Site: {site[:40]})", status=403)
    origin = _header(headers, "Origin")
    if origin is None:
        if site is None:
            raise ForbiddenError("request without an Origin header refused", status=403)
        return
    hosts: set[str] = set()
    for name in ("Host", "X-Forwarded-Host", "X-Original-Host"):
        value = _header(headers, name)
        if value:
            hosts.update(part.strip().lower() for part in value.split(",") if part.strip())
    netloc = urlsplit(origin.strip()).netloc.lower() if origin.strip() not in ("", "null") else ""
    if not netloc or netloc not in hosts:
        raise ForbiddenError(f"request from another origin refused ({origin[:80]})", status=403)


def browser_token(headers: Mapping[str, str]) -> tuple[str, bool]:
    """The browser's CSRF cookie value, and whether it must be (re)set on this answer."""
    raw = _header(headers, "Cookie") or ""
    try:
        jar = SimpleCookie(raw)
    except CookieError:
        jar = SimpleCookie()
    morsel = jar.get(COOKIE)
    if morsel is not None and _TOKEN_RE.match(morsel.value):
        return morsel.value, False
    return secrets.token_urlsafe(32), True


def cookie_header(token: str, path: str, secure: bool) -> str:
    attrs = [f"{COOKIE}={token}", f"Path={path or '/'}", "HttpOnly", "SameSite=Strict"]
    if secure:
        attrs.append("Secure")
    return "; ".join(attrs)


def form_token(cookie: str, action: str, target: str) -> str:
    """The token a form for ``action`` on ``target`` carries (bound to the browser's cookie)."""
    msg = f"{action}\x1f{target}".encode()
    return hmac.new(cookie.encode(), msg, hashlib.sha256).hexdigest()


def check_form_token(headers: Mapping[str, str], given: str | None, action: str, target: str) -> None:
    cookie, fresh = browser_token(headers)
    if fresh:
        raise ForbiddenError("no console cookie on this request; reload the page and try again", status=403)
    if not given or not hmac.compare_digest(given, form_token(cookie, action, target)):
        raise ForbiddenError("the form's token does not match this page; reload the page and try again", status=403)
