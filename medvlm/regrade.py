"""Re-extract findings and re-grade risk from the model text stored in a run's reports (no model)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .audit.maintenance import RegradeAudit
from .audit.session import require_run
from .clock import utc_now
from .csvsafe import read_rows
from .errors import UsageProblem, first_line
from .fileio import sha256_file
from .outputs import write_summary
from .records import MODALITIES, to_jsonable
from .report.build import SCHEMA_VERSION, findings_json
from .report.index import write_index
from .report.validate import read_report
from .report.write import read_thumbnails, render_study_files, write_study_files
from .resources import Resources
from .stages import assess


@dataclass
class RegradeResult:
    changed: list[str] = field(default_factory=list)  # study keys whose risk level changed
    rewritten: int = 0
    errors: list[str] = field(default_factory=list)  # "key: reason"
    adopted: list[str] = field(default_factory=list)  # study keys whose edited files were adopted (--adopt-edits)


def _edited_line(edits: dict[str, dict]) -> str:
    """One line naming the files altered outside medvlm and why the study was not regraded."""
    rel, change = next(iter(edits.items()))
    if change["recorded"] is None:
        what = f"{rel}: no ledger record (not written by a recorded medvlm attempt)"
    elif change["found"] is None:
        what = f"{rel}: deleted since the ledger recorded it"
    else:
        what = f"{rel}: edited outside medvlm (sha256 {change['found'][:12]}… differs from the ledger's {change['recorded'][:12]}…)"
    more = f" (+{len(edits) - 1} more files)" if len(edits) > 1 else ""
    return f"{what}{more}; not regraded (pass --adopt-edits to regrade it and record the adoption in the ledger)"


def regrade_report(doc: dict, vocab_file: Path | None = None, rules_file: Path | None = None,
                   resources: Resources | None = None) -> dict:
    """A new report dict: same study, prompt and model text; findings, risk and their hashes renewed."""
    modality = doc["study"]["modality"]
    res = (resources or Resources(vocab_file=vocab_file, rules_file=rules_file)).for_modality(modality)
    assessment = assess(doc["model_output"]["text"], doc["model_output"]["answer_status"], modality, res)
    new = json.loads(json.dumps(doc))  # deep copy of plain JSON
    new["schema_version"] = SCHEMA_VERSION  # an older report gains finding ids and the cues entry
    new["model_output"]["answer_status"] = assessment.answer_status  # as graded with the current cues
    new["findings"] = findings_json(assessment.findings, doc["study"]["key"], doc["model_output"]["text"])
    new["risk"] = to_jsonable(assessment.grade)
    new["provenance"].update(res.provenance())
    new["provenance"]["regraded_at"] = utc_now()
    return new


def regrade_run(
    run_dir: Path, *, vocab_file: Path | None = None, rules_file: Path | None = None, pdf: bool = True, on_report=None,
    adopt_edits: bool = False,
) -> RegradeResult:
    """Rewrite every report.json (validated) and its HTML/PDF under run_dir; returns what changed.

    A study whose report or files differ from what the ledger recorded (edited outside medvlm), or
    whose report has no ledger record, is not regraded: it is an error naming the file, and `verify`
    keeps reporting it. adopt_edits regrades it anyway and appends an `adopt` record naming each
    file with its recorded and found SHA-256 before the new attempt. Raises NotARun for a folder
    that is not a run (nothing written).
    """
    run_dir = Path(run_dir)
    require_run(run_dir)
    result = RegradeResult()
    listed = _read_summary(run_dir)
    order = list(listed)  # the rows' order only: their values come from the ledger
    resources = Resources(vocab_file=vocab_file, rules_file=rules_file)
    for modality in sorted({row.get("modality") for row in listed.values()} & set(MODALITIES)):
        resources.for_modality(modality)  # a bad --rules/--vocab file stops here, before the ledger is touched
    with RegradeAudit(run_dir) as audit:
        summary = _ledger_rows(audit.latest, order)
        for report_path in sorted(run_dir.glob("*/report.json")):
            study_dir = report_path.parent
            key = study_dir.name
            latest = audit.latest.get(key)
            if latest is not None and latest.get("status") != "ok":
                continue  # a later attempt failed; this report is stale and verify says so
            edits = audit.edits(key)
            if edits and not adopt_edits:
                result.errors.append(_edited_line(edits))
                continue
            if edits:
                audit.adopt(key, edits)
                result.adopted.append(key)
            try:
                doc = read_report(report_path)  # not JSON, or not a report: this study's one-line error
                new = regrade_report(doc, resources=resources)
                written = write_study_files(study_dir, render_study_files(new, read_thumbnails(study_dir, new), pdf=pdf))
                if not pdf and (study_dir / "report.pdf").exists():
                    (study_dir / "report.pdf").unlink()  # a PDF of the old grade would contradict the JSON
                for img in new["images"]:
                    if img.get("thumbnail") and (study_dir / img["thumbnail"]).is_file():
                        written[img["thumbnail"]] = sha256_file(study_dir / img["thumbnail"])
            except UsageProblem:
                raise  # a bad vocabulary or rules file: the whole command stops with one line
            except (OSError, ValueError, KeyError) as exc:
                result.errors.append(f"{key}: {first_line(exc)}")
                continue
            result.rewritten += 1
            if new["risk"]["level"] != doc["risk"]["level"]:
                result.changed.append(key)
            row = summary.get(key)
            if row is not None:
                row["risk_level"] = new["risk"]["level"]
                row["answer_status"] = new["model_output"]["answer_status"]
                row["present_findings"] = ";".join(sorted({f["code"] for f in new["findings"] if f["status"] == "present"}))
            modality = new["study"]["modality"]
            hashes = resources.for_modality(modality).hashes()
            audit.record(key, dict(row or {"study_key": key, "status": "ok"}), written, modality,
                         {name: hashes[name] for name in ("vocabulary", "cues", "rules")})
            if on_report:
                on_report(study_dir, doc, new)
        if summary:
            write_summary(run_dir, summary.values())
            write_index(run_dir, list(summary.values()))
    return result


def _ledger_rows(latest: dict[str, dict], order: list[str]) -> dict[str, dict]:
    """summary.csv rows as the ledger recorded them (an edit to summary.csv is not carried into the
    rewritten file and its run_end hash), in summary.csv's order, then any study it lacks."""
    rows = {key: dict(latest[key]["row"]) for key in order if (latest.get(key) or {}).get("row")}
    for key, record in latest.items():
        if key not in rows and record.get("row"):
            rows[key] = dict(record["row"])
    return rows


def _read_summary(run_dir: Path) -> dict[str, dict]:
    path = run_dir / "summary.csv"
    if not path.is_file():
        return {}
    return {row["study_key"]: row for row in read_rows(path)}  # cells restored from the spreadsheet-safe form
