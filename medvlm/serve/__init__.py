"""`medvlm serve`: medvlm's own in-process models behind an OpenAI-compatible HTTP API.

    serve(ServeSettings(model="demo"), on_ready=print)

loads the model once, then serves until SIGINT/SIGTERM: the running batch finishes, requests still
waiting get HTTP 503. Binds 127.0.0.1 unless told otherwise; any other address needs an API key.
"""

from __future__ import annotations

import ipaddress
import logging
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import UsageProblem
from .requests import Limits

log = logging.getLogger("medvlm.serve")


@dataclass(frozen=True)
class ServeSettings:
    model: str
    host: str = "127.0.0.1"
    port: int = 8000
    backend: str = "hf"
    backend_options: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 4
    max_wait_ms: float = 50.0
    api_key: str | None = None
    limits: Limits = field(default_factory=Limits)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_settings(settings: ServeSettings) -> None:
    """Refuse settings that would expose the model unprotected or cannot work (UsageProblem, one line)."""
    if not is_loopback(settings.host) and not settings.api_key:
        raise UsageProblem(
            f"binding {settings.host} exposes the model beyond this machine; give --api-key KEY "
            "(or MEDVLM_API_KEY) so clients must send it, or bind 127.0.0.1"
        )
    if settings.api_key is not None and len(settings.api_key) < 8:
        raise UsageProblem("--api-key must be at least 8 characters")
    if not 0 <= settings.port <= 65535:
        raise UsageProblem(f"--port must be 0-65535 (got {settings.port})")


def serve(settings: ServeSettings, *, on_ready: Callable[[str], None] | None = None,
          on_stopped: Callable[[str], None] | None = None) -> None:
    """Load the model, serve until a signal, stop cleanly. Usage problems raise UsageProblem before binding."""
    check_settings(settings)
    for name in ("fastapi", "uvicorn"):
        try:
            __import__(name)
        except ImportError:
            raise UsageProblem(f"medvlm serve needs {name}: pip install 'medvlm[serve]'") from None
    import uvicorn

    from ..models import LoadRequest, get_kind
    from .app import ServeState, create_app
    from .batcher import Batcher

    kind = get_kind(settings.backend)
    options = kind.check_options(settings.backend_options)
    backend = kind.load(LoadRequest(settings.model, options, settings.batch_size,
                                    settings.limits.default_max_tokens, min(settings.limits.max_images, 2)))
    batcher = Batcher(backend, batch_size=settings.batch_size, max_wait_s=settings.max_wait_ms / 1000)
    state = ServeState(backend=backend, model_name=settings.model, batcher=batcher, limits=settings.limits,
                       api_key=settings.api_key, created=int(time.time()))
    app = create_app(state)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning", access_log=False,
                            server_header=False, timeout_keep_alive=30, lifespan="off")

    class Server(uvicorn.Server):
        async def startup(self, sockets=None):
            await super().startup(sockets)
            if self.should_exit or not self.servers:
                return
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            shown = f"[{host}]" if ":" in host else host
            if on_ready:
                on_ready(f"http://{shown}:{port}/v1")

        def handle_exit(self, sig, frame):
            # Requests waiting for a batch get 503 now; the batch that is generating finishes and is answered.
            state.draining = True
            batcher.close(wait=False)
            # Not uvicorn's own handler: it re-raises the signal after shutdown, so a clean stop would end
            # as "killed by SIGTERM" (or a KeyboardInterrupt) instead of exit code 0 with the stop line.
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True  # a second Ctrl-C: stop waiting for connections
            self.should_exit = True

    server = Server(config)
    try:
        server.run()
    except SystemExit as exc:  # uvicorn exits when it cannot bind
        batcher.close(wait=False)
        raise UsageProblem(f"cannot listen on {settings.host}:{settings.port} (address in use or not allowed)") from exc
    finally:
        state.draining = True
        batcher.close(wait=True, timeout=600)
    if on_stopped:
        stats = batcher.stats
        on_stopped(f"stopped after {stats.requests} requests in {stats.batches} batches (largest {stats.largest})")
