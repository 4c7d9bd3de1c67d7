"""run_batch(): the stages in order, one error record per failed study, the batch always goes on."""

from __future__ import annotations

import csv
import io
import json
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from . import findings as findings_mod
from . import ingest, risk
from .audit.run import open_run
from .config import RunConfig
from .errors import UsageProblem, first_line, one_line
from .fileio import atomic_write_bytes, atomic_write_text
from .models import Backend, load_backend
from .models import resolve as resolve_model
from .prompts import PromptError, PromptTemplate, load_template, render_prompt
from .records import ModelOutput, Prompt, Study, StudyError, StudyRef, Timings
from .clock import utc_now
from .report.build import build_report
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


@dataclass
class BatchResult:
    out: Path
    rows: list[dict] = field(default_factory=list)
    stats: dict = field(default_factory=dict)  # scheduling figures: stage seconds, waits, tokens (for bench)

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
    written: dict[str, str] = field(default_factory=dict)  # file name -> sha256, for the audit ledger


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
                raise UsageProblem(first_line(exc)) from None
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
        work.written[name] = atomic_write_bytes(study_dir / name, png)
    work.written["report.json"] = write_report_json(study_dir, doc)
    timings.add("report", time.perf_counter() - t0)
    t0 = time.perf_counter()
    work.written.update(write_rendered(study_dir, doc, thumbs, pdf=config.write_pdf))
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


def _stage(chunk: list[StudyRef], config: RunConfig, resources: Resources, holder: dict):
    """Prefetch worker: decode + prompt every study of a batch, load the model on first need, run the processor.

    Returns (errors, ready, prepared) where prepared is the backend's preprocessed batch, None when the
    backend has no preprocess step, or the exception the processor raised (recorded per study later).
    """
    errors: list[tuple[StudyRef, StudyError]] = []
    ready: list[StudyWork] = []
    for ref in chunk:
        prepared = prepare(ref, config, resources)
        if isinstance(prepared, StudyError):
            errors.append((ref, prepared))
        else:
            ready.append(prepared)
    if not ready:
        return errors, ready, None
    if holder["backend"] is None:
        t0 = time.perf_counter()
        holder["backend"] = load_backend(
            config.model, device=config.device, dtype=config.dtype, quant=config.quant,
            batch_size=config.batch_size, max_new_tokens=config.max_new_tokens, images_per_study=config.max_images,
        )
        holder["load_s"] = time.perf_counter() - t0  # read by the main thread, which is waiting for this batch
    backend = holder["backend"]
    if not hasattr(backend, "preprocess") or not hasattr(backend, "generate_prepared"):
        return errors, ready, None
    t0 = time.perf_counter()
    try:
        batch = backend.preprocess([(w.study, w.prompt) for w in ready])
    except Exception as exc:  # noqa: BLE001 - becomes a model error row for each study of the batch
        return errors, ready, exc
    share = (time.perf_counter() - t0) / len(ready)
    for w in ready:
        w.timings.add("preprocess", share)
    return errors, ready, batch


def _note_model_time(stats: dict, ready: list[StudyWork], prepared, outputs: list[ModelOutput], seconds: float) -> None:
    """Split one generate call's time over its studies (prefill / decode tokens when the backend measured them)."""
    n = len(ready)
    prefill = getattr(prepared, "prefill_s", None)
    decode = getattr(prepared, "decode_s", None)
    for w in ready:
        w.timings.add("model", seconds / n)
        if prefill is not None and decode is not None:
            w.timings.add("prefill", prefill / n)
            w.timings.add("decode_tokens", decode / n)
    for key, value in (
        ("model_s", seconds),
        ("prefill_s", prefill if prefill is not None else 0.0),
        ("decode_tokens_s", decode if decode is not None else seconds),
        ("preprocess_s", getattr(prepared, "preprocess_s", 0.0)),
        ("new_tokens", sum(o.new_tokens for o in outputs)),
        ("generated_tokens", getattr(prepared, "generated_tokens", 0) or sum(o.new_tokens for o in outputs)),
        ("batches", 1),
    ):
        stats[key] = stats.get(key, 0) + value


def _finish_safely(work: StudyWork, output: ModelOutput, backend: Backend, config: RunConfig, resources: Resources) -> dict:
    """finish() for the render worker: a report failure becomes that study's error row."""
    try:
        return finish(work, output, backend, config, resources)
    except Exception as exc:  # noqa: BLE001 - one study's report failure must not stop the batch
        return _error_row(StudyError(work.study.ref, "report", one_line(exc)))


