"""The audited-run lifecycle every command that writes into a run folder shares (batch, regrade, ...).

Entering a session: take the run lock (another holder -> RunBusy with who holds it), write the
owner file, read the ledger, refuse a damaged chain (the user decides what to do with evidence),
repair a torn last line, append `run_start`. Leaving: append `run_end` (with the summary's hash and
whether it completed) and release the lock. Subclasses add their own records in between.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import uuid
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout

from .. import __version__
from ..clock import utc_now
from ..errors import NotARun, RunBusy, one_line
from ..fileio import atomic_write_text, sha256_file
from .ledger import LEDGER_NAME, LedgerState, LedgerWriter, latest_attempts, read_ledger

log = logging.getLogger("medvlm.audit")

STATE_DIR = ".medvlm"
LOCK_NAME = "batch.lock"
OWNER_NAME = "batch.owner.json"
SHORT_HOLD_S = 1.0  # a busy lock is tried again this long before the holder is asked who it is
REVIEW_HOLD_WAIT_S = 15.0  # how long a command waits for a review app that holds the lock to append


class LedgerDamaged(RunBusy):
    """The ledger's chain is broken before its last line: nothing is appended until the user decides."""


class LedgerSession:
    """Holds the run lock and the ledger writer between run_start and run_end."""

    purpose = "batch"
    # A session that only adds a record or two (a saved review) skips run_start/run_end and may wait
    # a little for the lock; a batch or regrade keeps the defaults.
    run_records = True
    lock_wait_s = 0.0

    def __init__(self, out: Path):
        self.out = Path(out)
        self.run_id = uuid.uuid4().hex
        self._lock = FileLock(str(self.out / STATE_DIR / LOCK_NAME), timeout=self.lock_wait_s)
        self._writer: LedgerWriter | None = None
        self.state: LedgerState | None = None
        self.latest: dict[str, dict] = {}  # study key -> latest attempt record
        self.run_components: dict[str, dict | None] = {}  # run_id -> components, from run_start records
        self._append_lock = threading.Lock()  # records may come from helper threads

    # -- what subclasses add ------------------------------------------------------------------

    def start_fields(self) -> dict:
        """Extra fields of this session's run_start record."""
        return {}

    def end_fields(self) -> dict:
        """Extra fields of this session's run_end record."""
        return {}

    def read_state(self) -> LedgerState:
        """The ledger as it is now (a subclass may parse only what was appended since its last read)."""
        return read_ledger(self.out / LEDGER_NAME)

    def busy_message(self) -> str:
        if self.purpose != "batch":  # regrade and the like have no --out to change
            return (f"a {self._owner_purpose()} is running in {self.out} ({self._owner()}); "
                    f"run `medvlm {self.purpose}` when it has finished")
        return (f"another medvlm {self._owner_purpose()} is writing to {self.out} ({self._owner()}); "
                "wait for it to finish or use another --out")

    def _owner_info(self) -> dict:
        try:
            info = json.loads((self.out / STATE_DIR / OWNER_NAME).read_text())
        except (OSError, ValueError):
            return {}
        return info if isinstance(info, dict) else {}

    def _owner_purpose(self) -> str:
        purpose = self._owner_info().get("purpose", "batch")
        return purpose if isinstance(purpose, str) and purpose.isidentifier() else "batch"

    # -- lifecycle ------------------------------------------------------------------------------

    def __enter__(self):
        (self.out / STATE_DIR).mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire()
        except Timeout:
            if not self._wait_for_short_holder():
                raise RunBusy(self.busy_message()) from None
        try:
            self._open()
        except BaseException:
            self._lock.release()
            raise
        return self

    def _wait_for_short_holder(self) -> bool:
        """Wait for a holder that only appends a record (a review app saving); False when it is a long one."""
        try:  # the holder may have taken the lock a moment ago and not yet said who it is
            self._lock.acquire(timeout=SHORT_HOLD_S)
            return True
        except Timeout:
            if self._owner_purpose() != "review":
                return False
        try:
            self._lock.acquire(timeout=REVIEW_HOLD_WAIT_S)
            return True
        except Timeout:
            return False

    def _owner(self) -> str:
        info = self._owner_info()
        try:
            return f"pid {info['pid']} on {info['host']} since {info['started_at']}"
        except KeyError:
            return "lock held"

    def _open(self) -> None:
        atomic_write_text(
            self.out / STATE_DIR / OWNER_NAME,
            json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started_at": utc_now(),
                        "run_id": self.run_id, "purpose": self.purpose}),
        )
        state = self.read_state()
        bad = [p for p in state.problems if p.kind != "torn_tail"]
        if bad:
            # Appending to a broken chain would bury the evidence; the user decides what to do.
            first = bad[0]
            raise LedgerDamaged(
                f"{self.out / LEDGER_NAME} line {first.line}: {first.message}; run `medvlm verify {self.out}` "
                "and move the folder aside before writing to it again"
            )
        self.state = state
        self._writer = LedgerWriter(state, torn_dir=self.out / STATE_DIR / "torn")
        repaired = self._writer.repair_torn_tail()
        if repaired:
            log.warning("ledger: removed a torn last record (%d bytes, saved to %s)", repaired["torn_bytes"], repaired["saved_to"])
        for record in state.records:
            if record.get("kind") == "run_start":
                self.run_components[record["run_id"]] = record.get("components")
        self.latest = latest_attempts(state.records)
        if not self.run_records:
            return
        self.append({"kind": "run_start", "run_id": self.run_id, "purpose": self.purpose, "time": utc_now(),
                     "medvlm_version": __version__, "host": socket.gethostname(), "pid": os.getpid(),
                     **self.start_fields()})

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if self._writer is not None and self.run_records:
                summary = self.out / "summary.csv"
                self.append({"kind": "run_end", "run_id": self.run_id, "purpose": self.purpose, "time": utc_now(),
                             "completed": exc_type is None, "error": None if exc is None else one_line(exc),
                             "summary_sha256": sha256_file(summary) if summary.is_file() else None,
                             **self.end_fields()})
        finally:
            self._lock.release()

    def append(self, record: dict) -> dict:
        """Append one record to the chain (thread-safe); returns it with seq, prev and hash."""
        with self._append_lock:
            written = self._writer.append(record)
            if record.get("kind") == "attempt":
                self.latest[record["study_key"]] = written
            return written


