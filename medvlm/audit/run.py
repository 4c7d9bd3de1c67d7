"""The audit side of a batch: resume decisions and one ledger record per study attempt.

Resume policy (documented in docs/export.md as well):
- A study is reused when its latest ledger attempt is `ok`, its attempt fingerprint (input file
  hashes + run components, see fingerprint.py) equals the current one, report.json still has the
  recorded SHA-256 and every other recorded file still exists with its recorded size.
- Anything else is redone: errors and skips, changed inputs, a changed model/prompt/vocabulary/rules
  or generation setting (one warning line per reason names what changed), edited or missing files.
- A report.json with no ledger record (killed after writing it, before the ledger append) is
  redone, never adopted: nothing proves which configuration wrote it, and redoing costs one study.

The run components (model identity with resolved settings, prompt/vocabulary/rules hashes, ...)
are computed by the caller: the audit layer only stores and compares them.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from ..clock import utc_now
from ..config import RunConfig
from ..fileio import sha256_file
from ..records import StudyRef
from .fingerprint import attempt_fingerprint, changed_parts, components_digest, input_hashes
from .session import STATE_DIR, LedgerSession, file_entries  # noqa: F401 - STATE_DIR re-exported

log = logging.getLogger("medvlm.audit")

# Files a study attempt writes besides report.json (their hashes go into the ledger record).
STUDY_FILES = ("report.html", "report.pdf")


class RunAudit(LedgerSession):
    """Opened once per batch by run_batch; every study attempt goes through it."""

    purpose = "batch"

    def __init__(self, out: Path, config: RunConfig, components: dict | None = None):
        super().__init__(out)
        self.config = config
        self.components = components or {}
        self.run_digest = components_digest(self.components)
        self._inputs: dict[str, dict | None] = {}  # study key -> input hashes (None: unreadable)
        self._counts: Counter = Counter()
        self._redo_reasons: Counter = Counter()

    def start_fields(self) -> dict:
        return {"config": self.config.as_dict(), "components": self.components, "run_digest": self.run_digest}

    def end_fields(self) -> dict:
        return {"counts": dict(self._counts), "redo_reasons": dict(self._redo_reasons)}

    # -- per study ---------------------------------------------------------------------------

    def _input_hashes(self, ref: StudyRef) -> dict | None:
        if ref.key not in self._inputs:
            try:
                self._inputs[ref.key] = input_hashes(ref, Path(self.config.studies))
            except OSError:
                self._inputs[ref.key] = None
        return self._inputs[ref.key]

    def fingerprint(self, ref: StudyRef) -> str | None:
        inputs = self._input_hashes(ref)
        return None if inputs is None else attempt_fingerprint(inputs, self.run_digest)

    def completed_row(self, ref: StudyRef) -> dict | None:
        """The summary row of an earlier attempt that can be reused as is (resume), else None."""
        previous = self.latest.get(ref.key)
        reason = self._reuse_problem(ref, previous)
        if reason is None:
            self._counts["resumed"] += 1
            return dict(previous["row"])
        if previous is not None and reason:
            self._redo_reasons[reason] += 1
            if self._redo_reasons[reason] == 1:
                log.warning("redoing studies done earlier because %s", reason)
        return None

    def _reuse_problem(self, ref: StudyRef, previous: dict | None) -> str | None:
        """None when the earlier attempt can be reused, else why not ('' for not done before)."""
        if previous is None:
            return ""  # never attempted (or report written but never recorded): do it
        if previous.get("status") != "ok":
            return ""
        current = self.fingerprint(ref)
        if current is None or previous.get("fingerprint") != current:
            if previous.get("inputs") != self._input_hashes(ref):
                return "their input files changed"
            old = self.run_components.get(previous.get("run_id"))
            parts = changed_parts(old, self.components)
            return f"{', '.join(parts) or 'the configuration'} changed"
        study_dir = self.out / ref.key
        report = previous.get("report") or {}
        path = self.out / report.get("path", "")
        if not report or not path.is_file() or sha256_file(path) != report.get("sha256"):
            return "their report.json was edited or removed"
        for name, meta in (previous.get("files") or {}).items():
            file = self.out / name
            if not file.is_file() or file.stat().st_size != meta.get("bytes"):
                return "some of their files were edited or removed"
        if self.config.write_pdf and not (study_dir / "report.pdf").is_file():
            return "a PDF is now requested"
        return None

    def record(self, row: dict, ref: StudyRef, written: dict[str, str] | None = None) -> None:
        """Append one study attempt (ok, error or skipped) to the ledger.

        `written` maps file names in the study folder to the SHA-256 the writer computed; files
        not listed are hashed from disk (they were written moments ago by this process).
        """
        report, files = None, {}
        if row.get("status") == "ok":
            study_dir = self.out / ref.key
            if written:
                digests = dict(written)
            else:
                names = {p.name for p in study_dir.glob("image-*.png")} | {"report.json"}
                names.update(n for n in STUDY_FILES if (study_dir / n).is_file())
                digests = {n: sha256_file(study_dir / n) for n in names if (study_dir / n).is_file()}
            if "report.json" not in digests and (study_dir / "report.json").is_file():
                digests["report.json"] = sha256_file(study_dir / "report.json")
            report, files = file_entries(self.out, ref.key, digests)
        inputs = self._input_hashes(ref)
        self.append({
            "kind": "attempt",
            "run_id": self.run_id,
            "time": utc_now(),
            "study_key": ref.key,
            "status": row.get("status"),
            "stage": row.get("stage") or None,
            "reason": row.get("reason") or None,
            "inputs": inputs,
            "fingerprint": None if inputs is None else attempt_fingerprint(inputs, self.run_digest),
            "report": report,
            "files": files,
            "row": row,
        })
        self._counts[str(row.get("status"))] += 1


def open_run(out: Path, config: RunConfig, components: dict | None = None) -> RunAudit:
    return RunAudit(out, config, components)
