"""The endpoint backend's options: where the server is, how hard to try, what the model is sent."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from urllib.parse import urlsplit

from ...errors import ModelUnavailable
from ...redact import redact_url, split_credentials


@dataclass(frozen=True)
class EndpointOptions:
    """Options of `medvlm batch --endpoint URL` (the API key is never one: it comes from the environment)."""

    url: str
    concurrency: int = 4  # requests in flight
    connect_timeout: float = 10.0  # seconds to open a connection
    read_timeout: float = 600.0  # seconds to wait for an answer (a long generation on a small device)
    max_tries: int = 5  # per study, first try included
    retry_budget: float = 300.0  # seconds a study may spend retrying before it becomes an error row
    image_max_side: int = 896  # longest side of the PNG sent (and saved as image-N.png); Gemma 3 sees 896 px
    seed: int = 0  # sent where the server takes one (greedy decoding needs none, sampling servers do)

    @classmethod
    def from_mapping(cls, values: dict) -> "EndpointOptions":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ModelUnavailable(f"the endpoint backend has no option {unknown[0]!r}")
        if not values.get("url"):
            raise ModelUnavailable("the endpoint backend needs a URL (--endpoint http://HOST:PORT/v1)")
        typed = {}
        for f in fields(cls):
            if f.name not in values:
                continue
            value = values[f.name]
            cast = {"str": str, "int": int, "float": float}[f.type]
            try:
                typed[f.name] = cast(value)
            except (TypeError, ValueError):
                raise ModelUnavailable(f"endpoint option {f.name} must be a number, not {value!r}") from None
        options = cls(**typed)
        options.check()
        return replace_url(options, normalize_url(options.url))

    def check(self) -> None:
        limits = {
            "concurrency": (1, 256), "connect_timeout": (0.1, 3600), "read_timeout": (0.1, 86400),
            "max_tries": (1, 100), "retry_budget": (0, 86400), "image_max_side": (32, 8192),
            "seed": (0, 2**31 - 1),
        }
        for name, (low, high) in limits.items():
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and low <= value <= high):
                raise ModelUnavailable(f"endpoint option {name} must be between {low} and {high} (got {value!r})")

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def public_url(self) -> str:
        """The base URL as it may be written anywhere (credentials redacted)."""
        return redact_url(self.url)


def replace_url(options: EndpointOptions, url: str) -> EndpointOptions:
    from dataclasses import replace

    return replace(options, url=url)


def normalize_url(url: str) -> str:
    """Check the base URL and give it one spelling: no trailing slash, `/v1` added when no path was given."""
    url = url.strip()
    clean, _ = split_credentials(url)
    try:
        parts = urlsplit(clean)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise ModelUnavailable(f"--endpoint {redact_url(url)!r} is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ModelUnavailable(
            f"--endpoint must be an http(s) URL such as http://127.0.0.1:8080/v1 (got {redact_url(url)!r})"
        )
    if parts.query or parts.fragment:
        raise ModelUnavailable("--endpoint is the API's base URL (e.g. http://HOST:PORT/v1), without ?query or #fragment")
    url = url.rstrip("/")
    if parts.path in ("", "/"):
        url += "/v1"  # OpenAI-compatible servers (Ollama, llama.cpp, vLLM, medvlm serve) all serve /v1
    return url
