"""Export a run folder as two tables (studies, findings) in CSV, Parquet or JSON lines (see docs/export.md)."""

from __future__ import annotations

import io
from pathlib import Path

from ..csvsafe import frame_to_text, read_rows
from ..errors import NotARun, RunBusy, UsageProblem
from ..fileio import atomic_write_bytes, writable_dir_problem
from ..finding_ids import ids_for_codes
from ..report.validate import ReportInvalid, read_report
from .ledger import LEDGER_NAME, latest_attempts, read_ledger
from .session import reading_run, require_run

FORMATS = ("csv", "parquet", "jsonl")
STAGES = ("decode", "prompt", "model", "extract", "grade", "report", "render")
AGE_CAP = 90  # ages above 89 are identifying (HIPAA safe harbour); exported as 90

STUDY_COLUMNS = [
    "study_key", "modality", "status", "stage", "reason", "risk_level", "answer_status",
    "present_findings", "rules_fired", "n_images", "n_findings", "n_present",
    "age_years", "sex", "view", "body_part", "dicom_modality",
    "model_name", "model_source", "model_revision", "weights_digest", "random_weights",
    "dtype", "quantization", "device",
    "prompt_id", "prompt_sha256", "vocabulary_id", "vocabulary_sha256", "cues_id", "cues_sha256",
    "rules_id", "rules_sha256",
    "medvlm_version", "git_commit", "inputs_sha256", "report_sha256", "attempt_fingerprint", "run_id",
    "prompt_tokens", "new_tokens", "started_at", "finished_at",
    *[f"seconds_{s}" for s in STAGES], "seconds_total",
]
PHI_STUDY_COLUMNS = ["source", "input_files"]  # plus phi_<DICOM keyword> columns found in reports
FINDING_COLUMNS = [
    "study_key", "finding_id", "finding_index", "code", "label", "status", "critical", "severity", "laterality", "change",
    "cue", "evidence_text", "evidence_start", "evidence_end", "evidence_sentence",
]


class ExportProblem(UsageProblem):
    """The run folder cannot be exported (usage error)."""


def _attempts(run_dir: Path) -> list[dict]:
    """Latest attempt per study from the ledger, or rows of summary.csv when there is no ledger."""
    ledger = run_dir / LEDGER_NAME
    if ledger.is_file():
        return [dict(r, **{"_row": r.get("row") or {}}) for r in latest_attempts(read_ledger(ledger).records).values()]
    summary = run_dir / "summary.csv"
    if not summary.is_file():
        raise ExportProblem(f"{run_dir} is not a medvlm run folder (no {LEDGER_NAME} or summary.csv)")
    return [{"study_key": r["study_key"], "status": r["status"], "_row": r} for r in read_rows(summary)]


def _deidentified_reason(row: dict) -> str | None:
    """The one-line reason without quoted values, UIDs or the study's file names (often identifying)."""
    from ..ingest.privacy import scrub

    reason = row.get("reason") or ""
    for name in filter(None, {row.get("source"), Path(row.get("source") or "").name}):
        reason = reason.replace(name, "<source>")
    return scrub(reason) or None


def _study_row(attempt: dict, doc: dict | None, include_phi: bool) -> dict:
    row = attempt["_row"]
    base = {c: None for c in STUDY_COLUMNS}
    base.update(
        study_key=attempt["study_key"],
        status=attempt.get("status") or row.get("status"),
        stage=row.get("stage") or None,
        reason=_deidentified_reason(row) if not include_phi else (row.get("reason") or None),
        modality=row.get("modality") or None,
        risk_level=row.get("risk_level") or None,
        answer_status=row.get("answer_status") or None,
        present_findings=row.get("present_findings") or None,
        report_sha256=(attempt.get("report") or {}).get("sha256"),
        attempt_fingerprint=attempt.get("fingerprint"),
        run_id=attempt.get("run_id"),
    )
    inputs = attempt.get("inputs") or {}
    if include_phi:
        base["source"] = row.get("source") or None
        base["input_files"] = ";".join(inputs) or None
    if doc is None:
        return base
    prov = doc.get("provenance", {})
    model = prov.get("model", {})
    ctx = doc.get("study", {}).get("context", {})
    findings = doc.get("findings", [])
    stages = prov.get("stage_seconds", {})
    age = ctx.get("age_years")
    base.update(
        modality=doc["study"].get("modality"),
        risk_level=doc.get("risk", {}).get("level"),
        answer_status=doc.get("model_output", {}).get("answer_status"),
        rules_fired=";".join(r.get("rule_id", "") for r in doc.get("risk", {}).get("rules_fired", [])) or None,
        n_images=len(doc.get("images", [])),
        n_findings=len(findings),
        n_present=sum(1 for f in findings if f.get("status") == "present"),
        age_years=min(age, AGE_CAP) if isinstance(age, int) else None,
        sex=ctx.get("sex"),
        view=ctx.get("view"),
        body_part=ctx.get("body_part"),
        dicom_modality=ctx.get("dicom_modality"),
        model_name=model.get("name"),
        model_source=model.get("source"),
        model_revision=model.get("revision"),
        weights_digest=model.get("weights_digest"),
        random_weights=model.get("random_weights"),
        dtype=prov.get("dtype"),
        quantization=prov.get("quantization"),
        device=prov.get("device"),
        prompt_id=prov.get("prompt", {}).get("id"),
        prompt_sha256=prov.get("prompt", {}).get("sha256"),
        vocabulary_id=prov.get("vocabulary", {}).get("id"),
        vocabulary_sha256=prov.get("vocabulary", {}).get("sha256"),
        cues_id=(prov.get("cues") or {}).get("id"),
        cues_sha256=(prov.get("cues") or {}).get("sha256"),
        rules_id=prov.get("rules", {}).get("id"),
        rules_sha256=prov.get("rules", {}).get("sha256"),
        medvlm_version=prov.get("medvlm_version"),
        git_commit=prov.get("git_commit"),
        inputs_sha256=";".join(i["sha256"] for i in prov.get("inputs", [])) or None,
        prompt_tokens=doc.get("model_output", {}).get("prompt_tokens"),
        new_tokens=doc.get("model_output", {}).get("new_tokens"),
        started_at=prov.get("started_at"),
        finished_at=prov.get("finished_at"),
        seconds_total=round(sum(stages.values()), 6) if stages else None,
        **{f"seconds_{s}": stages.get(s) for s in STAGES},
    )
    if include_phi:
        for name, value in (doc.get("study", {}).get("phi") or {}).items():
            base[f"phi_{name}"] = value
    return base


