"""Model backends behind one protocol; each backend's heavy imports happen only when a model loads."""

from .backends import DEFAULT_BACKEND, backend_names, get_kind
from .base import Backend, BackendBase, BackendKind, BatchTiming, LoadRequest, ModelInfo, ModelUnavailable
from .registry import DEFAULT_MODEL, PRESETS, availability, resolve


def load_backend(name_or_path: str, *, backend: str = DEFAULT_BACKEND, batch_size: int = 1, max_new_tokens: int = 256,
                 images_per_study: int = 2, check_memory: bool = True, **options) -> Backend:
    """Load a model through a registered backend; `options` are that backend's own (hf: device, dtype, quant)."""
    kind = get_kind(backend)
    return kind.load(LoadRequest(name_or_path, kind.check_options(options), batch_size, max_new_tokens,
                                 images_per_study, check_memory))


__all__ = [
    "Backend", "BackendBase", "BackendKind", "BatchTiming", "LoadRequest", "ModelInfo", "ModelUnavailable",
    "DEFAULT_BACKEND", "DEFAULT_MODEL", "PRESETS", "availability", "backend_names", "get_kind", "load_backend",
    "resolve",
]
