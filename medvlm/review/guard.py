"""The review app's gate: loopback Host only, a random token (then its cookie) on every request, CSRF on writes.

Pure ASGI middleware, so nothing of the app runs for a request it refuses:
- the Host header must name the server itself (127.0.0.1 or localhost with its port): a web page
  elsewhere cannot reach it by DNS rebinding;
- `?token=` on a GET sets an HttpOnly, SameSite=Strict cookie (a value derived from the secret,
  not the token) and redirects to the same address without the token, so it does not stay in the
  address bar or the history; every other request needs that cookie, else 403;
- a POST also needs the CSRF token (header X-CSRF-Token), a JSON body with a Content-Length of at
  most MAX_BODY bytes, and an Origin, when sent, of this server;
- every response carries a strict Content-Security-Policy (scripts only from /static/), no-store,
  no-referrer, nosniff and frame-ancestors 'none'.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from http.cookies import CookieError, SimpleCookie
from urllib.parse import parse_qsl, urlencode

MAX_BODY = 64 * 1024
CSP = ("default-src 'none'; img-src 'self' blob:; style-src 'unsafe-inline'; script-src 'self'; connect-src 'self'; "
       "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"cache-control", b"no-store"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
]
FORBIDDEN = ("403 Forbidden: open the address `medvlm review` printed (it carries the access token).\n").encode()


class Secrets:
    """The access token printed once, and the cookie and CSRF values derived from one random secret."""

    def __init__(self, port: int):
        self.port = port
        self.token = secrets.token_urlsafe(32)
        key = secrets.token_bytes(32)
        self.session = hmac.new(key, b"session", hashlib.sha256).hexdigest()
        self.csrf = hmac.new(key, b"csrf", hashlib.sha256).hexdigest()
        # Cookies are shared by every port of a host: the port in the name keeps two servers apart.
        self.cookie_name = f"medvlm_review_{port}"
        self.hosts = {f"127.0.0.1:{port}", f"localhost:{port}"}
        self.origins = {f"http://{h}" for h in self.hosts}

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}?token={self.token}"


def _same(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode())


class Guard:
    """ASGI middleware enforcing the rules in the module docstring around `app`."""

    def __init__(self, app, keys: Secrets):
        self.app = app
        self.keys = keys

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            return
        headers = {}
        for name, value in scope.get("headers") or []:
            headers.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            status, body, extra = refusal
            await _plain(send, status, body, extra)
            return

        started = False

        async def send_with_headers(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message = dict(message)
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception:  # noqa: BLE001 - the app's handler already answered and logged one line
            # Starlette re-raises after its error handler ran so that servers can log a traceback;
            # the client has its answer and the terminal its one line, so the traceback stops here.
            if not started:
                await _plain(send, 500, b"500 Internal Server Error\n", [])

    def _refusal(self, scope, headers: dict) -> tuple[int, bytes, list] | None:
        """(status, body, extra headers) when the request is refused, else None."""
        keys = self.keys
        if headers.get("host") not in keys.hosts:
            return 403, FORBIDDEN, []
        method = scope.get("method", "GET")
        if method not in ("GET", "HEAD", "POST"):
            return 405, b"405 Method Not Allowed\n", []
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        tokens = [v for k, v in query if k == "token"]
        if tokens:
            if method != "GET" or len(tokens) != 1 or not _same(tokens[0], keys.token):
                return 403, FORBIDDEN, []
            rest = urlencode([(k, v) for k, v in query if k != "token"])
            location = scope.get("path", "/") + (f"?{rest}" if rest else "")
            cookie = f"{keys.cookie_name}={keys.session}; Path=/; HttpOnly; SameSite=Strict"
            return 303, b"", [(b"location", location.encode("latin-1", "replace")), (b"set-cookie", cookie.encode())]
        if not _same(_cookie(headers.get("cookie"), keys.cookie_name), keys.session):
            return 403, FORBIDDEN, []
        if method == "POST":
            origin = headers.get("origin")
            if origin is not None and origin not in keys.origins:
                return 403, b"403 Forbidden: cross-origin request\n", []
            if headers.get("sec-fetch-site") not in (None, "same-origin", "none"):
                return 403, b"403 Forbidden: cross-site request\n", []
            if not _same(headers.get("x-csrf-token"), keys.csrf):
                return 403, b"403 Forbidden: missing or wrong CSRF token (reload the page)\n", []
            if not (headers.get("content-type") or "").split(";")[0].strip().lower() == "application/json":
                return 415, b"415 Unsupported Media Type: send JSON\n", []
            length = headers.get("content-length")
            if length is None or not length.isdigit():
                return 411, b"411 Length Required\n", []
            if int(length) > MAX_BODY:
                return 413, f"413 Payload Too Large: at most {MAX_BODY} bytes\n".encode(), []
        return None


def _cookie(header: str | None, name: str) -> str | None:
    if not header:
        return None
    jar = SimpleCookie()
    try:
        jar.load(header)
    except CookieError:
        # One malformed cookie of another site on localhost must not lock the reviewer out: read ours by hand.
        for part in header.split(";"):
            k, _, v = part.strip().partition("=")
            if k == name:
                return v
        return None
    morsel = jar.get(name)
    return morsel.value if morsel else None


async def _plain(send, status: int, body: bytes, extra: list) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode()),
                            *extra, *SECURITY_HEADERS]})
    await send({"type": "http.response.body", "body": body})
