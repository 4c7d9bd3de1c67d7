"""HTTP to an OpenAI-compatible server (httpx): bounded retries with backoff, one-line errors, no secrets.

Retried: connection errors, timeouts, HTTP 408, 429 and 5xx (honouring Retry-After), with exponential
backoff and jitter, bounded by a number of tries and a time budget. Every message this module
produces names the server by its redacted URL and has the API key and URL password scrubbed out.
"""

from __future__ import annotations

import base64
import email.utils
import random
import time
from dataclasses import dataclass
from typing import Any

from ...errors import ModelUnavailable, StudyFailure, first_line
from ...redact import api_key_from_env, scrub, split_credentials
from .options import EndpointOptions

RETRY_STATUS = {408, 429, 500, 502, 503, 504}
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 30.0
# Fields of a /v1/models entry that describe which model is served and do not change when the server
# restarts (`created` and vLLM's `permission` ids do); they go into the identity resume keys on.
STABLE_MODEL_FIELDS = ("id", "owned_by", "root", "parent", "max_model_len", "meta", "medvlm")


class EndpointError(StudyFailure):
    """A request that kept failing, or an answer that cannot be used: one line, no secrets."""


@dataclass
class Reply:
    """A successful HTTP exchange (status < 400 or a final 4xx) with how it went."""

    status: int
    body: Any  # parsed JSON (None when the body is not JSON)
    text: str
    attempts: int
    latency_s: float  # the last attempt's round trip
    retry_after_total_s: float = 0.0


