"""Reader reviews in a run's ledger: the `review` record, reviews.jsonl, saves queued while a batch runs, checks.

A review is one reader's verdicts on one study's report, appended to ledger.jsonl as a `review`
record under the run lock (held for that one append, so a batch, a regrade and other reviewers
go on around it). The record is self-contained: besides the reviewer, the time, the study key and
the SHA-256 of the report.json reviewed, it lists every finding the reviewer was shown with its
stable id, code, label, the model's status and side, and the verdict (agree, disagree, unsure, or
null when the reviewer left it unmarked); the findings the reviewer added (code, side); the
reviewer's own risk level and the model's; a comment. `read` is `single` (model output shown),
`first` (a blind read: nothing of the model shown, so no verdicts) or `second` (the read after a
blind first read). A later review by the same reviewer of the same study and read supersedes the
earlier one; both stay in the ledger.

reviews.jsonl (in the run folder) holds the latest review per study, reviewer and read, rewritten
from the ledger on every save; `medvlm verify` checks that it matches. A review whose report was
since regraded or redone (its SHA-256 is no longer the study's current report) is *stale*: it
stays as it was, about the report it names.

While another command holds the lock for long (a batch), saves are queued as JSON files under
.medvlm/reviews-pending/ and appended, in the order they were saved, as soon as the lock is free
(review ids make a second append of the same save impossible).
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from pathlib import Path

from ..clock import utc_now
from ..fileio import atomic_write_text, sha256_file
from .ledger import LEDGER_NAME, LedgerState, latest_attempts, read_ledger
from .session import STATE_DIR, LedgerSession

REVIEWS_NAME = "reviews.jsonl"
PENDING_DIR = "reviews-pending"  # under .medvlm/
VERDICTS = ("agree", "disagree", "unsure")
READS = ("single", "first", "second")
SOURCES = ("app", "import")
RISK_LEVELS = ("normal", "low", "moderate", "high", "critical", "indeterminate")
LATERALITIES = ("left", "right", "bilateral")
MODEL_STATUSES = ("present", "absent", "uncertain")
MAX_REVIEWER = 64
MAX_COMMENT = 4000
MAX_NOTE = 500
MAX_FINDINGS = 200
_FINDING_ID = re.compile(r"^f-[0-9a-f]{16}$")
_CODE = re.compile(r"^[a-z0-9_]{1,64}$")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # tab and line feed allowed in comments only
_READ_ORDER = {r: i for i, r in enumerate(READS)}


class ReviewInvalid(ValueError):
    """A review that cannot be recorded (the message says which field and why)."""


# -- the record --------------------------------------------------------------------------------


def clean_reviewer(name: object) -> str:
    """The reviewer's name as recorded: stripped, 1-64 printable characters; ReviewInvalid otherwise."""
    if not isinstance(name, str) or not name.strip():
        raise ReviewInvalid("the reviewer's name is empty")
    name = " ".join(name.split())
    if len(name) > MAX_REVIEWER:
        raise ReviewInvalid(f"the reviewer's name is longer than {MAX_REVIEWER} characters")
    if _CONTROL.search(name) or "\t" in name:
        raise ReviewInvalid("the reviewer's name contains control characters")
    return name


def _text(value: object, field: str, limit: int) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ReviewInvalid(f"{field} must be text")
    value = value.replace("\r\n", "\n").strip()
    if len(value) > limit:
        raise ReviewInvalid(f"{field} is longer than {limit} characters")
    if _CONTROL.search(value):
        raise ReviewInvalid(f"{field} contains control characters")
    return value


def _choice(value: object, field: str, choices: tuple[str, ...], *, optional: bool) -> str | None:
    if value in (None, "") and optional:
        return None
    if value not in choices:
        raise ReviewInvalid(f"{field} must be one of {', '.join(choices)}{' or empty' if optional else ''} "
                            f"(got {str(value)[:40]!r})")
    return value  # type: ignore[return-value]


