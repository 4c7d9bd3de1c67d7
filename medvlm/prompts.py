"""Prompt templates: YAML files in prompts/ rendered with a study's context."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import yaml
from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import SandboxedEnvironment

from .errors import first_line
from .paths import named_data_file
from .records import MODALITIES, Prompt, Study, StudyContext


# The most characters each text field of a study's context may bring into a prompt (and a report).
# Headers and sidecars are not trusted: a 1 MB indication made a 400k-token prompt that tried to
# allocate 360 GB. Longer values are cut at the limit, end with "…", and the report's notes say so.
CONTEXT_LIMITS: dict[str, int] = {
    "indication": 1000,
    "study_description": 200,
    "body_part": 64,
    "view": 16,
    "sex": 8,
    "dicom_modality": 16,
}


def bound_context(ctx: StudyContext) -> tuple[StudyContext, list[str]]:
    """The context with every text field cut to CONTEXT_LIMITS, and one note per field that was cut."""
    changes: dict[str, str] = {}
    notes: list[str] = []
    for name, limit in CONTEXT_LIMITS.items():
        value = getattr(ctx, name)
        if isinstance(value, str) and len(value) > limit:
            changes[name] = value[: limit - 1] + "…"
            notes.append(f"{name} cut to {limit:,} of {len(value):,} characters for the prompt")
    return (replace(ctx, **changes) if changes else ctx), notes


def bound_study(study: Study) -> Study:
    """The study with its context bounded (bound_context), the cuts added to its notes."""
    ctx, notes = bound_context(study.context)
    if not notes:
        return study
    return replace(study, context=ctx, notes=tuple(study.notes) + tuple(notes))


class PromptError(ValueError):
    """A prompt template that cannot be loaded or rendered (one line, names the file)."""


@dataclass(frozen=True)
class PromptTemplate:
    id: str
    modality: str
    path: Path
    hash: str
    system: str
    user: str


def template_path(modality_or_path: str | Path) -> Path:
    candidate = Path(modality_or_path)
    if candidate.suffix in (".yaml", ".yml") or candidate.is_file():
        return candidate
    if str(modality_or_path) not in MODALITIES:
        raise PromptError(f"unknown modality {modality_or_path!r}; expected one of {', '.join(MODALITIES)}")
    return named_data_file("prompts", str(modality_or_path))


@lru_cache(maxsize=32)
def _load(path: Path, mtime_ns: int) -> PromptTemplate:
    raw = path.read_bytes()
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise PromptError(f"{path}: not valid YAML ({first_line(exc)})") from None
    if not isinstance(data, dict):
        raise PromptError(f"{path}: expected a mapping with id, modality, system, user")
    missing = [k for k in ("id", "modality", "system", "user") if not isinstance(data.get(k), str)]
    if missing:
        raise PromptError(f"{path}: missing or non-text key(s): {', '.join(missing)}")
    try:
        _env().parse(data["user"])
    except TemplateError as exc:
        raise PromptError(f"{path}: template error in 'user': {exc}") from None
    return PromptTemplate(
        id=data["id"],
        modality=data["modality"],
        path=path,
        hash=hashlib.sha256(raw).hexdigest(),
        system=data["system"].strip(),
        user=data["user"],
    )


def load_template(modality_or_path: str | Path) -> PromptTemplate:
    """Load (and cache until the file changes) the template for a modality or a YAML path."""
    path = template_path(modality_or_path).resolve()
    if not path.is_file():
        raise PromptError(f"prompt template not found: {path}")
    return _load(path, path.stat().st_mtime_ns)


@lru_cache(maxsize=1)
def _env() -> SandboxedEnvironment:
    # Sandboxed and strict: a template is user-editable data, and a typo must fail loudly.
    return SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False)


def _tidy(text: str) -> str:
    lines = [re.sub(r"[ \t]+", " ", line).strip() for line in text.splitlines()]
    return "\n".join(line for line in lines if line)


def render_prompt(study: Study, template: PromptTemplate) -> Prompt:
    """Render the template's user text with the study's (identifier-free) context, bounded by CONTEXT_LIMITS."""
    ctx, _ = bound_context(study.context)
    variables = {
        "age_years": ctx.age_years,
        "sex": ctx.sex,
        "view": ctx.view,
        "indication": ctx.indication,
        "body_part": ctx.body_part,
        "study_description": ctx.study_description,
        "n_images": len(study.images),
    }
    try:
        text = _env().from_string(template.user).render(**variables)
    except TemplateError as exc:
        raise PromptError(f"{template.path}: cannot render: {exc}") from None
    return Prompt(
        modality=template.modality,
        template_id=template.id,
        template_hash=template.hash,
        system=template.system,
        text=_tidy(text),
    )
