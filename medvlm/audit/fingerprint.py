"""The attempt fingerprint: what must be equal for an earlier study result to be reused (no model load).

Pure functions over plain data: the caller hands in the run components (model identity with its
resolved settings, resource hashes, generation settings); nothing here knows about models or stages.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..fileio import sha256_file
from ..paths import display_path
from ..records import StudyRef
from .ledger import canonical


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def components_digest(components: dict) -> str:
    return _sha(canonical(components))


def input_hashes(ref: StudyRef, root: Path) -> dict[str, str]:
    """Relative file name (paths.display_path: valid UTF-8) -> SHA-256 for every file of the study
    (raises OSError if one is unreadable or not a regular file)."""
    out = {}
    for file in sorted(ref.files):
        name = os.path.relpath(file, root) if os.path.isabs(file) else str(file)
        out[display_path(Path(name).as_posix())] = sha256_file(Path(file) if os.path.isabs(file) else Path(root) / file)
    return out


def attempt_fingerprint(inputs: dict[str, str], run_digest: str) -> str:
    return _sha(canonical({"inputs": inputs, "run": run_digest}))


def changed_parts(old: dict | None, new: dict, prefix: str = "") -> list[str]:
    """Dotted names of the components that differ (for a one-line 'redone because ...' message)."""
    if old is None:
        return ["configuration (earlier run not recorded)"]
    names = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict) and key != "model":
            names.extend(changed_parts(a, b, f"{prefix}{key}."))
        else:
            names.append(f"{prefix}{key}")
    return names


def short_json(obj) -> str:
    return json.dumps(obj, sort_keys=True)[:200]