class EndpointClient:
    """One connection pool to one server; thread-safe (httpx.Client), shared by the concurrent requests."""

    def __init__(self, options: EndpointOptions, *, pool_size: int | None = None):
        import httpx

        self.options = options
        self.public_url = options.public_url
        base, credentials = split_credentials(options.url)
        self._api_key = api_key_from_env()
        if credentials and self._api_key:
            raise ModelUnavailable(
                "both an API key (MEDVLM_API_KEY/OPENAI_API_KEY) and credentials in the --endpoint URL were given; "
                "they would share one Authorization header: use one"
            )
        self._secrets = [self._api_key]
        if credentials:
            basic = base64.b64encode(f"{credentials[0]}:{credentials[1]}".encode()).decode()
            self._secrets += [basic, credentials[1], credentials[0]]
        headers = {"Accept": "application/json", "User-Agent": "medvlm-endpoint"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        size = pool_size or options.concurrency
        self._http = httpx.Client(
            base_url=base,
            headers=headers,
            auth=credentials,
            timeout=httpx.Timeout(options.read_timeout, connect=options.connect_timeout),
            limits=httpx.Limits(max_connections=size + 2, max_keepalive_connections=size + 2),
            follow_redirects=False,
        )

    def close(self) -> None:
        self._http.close()

    def clean(self, text: str) -> str:
        """One line with every secret scrubbed (for messages built from server or library text)."""
        return scrub(" ".join(str(text).split()), self._secrets)[:300]

    def request(self, method: str, path: str, *, json: Any = None, max_tries: int | None = None,
                budget_s: float | None = None) -> Reply:
        """Send with retries; returns the final reply (2xx or a non-retryable 4xx); raises EndpointError."""
        import httpx

        tries = max_tries or self.options.max_tries
        budget = self.options.retry_budget if budget_s is None else budget_s
        deadline = time.monotonic() + budget
        reason = "no attempt made"
        waited = 0.0
        attempt = 0
        for attempt in range(1, tries + 1):
            wait: float | None = None
            started = time.perf_counter()
            try:
                response = self._http.request(method, path, json=json)
            except httpx.TimeoutException as exc:
                reason = _timeout_reason(exc, self.options)
            except httpx.TransportError as exc:
                reason = self._transport_reason(exc)
            else:
                latency = time.perf_counter() - started
                if response.status_code not in RETRY_STATUS:
                    return Reply(response.status_code, _json_or_none(response), response.text, attempt, latency, waited)
                reason = f"HTTP {response.status_code}" + self._server_message(response)
                wait = retry_after_seconds(response.headers.get("retry-after"))
            remaining = deadline - time.monotonic()
            if attempt == tries or remaining <= 0:
                break
            pause = backoff_seconds(attempt) if wait is None else wait
            if pause > remaining:
                if wait is not None:
                    reason += f" (Retry-After {wait:.0f} s exceeds the retry budget of {budget:.0f} s)"
                break
            time.sleep(pause)
            waited += pause
        tries_text = "1 try" if attempt == 1 else f"{attempt} tries"
        raise EndpointError(f"endpoint: {reason} after {tries_text}")

    def _transport_reason(self, exc: BaseException) -> str:
        text = str(exc).lower()
        if "refused" in text:
            return "connection refused"
        if "reset" in text:
            return "connection reset"
        if "name or service not known" in text or "nodename nor servname" in text or "name resolution" in text:
            return "host name not found"
        if "disconnected" in text or "closed" in text or "incomplete" in text or "peer" in text:
            return "the server closed the connection"
        return self.clean(first_line(exc)) or type(exc).__name__

    def _server_message(self, response) -> str:
        """`: message` from an error response, or ''."""
        message = self._message_of(_json_or_none(response), response.text)
        return f": {message}" if message else ""

    def error_text(self, reply: Reply) -> str:
        """One line for a final non-2xx reply."""
        message = self._message_of(reply.body, reply.text)
        return f"HTTP {reply.status}" + (f": {message}" if message else "")

    def _message_of(self, body: Any, text: str) -> str:
        """The first line of an OpenAI-shaped (or plain-text) error message, scrubbed; '' when there is none."""
        raw = None
        if isinstance(body, dict):
            error = body.get("error")
            raw = error.get("message") if isinstance(error, dict) else error if isinstance(error, str) else None
            raw = raw or body.get("detail") or body.get("message")
        elif text and len(text) < 500 and not text.lstrip().startswith("<"):  # not an HTML error page
            raw = text
        if not isinstance(raw, str) or not raw.strip():
            return ""
        return self.clean(raw.strip().splitlines()[0])


def _timeout_reason(exc: BaseException, options: EndpointOptions) -> str:
    import httpx

    if isinstance(exc, httpx.ConnectTimeout):
        return f"no connection within {options.connect_timeout:g} s"
    if isinstance(exc, httpx.PoolTimeout):
        return "no free connection in the pool"
    return f"no answer within {options.read_timeout:g} s (read timeout)"


def _json_or_none(response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def backoff_seconds(attempt: int, *, base: float = BACKOFF_BASE_S, cap: float = BACKOFF_CAP_S) -> float:
    """Exponential backoff with jitter: half of base * 2^(attempt-1) fixed, the other half random (capped)."""
    step = min(cap, base * 2 ** (attempt - 1))
    return step / 2 + random.uniform(0, step / 2)


def retry_after_seconds(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


@dataclass(frozen=True)
class Served:
    """What the server said about the model at the start (GET /v1/models)."""

    model: str  # the id requests name
    entry: dict  # the stable fields of its listing entry ({} when the server has no listing)
    listed: bool
    owned_by: str | None


def discover(options: EndpointOptions, model: str) -> Served:
    """Ask the server which models it serves and pick `model` (or the only one); ModelUnavailable in one line."""
    client = EndpointClient(options, pool_size=1)
    where = f"the model server at {client.public_url}"
    try:
        try:
            reply = client.request("GET", "models", max_tries=2, budget_s=min(5.0, options.retry_budget))
        except EndpointError as exc:
            reason = str(exc).removeprefix("endpoint: ")
            raise ModelUnavailable(f"cannot reach {where}: {reason}.") from None
        if reply.status in (401, 403):
            hint = "check MEDVLM_API_KEY" if api_key_from_env() else "set MEDVLM_API_KEY (or OPENAI_API_KEY)"
            raise ModelUnavailable(f"{where} refused the request ({client.error_text(reply)}); {hint}.")
        if reply.status == 404:
            if model:
                return Served(model, {"id": model}, False, None)
            raise ModelUnavailable(f"{where} has no model listing (GET /models: HTTP 404); name the model with --model.")
        if reply.status >= 400:
            raise ModelUnavailable(f"{where} answered GET /models with {client.error_text(reply)}.")
        data = reply.body.get("data") if isinstance(reply.body, dict) else None
        if not isinstance(data, list):
            raise ModelUnavailable(f"{where} did not answer GET /models with an OpenAI model list; is the URL the API base (.../v1)?")
        entries = [e for e in data if isinstance(e, dict) and isinstance(e.get("id"), str)]
        ids = [e["id"] for e in entries]
        if not model:
            if len(entries) == 1:
                entry = entries[0]
            elif not entries:
                raise ModelUnavailable(f"{where} serves no model.")
            else:
                raise ModelUnavailable(f"{where} serves {len(ids)} models ({_names(ids)}); choose one with --model.")
        else:
            matches = [e for e in entries if e["id"] == model]
            if not matches:
                served = f"it serves {_names(ids)}" if ids else "it serves no model"
                raise ModelUnavailable(f"{where} does not serve {model!r}; {served}.")
            entry = matches[0]
        stable = {k: entry[k] for k in STABLE_MODEL_FIELDS if k in entry}
        owned = entry.get("owned_by") if isinstance(entry.get("owned_by"), str) else None
        return Served(entry["id"], stable, True, owned)
    finally:
        client.close()


def _names(ids: list[str], limit: int = 6) -> str:
    shown = ", ".join(ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")