def _chunks(items: list, size: int) -> Iterator[list]:
    """Batches of `size`, except that the last full batch is split so the final one holds about a quarter.

    Reports of the final batch are written after the model has stopped, so they are the one part of
    rendering that cannot overlap generation; a small final batch keeps that tail short.
    """
    sizes = [size] * (len(items) // size) + ([len(items) % size] if len(items) % size else [])
    if size >= 4 and sizes and sizes[-1] > size // 4:
        last = sizes.pop()
        sizes += [last - size // 4, size // 4]
    start = 0
    for n in sizes:
        yield items[start : start + n]
        start += n


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
        write_run_record(out, config, result, backend, started_at)  # under the lock, like every other write
    return result


def _run(config, resources, key, audit, result, on_progress, on_total, backend) -> Backend | None:
    out = Path(config.out)
    refs: list[StudyRef] = []
    early: list[dict] = []
    t_discover = time.perf_counter()
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
    discover_s = time.perf_counter() - t_discover
    total = len(refs) + len(early)
    if on_total:
        on_total(total)
    done = 0

    def record(row: dict, ref: StudyRef | None = None, written: dict[str, str] | None = None) -> None:
        nonlocal done
        result.rows.append(row)
        done += 1
        if ref is not None:
            audit.record(row, ref, written)
        if on_progress:
            on_progress(done, total, row)

    for row in early:
        record(row)

    # Two helper threads keep the model busy: one decodes and preprocesses batch i+1 while batch i
    # generates, one writes reports (the PDF is slow) behind it. Rows are recorded on this thread, in
    # the order studies finish; everything is drained before returning.
    holder = {"backend": backend}
    stats = result.stats
    stats["discover_s"] = discover_s
    chunks = _chunks(refs, max(1, config.batch_size))
    with ThreadPoolExecutor(1, thread_name_prefix="medvlm-prefetch") as prefetch, ThreadPoolExecutor(
        1, thread_name_prefix="medvlm-render"
    ) as render:
        pending: deque = deque()  # (StudyWork, Future[row]) in submission (= completion) order

        def drain(block: bool, keep: int = 0) -> None:
            """Record finished reports; with block, wait until at most `keep` are still pending."""
            while pending and (pending[0][1].done() or (block and len(pending) > keep)):
                w, fut = pending.popleft()
                t_wait = time.perf_counter()
                row = fut.result()  # _finish_safely never raises
                stats["render_wait_s"] = stats.get("render_wait_s", 0.0) + time.perf_counter() - t_wait
                for stage in ("decode", "prompt", "extract", "grade", "report", "render"):
                    stats[f"{stage}_s"] = stats.get(f"{stage}_s", 0.0) + w.timings.stages.get(stage, 0.0)
                record(row, w.study.ref, w.written if row["status"] == "ok" else None)

        next_chunk = next(chunks, None)
        future = prefetch.submit(_stage, next_chunk, config, resources, holder) if next_chunk else None
        while future is not None:
            t_wait = time.perf_counter()
            errors, ready, prepared = future.result()  # ModelUnavailable from a lazy load propagates
            stats["prefetch_wait_s"] = stats.get("prefetch_wait_s", 0.0) + time.perf_counter() - t_wait
            stats["load_s"] = holder.get("load_s", 0.0)
            next_chunk = next(chunks, None)
            future = prefetch.submit(_stage, next_chunk, config, resources, holder) if next_chunk else None
            for ref, err in errors:
                record(_error_row(err), ref)
            backend = holder["backend"]
            if not ready:
                drain(False)
                write_summary(out, result.rows)
                continue
            t0 = time.perf_counter()
            try:
                if isinstance(prepared, BaseException):
                    raise prepared
                if prepared is not None:
                    outputs = backend.generate_prepared(
                        prepared, max_new_tokens=config.max_new_tokens, ignore_eos=config.ignore_eos
                    )
                else:
                    outputs = backend.generate(
                        [(w.study, w.prompt) for w in ready],
                        max_new_tokens=config.max_new_tokens,
                        ignore_eos=config.ignore_eos,
                    )
            except Exception as exc:  # noqa: BLE001 - a model failure is recorded per study
                drain(True)
                reason = one_line(exc)
                for w in ready:
                    record(_error_row(StudyError(w.study.ref, "model", reason)), w.study.ref)
                write_summary(out, result.rows)
                continue
            _note_model_time(stats, ready, prepared, outputs, time.perf_counter() - t0)
            for w, output in zip(ready, outputs):
                pending.append((w, render.submit(_finish_safely, w, output, backend, config, resources)))
            del ready, prepared, outputs  # images and pixel tensors live only as long as their reports
            # Backpressure: if reports fall behind the model, wait rather than hold more images in memory.
            drain(True, keep=2 * max(1, config.batch_size))
            write_summary(out, result.rows)
        drain(True)
    backend = holder["backend"]
    write_summary(out, result.rows)
    write_index(out, result.rows)
    return backend
