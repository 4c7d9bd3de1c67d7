"""Check a run folder against its ledger: chain, report hashes, referenced files, stray reports, summary."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import NotARun, first_line
from ..fileio import sha256_file
from .ledger import LEDGER_NAME, latest_attempts, read_ledger
from .reviews import check_reviews
from .session import reading_run


@dataclass(frozen=True)
class Problem:
    kind: str  # torn_tail, invalid_json, record_edited, broken_chain, report_edited, report_deleted,
    # file_edited, file_missing, unrecorded_report, stale_report, report_invalid, summary_mismatch, no_ledger,
    # review_invalid, review_unknown_report, review_unknown_finding, reviews_mismatch, review_pending
    where: str  # a path relative to the run folder, or "ledger.jsonl line N"
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass
class VerifyResult:
    run_dir: Path
    problems: list[Problem] = field(default_factory=list)
    records: int = 0
    studies: int = 0
    reports: int = 0
    files: int = 0
    reviews: int = 0
    adopted: int = 0  # `adopt` records: reports edited outside medvlm that a regrade adopted on request
    head: str | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary_line(self) -> str:
        return (
            f"ledger {self.records} records, head {self.head}; {self.studies} studies; "
            f"{self.reports} reports and {self.files} other files checked"
            + (f"; {self.reviews} review records" if self.reviews else "")
            + (f"; {self.adopted} edited reports adopted by `regrade --adopt-edits` (ledger `adopt` records)"
               if self.adopted else "")
        )


def _check_file(result: VerifyResult, run_dir: Path, rel: str, meta: dict, *, what: str, line: int) -> bool:
    path = run_dir / rel
    if not path.is_file():
        kind = "report_deleted" if what == "report" else "file_missing"
        result.problems.append(Problem(kind, rel, f"{what} deleted (recorded at ledger.jsonl line {line})"))
        return False
    digest = sha256_file(path)
    if digest != meta.get("sha256"):
        kind = "report_edited" if what == "report" else "file_edited"
        result.problems.append(
            Problem(kind, rel, f"{what} edited: sha256 {digest[:12]}… differs from {str(meta.get('sha256'))[:12]}… "
                    f"recorded at ledger.jsonl line {line}")
        )
        return False
    return True


def verify_run(run_dir: Path, *, validate: bool = True) -> VerifyResult:
    """Every problem found, each naming the file or ledger line; raises NotARun for a non-run folder,
    RunBusy while a batch or regrade writes to it (its files and ledger are half written)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise NotARun(f"run folder not found: {run_dir}")
    with reading_run(run_dir, "verify"):
        return _verify(run_dir, validate)


def _verify(run_dir: Path, validate: bool) -> VerifyResult:
    result = VerifyResult(run_dir)
    reports_on_disk = {p.parent.name for p in run_dir.glob("*/report.json")}
    ledger_path = run_dir / LEDGER_NAME
    if not ledger_path.is_file():
        if not reports_on_disk and not (run_dir / "summary.csv").is_file():
            raise NotARun(f"{run_dir} is not a medvlm run folder (no {LEDGER_NAME}, summary.csv or reports)")
        result.problems.append(Problem("no_ledger", LEDGER_NAME, "ledger missing (deleted?); nothing can be verified"))
    state = read_ledger(ledger_path)
    result.records, result.head = len(state.records), state.head
    for p in state.problems:
        result.problems.append(Problem(p.kind, f"{LEDGER_NAME} line {p.line}", p.message))
    line_of = {id(r): i + 1 for i, r in enumerate(state.records)}
    latest = latest_attempts(state.records)
    recorded_reports: dict[str, set[str]] = {}
    for record in state.records:
        if record.get("kind") == "attempt" and record.get("report"):
            recorded_reports.setdefault(record["study_key"], set()).add(record["report"]["sha256"])
    result.studies = len(latest)
    result.adopted = sum(1 for r in state.records if r.get("kind") == "adopt")

    for key, record in sorted(latest.items()):
        line = line_of[id(record)]
        report = record.get("report")
        if record.get("status") == "ok" and report:
            result.reports += 1
            if _check_file(result, run_dir, report["path"], report, what="report", line=line) and validate:
                _validate(result, run_dir / report["path"], report["path"])
            for rel, meta in sorted((record.get("files") or {}).items()):
                result.files += 1
                _check_file(result, run_dir, rel, meta, what="file", line=line)
        elif key in reports_on_disk:
            path = run_dir / key / "report.json"
            known = sha256_file(path) in recorded_reports.get(key, set())
            result.problems.append(
                Problem(
                    "stale_report",
                    f"{key}/report.json",
                    f"report.json {'from an earlier attempt' if known else 'not written by any recorded attempt'}; "
                    f"the latest attempt (ledger.jsonl line {line}) is {record.get('status')}",
                )
            )
    for key in sorted(reports_on_disk - set(latest)):
        result.problems.append(
            Problem("unrecorded_report", f"{key}/report.json", "report without a ledger record "
                    "(written by a batch that stopped before recording it, or added by hand)")
        )
    _check_summary(result, run_dir, state.records, latest)
    result.reviews, review_problems = check_reviews(run_dir, state.records)
    result.problems.extend(Problem(kind, where, message) for kind, where, message in review_problems)
    return result


def _validate(result: VerifyResult, path: Path, rel: str) -> None:
    from ..report.validate import validate_report

    try:
        validate_report(json.loads(path.read_text(encoding="utf-8")))
    except Exception as exc:  # noqa: BLE001 - any failure is one problem line
        first = first_line(exc)
        result.problems.append(Problem("report_invalid", rel, f"does not validate against the schema: {first}"))


def _check_summary(result: VerifyResult, run_dir: Path, records: list[dict], latest: dict[str, dict]) -> None:
    summary = run_dir / "summary.csv"
    if not summary.is_file():
        if latest:
            result.problems.append(Problem("summary_mismatch", "summary.csv", "summary.csv missing"))
        return
    ends = [r for r in records if r.get("kind") in ("run_start", "run_end")]
    if ends and ends[-1].get("kind") == "run_end" and ends[-1].get("summary_sha256"):
        if sha256_file(summary) != ends[-1]["summary_sha256"]:
            result.problems.append(
                Problem("summary_mismatch", "summary.csv", "edited after the last batch finished (sha256 differs from its run_end record)")
            )
            return
    with open(summary, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    seen: set[str] = set()
    for row in rows:
        key = row.get("study_key", "")
        if key in seen:
            result.problems.append(Problem("summary_mismatch", "summary.csv", f"study {key} listed twice"))
        seen.add(key)
        record = latest.get(key)
        if record is None:
            result.problems.append(Problem("summary_mismatch", "summary.csv", f"study {key} has no ledger record"))
        elif record.get("status") != row.get("status") or (record.get("row") or {}).get("risk_level", "") != row.get("risk_level", ""):
            result.problems.append(
                Problem("summary_mismatch", "summary.csv", f"study {key}: status/risk differ from ledger.jsonl line "
                        f"{record.get('seq', -1) + 1}")
            )
