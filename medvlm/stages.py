"""The per-study stages as plain functions: prepare (decode + prompt), assess (extract + grade) and
finish (report record and rendered files as bytes). Any executor runs them; none writes to disk.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

from . import findings as findings_mod
from . import ingest, risk
from .clock import utc_now
from .config import RunConfig
from .models.base import ModelInfo
from .prompts import PromptError, bound_study, render_prompt
from .records import Finding, ModelOutput, Prompt, RiskGrade, Study, StudyError, StudyRef, Timings
from .report.build import build_report
from .report.write import render_study_files, thumbnail_png
from .resources import ModalityResources, Resources


@dataclass
class StudyWork:
    """A study moving through the pipeline (mutable bookkeeping around immutable records)."""

    study: Study
    modality: str
    prompt: Prompt
    timings: Timings
    started_at: str


@dataclass
class StudyResult:
    """What one study produced, ready for the single writer: its summary row and its files as bytes.

    `files` are written by whoever holds the run folder (the driver, or a worker on shared storage
    that then fills `written` with name -> SHA-256 and empties `files`).
    """

    ref: StudyRef
    row: dict
    files: dict[str, bytes] = field(default_factory=dict)
    written: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.row.get("status") == "ok"


@dataclass(frozen=True)
class Assessment:
    """Findings and risk grade of one model answer."""

    findings: list[Finding]
    grade: RiskGrade
    answer_status: str = "complete"  # as graded: a complete answer with nothing gradeable in it is "empty"

    @property
    def present(self) -> list[str]:
        return sorted({f.code for f in self.findings if f.status == "present"})


def prepare(ref: StudyRef, config: RunConfig, resources: Resources) -> StudyWork | StudyError:
    """Decode the study, choose its modality and render its prompt."""
    timings = Timings()
    started_at = utc_now()
    t0 = time.perf_counter()
    loaded = ingest.load_study(
        ref,
        config.modality,
        max_images=config.max_images,
        force_modality=config.force_modality,
        include_phi=config.include_phi,
        root=config.studies,
    )
    timings.add("decode", time.perf_counter() - t0)
    if isinstance(loaded, StudyError):
        return loaded
    loaded = bound_study(loaded)  # an unbounded header or sidecar field must not size the prompt (noted when cut)
    modality = ingest.resolve_modality(loaded, config.modality)
    t0 = time.perf_counter()
    template = resources.for_modality(modality).template
    try:
        prompt = render_prompt(loaded, template)
    except PromptError as exc:
        return StudyError(ref, "prompt", str(exc))
    timings.add("prompt", time.perf_counter() - t0)
    return StudyWork(loaded, modality, prompt, timings, started_at)


def assess(text: str, answer_status: str, modality: str, res: ModalityResources, timings: Timings | None = None) -> Assessment:
    """Extract findings from a model answer and grade them (no disk, no model).

    An answer that ended normally but holds nothing to grade (only a reasoning block, a restated
    question or a disclaimer) is graded as `empty`, never as a normal study.
    """
    t0 = time.perf_counter()
    answer_status = findings_mod.answer_status(text, answer_status, res.vocab.cues or findings_mod.load_cues())
    found = findings_mod.extract(text, modality, res.vocab)
    t1 = time.perf_counter()
    grade = risk.grade(found, res.rules, answer_status)
    if timings is not None:
        timings.add("extract", t1 - t0)
        timings.add("grade", time.perf_counter() - t1)
    return Assessment(found, grade, answer_status)


def summary_row(key: str, source: str, modality: str, risk_level: str, present: list[str], answer_status: str) -> dict:
    """The summary.csv row of a study that has a report."""
    return {
        "study_key": key,
        "source": source,
        "modality": modality,
        "status": "ok",
        "risk_level": risk_level,
        "present_findings": ";".join(present),
        "answer_status": answer_status,
        "stage": "",
        "reason": "",
        "report": f"{key}/report.json",
    }


def error_row(err: StudyError) -> dict:
    """The summary.csv row of a study that failed or was skipped (one-line reason)."""
    return {
        "study_key": err.ref.key,
        "source": err.ref.source,
        "modality": "",
        "status": err.status,
        "risk_level": "",
        "present_findings": "",
        "answer_status": "",
        "stage": err.stage,
        "reason": " ".join(err.reason.split()),
        "report": "",
    }


def error_result(err: StudyError) -> StudyResult:
    return StudyResult(err.ref, error_row(err))


def generation_settings(config: RunConfig) -> dict:
    return {
        "max_new_tokens": config.max_new_tokens,
        "batch_size": config.batch_size,
        "batch_size_requested": (config.batch_size_choice or {}).get("requested", config.batch_size),
        "do_sample": False,
        "ignore_eos": config.ignore_eos,
    }


def study_images(study: Study, output: ModelOutput) -> dict[str, bytes]:
    """image-N.png per image: the bytes the backend sent when it sent files, else a thumbnail of the pixels."""
    if output.images and len(output.images) == len(study.images):
        return {f"image-{i + 1}.png": data for i, data in enumerate(output.images)}
    return {f"image-{i + 1}.png": thumbnail_png(img.image) for i, img in enumerate(study.images)}


def finish(work: StudyWork, output: ModelOutput, model: ModelInfo, config: RunConfig, resources: Resources) -> StudyResult:
    """Assess, build, validate and render one study; returns its row and files (nothing written)."""
    study, timings = work.study, work.timings
    res = resources.for_modality(work.modality)
    assessment = assess(output.text, output.answer_status, work.modality, res, timings)
    if assessment.answer_status != output.answer_status:
        output = replace(output, answer_status=assessment.answer_status)
    t0 = time.perf_counter()
    thumbs = study_images(study, output)
    doc = build_report(
        study=study,
        modality=work.modality,
        prompt=work.prompt,
        output=output,
        findings=assessment.findings,
        grade=assessment.grade,
        model=model,
        stage_seconds=timings.stages,
        started_at=work.started_at,
        generation=generation_settings(config),
        thumbnails=list(thumbs),
        include_phi=config.include_phi,
        **res.provenance(),
    )
    timings.add("report", time.perf_counter() - t0)
    t0 = time.perf_counter()
    files = {**thumbs, **render_study_files(doc, thumbs, pdf=config.write_pdf)}
    timings.add("render", time.perf_counter() - t0)
    row = summary_row(study.ref.key, study.ref.source, work.modality, assessment.grade.level, assessment.present,
                      output.answer_status)
    return StudyResult(study.ref, row, files, timings=dict(timings.stages))
