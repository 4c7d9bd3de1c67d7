"""The contract between the pipeline and a model backend, and the contract of a backend plugin.

Two objects per backend:
- a `BackendKind` (one per backend module, registered by name in models/backends.py): checks its
  packages are installed, validates its own options, computes the model's `identity` *before*
  loading anything (the resume fingerprint uses it) and loads a `Backend`;
- a loaded `Backend`: turns (study, prompt) pairs into ModelOutputs. Every backend has the same
  methods (`BackendBase` supplies the optional ones), so the pipeline never probes with hasattr.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, runtime_checkable

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
    backend: str = "hf"
    identity: dict = field(default_factory=dict)  # the same dict the resume fingerprint used
    phantom: bool = False  # trained only on synthetic phantoms (the `phantom` preset): its text says nothing about real images

    @property
    def notice(self) -> str | None:
        """The notice every report made with this model carries (demo or phantom model), or None."""
        from .. import DEMO_NOTICE, PHANTOM_NOTICE

        if self.random_weights:
            return DEMO_NOTICE
        return PHANTOM_NOTICE if self.phantom else None


@dataclass
class BatchTiming:
    """Where one generate call's time went, when the backend measures it (all seconds)."""

    preprocess_s: float = 0.0
    prefill_s: float | None = None
    decode_s: float | None = None
    generated_tokens: int | None = None  # tokens produced, padding rows included


@dataclass(frozen=True)
class LoadRequest:
    """Everything a backend kind may use to load a model (its own options plus sizing hints)."""

    model: str
    options: Mapping[str, Any]
    batch_size: int = 1
    max_new_tokens: int = 256
    images_per_study: int = 2
    check_memory: bool = True


@runtime_checkable
class Backend(Protocol):
    """A loaded model that turns (study, prompt) pairs into model outputs."""

    info: ModelInfo

    @property
    def identity(self) -> dict: ...

    def preprocess(self, batch: list[tuple[Study, Prompt]]) -> Any:
        """Turn a batch into model inputs; may run on a background thread while another batch generates."""

    def generate_prepared(self, prepared: Any, *, max_new_tokens: int, ignore_eos: bool = False) -> list[ModelOutput]:
        """Generate for a preprocessed batch, one output per study in order.

        A study that failed on its own (a remote request that kept failing) may be an Exception in
        place of its ModelOutput; it becomes that study's error row. Raising fails the whole batch,
        whose studies are then retried one at a time.
        """

    def timing(self, prepared: Any) -> BatchTiming | None:
        """Timing of the last generate_prepared() on `prepared`, or None when the backend does not measure it."""

    def generate(
        self, batch: list[tuple[Study, Prompt]], *, max_new_tokens: int, ignore_eos: bool = False
    ) -> list[ModelOutput]: ...


class BackendBase:
    """Defaults for a backend with no separate preprocessing step and no timing of its own."""

    info: ModelInfo

    @property
    def identity(self) -> dict:
        return self.info.identity or default_identity(self.info)

    def preprocess(self, batch: list[tuple[Study, Prompt]]) -> Any:
        return list(batch)

    def generate_prepared(self, prepared: Any, *, max_new_tokens: int, ignore_eos: bool = False) -> list[ModelOutput]:
        return self.generate(prepared, max_new_tokens=max_new_tokens, ignore_eos=ignore_eos)

    def timing(self, prepared: Any) -> BatchTiming | None:
        return None

    def generate(
        self, batch: list[tuple[Study, Prompt]], *, max_new_tokens: int, ignore_eos: bool = False
    ) -> list[ModelOutput]:
        return self.generate_prepared(self.preprocess(batch), max_new_tokens=max_new_tokens, ignore_eos=ignore_eos)


def default_identity(info: ModelInfo) -> dict:
    """An identity from provenance alone, for backends that do not define their own."""
    return {
        "backend": info.backend,
        "name": info.name,
        "source": info.source,
        "revision": info.revision,
        "weights_digest": info.weights_digest,
        "dtype": info.dtype,
        "quantization": info.quantization,
        "device": info.device,
    }


class BackendKind(Protocol):
    """A backend plugin: one per backend module, registered by name (see models/backends.py)."""

    name: str
    requires: tuple[str, ...]  # distribution names of the packages it needs
    # Optional (read with getattr, default ()): environment variables that change what a load gives
    # (numerics, memory behaviour). A distributed executor forwards those set on the driver to its
    # workers, so every node loads the model the same way.
    settings_env: tuple[str, ...]

    def is_available(self) -> str | None:
        """None when usable here, else one line naming what to install."""

    def check_options(self, options: Mapping[str, Any]) -> dict:
        """Validated options (unknown keys and bad values are ModelUnavailable with one line)."""

    def identity(self, model: str, options: Mapping[str, Any]) -> dict:
        """Which model with which resolved settings a load would give, computed without loading it."""

    def load(self, request: LoadRequest) -> Backend:
        """Load once; raises ModelUnavailable with a one-line reason."""
