"""Model backends behind one protocol; transformers is imported only when a model loads."""

from .base import Backend, ModelInfo, ModelUnavailable
from .registry import DEFAULT_MODEL, PRESETS, availability, resolve


def load_backend(name_or_path: str, *, device: str = "auto", dtype: str = "auto", quant: str = "auto", **sizing) -> Backend:
    """Load a model by preset name, local directory or hub id (lazy import of torch/transformers).

    sizing: batch_size, max_new_tokens, images_per_study, check_memory (for the memory check before loading).
    """
    from .hf import load_backend as _load

    return _load(name_or_path, device=device, dtype=dtype, quant=quant, **sizing)


__all__ = ["Backend", "ModelInfo", "ModelUnavailable", "DEFAULT_MODEL", "PRESETS", "availability", "resolve", "load_backend"]
