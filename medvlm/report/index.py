"""<out>/index.html: one offline page listing every study of a batch, with links to each report."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from urllib.parse import quote

from ..fileio import atomic_write_text
from .html import RISK_ORDER, render_index_html

# Sort rank for the risk column: most urgent first, then studies that produced no grade.
_RANK = {level: i for i, level in enumerate(RISK_ORDER)}
_RANK.update({"error": len(RISK_ORDER), "skipped": len(RISK_ORDER) + 1})


def _inside(out_dir: Path, rel: str) -> Path | None:
    """out_dir/rel when it names a file inside out_dir (a row can never point the index elsewhere)."""
    if not rel:
        return None
    try:
        path = (out_dir / rel).resolve()
        path.relative_to(out_dir.resolve())
    except (OSError, ValueError):
        return None
    return path if path.is_file() else None


def _href(out_dir: Path, path: Path) -> str:
    return quote(path.relative_to(out_dir.resolve()).as_posix())


def _read_report(path: Path | None) -> dict | None:
    if path is None:
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _finding_label(f: dict) -> str:
    extra = [x for x in (f.get("laterality"), f.get("severity")) if x]
    return f"{f.get('label') or f.get('code')}" + (f" ({', '.join(extra)})" if extra else "")


def index_entry(out_dir: Path, row: dict) -> dict:
    """One table row: the summary row plus links and details from the study's report.json."""
    status = row.get("status") or "error"
    report_json = _inside(out_dir, row.get("report") or "")
    doc = _read_report(report_json)
    links = []
    if report_json is not None:
        for name, label in (("report.html", "HTML"), ("report.pdf", "PDF"), ("report.json", "JSON")):
            target = report_json.with_name(name)
            if target.is_file():
                links.append({"label": label, "href": _href(out_dir, target)})
    present_codes = [c for c in (row.get("present_findings") or "").split(";") if c]
    present, uncertain, model, demo, top_rule = [], [], "", None, ""
    if doc is not None:
        findings = doc.get("findings") or []
        present = [{"label": _finding_label(f), "code": f.get("code", "")} for f in findings if f.get("status") == "present"]
        uncertain = [_finding_label(f) for f in findings if f.get("status") == "uncertain"]
        present_codes = sorted({f.get("code", "") for f in findings if f.get("status") == "present"} - {""})
        model = ((doc.get("provenance") or {}).get("model") or {}).get("name", "")
        demo = doc.get("demo_notice")
        fired = (doc.get("risk") or {}).get("rules_fired") or []
        top_rule = fired[0].get("description", "") if fired else ""
    elif present_codes:
        present = [{"label": c.replace("_", " "), "code": c} for c in present_codes]
    risk = row.get("risk_level") or ""
    shown = risk if status == "ok" and risk else status
    reason = row.get("reason") or ""
    if status == "ok" and row.get("report") and doc is None:
        reason = reason or "report.json missing or unreadable"
    return {
        "key": row.get("study_key") or "",
        "source": row.get("source") or "",
        "modality": row.get("modality") or "",
        "status": status,
        "risk": shown,
        "risk_rank": _RANK.get(shown, len(_RANK)),
        "present": present,
        "present_codes": present_codes,
        "uncertain": uncertain,
        "answer_status": row.get("answer_status") or "",
        "stage": row.get("stage") or "",
        "reason": reason,
        "model": model,
        "demo": demo,
        "top_rule": top_rule,
        "links": links,
    }


def evaluations(out_dir: Path) -> list[dict]:
    """Evaluation pages (`medvlm evaluate`) in the run folder or a sub-folder that is not a study, newest first."""
    from ..fileio import sha256_file

    out_dir = Path(out_dir)
    summary = out_dir / "summary.csv"
    current = sha256_file(summary) if summary.is_file() else None
    found = []
    for path in [out_dir / "evaluation.json", *sorted(out_dir.glob("*/evaluation.json"))]:
        page = path.with_name("evaluation.html")
        if not path.is_file() or not page.is_file() or (path.parent / "report.json").exists():
            continue
        doc = _read_report(path) or {}
        micro = doc.get("micro_f1") or {}
        found.append({
            "href": _href(out_dir, page.resolve()),
            "truth": Path(str((doc.get("truth") or {}).get("path", ""))).name,
            "micro_f1": micro.get("value") if isinstance(micro, dict) else None,
            "studies": (doc.get("counts") or {}).get("evaluated_studies"),
            "created_at": doc.get("created_at", ""),
            "stale": bool(current and doc.get("run_summary_sha256") not in (None, current)),
        })
    return sorted(found, key=lambda e: e["created_at"], reverse=True)


def review_agreement(out_dir: Path) -> dict | None:
    """agreement.json (`medvlm agreement`) for the index's review section, marked stale when reviews changed since."""
    from ..fileio import sha256_file

    out_dir = Path(out_dir)
    doc = _read_report(out_dir / "agreement.json")
    if not doc or not isinstance(doc.get("counts"), dict):
        return None
    reviews = out_dir / "reviews.jsonl"
    current = sha256_file(reviews) if reviews.is_file() else None
    return {**doc, "stale": doc.get("reviews_sha256") != current}


def index_context(out_dir: Path, rows: list[dict]) -> dict:
    """Everything index.html.j2 needs: entries sorted most urgent first, counts and filter choices."""
    out_dir = Path(out_dir)
    entries = [index_entry(out_dir, r) for r in rows]
    entries.sort(key=lambda e: (e["risk_rank"], e["source"], e["key"]))
    by_risk = Counter(e["risk"] for e in entries)
    finding_counts = Counter(c for e in entries for c in e["present_codes"])
    return {
        "entries": entries,
        "counts": Counter(e["status"] for e in entries),
        "risk_choices": [(lvl, by_risk[lvl]) for lvl in (*RISK_ORDER, "error", "skipped") if by_risk[lvl]],
        "finding_choices": sorted(finding_counts.items()),
        "demo_notice": next((e["demo"] for e in entries if e["demo"]), None),
        "models": sorted({e["model"] for e in entries if e["model"]}),
        "title": out_dir.resolve().name,
        "evaluations": evaluations(out_dir),
        "agreement": review_agreement(out_dir),
    }


def write_index(out_dir: Path, rows: list[dict]) -> Path:
    """Write <out_dir>/index.html atomically for these summary rows; returns its path."""
    out_dir = Path(out_dir)
    path = out_dir / "index.html"
    atomic_write_text(path, render_index_html(index_context(out_dir, rows)))
    return path
