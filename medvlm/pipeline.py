"""run_batch(): validate, open the audited run, hand the studies to an executor, write what comes back.

The driver (this module) is the single writer of the ledger, summary.csv, index.html and run.json;
the executor decides where decoding, the model and rendering run. One failed study is one row,
never an abort.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import __version__, ingest
from .audit.run import open_run
from .clock import utc_now
from .config import RunConfig, check_config
from .errors import UsageProblem
from .executors import BatchJob, Executor, get_executor
from .models import Backend, get_kind
from .models import resolve as resolve_model
from .outputs import SUMMARY_COLUMNS, RunWriter, write_run_record, write_summary  # noqa: F401 - re-exported
from .records import StudyError, StudyRef
from .report.build import SCHEMA_VERSION
from .report.index import write_index
from .resources import Resources
from .stages import error_row

log = logging.getLogger("medvlm.pipeline")


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


def run_components(config: RunConfig, identity: dict, resources: Resources) -> dict:
    """Everything except the inputs that decides a study's result (batch size and PDF output excluded).

    `identity` is the backend's: the model and its resolved settings (never `auto`), the same dict
    report provenance carries.
    """
    return {
        "medvlm_version": __version__,
        "schema_version": SCHEMA_VERSION,
        "model": identity,
        "max_new_tokens": config.max_new_tokens,
        "ignore_eos": config.ignore_eos,
        "max_images": config.max_images,
        "modality": config.modality,
        "force_modality": config.force_modality,
        "include_phi": config.include_phi,
        "resources": resources.hashes(config.modality),
    }


def backend_identity(config: RunConfig, backend: Backend | None, executor: Executor | None = None) -> dict:
    """The identity resume keys on: the injected backend's, else what the configured backend would load
    where the executor loads it (a Ray worker with a GPU resolves `auto` differently from a CPU-only driver)."""
    if backend is not None:
        return backend.identity
    kind = get_kind(config.backend)
    options = kind.check_options(config.backend_options)  # bad options fail here, before any executor starts
    remote = executor.identity(config) if executor is not None else None
    return remote if remote is not None else kind.identity(config.model, options)


def resolve_batch_size(config: RunConfig, backend: Backend | None, studies: int) -> RunConfig:
    """`--batch-size auto` -> an integer for this model, device and number of studies to do; explicit values win.

    The choice (requested, resolved, reason) goes into run.json and each report's generation settings.
    Batch size never enters the resume fingerprint (run_components), so `auto` choosing differently on
    another machine does not redo studies.
    """
    from dataclasses import replace

    if config.batch_size != "auto":
        if config.batch_size_choice and config.batch_size_choice.get("resolved") == config.batch_size:
            return config  # resolved earlier (medvlm bench sizes the batch before it loads the model)
        size, reason = config.batch_size, "explicit"
        if 0 < studies < size:  # never size memory (or wait) for more studies than there are to do
            size, reason = studies, f"explicit {config.batch_size}, capped at the {studies} studies to do"
        choice = {"requested": config.batch_size, "resolved": size, "reason": reason}
        return replace(config, batch_size=size, batch_size_choice=choice)
    if studies == 0:
        size, reason = 1, "auto: no studies to do"
    elif backend is not None:  # a model loaded by the caller: sized by its device alone
        from .models.memory import AUTO_BATCH_CEILING, choose_batch_size

        ceiling = AUTO_BATCH_CEILING["cuda" if str(backend.info.device).startswith("cuda") else "cpu"]
        size, reason = choose_batch_size(None, None, ceiling=ceiling, studies=studies)
        reason = f"auto for the loaded model on {backend.info.device}: {reason}"
    else:
        kind = get_kind(config.backend)
        chooser = getattr(kind, "auto_batch_size", None)  # optional for backend plugins
        if chooser is None:
            size, reason = 1, f"auto: the {config.backend} backend does not size batches"
        else:
            picked = chooser(config.model, config.backend_options, max_new_tokens=config.max_new_tokens,
                             images_per_study=config.max_images, studies=studies)
            size, reason = picked.size, picked.reason
    return replace(config, batch_size=size, batch_size_choice={"requested": "auto", "resolved": size, "reason": reason})


def run_batch(
    config: RunConfig,
    *,
    on_progress: Callable[[int, int, dict], None] | None = None,
    on_total: Callable[[int], None] | None = None,
    backend: Backend | None = None,
    on_discover: Callable[[int], None] | None = None,
) -> BatchResult:
    """Run every study under config.studies; a failure is a row in summary.csv, never an abort.

    on_discover(entries) hears every few seconds how many folder entries discovery has listed.
    """
    out = Path(config.out)
    check_config(config)  # folders, numbers and environment: one line before anything is written
    ingest.check_studies_folder(Path(config.studies), out)  # before anything is written
    if backend is None and config.backend == "hf":
        resolve_model(config.model)  # an absent model fails in one line before anything is written
    resources = Resources.for_config(config)
    if config.modality != "auto":
        resources.for_modality(config.modality)  # bad template/rules fail before any work
    executor = get_executor(config.executor, config.executor_options)
    identity = backend_identity(config, backend, executor)
    components = run_components(config, identity, resources)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # the checks above passed but the file system still refuses (e.g. /proc)
        raise UsageProblem(f"cannot create --out {out}: {exc.strerror or exc}") from None
    key = ingest.load_or_create_key(out)
    result = BatchResult(out)
    started_at = utc_now()
    job = BatchJob(config, resources, backend, stats=result.stats)
    with open_run(out, config, components) as audit:
        writer = RunWriter(out, audit, on_progress)
        refs, early = _discover(config, key, audit, result.stats, on_discover)
        config = job.config = resolve_batch_size(config, backend, len(refs))
        _warn_other_studies(config, audit, {r.key for r in refs} | {row["study_key"] for row in early})
        writer.total = len(refs) + len(early)
        if on_total:
            on_total(writer.total)
        for row in early:
            writer.add_resumed(row)
        model = executor.run(job, refs, writer)
        result.rows = writer.rows
        write_summary(out, writer.rows)
        write_index(out, writer.rows)
        counts = {s: result.count(s) for s in ("ok", "error", "skipped")}
        write_run_record(out, config, counts, model, started_at)  # under the lock, like every other write
    return result


def _warn_other_studies(config: RunConfig, audit, keys: set[str]) -> None:
    """One warning when --out already holds studies this batch does not have (another studies folder)."""
    others = sorted(set(audit.latest) - keys)
    if others:
        log.warning(
            "--out %s already holds %d stud%s that %s not in %s (an earlier batch of other studies); summary.csv and "
            "index.html list this batch only, `medvlm export` lists every study in the folder: use a new --out "
            "for a different studies set", config.out, len(others), "y" if len(others) == 1 else "ies",
            "is" if len(others) == 1 else "are", config.studies,
        )


def _discover(config: RunConfig, key: bytes, audit, stats: dict,
              on_discover: Callable[[int], None] | None = None) -> tuple[list[StudyRef], list[dict]]:
    """(studies to do, rows known now): discovery errors are recorded, earlier attempts reused (resume)."""
    refs: list[StudyRef] = []
    early: list[dict] = []
    t0 = time.perf_counter()
    for item in ingest.discover(Path(config.studies), key, config.modality, follow_links=config.follow_links,
                                on_scan=on_discover):
        if isinstance(item, StudyError):
            early.append(error_row(item))
            audit.record(early[-1], item.ref)
            continue
        previous = audit.completed_row(item)
        if previous is not None:
            early.append(previous)  # resumed: done before with the same inputs and configuration
        else:
            refs.append(item)
    stats["discover_s"] = time.perf_counter() - t0
    return refs, early