def make_review(*, reviewer: str, study_key: str, report_path: str, report_sha256: str, read: str,
                findings: list[dict], verdicts: dict[str, dict], added: list[dict], risk_level: str | None,
                comment: str | None, model_risk_level: str | None, source: str = "app", blind: bool = False,
                time: str | None = None, extra: dict | None = None) -> dict:
    """A validated `review` record (without seq/prev/hash) for the findings of one report.

    findings: the report's findings as shown (dicts with id, code, label, status, laterality);
    verdicts: finding id -> {"verdict": agree|disagree|unsure|None, "note": str}; an id that is not
    one of `findings` is refused; added: [{"code", "label", "laterality", "note"}].
    """
    read = _choice(read, "read", READS, optional=False)
    if read == "first" and any((v or {}).get("verdict") for v in verdicts.values()):
        raise ReviewInvalid("a blind first read has no verdicts on the model's findings")
    ids = [f.get("id") for f in findings]
    unknown = sorted(set(verdicts) - set(ids))
    if unknown:
        raise ReviewInvalid(f"finding {str(unknown[0])[:40]!r} is not in the report reviewed")
    rows = []
    if read != "first":
        for f in findings:
            given = verdicts.get(f.get("id")) or {}
            rows.append({
                "finding_id": f.get("id"), "code": f.get("code"), "label": f.get("label"),
                "model_status": f.get("status"), "laterality": f.get("laterality"),
                "verdict": _choice(given.get("verdict"), "verdict", VERDICTS, optional=True),
                "note": _text(given.get("note"), "a finding's note", MAX_NOTE),
            })
    record = {
        "kind": "review",
        "review_id": uuid.uuid4().hex,
        "time": time or utc_now(),
        "reviewer": clean_reviewer(reviewer),
        "study_key": study_key,
        "read": read,
        "blind": bool(blind),
        "source": source,
        "report": {"path": report_path, "sha256": report_sha256},
        "model_risk_level": model_risk_level,
        "risk_level": _choice(risk_level, "risk level", RISK_LEVELS, optional=True),
        "comment": _text(comment, "the comment", MAX_COMMENT),
        "verdicts": rows,
        "added": [
            {"code": a.get("code"), "label": a.get("label") or a.get("code"),
             "laterality": _choice(a.get("laterality"), "laterality", LATERALITIES, optional=True),
             "note": _text(a.get("note"), "an added finding's note", MAX_NOTE)}
            for a in added
        ],
        **(extra or {}),
    }
    problems = record_problems(record)
    if problems:
        raise ReviewInvalid(problems[0])
    return record


def record_problems(record: dict) -> list[str]:
    """Why a `review` record is malformed (empty when it is well-formed); used before appending and by verify."""
    out: list[str] = []
    try:
        clean_reviewer(record.get("reviewer"))
    except ReviewInvalid as exc:
        out.append(str(exc))
    key = record.get("study_key")
    if not isinstance(key, str) or not key or "/" in key or key.startswith(".") or _CONTROL.search(key):
        out.append("study_key is missing or not a study key")
    if record.get("read") not in READS:
        out.append(f"read {record.get('read')!r} is not one of {', '.join(READS)}")
    if record.get("source") not in SOURCES:
        out.append(f"source {record.get('source')!r} is not one of {', '.join(SOURCES)}")
    report = record.get("report")
    if not isinstance(report, dict) or not re.fullmatch(r"[0-9a-f]{64}", str(report.get("sha256", ""))):
        out.append("the SHA-256 of the report reviewed is missing")
    if record.get("risk_level") not in (None, *RISK_LEVELS):
        out.append(f"risk level {record.get('risk_level')!r} is not one of {', '.join(RISK_LEVELS)}")
    if not isinstance(record.get("time"), str) or not record.get("time"):
        out.append("time is missing")
    if not isinstance(record.get("comment", ""), str) or len(record.get("comment", "")) > MAX_COMMENT:
        out.append("comment is not text of at most 4000 characters")
    verdicts, added = record.get("verdicts"), record.get("added")
    if not isinstance(verdicts, list) or not isinstance(added, list) or len(verdicts) + len(added) > MAX_FINDINGS:
        out.append("verdicts/added are not lists (or too long)")
        return out
    seen: set[str] = set()
    for v in verdicts:
        if not isinstance(v, dict) or not _FINDING_ID.match(str(v.get("finding_id", ""))):
            out.append("a verdict without a finding id")
            continue
        if v["finding_id"] in seen:
            out.append(f"finding {v['finding_id']} has two verdicts")
        seen.add(v["finding_id"])
        if v.get("verdict") not in (None, *VERDICTS):
            out.append(f"verdict {v.get('verdict')!r} on {v['finding_id']} is not one of {', '.join(VERDICTS)}")
        if v.get("model_status") not in MODEL_STATUSES:
            out.append(f"model status {v.get('model_status')!r} on {v['finding_id']} is not one of {', '.join(MODEL_STATUSES)}")
    if record.get("read") == "first" and verdicts:
        out.append("a blind first read has verdicts on the model's findings")
    codes: set[str] = set()
    for a in added:
        if not isinstance(a, dict) or not _CODE.match(str(a.get("code", ""))):
            out.append("an added finding without a vocabulary code")
            continue
        if a["code"] in codes:
            out.append(f"finding {a['code']} added twice")
        codes.add(a["code"])
        if a.get("laterality") not in (None, *LATERALITIES):
            out.append(f"side {a.get('laterality')!r} of added {a['code']} is not one of {', '.join(LATERALITIES)}")
        if any(v.get("code") == a["code"] for v in verdicts):
            out.append(f"{a['code']} is added although the model reported it (give a verdict on its finding instead)")
    return out


