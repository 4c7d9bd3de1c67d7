"""`medvlm review RUN --import FILE`: verdicts from a reader study done in a spreadsheet.

Columns (header names are case-insensitive; order free; `,`, `;` or tab separated; UTF-8 with or
without BOM): `study_key`, `reviewer`, `code`, `verdict` (agree, disagree, unsure, added), and
optionally `risk_level`, `comment`, `laterality` (of an added finding), `read` (single, first,
second; default single), `time` (ISO 8601; default: the time of the import), `finding_id`.

A row with a code is a verdict on the model's finding with that code (or a finding the reviewer
adds); its comment becomes that verdict's note. A row with neither code nor verdict carries the
reviewer's risk level and comment for the study. Each study x reviewer x read becomes one
`review` record, checked against the study's current report. Every bad row is reported (row
numbers as a spreadsheet shows them: the header is row 1) and nothing is imported from a file
with a bad row. Cells that medvlm's CSV writer protected against formulas (a leading `'`) are
read back as they were.
"""

from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from ..audit.reviews import (LATERALITIES, READS, RISK_LEVELS, VERDICTS, ReviewInvalid, append_imported,
                             clean_reviewer, make_review)
from ..clock import utc_now
from ..errors import UsageProblem
from ..findings import NO_FINDING
from .runview import RunView, vocabulary_for

REQUIRED = ("study_key", "reviewer", "code", "verdict")
OPTIONAL = ("risk_level", "comment", "laterality", "read", "time", "finding_id")
MAX_BYTES = 50 * 1024 * 1024
MAX_SHOWN = 100  # bad rows listed one per line; beyond this, a count
_GUARDED = set("=+-@\t\r\n\uff1d\uff0b\uff0d\uff20'")


class ImportProblem(UsageProblem):
    """The file cannot be imported; `lines` has one line per bad row (nothing was imported)."""

    def __init__(self, message: str, lines: list[str] | None = None):
        super().__init__(message)
        self.lines = lines or []


@dataclass
class ImportResult:
    records: list[dict]
    rows: int
    reviewers: list[str]
    studies: int
    replaced: int
    ignored_columns: list[str] = field(default_factory=list)


@dataclass
class _Group:
    study_key: str
    reviewer: str
    read: str
    rows: list[int] = field(default_factory=list)
    verdicts: dict[str, dict] = field(default_factory=dict)  # finding id -> {verdict, note}
    added: list[dict] = field(default_factory=list)
    codes: dict[str, int] = field(default_factory=dict)  # code -> row that gave it
    risk: tuple[str, int] | None = None
    comment: tuple[str, int] | None = None
    time: tuple[str, int] | None = None


def _unguard(cell: str) -> str:
    """A cell as medvlm wrote it before its formula guard (`'` + formula start, or `''`); other cells unchanged."""
    if len(cell) >= 2 and cell[0] == "'" and cell[1] in _GUARDED:
        return cell[1:]
    return cell


def _delimiter(header: str) -> str:
    counts = {d: header.count(d) for d in (",", ";", "\t")}
    return max(counts, key=lambda d: counts[d]) if any(counts.values()) else ","


def _read_rows(path: Path) -> tuple[list[str], list[tuple[int, list[str]]], str]:
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise ImportProblem(f"{path}: {size} bytes is more than the {MAX_BYTES // (1024 * 1024)} MiB an import reads")
        data = path.read_bytes()
    except IsADirectoryError:
        raise ImportProblem(f"{path} is a folder; give the CSV file") from None
    except OSError as exc:
        raise ImportProblem(f"cannot read {path}: {exc.strerror or exc}") from None
    digest = hashlib.sha256(data).hexdigest()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ImportProblem(f"{path} is not UTF-8 text (byte {exc.start}); save it as CSV UTF-8") from None
    if not text.strip():
        raise ImportProblem(f"{path} is empty")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=_delimiter(text.splitlines()[0]))
    try:
        records = list(reader)
    except csv.Error as exc:
        raise ImportProblem(f"{path}: not a readable CSV ({exc})") from None
    header = [h.strip().lower().replace(" ", "_") for h in records[0]]
    return header, [(i + 1, r) for i, r in enumerate(records) if i > 0], digest


