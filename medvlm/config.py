"""One RunConfig for a batch, passed explicitly (CLI > MEDVLM_* environment > defaults)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from .models.registry import DEFAULT_MODEL


@dataclass(frozen=True)
class RunConfig:
    studies: Path
    out: Path
    modality: str = "chest_xray"  # chest_xray, ct, mri or auto
    model: str = DEFAULT_MODEL
    device: str = "auto"
    dtype: str = "auto"
    quant: str = "auto"
    max_new_tokens: int = 256
    batch_size: int = 1
    max_images: int = 2
    ignore_eos: bool = False
    include_phi: bool = False
    force_modality: bool = False
    write_pdf: bool = True
    prompt_file: Path | None = None
    vocab_file: Path | None = None
    rules_file: Path | None = None

    def as_dict(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


_ENV_TYPES = {"model": str, "device": str, "dtype": str, "quant": str, "max_new_tokens": int, "batch_size": int}


def from_env(config: RunConfig, explicit: set[str]) -> RunConfig:
    """Fill options the user did not give on the command line from MEDVLM_<NAME> variables."""
    updates = {}
    names = {f.name for f in fields(RunConfig)}
    for name, cast in _ENV_TYPES.items():
        value = os.environ.get(f"MEDVLM_{name.upper()}")
        if value and name in names and name not in explicit:
            updates[name] = cast(value)
    return replace(config, **updates) if updates else config
