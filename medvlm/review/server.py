"""Run the review app on 127.0.0.1 with uvicorn until Ctrl-C; queued saves are written as soon as the run is free."""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass
from pathlib import Path

from ..errors import RunBusy, UsageProblem

FLUSH_EVERY_S = 3.0


@dataclass
class SessionSummary:
    saved: int
    queued_left: int


def bind(port: int) -> socket.socket:
    """A listening socket on 127.0.0.1 (never another interface); port 0 picks a free one."""
    if not 0 <= port <= 65535:
        raise UsageProblem(f"--port must be 0-65535 (got {port})")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError as exc:
        sock.close()
        raise UsageProblem(f"cannot listen on 127.0.0.1:{port} ({exc.strerror or exc}); choose another --port "
                           "or leave it out for a free one") from None
    sock.listen(64)
    sock.setblocking(False)
    return sock


def _flusher(run_dir: Path, cache, stop: threading.Event) -> None:
    from ..audit.reviews import flush_pending, pending_reviews

    while not stop.wait(FLUSH_EVERY_S):
        if not pending_reviews(run_dir):
            continue
        try:
            flush_pending(run_dir, cache)
        except RunBusy:
            continue  # still busy (or damaged: verify says so); the saves stay queued on disk
        except OSError:
            continue


def serve(run_dir: Path, *, reviewer: str | None = None, port: int = 0, blind: bool = False, open_browser: bool = True,
          on_url=print) -> SessionSummary:
    """Serve until interrupted; `on_url` gets the one line with the address (and its token)."""
    import uvicorn

    from ..audit.reviews import ReviewInvalid, flush_pending, pending_reviews
    from .app import ReviewServer

    run_dir = Path(run_dir)
    sock = bind(port)
    try:
        server_state = ReviewServer(run_dir, port=sock.getsockname()[1], reviewer=reviewer, blind=blind)
    except ReviewInvalid as exc:
        sock.close()
        raise UsageProblem(f"--reviewer: {exc}") from None
    except BaseException:
        sock.close()
        raise
    try:
        flush_pending(run_dir, server_state.view.cache)  # saves left queued by an earlier session
    except RunBusy:
        pass
    config = uvicorn.Config(server_state.asgi(), log_level="warning", access_log=False, server_header=False,
                            date_header=False, proxy_headers=False, lifespan="off", timeout_keep_alive=5,
                            limit_concurrency=64, ws="none")
    server = uvicorn.Server(config)
    stop = threading.Event()
    flusher = threading.Thread(target=_flusher, args=(run_dir, server_state.view.cache, stop), daemon=True,
                               name="medvlm-review-flush")
    flusher.start()
    url = server_state.keys.url()
    on_url(f"medvlm review: {url}  (reviewer: {server_state.reviewer or 'asked in the browser'}"
           f"{', blind first reads' if blind else ''}; Ctrl-C to stop)")
    if open_browser:
        import webbrowser

        threading.Timer(0.5, lambda: webbrowser.open(url)).start()
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass  # uvicorn stops on Ctrl-C and then raises it again: for this command it is the normal way to stop
    finally:
        stop.set()
        flusher.join(timeout=FLUSH_EVERY_S + 1)
        sock.close()
        try:
            flush_pending(run_dir, server_state.view.cache)
        except RunBusy:
            pass
    return SessionSummary(server_state.saved, len(pending_reviews(run_dir)))
