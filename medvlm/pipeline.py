"""run_batch(): the stages in order, one error record per failed study, the batch always goes on."""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from . import findings as findings_mod
from . import ingest, risk
from .audit.run import open_run
from .config import RunConfig
from .fileio import atomic_write_bytes, atomic_write_text
from .models import Backend, load_backend
from .models import resolve as resolve_model
from .prompts import PromptError, PromptTemplate, load_template, render_prompt
from .records import ModelOutput, Prompt, Study, StudyError, StudyRef, Timings
from .report.build import build_report, utc_now
from .report.index import write_index
from .report.write import thumbnail_png, write_rendered, write_report_json

SUMMARY_COLUMNS = [
    "study_key",
    "source",
    "modality",
    "status",
    "risk_level",
    "present_findings",
    "answer_status",
    "stage",
    "reason",
    "report",
]


class UsageProblem(ValueError):
    """A whole-run configuration problem (bad template, rules, vocabulary): exit code 2."""


@dataclass
class BatchResult:
    out: Path
    rows: list[dict] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(1 for r in self.rows if r["status"] == status)

    @property
    def failed(self) -> int:
        return self.count("error")


@dataclass
class StudyWork:
    """A study moving through the pipeline (mutable bookkeeping around immutable records)."""

    study: Study
    modality: str
    prompt: Prompt
    timings: Timings
    started_at: str


class Resources:
    """Per-modality templates, vocabularies and rules, loaded once and validated up front."""

    def __init__(self, config: RunConfig):
        self.config = config
        self._cache: dict[str, tuple] = {}

    def for_modality(self, modality: str) -> tuple[PromptTemplate, object, object]:
        if modality not in self._cache:
            cfg = self.config
            try:
                template = load_template(cfg.prompt_file or modality)
                vocab = findings_mod.load_vocabulary(cfg.vocab_file or modality)
                rules = risk.load_rules(cfg.rules_file or modality, vocab)
            except (PromptError, ValueError, OSError) as exc:
                raise UsageProblem(str(exc).splitlines()[0]) from None
            self._cache[modality] = (template, vocab, rules)
        return self._cache[modality]


def _error_row(err: StudyError) -> dict:
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


