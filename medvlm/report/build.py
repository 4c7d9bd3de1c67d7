"""Assemble the report record (a plain dict matching schemas/report.schema.json)."""

from __future__ import annotations

import platform
import socket
import subprocess
from functools import lru_cache

from .. import DISCLAIMER, __version__
from ..models.base import ModelInfo
from ..clock import utc_now  # noqa: F401 - re-exported for report writers
from ..finding_ids import assign_ids
from ..paths import PROJECT_DIR
from ..records import Finding, ModelOutput, Prompt, RiskGrade, Study, to_jsonable

# 1.1: findings carry a stable `id`; provenance names the negation/uncertainty `cues` file.
SCHEMA_VERSION = "1.1"


@lru_cache(maxsize=1)
def software_versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "tokenizers", "pydicom", "pillow", "numpy", "jinja2", "weasyprint"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


@lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The checkout's commit when medvlm runs from a git working tree (editable install)."""
    if not (PROJECT_DIR / ".git").exists():
        return None
    try:
        res = subprocess.run(
            ["git", "-C", str(PROJECT_DIR), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() or None if res.returncode == 0 else None


def model_provenance(info: ModelInfo) -> dict:
    return {
        "model": {
            "name": info.name,
            "source": info.source,
            "local_dir": info.local_dir,
            "revision": info.revision,
            "random_weights": info.random_weights,
            "phantom": info.phantom,
            "weights_digest": info.weights_digest,
            "parameters": info.parameters,
            "architecture": info.details.get("architecture"),
            "attention": info.details.get("attention"),
            "mlp": info.details.get("mlp"),
            "kv_cache": info.details.get("kv_cache"),
            "backend": info.backend,
            "identity": info.identity or None,
        },
        "dtype": info.dtype,
        "quantization": info.quantization,
        "device": info.device,
    }


def findings_json(findings: list[Finding], study_key: str, model_text: str) -> list[dict]:
    """The report's findings list: each finding with its stable id (finding_ids.py)."""
    return [to_jsonable(f) for f in assign_ids(findings, study_key, model_text)]


def build_report(
    *,
    study: Study,
    modality: str,
    prompt: Prompt,
    output: ModelOutput,
    findings: list[Finding],
    grade: RiskGrade,
    model: ModelInfo,
    vocabulary: dict,
    cues: dict,
    rules: dict,
    stage_seconds: dict[str, float],
    started_at: str,
    generation: dict,
    thumbnails: list[str | None],
    include_phi: bool = False,
) -> dict:
    """The report dict; every field is derived from typed records, nothing read from disk."""
    context = to_jsonable(study.context)
    study_doc = {
        "key": study.ref.key,
        "source": study.ref.source,
        "modality": modality,
        "context": context,
        "notes": list(study.notes),
    }
    if include_phi and study.phi:
        study_doc["phi"] = dict(study.phi)
    images = []
    for img, thumb in zip(study.images, thumbnails):
        doc = to_jsonable(img)
        doc["original_shape"] = list(img.original_shape)
        doc["width"], doc["height"] = img.image.size
        doc["thumbnail"] = thumb
        images.append(doc)
    inputs = {}
    for img in study.images:
        inputs.setdefault(img.source, img.sha256)
    provenance = {
        **model_provenance(model),
        "prompt": {"id": prompt.template_id, "sha256": prompt.template_hash},
        "vocabulary": vocabulary,
        "cues": cues,
        "rules": rules,
        "medvlm_version": __version__,
        "git_commit": git_commit(),
        "versions": software_versions(),
        "host": socket.gethostname(),
        "started_at": started_at,
        "finished_at": utc_now(),
        "stage_seconds": {k: round(v, 6) for k, v in stage_seconds.items()},
        "generation": generation,
        "inputs": [{"file": f, "sha256": h} for f, h in inputs.items()],
    }
    if output.request:
        provenance["request"] = output.request
    return {
        "schema_version": SCHEMA_VERSION,
        "research_use_only": True,
        "disclaimer": DISCLAIMER,
        "demo_notice": model.notice,
        "study": study_doc,
        "images": images,
        "prompt": {
            "template_id": prompt.template_id,
            "template_hash": prompt.template_hash,
            "system": prompt.system,
            "text": prompt.text,
        },
        "model_output": {
            "text": output.text,
            "answer_status": output.answer_status,
            "prompt_tokens": output.prompt_tokens,
            "new_tokens": output.new_tokens,
            "error": output.error,
        },
        "findings": findings_json(findings, study.ref.key, output.text),
        "risk": to_jsonable(grade),
        "provenance": provenance,
    }
