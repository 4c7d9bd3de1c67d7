"""Where medvlm finds its data files (prompts, schemas, vocabularies, rules, templates) and its cache.

One resolution order for every kind of data file: an environment variable naming a folder
(MEDVLM_PROMPTS_DIR, MEDVLM_SCHEMAS_DIR, ...), then the copy shipped inside the installed package
(read through importlib.resources), then the source checkout. The top-level `prompts/` and
`schemas/` folders of the repository are the one source; a wheel build copies them into the package.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PROJECT_DIR = PACKAGE_DIR.parent

# Kinds kept at the repository's top level; a build puts them under medvlm/_data/<kind>.
TOP_LEVEL_KINDS = ("prompts", "schemas")
PACKAGED_DATA = "_data"


def _env_name(kind: str) -> str:
    return "MEDVLM_" + kind.replace("/", "_").upper() + "_DIR"


def data_dir(kind: str) -> Path:
    """The folder holding data files of `kind` ("prompts", "schemas", "findings/vocab", "risk/rules", ...)."""
    override = os.environ.get(_env_name(kind))
    if override:
        return Path(override)
    package = resources.files("medvlm")
    packaged = package / PACKAGED_DATA / kind if kind in TOP_LEVEL_KINDS else package.joinpath(*kind.split("/"))
    if packaged.is_dir():
        return Path(str(packaged))
    return PROJECT_DIR / kind


def named_data_file(kind: str, name: str, suffix: str = ".yaml") -> Path:
    """The data file for a name such as a modality (`chest_xray` -> .../findings/vocab/chest_xray.yaml)."""
    return data_dir(kind) / f"{name}{suffix}"


def prompts_dir() -> Path:
    return data_dir("prompts")


def schemas_dir() -> Path:
    return data_dir("schemas")


def cache_dir() -> Path:
    """User cache (demo model lives here); MEDVLM_CACHE_DIR overrides."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "medvlm"
    return Path(os.environ.get("MEDVLM_CACHE_DIR", default))


def resolve_data_path(name_or_path: str | Path, kind: str, names: tuple[str, ...]) -> Path:
    """A known name (e.g. a modality) maps to the data file of that name under `kind`; anything else is a path."""
    if isinstance(name_or_path, str) and name_or_path in names:
        return named_data_file(kind, name_or_path)
    return Path(name_or_path)


# A folder medvlm wrote a run into holds one of these (ledger.jsonl from the first record on,
# .medvlm/ from the moment the run folder is created): discovery never reads such a folder as studies.
RUN_MARKERS = ("ledger.jsonl", ".medvlm")


def is_run_folder(folder: Path) -> bool:
    """True for a medvlm output folder (recognised by its ledger or its .medvlm state folder)."""
    folder = Path(folder)
    return (folder / RUN_MARKERS[0]).is_file() or (folder / RUN_MARKERS[1]).is_dir()


def display_path(text: str) -> str:
    """A path as it may be written to JSON, CSV, HTML and the console: valid UTF-8 always.

    A file name whose bytes are not UTF-8 (a latin-1 zip) reaches Python with surrogate escapes;
    those bytes are shown as \\xNN escapes (stable: the same name always gives the same text).
    """
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that is no escaped byte
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
