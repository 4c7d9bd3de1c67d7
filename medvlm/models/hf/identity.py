"""The transformers backend's identity: which weights, with which resolved settings (no model is loaded)."""

from __future__ import annotations

from ..registry import model_identity
from .options import ResolvedOptions

# Architectures whose processor sizes images by a pixel budget that medvlm caps (models/hf/processor.py).
PIXEL_BUDGET_TYPES = {"qwen2_vl", "qwen2_5_vl"}


def hf_identity(model: str, resolved: ResolvedOptions, model_type: str | None = None) -> dict:
    """The dict resume fingerprints and report provenance share for an in-process model."""
    identity = {"backend": "hf", "model": model_identity(model), **resolved.as_dict()}
    if model_type in PIXEL_BUDGET_TYPES:
        from .processor import QWEN_MAX_PIXELS

        identity["max_pixels"] = QWEN_MAX_PIXELS  # the visual-token budget changes what the model sees
    return identity
