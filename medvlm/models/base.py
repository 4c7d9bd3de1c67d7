"""The one protocol every model backend implements."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from ..errors import ModelUnavailable  # noqa: F401 - re-exported
from ..records import ModelOutput, Prompt, Study


@dataclass(frozen=True)
class ModelInfo:
    """What was actually loaded, for provenance."""

    name: str  # preset name or the path/hub id the user gave
    source: str  # hub id or local directory
    local_dir: str | None
    revision: str | None
    random_weights: bool
    dtype: str
    quantization: str
    device: str
    weights_digest: str | None = None
    parameters: int | None = None
    details: dict = field(default_factory=dict)


@runtime_checkable
class Backend(Protocol):
    """A loaded model that turns (study, prompt) pairs into model outputs."""

    info: ModelInfo

    def generate(
        self, batch: list[tuple[Study, Prompt]], *, max_new_tokens: int, ignore_eos: bool = False
    ) -> list[ModelOutput]: ...
