"""The audit side of a batch: the output-folder lock, resume decisions and the run ledger.

Resume policy (documented in docs/export.md as well):
- A study is reused when its latest ledger attempt is `ok`, its attempt fingerprint (input file
  hashes + run components, see fingerprint.py) equals the current one, report.json still has the
  recorded SHA-256 and every other recorded file still exists with its recorded size.
- Anything else is redone: errors and skips, changed inputs, a changed model/prompt/vocabulary/rules
  or generation setting (one warning line per reason names what changed), edited or missing files.
- A report.json with no ledger record (killed after writing it, before the ledger append) is
  redone, never adopted: nothing proves which configuration wrote it, and redoing costs one study.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import uuid
from collections import Counter
from pathlib import Path

from filelock import FileLock, Timeout

from .. import __version__
from ..config import RunConfig
from ..clock import utc_now
from ..errors import RunBusy, one_line
from ..fileio import atomic_write_text, sha256_file
from ..records import StudyRef
from .fingerprint import attempt_fingerprint, changed_parts, components_digest, input_hashes, run_components
from .ledger import LEDGER_NAME, LedgerWriter, latest_attempts, read_ledger

log = logging.getLogger("medvlm.audit")

STATE_DIR = ".medvlm"
LOCK_NAME = "batch.lock"
OWNER_NAME = "batch.owner.json"
# Files a study attempt writes besides report.json (their hashes go into the ledger record).
STUDY_FILES = ("report.html", "report.pdf")


class RunAudit:
    """Opened once per batch by run_batch; every study attempt goes through it."""

    def __init__(self, out: Path, config: RunConfig):
        self.out = Path(out)
        self.config = config
        self.run_id = uuid.uuid4().hex
        self._lock = FileLock(str(self.out / STATE_DIR / LOCK_NAME), timeout=0)
        self._writer: LedgerWriter | None = None
        self._latest: dict[str, dict] = {}
        self._run_components: dict[str, dict] = {}  # run_id -> components, from run_start records
        self._inputs: dict[str, dict | None] = {}  # study key -> input hashes (None: unreadable)
        self._counts: Counter = Counter()
        self._redo_reasons: Counter = Counter()
        self._append_lock = threading.Lock()  # records may come from helper threads

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> "RunAudit":
        (self.out / STATE_DIR).mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire()
        except Timeout:
            raise RunBusy(f"another medvlm batch is writing to {self.out} ({self._owner()}); "
                               "wait for it to finish or use another --out") from None
        try:
            self._open()
        except BaseException:
            self._lock.release()
            raise
        return self

    def _owner(self) -> str:
        try:
            info = json.loads((self.out / STATE_DIR / OWNER_NAME).read_text())
            return f"pid {info['pid']} on {info['host']} since {info['started_at']}"
        except (OSError, ValueError, KeyError):
            return "lock held"

    def _open(self) -> None:
        atomic_write_text(
            self.out / STATE_DIR / OWNER_NAME,
            json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started_at": utc_now(), "run_id": self.run_id}),
        )
        state = read_ledger(self.out / LEDGER_NAME)
        bad = [p for p in state.problems if p.kind != "torn_tail"]
        if bad:
            # Appending to a broken chain would bury the evidence; the user decides what to do.
            first = bad[0]
            raise RunBusy(
                f"{self.out / LEDGER_NAME} line {first.line}: {first.message}; run `medvlm verify {self.out}` "
                "and move the folder aside before writing to it again"
            )
        self._writer = LedgerWriter(state, torn_dir=self.out / STATE_DIR / "torn")
        repaired = self._writer.repair_torn_tail()
        if repaired:
            log.warning("ledger: removed a torn last record (%d bytes, saved to %s)", repaired["torn_bytes"], repaired["saved_to"])
        for record in state.records:
            if record.get("kind") == "run_start":
                self._run_components[record["run_id"]] = record.get("components")
        self._latest = latest_attempts(state.records)
        self.components = run_components(self.config)
        self.run_digest = components_digest(self.components)
        self._writer.append(
            {
                "kind": "run_start",
                "run_id": self.run_id,
                "time": utc_now(),
                "medvlm_version": __version__,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "config": self.config.as_dict(),
                "components": self.components,
                "run_digest": self.run_digest,
            }
        )

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if self._writer is not None:
                summary = self.out / "summary.csv"
                self._writer.append(
                    {
                        "kind": "run_end",
                        "run_id": self.run_id,
                        "time": utc_now(),
                        "completed": exc_type is None,
                        "error": None if exc is None else one_line(exc),
                        "counts": dict(self._counts),
                        "redo_reasons": dict(self._redo_reasons),
                        "summary_sha256": sha256_file(summary) if summary.is_file() else None,
                    }
                )
        finally:
            self._lock.release()

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
        previous = self._latest.get(ref.key)
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
            old = self._run_components.get(previous.get("run_id"))
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
        files: dict[str, dict] = {}
        report = None
        if row.get("status") == "ok":
            study_dir = self.out / ref.key
            if written:
                names = set(written) | {"report.json"}
            else:
                names = {p.name for p in study_dir.glob("image-*.png")} | {"report.json"}
                names.update(n for n in STUDY_FILES if (study_dir / n).is_file())
            for name in sorted(names):
                path = study_dir / name
                if not path.is_file():
                    continue
                digest = (written or {}).get(name) or sha256_file(path)
                entry = {"sha256": digest, "bytes": path.stat().st_size}
                if name == "report.json":
                    report = {"path": f"{ref.key}/report.json", **entry}
                else:
                    files[f"{ref.key}/{name}"] = entry
        inputs = self._input_hashes(ref)
        record = {
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
        }
        with self._append_lock:
            self._latest[ref.key] = self._writer.append(record)
            self._counts[str(row.get("status"))] += 1


def open_run(out: Path, config: RunConfig) -> RunAudit:
    return RunAudit(out, config)