def write_summary(out: Path, rows: Iterable[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=SUMMARY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in sorted(rows, key=lambda r: (r["source"], r["study_key"])):
        writer.writerow(row)
    atomic_write_text(out / "summary.csv", buf.getvalue())


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


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
    modality = ingest.resolve_modality(loaded, config.modality)
    t0 = time.perf_counter()
    template, _, _ = resources.for_modality(modality)
    try:
        prompt = render_prompt(loaded, template)
    except PromptError as exc:
        return StudyError(ref, "prompt", str(exc))
    timings.add("prompt", time.perf_counter() - t0)
    return StudyWork(loaded, modality, prompt, timings, started_at)


def finish(
    work: StudyWork, output: ModelOutput, backend: Backend, config: RunConfig, resources: Resources
) -> dict:
    """Extract, grade, build, validate and write one study; returns its summary row."""
    study, timings = work.study, work.timings
    _, vocab, rules = resources.for_modality(work.modality)
    t0 = time.perf_counter()
    found = findings_mod.extract(output.text, work.modality, vocab)
    timings.add("extract", time.perf_counter() - t0)
    t0 = time.perf_counter()
    grade = risk.grade(found, rules, output.answer_status)
    timings.add("grade", time.perf_counter() - t0)

    t0 = time.perf_counter()
    study_dir = config.out / study.ref.key
    thumbs = {f"image-{i + 1}.png": thumbnail_png(img.image) for i, img in enumerate(study.images)}
    doc = build_report(
        study=study,
        modality=work.modality,
        prompt=work.prompt,
        output=output,
        findings=found,
        grade=grade,
        model=backend.info,
        vocabulary={"id": vocab.id, "sha256": vocab.hash, "path": str(vocab.path)},
        rules={"id": rules.id, "sha256": rules.hash, "path": str(rules.path)},
        stage_seconds=timings.stages,
        started_at=work.started_at,
        generation={
            "max_new_tokens": config.max_new_tokens,
            "batch_size": config.batch_size,
            "do_sample": False,
            "ignore_eos": config.ignore_eos,
        },
        thumbnails=list(thumbs),
        include_phi=config.include_phi,
    )
    for name, png in thumbs.items():
        atomic_write_bytes(study_dir / name, png)
    write_report_json(study_dir, doc)
    timings.add("report", time.perf_counter() - t0)
    t0 = time.perf_counter()
    write_rendered(study_dir, doc, thumbs, pdf=config.write_pdf)
    timings.add("render", time.perf_counter() - t0)
    present = sorted({f.code for f in found if f.status == "present"})
    return {
        "study_key": study.ref.key,
        "source": study.ref.source,
        "modality": work.modality,
        "status": "ok",
        "risk_level": grade.level,
        "present_findings": ";".join(present),
        "answer_status": output.answer_status,
        "stage": "",
        "reason": "",
        "report": f"{study.ref.key}/report.json",
    }


def write_run_record(out: Path, config: RunConfig, result: BatchResult, backend: Backend | None, started_at: str) -> None:
    """run.json: what this invocation was asked to do and how it went (validated like reports)."""
    from . import DISCLAIMER, __version__
    from .report.build import model_provenance
    from .report.validate import validate_report

    doc = {
        "schema_version": "1.0",
        "research_use_only": True,
        "disclaimer": DISCLAIMER,
        "medvlm_version": __version__,
        "config": config.as_dict(),
        "model": model_provenance(backend.info) if backend is not None else None,
        "started_at": started_at,
        "finished_at": utc_now(),
        "counts": {s: result.count(s) for s in ("ok", "error", "skipped")},
    }
    validate_report(doc, "batch.schema.json")
    atomic_write_text(out / "run.json", json.dumps(doc, indent=2) + "\n")


def _chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def run_batch(
    config: RunConfig,
    *,
    on_progress: Callable[[int, int, dict], None] | None = None,
    on_total: Callable[[int], None] | None = None,
    backend: Backend | None = None,
) -> BatchResult:
    """Run every study under config.studies; a failure is a row in summary.csv, never an abort."""
    out = Path(config.out)
    if backend is None:
        resolve_model(config.model)  # an absent model fails in one line before anything is written
    resources = Resources(config)
    if config.modality != "auto":
        resources.for_modality(config.modality)  # bad template/rules fail before any work
    out.mkdir(parents=True, exist_ok=True)
    key = ingest.load_or_create_key(out)
    result = BatchResult(out)
    started_at = utc_now()
    with open_run(out, config) as audit:
        backend = _run(config, resources, key, audit, result, on_progress, on_total, backend)
    write_run_record(out, config, result, backend, started_at)
    return result


def _run(config, resources, key, audit, result, on_progress, on_total, backend) -> Backend | None:
    out = Path(config.out)
    refs: list[StudyRef] = []
    early: list[dict] = []
    for item in ingest.discover(Path(config.studies), key, config.modality):
        if isinstance(item, StudyError):
            early.append(_error_row(item))
            audit.record(early[-1], item.ref)
            continue
        previous = audit.completed_row(item)
        if previous is not None:
            early.append(previous)  # resumed: done before with the same inputs and configuration
        else:
            refs.append(item)
    total = len(refs) + len(early)
    if on_total:
        on_total(total)
    done = 0

    def record(row: dict, ref: StudyRef | None = None) -> None:
        nonlocal done
        result.rows.append(row)
        done += 1
        if ref is not None:
            audit.record(row, ref)
        if on_progress:
            on_progress(done, total, row)

    for row in early:
        record(row)

    for chunk in _chunks(refs, max(1, config.batch_size)):
        ready: list[StudyWork] = []
        for ref in chunk:
            prepared = prepare(ref, config, resources)
            if isinstance(prepared, StudyError):
                record(_error_row(prepared), ref)
            else:
                ready.append(prepared)
        if not ready:
            write_summary(out, result.rows)
            continue
        if backend is None:
            backend = load_backend(config.model, device=config.device, dtype=config.dtype, quant=config.quant)
        t0 = time.perf_counter()
        try:
            outputs = backend.generate(
                [(w.study, w.prompt) for w in ready],
                max_new_tokens=config.max_new_tokens,
                ignore_eos=config.ignore_eos,
            )
        except Exception as exc:  # noqa: BLE001 - a model failure is recorded per study
            reason = _one_line(exc)
            for w in ready:
                record(_error_row(StudyError(w.study.ref, "model", reason)), w.study.ref)
            write_summary(out, result.rows)
            continue
        per_study = (time.perf_counter() - t0) / len(ready)
        for w, output in zip(ready, outputs):
            w.timings.add("model", per_study)
            try:
                row = finish(w, output, backend, config, resources)
            except Exception as exc:  # noqa: BLE001 - one study's report failure must not stop the batch
                row = _error_row(StudyError(w.study.ref, "report", _one_line(exc)))
            record(row, w.study.ref)
        write_summary(out, result.rows)
    write_summary(out, result.rows)
    write_index(out, result.rows)
    return backend