def file_entries(out: Path, key: str, written: dict[str, str]) -> tuple[dict | None, dict[str, dict]]:
    """(report entry, other files) for a study's ledger record, from file name -> SHA-256."""
    files: dict[str, dict] = {}
    report = None
    for name, digest in sorted(written.items()):
        path = out / key / name
        if not path.is_file():
            continue
        entry = {"sha256": digest, "bytes": path.stat().st_size}
        if name == "report.json":
            report = {"path": f"{key}/report.json", **entry}
        else:
            files[f"{key}/{name}"] = entry
    return report, files


def require_run(run_dir: Path) -> Path:
    """The folder, when it is a medvlm run (it has ledger.jsonl or summary.csv); else NotARun (nothing written)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise NotARun(f"run folder not found: {run_dir}")
    if not (run_dir / LEDGER_NAME).is_file() and not (run_dir / "summary.csv").is_file():
        raise NotARun(f"{run_dir} is not a medvlm run folder (no {LEDGER_NAME} or summary.csv); "
                      "give the --out folder of a batch")
    return run_dir


def owner_info(run_dir: Path) -> dict:
    """What the holder of the run lock wrote about itself (pid, host, started_at, purpose), or {}."""
    try:
        info = json.loads((Path(run_dir) / STATE_DIR / OWNER_NAME).read_text())
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


@contextlib.contextmanager
def reading_run(run_dir: Path, command: str) -> Iterator[None]:
    """Hold the run lock while a command only reads the run (verify, export), so what it reads is whole.

    A batch or regrade holding the lock -> RunBusy "a batch is running in RUN (pid ...)": its files
    and ledger are half written, and a check or table made now would be wrong. A review app saving
    holds it for a moment and is waited for. Without .medvlm/ (a copied run) or on read-only media
    the run is read without the lock: no medvlm command can be writing there.
    """
    state = Path(run_dir) / STATE_DIR
    if not state.is_dir() or not os.access(state, os.W_OK):
        yield
        return
    lock = FileLock(str(state / LOCK_NAME), timeout=0)
    try:
        lock.acquire(timeout=SHORT_HOLD_S)
    except Timeout:
        info = owner_info(run_dir)
        purpose = info.get("purpose") if isinstance(info.get("purpose"), str) else "batch"
        waited = False
        if purpose == "review":
            try:
                lock.acquire(timeout=REVIEW_HOLD_WAIT_S)
                waited = True
            except Timeout:
                pass
        if not waited:
            who = f"pid {info.get('pid')} on {info.get('host')} since {info.get('started_at')}" if info else "lock held"
            raise RunBusy(f"a {purpose if purpose.isidentifier() else 'batch'} is running in {run_dir} ({who}); "
                          f"run `medvlm {command}` when it has finished") from None
    except OSError:  # the lock file cannot be created: nothing can be writing there either
        yield
        return
    try:
        yield
    finally:
        lock.release()
