"""What a run folder says about each study: status, risk, and each finding code's strongest status."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..csvsafe import read_rows
from ..errors import NotARun
from ..fileio import sha256_file

_RANK = {"present": 3, "uncertain": 2, "absent": 1}


@dataclass
class RunStudy:
    key: str
    source: str
    status: str  # ok, error, skipped
    risk: str | None = None
    answer_status: str | None = None
    reason: str = ""
    findings: dict[str, str] = field(default_factory=dict)  # code -> present | uncertain | absent
    files: list[str] = field(default_factory=list)  # input files relative to the batch root
    notice: str | None = None  # the report's model notice (demo or phantom model)

    def present(self) -> set[str]:
        return {c for c, s in self.findings.items() if s == "present"}


def read_run(run_dir: Path) -> tuple[list[RunStudy], str | None]:
    """The run's studies from summary.csv and each report.json, plus summary.csv's SHA-256."""
    run_dir = Path(run_dir)
    summary = run_dir / "summary.csv"
    if not run_dir.is_dir():
        raise NotARun(f"run folder not found: {run_dir}")
    if not summary.is_file():
        raise NotARun(f"{run_dir} is not a medvlm run folder (no summary.csv)")
    rows = read_rows(summary)  # cells restored from the spreadsheet-safe form
    studies = []
    for row in rows:
        study = RunStudy(key=row.get("study_key", ""), source=row.get("source", ""), status=row.get("status") or "error",
                         risk=row.get("risk_level") or None, answer_status=row.get("answer_status") or None,
                         reason=row.get("reason") or "")
        if study.status == "ok":
            _read_report(run_dir, row, study)
        studies.append(study)
    return studies, sha256_file(summary)


def _read_report(run_dir: Path, row: dict, study: RunStudy) -> None:
    rel = row.get("report") or f"{study.key}/report.json"
    path = (run_dir / rel).resolve()
    try:
        path.relative_to(run_dir.resolve())
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        study.status, study.reason = "error", "report.json missing or unreadable"
        return
    for f in doc.get("findings") or []:
        code, status = f.get("code"), f.get("status")
        if code and _RANK.get(status, 0) > _RANK.get(study.findings.get(code), 0):
            study.findings[code] = status
    study.notice = doc.get("demo_notice") or None
    study.answer_status = (doc.get("model_output") or {}).get("answer_status") or study.answer_status
    study.risk = (doc.get("risk") or {}).get("level") or study.risk
    inputs = (doc.get("provenance") or {}).get("inputs") or []
    study.files = [i["file"] for i in inputs if isinstance(i, dict) and i.get("file")]
