"""One RunConfig for a batch, passed explicitly (CLI > MEDVLM_* environment > defaults)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .errors import UsageProblem
from .redact import redact_values
from .models.backends import DEFAULT_BACKEND
from .models.registry import DEFAULT_MODEL

EXECUTORS = ("local", "ray")  # registered in executors/base.py


@dataclass(frozen=True)
class RunConfig:
    studies: Path
    out: Path
    modality: str = "chest_xray"  # chest_xray, ct, mri or auto
    model: str = DEFAULT_MODEL
    backend: str = DEFAULT_BACKEND  # a name registered in medvlm/models/backends.py
    backend_options: dict[str, Any] = field(default_factory=dict)  # the backend's own (hf: device, dtype, quant)
    executor: str = "local"
    executor_options: dict[str, Any] = field(default_factory=dict)
    max_new_tokens: int = 256
    batch_size: int | str = "auto"  # studies per generate() call, or "auto" (resolved before the model runs)
    batch_size_choice: dict | None = None  # how `auto` was resolved: requested, resolved, reason
    max_images: int = 2
    ignore_eos: bool = False
    include_phi: bool = False
    force_modality: bool = False
    write_pdf: bool = True
    prompt_file: Path | None = None
    vocab_file: Path | None = None
    rules_file: Path | None = None
    follow_links: bool = False  # discovery follows symlinks that point outside the studies folder

    def as_dict(self) -> dict:
        """Plain JSON for run.json and the ledger; credentials inside URL-valued options are redacted."""
        doc = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}
        doc["backend_options"] = redact_values(doc["backend_options"])
        doc["executor_options"] = redact_values(doc["executor_options"])
        return doc

    def option(self, name: str, default: Any = "auto") -> Any:
        """One backend option (e.g. hf's device), or its default."""
        return self.backend_options.get(name, default)


MAX_BATCH_SIZE = 256


def batch_size_value(value: Any) -> int | str:
    """`auto` or an integer in 1..256 (from the command line or MEDVLM_BATCH_SIZE); anything else is a usage error."""
    text = str(value).strip().lower()
    if text == "auto":
        return "auto"
    try:
        size = int(text)
    except ValueError:
        raise UsageProblem(f"--batch-size must be auto or an integer from 1 to {MAX_BATCH_SIZE} (got {value!r})") from None
    if not 1 <= size <= MAX_BATCH_SIZE:
        raise UsageProblem(f"--batch-size must be auto or an integer from 1 to {MAX_BATCH_SIZE} (got {value!r})")
    return size


# MEDVLM_<NAME> variables: (RunConfig field or backend option, type).
_ENV_FIELDS = {"model": str, "max_new_tokens": int, "batch_size": batch_size_value}
_ENV_BACKEND_OPTIONS = {"device": str, "dtype": str, "quant": str}


def _env_value(name: str, cast):
    key = f"MEDVLM_{name.upper()}"
    value = os.environ.get(key)
    if not value:
        return None
    try:
        return cast(value)
    except UsageProblem as exc:
        raise UsageProblem(f"{key}: {exc}") from None
    except ValueError:
        raise UsageProblem(f"{key}={value!r} is not a valid {cast.__name__}") from None


def from_env(config: RunConfig, explicit: set[str]) -> RunConfig:
    """Fill options the user did not give on the command line from MEDVLM_<NAME> variables."""
    updates: dict[str, Any] = {}
    names = {f.name for f in fields(RunConfig)}
    for name, cast in _ENV_FIELDS.items():
        value = _env_value(name, cast)
        if value is not None and name in names and name not in explicit:
            updates[name] = value
    options = dict(config.backend_options)
    if config.backend == "hf":
        for name, cast in _ENV_BACKEND_OPTIONS.items():
            value = _env_value(name, cast)
            if value is not None and name not in explicit:
                options[name] = value
    if options != config.backend_options:
        updates["backend_options"] = options
    return replace(config, **updates) if updates else config
