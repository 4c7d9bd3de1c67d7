"""Ledger records for work on an existing run that loads no model (regrade)."""

from __future__ import annotations

import copy
import json
import os
import socket
import uuid
from pathlib import Path

from filelock import FileLock, Timeout

from .. import __version__
from ..clock import utc_now
from ..errors import RunBusy
from ..fileio import atomic_write_text
from .fingerprint import attempt_fingerprint, components_digest
from .ledger import LEDGER_NAME, LedgerWriter, latest_attempts, read_ledger
from .run import LOCK_NAME, OWNER_NAME, STATE_DIR


class RegradeAudit:
    """Holds the run lock and appends one `attempt` record per regraded report.

    The record's fingerprint is the earlier attempt's inputs combined with the earlier run's
    components where only this modality's vocabulary and rules hashes are replaced, so a later
    `medvlm batch` with the same vocabulary and rules resumes, and with the old ones redoes.
    """

    def __init__(self, out: Path, purpose: str = "regrade"):
        self.out = Path(out)
        self.purpose = purpose
        self.run_id = uuid.uuid4().hex
        self._lock = FileLock(str(self.out / STATE_DIR / LOCK_NAME), timeout=0)
        self._components: dict[str, dict] = {}
        self.latest: dict[str, dict] = {}
        self._writer: LedgerWriter | None = None

    def __enter__(self) -> "RegradeAudit":
        (self.out / STATE_DIR).mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire()
        except Timeout:
            raise RunBusy(f"a medvlm batch is writing to {self.out}; wait for it to finish") from None
        try:
            state = read_ledger(self.out / LEDGER_NAME)
            bad = [p for p in state.problems if p.kind != "torn_tail"]
            if bad:
                raise RunBusy(f"{self.out / LEDGER_NAME} line {bad[0].line}: {bad[0].message}; run `medvlm verify {self.out}`")
            self._writer = LedgerWriter(state, torn_dir=self.out / STATE_DIR / "torn")
            self._writer.repair_torn_tail()
            for record in state.records:
                if record.get("kind") == "run_start":
                    self._components[record["run_id"]] = record.get("components") or {}
            self.latest = latest_attempts(state.records)
            atomic_write_text(
                self.out / STATE_DIR / OWNER_NAME,
                json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started_at": utc_now(), "run_id": self.run_id}),
            )
            self._writer.append(
                {"kind": "run_start", "run_id": self.run_id, "purpose": self.purpose, "time": utc_now(),
                 "medvlm_version": __version__, "host": socket.gethostname(), "pid": os.getpid(), "components": None}
            )
        except BaseException:
            self._lock.release()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        from ..fileio import sha256_file
        try:
            summary = self.out / "summary.csv"
            self._writer.append(
                {"kind": "run_end", "run_id": self.run_id, "purpose": self.purpose, "time": utc_now(),
                 "completed": exc_type is None, "summary_sha256": sha256_file(summary) if summary.is_file() else None}
            )
        finally:
            self._lock.release()

    def record(self, key: str, row: dict, written: dict[str, str], modality: str, vocab_hash: str, rules_hash: str) -> None:
        """Append the regraded study's attempt with its new report and file hashes."""
        previous = self.latest.get(key) or {}
        components = copy.deepcopy(self._components.get(previous.get("run_id")) or {})
        resources = components.get("resources", {}).get(modality)
        if isinstance(resources, dict):
            resources["vocabulary"], resources["rules"] = vocab_hash, rules_hash
        inputs = previous.get("inputs")
        fingerprint = attempt_fingerprint(inputs, components_digest(components)) if inputs and components else None
        files, report = {}, None
        for name, digest in sorted(written.items()):
            entry = {"sha256": digest, "bytes": (self.out / key / name).stat().st_size}
            if name == "report.json":
                report = {"path": f"{key}/report.json", **entry}
            else:
                files[f"{key}/{name}"] = entry
        self.latest[key] = self._writer.append(
            {"kind": "attempt", "run_id": previous.get("run_id", self.run_id), "purpose": self.purpose,
             "maintenance_run_id": self.run_id, "time": utc_now(), "study_key": key, "status": row.get("status"),
             "stage": None, "reason": None, "inputs": inputs, "fingerprint": fingerprint, "report": report,
             "files": files, "row": row}
        )
