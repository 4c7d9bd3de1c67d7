"""Run-level outputs on the driver: summary.csv, run.json, and the single writer every executor feeds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterable

from . import csvsafe
from .clock import utc_now
from .config import RunConfig
from .fileio import atomic_write_text
from .models.base import ModelInfo
from .report.write import write_study_files
from .errors import one_line
from .records import StudyError
from .stages import StudyResult, error_result

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


def write_summary(out: Path, rows: Iterable[dict]) -> None:
    """summary.csv, one row per study, by the spreadsheet-safe rule of csvsafe.py."""
    ordered = sorted(rows, key=lambda r: (r["source"], r["study_key"]))
    atomic_write_text(out / "summary.csv", csvsafe.to_text(SUMMARY_COLUMNS, ordered))


def write_run_record(out: Path, config: RunConfig, counts: dict[str, int], model: ModelInfo | None, started_at: str) -> None:
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
        "model": model_provenance(model) if model is not None else None,
        "started_at": started_at,
        "finished_at": utc_now(),
        "counts": counts,
    }
    validate_report(doc, "batch.schema.json")
    atomic_write_text(out / "run.json", json.dumps(doc, indent=2) + "\n")


class RunWriter:
    """The single writer of a run folder: study files, ledger records, rows and summary.csv.

    Executors hand it StudyResults on the driver's thread; a result whose files were already written
    (by a worker onto the run folder) carries their hashes in `written` instead of bytes in `files`.
    """

    def __init__(self, out: Path, audit, on_progress: Callable[[int, int, dict], None] | None = None):
        self.out = Path(out)
        self.audit = audit
        self.on_progress = on_progress
        self.rows: list[dict] = []
        self.total = 0
        self.done = 0

    def add_resumed(self, row: dict) -> None:
        """A row reused from an earlier attempt (already in the ledger)."""
        self._row(row)

    def emit(self, result: StudyResult) -> None:
        """Write the study's files (if any are still in memory), record the attempt, report progress."""
        written = dict(result.written)
        if result.files:
            try:
                written.update(write_study_files(self.out / result.ref.key, result.files))
            except OSError as exc:  # disk full, permissions: this study fails, the batch goes on
                result = error_result(StudyError(result.ref, "report", one_line(exc)))
            result.files = {}  # release the bytes (PDFs, images) as soon as they are on disk
        self.audit.record(result.row, result.ref, written if result.ok else None)
        self._row(result.row)

    def _row(self, row: dict) -> None:
        self.rows.append(row)
        self.done += 1
        if self.on_progress:
            self.on_progress(self.done, self.total, row)

    def flush(self) -> None:
        write_summary(self.out, self.rows)

    def count(self, status: str) -> int:
        return sum(1 for r in self.rows if r["status"] == status)
