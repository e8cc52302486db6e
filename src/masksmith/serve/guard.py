"""ASGI middleware in front of every route: the bearer token, security headers, and per-request accounting
for /metrics.

With a token, every route but /healthz needs `Authorization: Bearer TOKEN`. A browser cannot add
that header when it loads a page, so `GET /?token=TOKEN` sets the same secret as an HttpOnly,
SameSite=Strict cookie (which counts like the header) and redirects to `/`, dropping it from the URL.

Every response says not to guess content types (nosniff), not to be framed, and that the page runs
only its own scripts and styles (Content-Security-Policy); the page draws the uploaded image from a
blob: URL, the one source it needs beyond its own.
"""

from __future__ import annotations

import hmac
import json
import time
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qs, quote, unquote

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

COOKIE = "masksmith_token"
OPEN_PATHS = frozenset({"/healthz"})
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
                           "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
                    (b"referrer-policy", b"no-referrer")]


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return ""


def _cookie(scope: Scope, name: str) -> str:
    for part in _header(scope, b"cookie").split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return ""


def _same(given: str, token: str) -> bool:
    # Constant-time comparison: response timing must not reveal how much of a guess was right.
    return bool(given) and hmac.compare_digest(given.encode(), token.encode())


async def _send_json(send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]]) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": data})


class Guard:
    """Checks the token (when one is set) and reports (path, status, seconds) of every HTTP request."""

    def __init__(self, app: ASGIApp, token: str | None, record: Callable[[str, int, float], None]):
        self.app = app
        self.token = token
        self.record = record

    def _authorized(self, scope: Scope) -> bool:
        assert self.token is not None
        authorization = _header(scope, b"authorization")
        scheme, _, given = authorization.partition(" ")
        if scheme.lower() == "bearer" and _same(given.strip(), self.token):
            return True
        return _same(unquote(_cookie(scope, COOKIE)), self.token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        path = scope.get("path", "")
        status = 500

        async def send_and_note(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
            await send(message)

        try:
            if self.token is not None and path not in OPEN_PATHS:
                query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
                if path == "/" and _same(query.get("token", [""])[0], self.token):
                    cookie = f"{COOKIE}={quote(self.token, safe='')}; HttpOnly; SameSite=Strict; Path=/"
                    await send_and_note({"type": "http.response.start", "status": 303,
                                         "headers": [(b"location", b"/"), (b"set-cookie", cookie.encode()),
                                                     (b"content-length", b"0")]})
                    await send_and_note({"type": "http.response.body", "body": b""})
                    return
                if not self._authorized(scope):
                    await _send_json(send_and_note, 401, {
                        "error": "missing or wrong token: send 'Authorization: Bearer TOKEN' "
                                 "(in a browser, open /?token=TOKEN once)"},
                        [(b"www-authenticate", b'Bearer realm="masksmith"')])
                    return
            await self.app(scope, receive, send_and_note)
        finally:
            self.record(path, status, time.perf_counter() - started)