# -- reading ----------------------------------------------------------------------------------


def review_records(records: list[dict]) -> list[dict]:
    return [r for r in records if r.get("kind") == "review"]


def latest_reviews(records: list[dict]) -> dict[tuple[str, str, str], dict]:
    """(study key, reviewer, read) -> the latest well-formed review record, in ledger order."""
    latest: dict[tuple[str, str, str], dict] = {}
    for record in review_records(records):
        if not record_problems(record):
            latest[(record["study_key"], record["reviewer"], record["read"])] = record
    return latest


def current_report_sha(attempt: dict | None) -> str | None:
    """The SHA-256 of the study's report now (its latest attempt's), None when the latest attempt failed."""
    if not attempt or attempt.get("status") != "ok":
        return None
    return (attempt.get("report") or {}).get("sha256")


def is_stale(review: dict, attempt: dict | None) -> bool:
    """True when the report the review names is no longer the study's current report."""
    return review["report"]["sha256"] != current_report_sha(attempt)


def reviews_jsonl_text(records: list[dict]) -> str:
    """reviews.jsonl: the latest review per study, reviewer and read (sorted), one JSON object a line."""
    latest = latest_reviews(records)
    lines = []
    for key in sorted(latest, key=lambda k: (k[0], k[1], _READ_ORDER[k[2]])):
        record = latest[key]
        line = {k: v for k, v in record.items() if k not in ("kind", "prev", "hash", "seq")}
        line["ledger_line"] = record.get("seq", -1) + 1
        lines.append(json.dumps(line, sort_keys=True, ensure_ascii=False))
    return "".join(line + "\n" for line in lines)


# -- writing ----------------------------------------------------------------------------------


class ReviewSession(LedgerSession):
    """The run lock for one save: no run_start/run_end; appends review records and rewrites reviews.jsonl."""

    purpose = "review"
    run_records = False

    def __init__(self, out: Path, cache: "LedgerCache | None" = None, *, patient: bool = True):
        super().__init__(out)
        self._cache = cache
        self._patient = patient

    def _wait_for_short_holder(self) -> bool:
        # Impatient: saves are already queued behind a long holder; the next try comes soon anyway.
        return self._patient and super()._wait_for_short_holder()

    def read_state(self) -> LedgerState:
        if self._cache is None:
            return read_ledger(self.out / LEDGER_NAME)
        return self._cache.read()

    def append_reviews(self, records: list[dict]) -> list[dict]:
        """Append each record not yet in the ledger (by review id); then rewrite reviews.jsonl. Returns them as written."""
        known = {r.get("review_id") for r in review_records(self.state.records)}
        written = []
        for record in records:
            if record["review_id"] in known:
                continue
            written.append(self.append(record))
            known.add(record["review_id"])
        if written:
            all_records = self.state.records + written
            atomic_write_text(self.out / REVIEWS_NAME, reviews_jsonl_text(all_records))
            if self._cache is not None:
                self._cache.invalidate_tail()
        return written


