"""One RunConfig for a batch, passed explicitly (CLI > MEDVLM_* environment > defaults)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .errors import UsageProblem
from .records import MODALITIES as RECORD_MODALITIES
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


# Bounds shared by the command-line options and their MEDVLM_* variables.
LIMITS = {"max_new_tokens": (1, 8192), "batch_size": (1, MAX_BATCH_SIZE), "max_images": (1, 8)}
MODALITIES = (*RECORD_MODALITIES, "auto")

# MEDVLM_<NAME> variables: (RunConfig field or backend option, type).
_ENV_FIELDS = {"model": str, "max_new_tokens": int, "batch_size": batch_size_value}
_ENV_BACKEND_OPTIONS = {"device": str, "dtype": str, "quant": str}


def _env_value(name: str, cast):
    key = f"MEDVLM_{name.upper()}"
    value = os.environ.get(key)
    if not value:
        return None
    try:
        parsed = cast(value.strip())
    except UsageProblem as exc:
        raise UsageProblem(f"{key}={value!r}: {exc}") from None
    except ValueError:
        kind = "a whole number" if cast is int else f"a valid {cast.__name__}"
        raise UsageProblem(f"{key}={value!r} is not {kind}") from None
    low, high = LIMITS.get(name, (None, None))
    if low is not None and isinstance(parsed, int) and not low <= parsed <= high:
        raise UsageProblem(f"{key}={value!r} is out of range ({low} to {high})")
    return parsed


def from_env(config: RunConfig, explicit: set[str]) -> RunConfig:
    """Fill options the user did not give on the command line from MEDVLM_<NAME> variables (checked here)."""
    updates: dict[str, Any] = {}
    names = {f.name for f in fields(RunConfig)}
    for name, cast in _ENV_FIELDS.items():
        if name in explicit or name not in names:
            continue
        value = _env_value(name, cast)
        if value is not None:
            updates[name] = value
    options = dict(config.backend_options)
    if config.backend == "hf":
        for name, cast in _ENV_BACKEND_OPTIONS.items():
            if name in explicit:
                continue
            value = _env_value(name, cast)
            if value is not None:
                options[name] = value
    if options != config.backend_options:
        _check_env_options(config.backend, config.backend_options, options)
        updates["backend_options"] = options
    return replace(config, **updates) if updates else config


def _check_env_options(backend: str, typed: dict, options: dict) -> None:
    """A bad MEDVLM_DEVICE/DTYPE/QUANT is named as the variable, not as the option the user never typed.

    A problem in the options typed on the command line alone is theirs: check_config reports it as such.
    """
    from .models import get_kind

    check = get_kind(backend).check_options
    try:
        check(typed)
    except UsageProblem:
        return
    try:
        check(options)
    except UsageProblem as exc:
        names = [name for name in options if options[name] != typed.get(name)]
        named = ", ".join(f"MEDVLM_{name.upper()}={options[name]!r}" for name in names)
        raise UsageProblem(f"{named}: {exc}") from None


def foreign_out_problem(out: Path, studies: Path) -> str | None:
    """Why a batch must not write into `out`: it holds files of something other than a medvlm run.

    A run folder (resumed) and an empty or new folder are fine; hidden files are ignored.
    """
    from .paths import is_run_folder

    if not out.is_dir() or is_run_folder(out) or out.resolve() == studies.resolve():
        return None  # (--out equal to the studies folder has its own message, from discovery)
    try:
        with os.scandir(out) as entries:
            foreign = sorted(e.name for e in entries if not e.name.startswith("."))
    except OSError:
        return None  # writable_dir_problem / creating the folder say what is wrong
    if not foreign:
        return None
    return (f"--out {out} already holds files ({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}) "
            "and is not a medvlm run; give a new or empty folder, or the folder of the run to resume")


def check_config(config: RunConfig) -> None:
    """The checks every batch makes before its first write: one UsageProblem sentence, nothing created.

    Backend options are checked by the backend itself (check_options/identity), resources by
    Resources; this covers the folders, numbers and environment the run depends on.
    """
    from .fileio import writable_dir_problem
    from .paths import cache_dir

    if config.modality not in MODALITIES:
        raise UsageProblem(f"--modality must be one of {', '.join(MODALITIES)} (got {config.modality!r})")
    studies = Path(config.studies)
    if not studies.exists():
        raise UsageProblem(f"studies folder not found: {studies}")
    if not studies.is_dir():
        raise UsageProblem(f"{studies} is a file, not a folder of studies; give the folder that holds it")
    try:
        with os.scandir(studies) as entries:
            empty = next(entries, None) is None
    except OSError as exc:
        raise UsageProblem(f"cannot read the studies folder {studies}: {exc.strerror or exc}") from None
    if empty:
        raise UsageProblem(f"the studies folder is empty: {studies}")
    for name, (low, high) in LIMITS.items():
        value = getattr(config, name)
        if name == "batch_size" and value == "auto":
            continue
        if not isinstance(value, int) or not low <= value <= high:
            raise UsageProblem(f"--{name.replace('_', '-')} must be from {low} to {high} (got {value!r})")
    for option, path in (("--prompt", config.prompt_file), ("--vocab", config.vocab_file), ("--rules", config.rules_file)):
        if path is not None and not Path(path).is_file():
            raise UsageProblem(f"{option} file not found: {path}")
    problem = writable_dir_problem(Path(config.out), "--out") or foreign_out_problem(Path(config.out), studies)
    if problem:
        raise UsageProblem(problem)
    if os.environ.get("MEDVLM_CACHE_DIR"):
        problem = writable_dir_problem(cache_dir(), "MEDVLM_CACHE_DIR")
        if problem:
            raise UsageProblem(problem)