def _time(value: str) -> str:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ReviewInvalid(f"time {value[:40]!r} is not an ISO 8601 date and time") from None
    return parsed.isoformat()


def import_reviews(run_dir: Path, csv_path: Path) -> ImportResult:
    """Check every row, then append one review record per study x reviewer x read (all or nothing)."""
    view = RunView(run_dir)
    csv_path = Path(csv_path)
    header, rows, digest = _read_rows(csv_path)
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise ImportProblem(f"{csv_path.name}: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                            f"(needs {', '.join(REQUIRED)}; optional {', '.join(OPTIONAL)})")
    dupes = sorted({h for h in header if h and header.count(h) > 1})
    if dupes:
        raise ImportProblem(f"{csv_path.name}: column {dupes[0]} appears twice")
    ignored = [h for h in header if h not in REQUIRED + OPTIONAL]
    col = {h: i for i, h in enumerate(header)}
    snap = view.snapshot()
    errors: list[str] = []
    groups: dict[tuple[str, str, str], _Group] = {}
    docs: dict[str, dict] = {}
    used = 0

    def cell(values: list[str], name: str) -> str:
        i = col.get(name)
        return _unguard(values[i].strip()) if i is not None and i < len(values) else ""

    for number, values in rows:
        if not any(v.strip() for v in values):
            continue  # spreadsheets keep blank rows at the end
        used += 1
        try:
            if len(values) > len(header):
                raise ReviewInvalid(f"has {len(values)} cells but the header has {len(header)} columns")
            key = cell(values, "study_key")
            entry = snap.by_key.get(key)
            if not key:
                raise ReviewInvalid("study_key is empty")
            if entry is None:
                raise ReviewInvalid(f"study_key {key[:40]!r} is not a study of this run")
            if not entry.reviewable:
                raise ReviewInvalid(f"study {key} has no report to review ({entry.status})")
            reviewer = clean_reviewer(cell(values, "reviewer"))
            read = cell(values, "read").lower() or "single"
            if read not in READS:
                raise ReviewInvalid(f"read {read[:20]!r} is not one of {', '.join(READS)}")
            verdict = cell(values, "verdict").lower()
            code_text = cell(values, "code")
            risk = cell(values, "risk_level").lower()
            comment = cell(values, "comment")
            side = cell(values, "laterality").lower()
            if risk and risk not in RISK_LEVELS:
                raise ReviewInvalid(f"risk_level {risk[:20]!r} is not one of {', '.join(RISK_LEVELS)}")
            if side and side not in LATERALITIES:
                raise ReviewInvalid(f"laterality {side[:20]!r} is not one of {', '.join(LATERALITIES)}")
            if key not in docs:
                doc, problem = view.report(key)
                if doc is None:
                    raise ReviewInvalid(f"study {key}: {problem}")
                docs[key] = doc
            doc = docs[key]
            group = groups.setdefault((key, reviewer, read), _Group(key, reviewer, read))
            stamp = cell(values, "time")
            if stamp:
                stamp = _time(stamp)
                if group.time and group.time[0] != stamp:
                    raise ReviewInvalid(f"time differs from row {group.time[1]} for the same study and reviewer")
                group.time = (stamp, number)
            if risk:
                if group.risk and group.risk[0] != risk:
                    raise ReviewInvalid(f"risk_level {risk} differs from {group.risk[0]} in row {group.risk[1]} "
                                        "for the same study and reviewer")
                group.risk = (risk, number)
            if not code_text and not verdict:
                if not risk and not comment:
                    raise ReviewInvalid("has neither a code and verdict nor a risk_level or comment")
                if comment:
                    if group.comment and group.comment[0] != comment:
                        raise ReviewInvalid(f"a second study comment (row {group.comment[1]} has one); "
                                            "put comments on a finding's row to keep several")
                    group.comment = (comment, number)
                group.rows.append(number)
                continue
            if not code_text:
                raise ReviewInvalid(f"verdict {verdict} without a code")
            if verdict not in (*VERDICTS, "added"):
                raise ReviewInvalid(f"verdict {verdict[:20]!r} is not one of agree, disagree, unsure, added")
            vocab = vocabulary_for(doc)
            code = _code(code_text, vocab)
            if code in group.codes:
                raise ReviewInvalid(f"{code} is already given in row {group.codes[code]} for the same study and reviewer")
            findings = [f for f in doc.get("findings", []) if f.get("code") == code]
            if verdict == "added":
                if code == NO_FINDING:
                    raise ReviewInvalid(f"{NO_FINDING} cannot be added; give risk_level normal instead")
                if findings and read != "first":
                    status = findings[0].get("status")
                    raise ReviewInvalid(f"the model reported {code} as absent; use disagree to say it is present"
                                        if status == "absent" else
                                        f"the model reported {code} ({status}); give agree, disagree or unsure "
                                        "instead of added")
                group.added.append({"code": code, "label": vocab.entries[code].label, "laterality": side or None,
                                    "note": comment})
            else:
                if read == "first":
                    raise ReviewInvalid("a first (blind) read lists findings with verdict added only")
                if side:
                    raise ReviewInvalid("laterality is for added findings; note a different side in the comment")
                wanted = cell(values, "finding_id")
                if wanted:
                    findings = [f for f in findings if f.get("id") == wanted]
                if not findings:
                    raise ReviewInvalid(f"the model did not report {code} for study {key}"
                                        + ("" if wanted else "; use verdict added for a finding the model missed"))
                if len(findings) > 1:
                    raise ReviewInvalid(f"the report has {len(findings)} {code} findings; add a finding_id column")
                group.verdicts[findings[0]["id"]] = {"verdict": verdict, "note": comment}
            group.codes[code] = number
            group.rows.append(number)
        except ReviewInvalid as exc:
            errors.append(f"{csv_path.name} row {number}: {exc}")
    if errors:
        shown = errors[:MAX_SHOWN]
        if len(errors) > MAX_SHOWN:
            shown.append(f"... and {len(errors) - MAX_SHOWN} more bad rows")
        raise ImportProblem(f"nothing imported: {len(errors)} bad row{'s' if len(errors) > 1 else ''} in {csv_path}", shown)
    if not groups:
        raise ImportProblem(f"nothing imported: {csv_path} has a header but no rows")
    imported_at = utc_now()
    records = []
    for (key, reviewer, read), g in sorted(groups.items()):
        doc = docs[key]
        sha = snap.by_key[key].report_sha256
        records.append(make_review(
            reviewer=reviewer, study_key=key, report_path=f"{key}/report.json", report_sha256=sha, read=read,
            findings=[f for f in doc.get("findings", []) if isinstance(f, dict)] if read != "first" else [],
            verdicts=g.verdicts, added=g.added, risk_level=g.risk[0] if g.risk else None,
            comment=g.comment[0] if g.comment else "", model_risk_level=(doc.get("risk") or {}).get("level"),
            source="import", time=g.time[0] if g.time else imported_at,
            extra={"import": {"file": csv_path.name, "sha256": digest, "rows": g.rows, "imported_at": imported_at}},
        ))
    replaced = sum(1 for r in records if (r["study_key"], r["reviewer"], r["read"]) in snap.reviews)
    append_imported(Path(run_dir), records)
    return ImportResult(records, used, sorted({r["reviewer"] for r in records}), len({r["study_key"] for r in records}),
                        replaced, ignored)


def _code(text: str, vocab) -> str:
    """A vocabulary code from a code or a label (any case, spaces or underscores)."""
    norm = text.strip().lower().replace(" ", "_").replace("-", "_")
    if norm in vocab.entries:
        return norm
    for code, entry in vocab.entries.items():
        if entry.label.lower().replace(" ", "_").replace("-", "_") == norm:
            return code
    raise ReviewInvalid(f"code {text[:40]!r} is not in the {vocab.id} vocabulary")
