"""The attempt fingerprint: what must be equal for an earlier study result to be reused (no model load)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .. import __version__
from ..config import RunConfig
from ..errors import first_line
from ..fileio import sha256_file
from ..records import MODALITIES, StudyRef
from .ledger import canonical
from .weights import weights_digest


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def model_identity(name: str) -> dict:
    """Which weights `--model name` would load: source, revision, config and weights digests."""
    from ..models.base import ModelUnavailable
    from ..models.registry import resolve

    try:
        resolved = resolve(name)
    except ModelUnavailable as exc:
        # The batch will fail to load it anyway; an identity that matches nothing forces a redo.
        return {"name": name, "unavailable": first_line(exc)}
    if resolved.random:
        from ..models.demo import BENCH_SPEC, DEMO_SPEC

        spec = DEMO_SPEC if resolved.random == "demo" else BENCH_SPEC
        # Built deterministically from its spec (fixed seed), so the spec digest names the weights.
        return {"name": resolved.name, "source": resolved.source, "random_spec": f"{spec.name}-{spec.digest()}"}
    local = Path(resolved.local_dir)
    config = local / "config.json"
    return {
        "name": resolved.name,
        "source": resolved.source,
        "revision": resolved.revision,
        "config_sha256": _sha(config.read_bytes()) if config.is_file() else None,
        "weights_digest": weights_digest(local),
    }


def _resource_hashes(config: RunConfig) -> dict:
    """Prompt, vocabulary and rules hashes for every modality this run may use."""
    from ..findings import load_vocabulary
    from ..prompts import load_template
    from ..risk import load_rules

    modalities = MODALITIES if config.modality == "auto" else (config.modality,)
    out = {}
    for modality in modalities:
        try:
            template = load_template(config.prompt_file or modality)
            vocab = load_vocabulary(config.vocab_file or modality)
            rules = load_rules(config.rules_file or modality, vocab)
            out[modality] = {
                "prompt": {"id": template.id, "sha256": template.hash},
                "vocabulary": vocab.hash,
                "rules": rules.hash,
            }
        except Exception as exc:  # noqa: BLE001 - a broken file fails the batch later with a clear message
            out[modality] = {"unavailable": f"{type(exc).__name__}"}
    return out


def run_components(config: RunConfig) -> dict:
    """Everything except the inputs that decides a study's result; batch_size and PDF output excluded."""
    from ..report.build import SCHEMA_VERSION

    return {
        "medvlm_version": __version__,
        "schema_version": SCHEMA_VERSION,
        "model": model_identity(config.model),
        "device": config.device,
        "dtype": config.dtype,
        "quant": config.quant,
        "max_new_tokens": config.max_new_tokens,
        "ignore_eos": config.ignore_eos,
        "max_images": config.max_images,
        "modality": config.modality,
        "force_modality": config.force_modality,
        "include_phi": config.include_phi,
        "resources": _resource_hashes(config),
    }


def components_digest(components: dict) -> str:
    return _sha(canonical(components))


def input_hashes(ref: StudyRef, root: Path) -> dict[str, str]:
    """Relative file name -> SHA-256 for every file of the study (raises OSError if one is unreadable)."""
    out = {}
    for file in sorted(ref.files):
        name = os.path.relpath(file, root) if os.path.isabs(file) else str(file)
        out[Path(name).as_posix()] = sha256_file(Path(file) if os.path.isabs(file) else Path(root) / file)
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
