"""Per-study warning capture: Python warnings and pydicom/PIL log records raised while one study is
decoded become that study's notes, without process-wide state that other threads could see.

`warnings.catch_warnings` and flipping logger propagation are process-wide: while the prefetch
thread decoded, warnings from the model or render threads landed in the study's notes (or were
swallowed), and a second decoding thread could take the first one's. Here routing is decided per
execution context (a ContextVar, so per thread: threads do not inherit it) by hooks installed once:

- `warnings.warn` / `warnings.warn_explicit` are wrapped: inside captured() the message is noted and
  neither filters nor the once-per-location registry apply (what catch_warnings + "always" did);
  outside they are the originals (stacklevel adjusted, so attribution is unchanged).
- `warnings._showwarnmsg` is wrapped too, for warnings raised from C code (e.g. numpy): those pass
  the process's filters first, then land in the notes instead of on the console.
- every "pydicom" and "PIL" logger (and their children, e.g. PIL.PngImagePlugin) gets one routing
  filter: inside captured() it notes WARNING+ records (drops lower ones, as before) and stops them
  where they are made, so no handler sees them; outside it lets them through. Propagation and
  handlers are left alone. Loggers created later are covered on the next captured().

Nested captured() blocks behave as nested catch_warnings blocks with their handlers did: warnings go
to the innermost notes list, log records to every open one.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
import warnings
from typing import Iterator

from .privacy import scrub

CAPTURED_LOGGERS = ("pydicom", "PIL")

# The notes lists of the captured() blocks open in this context, innermost last.
_SINKS: contextvars.ContextVar[tuple[list[str], ...]] = contextvars.ContextVar("medvlm_ingest_sinks", default=())
_INSTALL_LOCK = threading.RLock()
_installed = False


@contextlib.contextmanager
def captured(notes: list[str]) -> Iterator[None]:
    """Collect this thread's Python warnings and pydicom/PIL log records into notes (scrubbed) instead of the console."""
    _install()
    token = _SINKS.set(_SINKS.get() + (notes,))
    try:
        yield
    finally:
        _SINKS.reset(token)


def dedupe(notes: list[str]) -> list[str]:
    """Notes in first-seen order, each once."""
    return list(dict.fromkeys(notes))


# ---------------------------------------------------------------- hooks (installed once per process)


def _install() -> None:
    if not _installed:
        with _INSTALL_LOCK:
            if not _installed:
                _wrap_warnings()
                _import_pil_plugins()
    _cover_loggers()


def _wrap_warnings() -> None:
    global _installed
    original_warn, original_explicit, original_show = warnings.warn, warnings.warn_explicit, warnings._showwarnmsg

    def warn(message, category=None, stacklevel=1, source=None, **kwargs):
        sinks = _SINKS.get()
        if sinks:
            sinks[-1].append(scrub(str(message)))
            return None
        # one more frame (this wrapper) between the caller and the warning machinery
        return original_warn(message, category, stacklevel + 1, source, **kwargs)

    def warn_explicit(message, category, filename, lineno, *args, **kwargs):
        sinks = _SINKS.get()
        if sinks:
            sinks[-1].append(scrub(str(message)))
            return None
        return original_explicit(message, category, filename, lineno, *args, **kwargs)

    def showwarnmsg(msg) -> None:
        sinks = _SINKS.get()
        if sinks:
            sinks[-1].append(scrub(str(msg.message)))
            return
        original_show(msg)

    warn.__doc__, warn_explicit.__doc__ = original_warn.__doc__, original_explicit.__doc__
    warnings.warn, warnings.warn_explicit, warnings._showwarnmsg = warn, warn_explicit, showwarnmsg
    _installed = True


class _Route(logging.Filter):
    """On a captured logger: inside captured(), note WARNING+ records (drop lower ones) and stop the
    record there (no handler, no propagation); outside, let it through untouched."""

    def filter(self, record: logging.LogRecord) -> bool:
        sinks = _SINKS.get()
        if not sinks:
            return True
        if record.levelno >= logging.WARNING:
            text = scrub(record.getMessage())
            for sink in sinks:
                sink.append(text)
        return False


_ROUTE = _Route()
_loggers_seen = -1


def _cover_loggers() -> None:
    """Put the route filter on every pydicom/PIL logger that exists (filters act where a record is made)."""
    global _loggers_seen
    registry = logging.Logger.manager.loggerDict
    if len(registry) == _loggers_seen:  # no logger created since the last look
        return
    with _INSTALL_LOCK:
        for name in CAPTURED_LOGGERS:
            logging.getLogger(name)
        for name, logger in list(registry.items()):
            if isinstance(logger, logging.Logger) and name.split(".")[0] in CAPTURED_LOGGERS and _ROUTE not in logger.filters:
                logger.addFilter(_ROUTE)
        _loggers_seen = len(registry)


def _import_pil_plugins() -> None:
    """Pillow imports its format plugins (each with its own logger) on first use; load them now so
    their loggers exist before the first image is opened inside a capture."""
    from PIL import Image

    Image.init()
