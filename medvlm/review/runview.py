"""What the review app, the import and the agreement figures read from a run folder (never written here).

A `Snapshot` is the run as the ledger says it is now: the latest attempt per study, which runs
were made with --include-phi, and the latest review per study, reviewer and read (queued saves
included). It is rebuilt only when ledger.jsonl or the queue changes. Reports are read by the
SHA-256 the ledger recorded, and kept by that hash, so the version a reviewer saw can still be
checked when the study was regraded while they were reading it.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from ..audit.ledger import LEDGER_NAME, latest_attempts
from ..audit.reviews import LedgerCache, current_report_sha, is_stale, latest_reviews, pending_reviews
from ..audit.session import STATE_DIR
from ..errors import NotARun
from ..fileio import sha256_file
from ..report.html import RISK_ORDER

RISK_RANK = {level: i for i, level in enumerate(RISK_ORDER)}
ORDINAL_RISK = ("normal", "low", "moderate", "high", "critical")  # indeterminate has no place on this scale
DOC_CACHE = 64


@dataclass
class StudyEntry:
    """One study as the worklist shows it (from its latest ledger attempt)."""

    key: str
    status: str  # ok, error, skipped
    modality: str
    risk: str  # the model's level ("" when the study failed)
    present: list[str]
    reason: str
    source: str
    report_sha256: str | None
    include_phi: bool

    @property
    def reviewable(self) -> bool:
        return self.status == "ok" and bool(self.report_sha256)

    @property
    def rank(self) -> int:
        return RISK_RANK.get(self.risk, len(RISK_RANK)) if self.status == "ok" else len(RISK_RANK) + 1


@dataclass
class Snapshot:
    entries: list[StudyEntry]
    by_key: dict[str, StudyEntry]
    attempts: dict[str, dict]
    reviews: dict[tuple[str, str, str], dict]  # (study, reviewer, read) -> latest record (queued ones marked)
    reports_seen: dict[str, set[str]]  # study -> every report SHA-256 the ledger recorded for it
    queued: int = 0
    reviewers: list[str] = field(default_factory=list)

    def review(self, key: str, reviewer: str, read: str) -> dict | None:
        return self.reviews.get((key, reviewer, read))

    def final_review(self, key: str, reviewer: str) -> dict | None:
        """The reviewer's latest read with the model shown (second or single), else None."""
        found = [r for r in (self.review(key, reviewer, "second"), self.review(key, reviewer, "single")) if r]
        return max(found, key=_order) if found else None

    def stale(self, review: dict) -> bool:
        return is_stale(review, self.attempts.get(review["study_key"]))


def _order(record: dict) -> tuple:
    return (record.get("queued", False), record.get("seq", -1), record.get("time", ""))


def disagrees(review: dict, model_risk: str | None) -> bool:
    """Any finding disagreed with or added, or a risk level other than the model's."""
    return (any(v.get("verdict") == "disagree" for v in review.get("verdicts", []))
            or bool(review.get("added"))
            or (review.get("risk_level") not in (None, model_risk)))