class LedgerCache:
    """A ledger read once and then only extended by what was appended (thread-safe)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LEDGER_NAME
        self._state: LedgerState | None = None
        self._stamp: tuple[int, int] | None = None
        self._lock = threading.Lock()

    def read(self) -> LedgerState:
        with self._lock:
            try:
                st = self.path.stat()
                stamp = (st.st_size, st.st_mtime_ns)
            except OSError:
                stamp = None
            if self._state is None or stamp != self._stamp:
                self._state = read_ledger(self.path, previous=self._state)
                self._stamp = stamp
            return self._state

    def invalidate_tail(self) -> None:
        with self._lock:
            self._stamp = None


def _pending_dir(run_dir: Path) -> Path:
    return Path(run_dir) / STATE_DIR / PENDING_DIR


def pending_reviews(run_dir: Path) -> list[tuple[Path, dict]]:
    """Saved reviews waiting for the lock, oldest first (unreadable files are skipped and left in place)."""
    folder = _pending_dir(run_dir)
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.glob("*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and record.get("kind") == "review" and not record_problems(record):
            found.append((path, record))
    return found


def queue_review(run_dir: Path, record: dict) -> Path:
    """Keep a save that could not take the lock; file names sort in the order of saving."""
    from time import time_ns

    path = _pending_dir(run_dir) / f"{time_ns():020d}-{record['review_id']}.json"
    atomic_write_text(path, json.dumps({**record, "queued": True}, sort_keys=True, ensure_ascii=False))
    return path


def flush_pending(run_dir: Path, cache: LedgerCache | None = None, *, patient: bool = True) -> int:
    """Append every queued review (raises RunBusy while a long command holds the lock); returns how many.

    patient=False gives up at once when the lock is taken (a save answering the browser)."""
    queued = pending_reviews(run_dir)
    if not queued:
        return 0
    with ReviewSession(run_dir, cache, patient=patient) as session:
        queued = pending_reviews(run_dir)  # another app may have flushed them meanwhile
        written = session.append_reviews([{**r, "recorded_at": utc_now()} for _, r in queued])
        for path, _ in queued:
            path.unlink(missing_ok=True)
    return len(written)


def save_review(run_dir: Path, record: dict, cache: LedgerCache | None = None) -> str:
    """Append one review under the run lock: 'recorded', or 'queued' while another command holds the lock.

    Earlier queued saves go first, so the ledger keeps the order in which reviews were saved.
    Raises LedgerDamaged when the chain is broken (nothing is appended to a damaged ledger).
    """
    from ..errors import RunBusy
    from .session import LedgerDamaged

    if pending_reviews(run_dir):
        queue_review(run_dir, record)
        try:
            flush_pending(run_dir, cache, patient=False)
        except LedgerDamaged:
            raise
        except RunBusy:
            return "queued"
        return "recorded"
    try:
        with ReviewSession(run_dir, cache) as session:
            session.append_reviews([record])
    except LedgerDamaged:
        raise
    except RunBusy:
        queue_review(run_dir, record)
        return "queued"
    return "recorded"


def append_imported(run_dir: Path, records: list[dict]) -> list[dict]:
    """Append imported reviews in one lock hold (RunBusy when a long command holds it); returns them as written."""
    with ReviewSession(run_dir) as session:
        return session.append_reviews(records)


# -- checks (medvlm verify) ------------------------------------------------------------------


def check_reviews(run_dir: Path, records: list[dict]) -> tuple[int, list[tuple[str, str, str]]]:
    """(review records, problems as (kind, where, message)): each record well-formed and about a report
    the ledger recorded for its study, ids present in the current report, reviews.jsonl up to date,
    no save left queued."""
    run_dir = Path(run_dir)
    problems: list[tuple[str, str, str]] = []
    reports_seen: dict[str, set[str]] = {}
    attempts_so_far: dict[str, dict] = {}
    n = 0
    current_ids: dict[str, set[str] | None] = {}
    latest = latest_attempts(records)
    for line, record in enumerate(records, start=1):
        kind = record.get("kind")
        if kind == "attempt" and record.get("study_key"):
            attempts_so_far[record["study_key"]] = record
            if record.get("report"):
                reports_seen.setdefault(record["study_key"], set()).add(record["report"].get("sha256"))
            continue
        if kind != "review":
            continue
        n += 1
        where = f"{LEDGER_NAME} line {line}"
        bad = record_problems(record)
        if bad:
            problems.append(("review_invalid", where, f"review record malformed: {bad[0]}"))
            continue
        key, sha = record["study_key"], record["report"]["sha256"]
        if sha not in reports_seen.get(key, set()):
            problems.append(("review_unknown_report", where,
                             f"review by {record['reviewer']} of study {key} names a report no earlier attempt recorded"))
            continue
        if sha == current_report_sha(latest.get(key)):
            if key not in current_ids:
                current_ids[key] = _report_ids(run_dir / key / "report.json")
            ids = current_ids[key]
            missing = [v["finding_id"] for v in record["verdicts"] if ids is not None and v["finding_id"] not in ids]
            if missing:
                problems.append(("review_unknown_finding", where,
                                 f"review by {record['reviewer']} of study {key} has a verdict on {missing[0]}, "
                                 "which is not a finding of that report"))
    path = run_dir / REVIEWS_NAME
    expected = reviews_jsonl_text(records)
    if expected or path.exists():
        try:
            actual = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            actual = None
        if actual != expected:
            what = "missing" if actual is None else "edited or out of date"
            problems.append(("reviews_mismatch", REVIEWS_NAME,
                             f"{what}: it does not match the review records in {LEDGER_NAME} "
                             "(the next saved review rewrites it from the ledger)"))
    waiting = pending_reviews(run_dir)
    if waiting:
        problems.append(("review_pending", f"{STATE_DIR}/{PENDING_DIR}",
                         f"{len(waiting)} saved review(s) are waiting to be written to the ledger; "
                         f"open `medvlm review {run_dir}` (or run `medvlm agreement`) once no batch is running"))
    problems.extend(_check_recorded_files(run_dir, records, "agreement"))
    return n, problems


def _report_ids(path: Path) -> set[str] | None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        return {f.get("id") for f in doc.get("findings", []) if isinstance(f, dict)}
    except (OSError, ValueError, AttributeError):
        return None  # the report check names this file already


def _check_recorded_files(run_dir: Path, records: list[dict], kind: str) -> list[tuple[str, str, str]]:
    """The files named by the latest record of `kind` still have their recorded hashes."""
    last = None
    for line, record in enumerate(records, start=1):
        if record.get("kind") == kind:
            last = (line, record)
    if last is None:
        return []
    line, record = last
    out = []
    for rel, meta in sorted((record.get("files") or {}).items()):
        path = run_dir / rel
        if not path.is_file():
            out.append(("file_missing", rel, f"{kind} file deleted (recorded at {LEDGER_NAME} line {line})"))
        elif sha256_file(path) != (meta or {}).get("sha256"):
            out.append(("file_edited", rel, f"{kind} file edited since it was recorded at {LEDGER_NAME} line {line}"))
    return out


# -- export -----------------------------------------------------------------------------------

REVIEW_COLUMNS = [
    "study_key", "reviewer", "read", "reviewed_at", "review_id", "source", "report_sha256", "stale",
    "model_risk_level", "reviewer_risk_level", "finding_id", "code", "label", "model_status", "laterality",
    "verdict", "note", "comment",
]


def review_rows(records: list[dict]) -> list[dict]:
    """The export's reviews table: one row per study x reviewer x read x finding (shown or added);
    a review with neither still has one row, for its risk level and comment."""
    latest_attempt = latest_attempts(records)
    latest = latest_reviews(records)
    rows = []
    for key in sorted(latest, key=lambda k: (k[0], k[1], _READ_ORDER[k[2]])):
        r = latest[key]
        base = {
            "study_key": r["study_key"], "reviewer": r["reviewer"], "read": r["read"], "reviewed_at": r["time"],
            "review_id": r["review_id"], "source": r["source"], "report_sha256": r["report"]["sha256"],
            "stale": is_stale(r, latest_attempt.get(r["study_key"])), "model_risk_level": r.get("model_risk_level"),
            "reviewer_risk_level": r.get("risk_level"), "comment": r.get("comment") or None,
        }
        items = [{"finding_id": v["finding_id"], "code": v["code"], "label": v.get("label"),
                  "model_status": v["model_status"], "laterality": v.get("laterality"), "verdict": v.get("verdict"),
                  "note": v.get("note") or None} for v in r["verdicts"]]
        items += [{"finding_id": None, "code": a["code"], "label": a.get("label"), "model_status": None,
                   "laterality": a.get("laterality"), "verdict": "added", "note": a.get("note") or None}
                  for a in r["added"]]
        for item in items or [{}]:
            rows.append({**{c: None for c in REVIEW_COLUMNS}, **base, **item})
    return rows
