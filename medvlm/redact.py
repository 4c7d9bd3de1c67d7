"""Keeping secrets out of outputs: URL credentials redacted, known secret strings scrubbed (a leaf module).

Everything medvlm writes (reports, ledger, run.json, summary rows, log lines, error messages) that
may carry a URL or a message from a remote server goes through these functions first.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit, urlunsplit

REDACTED = "***"
# Where the endpoint backend (and `medvlm serve`) read an API key from, first found wins.
API_KEY_ENV = ("MEDVLM_API_KEY", "OPENAI_API_KEY")


def api_key_from_env() -> str | None:
    """The API key from MEDVLM_API_KEY, else OPENAI_API_KEY; None when neither is set (or empty)."""
    for name in API_KEY_ENV:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None


def split_credentials(url: str) -> tuple[str, tuple[str, str] | None]:
    """(url without `user:pass@`, (user, password) or None)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url, None
    if parts.username is None and parts.password is None:
        return url, None
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if _port(parts) is not None else "")
    clean = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return clean, (parts.username or "", parts.password or "")


def _port(parts) -> int | None:
    try:
        return parts.port
    except ValueError:
        return None


def redact_url(url: str) -> str:
    """The URL with any `user:pass@` replaced by `***@`, and secret-looking query values redacted."""
    clean, creds = split_credentials(url)
    parts = urlsplit(clean)
    query = parts.query
    if query:
        pairs = []
        for pair in query.split("&"):
            name, eq, _value = pair.partition("=")
            secretish = any(word in name.lower() for word in ("key", "token", "secret", "password", "auth"))
            pairs.append(f"{name}={REDACTED}" if eq and secretish else pair)
        query = "&".join(pairs)
    netloc = parts.netloc
    if creds is not None:
        netloc = f"{REDACTED}@{netloc}"
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_values(values: dict) -> dict:
    """A copy of an options dict with credentials removed from every URL-looking string value."""
    return {k: redact_url(v) if isinstance(v, str) and "://" in v else v for k, v in values.items()}


def scrub(text: str, secrets: list[str | None] | tuple[str | None, ...]) -> str:
    """`text` with every given secret (of 4+ characters) replaced by ***."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, REDACTED)
    return text