def _finding_rows(key: str, doc: dict) -> list[dict]:
    found = doc.get("findings", [])
    # Reports written before finding ids (schema 1.0) get the ids a regrade would give them.
    study_key = (doc.get("study") or {}).get("key") or key
    text = (doc.get("model_output") or {}).get("text") or ""
    derived = ids_for_codes(study_key, text, (f.get("code") or "" for f in found))
    rows = []
    for i, f in enumerate(found):
        ev = f.get("evidence") or {}
        rows.append(
            {
                "study_key": key, "finding_id": f.get("id") or derived[i], "finding_index": i,
                "code": f.get("code"), "label": f.get("label"),
                "status": f.get("status"), "critical": bool(f.get("critical")), "severity": f.get("severity"),
                "laterality": f.get("laterality"), "change": f.get("change"), "cue": f.get("cue"),
                "evidence_text": ev.get("text"), "evidence_start": ev.get("start"), "evidence_end": ev.get("end"),
                "evidence_sentence": ev.get("sentence"),
            }
        )
    return rows


def build_tables(run_dir: Path, *, include_phi: bool = False):
    """(studies, findings) as pandas DataFrames, one row per study and per study x finding."""
    import pandas as pd

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ExportProblem(f"run folder not found: {run_dir}")
    studies, findings = [], []
    for attempt in sorted(_attempts(run_dir), key=lambda a: a["study_key"]):
        doc = None
        path = run_dir / attempt["study_key"] / "report.json"
        if attempt.get("status") == "ok" and path.is_file():
            try:
                doc = read_report(path)
            except ReportInvalid as exc:  # edited or damaged outside medvlm: refuse to export it as data
                raise ExportProblem(f"{exc}; run `medvlm verify {run_dir}`") from None
            findings.extend(_finding_rows(attempt["study_key"], doc))
        studies.append(_study_row(attempt, doc, include_phi))
    columns = STUDY_COLUMNS + (PHI_STUDY_COLUMNS if include_phi else [])
    extra = sorted({c for r in studies for c in r if c.startswith("phi_")})
    study_df = pd.DataFrame(studies, columns=columns + extra)
    finding_df = pd.DataFrame(findings, columns=FINDING_COLUMNS)
    for col in ("n_images", "n_findings", "n_present", "age_years", "prompt_tokens", "new_tokens"):
        study_df[col] = study_df[col].astype("Int64")
    for col in ("finding_index", "evidence_start", "evidence_end"):
        finding_df[col] = finding_df[col].astype("Int64")
    study_df["random_weights"] = study_df["random_weights"].astype("boolean")
    finding_df["critical"] = finding_df["critical"].astype("boolean")
    return study_df, finding_df


def _encode(df, fmt: str) -> bytes:
    if fmt == "csv":
        return frame_to_text(df).encode("utf-8")  # spreadsheet-safe cells (csvsafe.py); parquet/jsonl stay raw
    if fmt == "jsonl":
        return (df.to_json(orient="records", lines=True, force_ascii=False) or "").encode("utf-8")
    buf = io.BytesIO()
    df.to_parquet(buf, index=False, engine="pyarrow")
    return buf.getvalue()


def reviews_table(run_dir: Path):
    """The reviews table (see audit/reviews.py REVIEW_COLUMNS): one row per study x reviewer x read x finding."""
    import pandas as pd

    from .reviews import REVIEW_COLUMNS, review_rows

    ledger = Path(run_dir) / LEDGER_NAME
    rows = review_rows(read_ledger(ledger).records) if ledger.is_file() else []
    df = pd.DataFrame(rows, columns=REVIEW_COLUMNS)
    df["stale"] = df["stale"].astype("boolean")
    return df


def export_run(run_dir: Path, out_dir: Path, fmt: str = "csv", *, include_phi: bool = False) -> dict[str, tuple[Path, int]]:
    """Write studies.<fmt>, findings.<fmt> and reviews.<fmt> atomically; returns table name -> (path, rows)."""
    if fmt not in FORMATS:
        raise ExportProblem(f"--format must be one of {', '.join(FORMATS)} (got {fmt!r})")
    problem = writable_dir_problem(Path(out_dir), "--out")
    if problem:
        raise ExportProblem(problem)
    try:  # every check and the whole read before the first write
        require_run(Path(run_dir))
        with reading_run(Path(run_dir), "export"):  # a batch writing now would give a partial table
            studies, findings = build_tables(run_dir, include_phi=include_phi)
            reviews = reviews_table(run_dir)
    except (NotARun, RunBusy) as exc:
        raise ExportProblem(str(exc)) from None
    written = {}
    for name, df in (("studies", studies), ("findings", findings), ("reviews", reviews)):
        path = Path(out_dir) / f"{name}.{fmt}"
        atomic_write_bytes(path, _encode(df, fmt))
        written[name] = (path, len(df))
    return written