class RunView:
    """Read access to one run folder, refreshed when its ledger or review queue changes (thread-safe)."""

    def __init__(self, run_dir: Path):
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise NotARun(f"run folder not found: {run_dir}")
        if not (run_dir / LEDGER_NAME).is_file():
            raise NotARun(f"{run_dir} is not a medvlm run folder (no {LEDGER_NAME}); "
                          "reviews are recorded in the ledger of a run made by `medvlm batch`")
        self.run_dir = run_dir
        self.cache = LedgerCache(run_dir)
        self._lock = threading.Lock()
        self._stamp: object = None
        self._snapshot: Snapshot | None = None
        self._docs: OrderedDict[str, dict] = OrderedDict()

    # -- snapshot -------------------------------------------------------------------------------

    def _queue_stamp(self) -> object:
        folder = self.run_dir / STATE_DIR / "reviews-pending"
        try:
            return folder.stat().st_mtime_ns, len(list(folder.glob("*.json")))
        except OSError:
            return None

    def snapshot(self) -> Snapshot:
        with self._lock:
            state = self.cache.read()
            stamp = (len(state.records), state.head, self._queue_stamp())
            if self._snapshot is None or stamp != self._stamp:
                self._snapshot = self._build(state.records)
                self._stamp = stamp
            return self._snapshot

    def _build(self, records: list[dict]) -> Snapshot:
        attempts = latest_attempts(records)
        phi_runs = {r.get("run_id") for r in records
                    if r.get("kind") == "run_start" and (r.get("config") or {}).get("include_phi")}
        reports_seen: dict[str, set[str]] = {}
        for r in records:
            if r.get("kind") == "attempt" and r.get("report") and r.get("study_key"):
                reports_seen.setdefault(r["study_key"], set()).add(r["report"].get("sha256"))
        entries = []
        for key, attempt in attempts.items():
            row = attempt.get("row") or {}
            status = attempt.get("status") or "error"
            entries.append(StudyEntry(
                key=key, status=status, modality=row.get("modality") or "",
                risk=(row.get("risk_level") or "") if status == "ok" else "",
                present=[c for c in (row.get("present_findings") or "").split(";") if c],
                reason=row.get("reason") or "", source=row.get("source") or "",
                report_sha256=current_report_sha(attempt), include_phi=attempt.get("run_id") in phi_runs,
            ))
        entries.sort(key=lambda e: (e.rank, e.key))
        reviews = dict(latest_reviews(records))
        queued = 0
        for _, record in pending_reviews(self.run_dir):
            queued += 1
            reviews[(record["study_key"], record["reviewer"], record["read"])] = record
        reviewers = sorted({k[1] for k in reviews})
        return Snapshot(entries, {e.key: e for e in entries}, attempts, reviews, reports_seen, queued, reviewers)

    # -- reports --------------------------------------------------------------------------------

    def report(self, key: str, sha256: str | None = None) -> tuple[dict | None, str]:
        """(report.json of a study as recorded, problem): the doc when the file has the ledger's SHA-256
        (or `sha256`, a version read earlier and still remembered), else None and why."""
        snap = self.snapshot()
        entry = snap.by_key.get(key)
        if entry is None:
            return None, "no such study in this run"
        wanted = sha256 or entry.report_sha256
        if not wanted:
            return None, f"the study has no report ({entry.status}{': ' + entry.reason if entry.reason else ''})"
        with self._lock:
            if wanted in self._docs:
                self._docs.move_to_end(wanted)
                return self._docs[wanted], ""
        if wanted != entry.report_sha256:
            return None, "that version of the report is no longer on disk (the study was regraded or redone)"
        path = self.run_dir / key / "report.json"
        try:
            actual = sha256_file(path)
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            return None, f"report.json cannot be read ({type(exc).__name__})"
        if actual != wanted:
            return None, ("report.json differs from the version recorded in the ledger (edited?); "
                          "run `medvlm verify` before reviewing it")
        if not isinstance(doc, dict) or not isinstance(doc.get("findings"), list):
            return None, "report.json is not a medvlm report"
        _with_finding_ids(doc, key)
        with self._lock:
            self._docs[wanted] = doc
            while len(self._docs) > DOC_CACHE:
                self._docs.popitem(last=False)
        return doc, ""

    def image(self, key: str, index: int) -> Path | None:
        """The thumbnail the report names as image `index` (1-based), inside the study folder; None otherwise."""
        doc, _ = self.report(key)
        if doc is None or not 1 <= index <= len(doc.get("images") or []):
            return None
        name = (doc["images"][index - 1] or {}).get("thumbnail")
        if not isinstance(name, str) or not name:
            return None
        folder = (self.run_dir / key).resolve()
        path = (folder / name).resolve()
        if path.parent != folder or path.suffix.lower() != ".png" or not path.is_file():
            return None
        return path


def vocabulary_for(doc: dict):
    """The vocabulary the report was graded with (its recorded file when unchanged), else the modality's."""
    from ..findings import load_vocabulary
    from ..findings.errors import VocabularyError

    modality = (doc.get("study") or {}).get("modality") or "chest_xray"
    recorded = ((doc.get("provenance") or {}).get("vocabulary") or {})
    path = recorded.get("path")
    if path and Path(path).is_file():
        try:
            if sha256_file(Path(path)) == recorded.get("sha256"):
                return load_vocabulary(Path(path))
        except (OSError, VocabularyError):
            pass
    return load_vocabulary(modality)


def _with_finding_ids(doc: dict, key: str) -> None:
    """Reports written before finding ids (schema 1.0) get the ids a regrade would give them (as export does)."""
    from ..finding_ids import ids_for_codes

    findings = [f for f in doc["findings"] if isinstance(f, dict)]
    if all(f.get("id") for f in findings):
        return
    study_key = (doc.get("study") or {}).get("key") or key
    text = (doc.get("model_output") or {}).get("text") or ""
    for f, fid in zip(findings, ids_for_codes(study_key, text, (f.get("code") or "" for f in findings))):
        f.setdefault("id", fid)
        f["id"] = f["id"] or fid
