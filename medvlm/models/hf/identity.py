"""The transformers backend's identity: which weights, with which resolved settings (no model is loaded)."""

from __future__ import annotations

from ..registry import model_identity
from .options import ResolvedOptions


def hf_identity(model: str, resolved: ResolvedOptions) -> dict:
    """The dict resume fingerprints and report provenance share for an in-process model."""
    return {"backend": "hf", "model": model_identity(model), **resolved.as_dict()}
