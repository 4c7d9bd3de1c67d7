"""Template contexts for the worklist and the review page (plain dicts; the templates escape every value)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from urllib.parse import quote, urlencode

from jinja2 import ChoiceLoader, Environment, FileSystemLoader, StrictUndefined, select_autoescape

from ..audit.reviews import LATERALITIES, RISK_LEVELS
from ..findings import NO_FINDING
from ..paths import data_dir
from ..report import html as report_html
from .runview import Snapshot, StudyEntry, disagrees, vocabulary_for

TEMPLATES = Path(__file__).resolve().parent / "templates"
SHOW = {  # worklist filters: name -> label
    "todo": "not yet reviewed",
    "disagree": "disagreements",
    "stale": "report changed since review",
    "done": "reviewed",
    "all": "all studies",
}
RISK_KEYS = ("normal", "low", "moderate", "high", "critical", "indeterminate")  # keys 1..6


@lru_cache(maxsize=1)
def environment() -> Environment:
    """The report template family plus the review templates (the same base page, macros and escaping)."""
    env = Environment(
        loader=ChoiceLoader([FileSystemLoader(TEMPLATES), FileSystemLoader(data_dir("report/templates"))]),
        autoescape=select_autoescape(enabled_extensions=("html", "j2"), default=True, default_for_string=True),
        undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True,
    )
    env.globals.update(report_html.environment().globals)
    return env


def render(name: str, **context) -> str:
    return environment().get_template(name).render(for_pdf=False, **context)


def message_page(title: str, heading: str, message: str, back: str = "/") -> str:
    """A page with one sentence (a study without a readable report, a 404)."""
    return render("message.html.j2", title=title, heading=heading, message=message, back=back, js={"page": "message"})


# -- worklist ----------------------------------------------------------------------------------


class Filter:
    """The worklist filter in the query string (?show=todo&risk=high&risk=critical), also used for next/previous."""

    def __init__(self, show: str | None, risks: list[str], blind: bool):
        self.show = show if show in SHOW else "all"
        self.risks = [] if blind else [r for r in risks if r in report_html.RISK_ORDER]

    def query(self, **override) -> str:
        pairs = [("show", override.get("show", self.show))] + [("risk", r) for r in override.get("risks", self.risks)]
        pairs = [(k, v) for k, v in pairs if v and not (k == "show" and v == "all")]
        return ("?" + urlencode(pairs)) if pairs else ""


def review_state(snap: Snapshot, entry: StudyEntry, reviewer: str | None, blind: bool) -> dict:
    """How far `reviewer` is with a study: state (todo, first, done, disagree, stale, queued), the final read."""
    if not reviewer or not entry.reviewable:
        return {"state": "none" if not entry.reviewable else "todo", "final": None, "first": None}
    final = snap.final_review(entry.key, reviewer)
    first = snap.review(entry.key, reviewer, "first")
    if final is None:
        state = "first" if first else "todo"
    elif snap.stale(final):
        state = "stale"
    elif disagrees(final, entry.risk):
        state = "disagree"
    else:
        state = "done"
    return {"state": state, "final": final, "first": first, "queued": bool((final or first or {}).get("queued"))}


def matches(entry: StudyEntry, state: dict, flt: Filter) -> bool:
    if flt.risks and entry.risk not in flt.risks:
        return False
    s = state["state"]
    return {"all": True, "todo": entry.reviewable and s in ("todo", "first", "stale"),
            "done": s in ("done", "disagree"), "disagree": s == "disagree", "stale": s == "stale"}[flt.show]


def ordered(snap: Snapshot, blind: bool) -> list[StudyEntry]:
    """Worklist order: most urgent model risk first, as index.html; blind: by study key (the order would tell)."""
    if blind:
        return sorted(snap.entries, key=lambda e: (not e.reviewable, e.key))
    return list(snap.entries)


def neighbours(snap: Snapshot, key: str, reviewer: str | None, flt: Filter, blind: bool) -> tuple[str | None, str | None, int, int]:
    """(previous key, next key, position, count) of `key` among the studies the filter shows (key need not be shown)."""
    order = ordered(snap, blind)
    here = next((i for i, e in enumerate(order) if e.key == key), -1)
    prev_key = next_key = None
    position = count = 0
    for i, e in enumerate(order):
        if not e.reviewable or not matches(e, review_state(snap, e, reviewer, blind), flt):
            continue
        count += 1
        if i < here:
            prev_key = e.key
        elif i == here:
            position = count
        elif next_key is None:
            next_key = e.key
    return prev_key, next_key, position, count


def worklist_context(snap: Snapshot, *, run_name: str, reviewer: str | None, reviewer_fixed: bool, blind: bool,
                     flt: Filter, csrf: str) -> dict:
    rows, counts = [], {"reviewable": 0, "reviewed": 0, "stale": 0, "disagree": 0, "first": 0, "unavailable": 0}
    for e in ordered(snap, blind):
        st = review_state(snap, e, reviewer, blind)
        if e.reviewable:
            counts["reviewable"] += 1
            counts["reviewed"] += st["state"] in ("done", "disagree")
            counts["stale"] += st["state"] == "stale"
            counts["disagree"] += st["state"] == "disagree"
            counts["first"] += st["state"] == "first"
        else:
            counts["unavailable"] += 1
        if not matches(e, st, flt):
            continue
        hidden = blind and st["state"] in ("todo",)  # nothing of the model before the first read
        final = st["final"]
        rows.append({
            "key": e.key, "href": f"/study/{quote(e.key)}{flt.query()}", "reviewable": e.reviewable,
            "status": e.status, "reason": e.reason, "modality": e.modality.replace("_", " "),
            "source": e.source if e.include_phi else "",
            "risk": "" if hidden else e.risk, "present": [] if hidden else [c.replace("_", " ") for c in e.present],
            "hidden": hidden, "state": st["state"], "queued": st.get("queued", False),
            "my_risk": (final or st["first"] or {}).get("risk_level") or "",
            "reviewed_at": (final or st["first"] or {}).get("time", "")[:16].replace("T", " "),
            "others": sorted({r for (k, r, _) in snap.reviews if k == e.key and r != reviewer}),
        })
    risk_choices = [] if blind else [lvl for lvl in report_html.RISK_ORDER if any(e.risk == lvl for e in snap.entries)]
    by_reviewer = {}
    for (k, r, read) in snap.reviews:
        if read != "first":
            by_reviewer.setdefault(r, set()).add(k)
    return {
        "title": run_name, "rows": rows, "counts": counts, "reviewer": reviewer, "reviewer_fixed": reviewer_fixed,
        "blind": blind, "flt": flt, "show_choices": SHOW, "risk_choices": risk_choices, "csrf": csrf,
        "queued": snap.queued, "by_reviewer": sorted((r, len(ks)) for r, ks in by_reviewer.items()),
        "js": {"page": "worklist", "csrf": csrf, "reviewer_fixed": reviewer_fixed, "reviewer": reviewer or ""},
    }


# -- review page -------------------------------------------------------------------------------


def _sorted_findings(doc: dict) -> list[dict]:
    """Present, then uncertain, then absent findings; critical ones first; as the report orders them."""
    rank = {s: i for i, s in enumerate(report_html.STATUS_ORDER)}
    found = [f for f in doc.get("findings", []) if isinstance(f, dict)]
    return sorted(found, key=lambda f: (rank.get(f.get("status"), 9), not f.get("critical"), f.get("label", "")))


def answer_segments(doc: dict) -> list[dict]:
    """The model text with each finding's evidence marked by status, and by finding id for the selected-row highlight."""
    text = (doc.get("model_output") or {}).get("text") or ""
    spans = []
    for f in doc.get("findings", []):
        ev = f.get("evidence") or {}
        if isinstance(ev.get("start"), int) and isinstance(ev.get("end"), int):
            fid = f.get("id") or ""
            spans.append((ev["start"], ev["end"], f"st-{f.get('status')} ev-{fid}", f"{f.get('label')}: {f.get('status')}"))
    return report_html.mark_segments(text, spans)


def read_mode(snap: Snapshot, key: str, reviewer: str, blind: bool) -> str:
    """Which read this page records: single (not blind), first (blind, nothing read yet), second (after a first)."""
    if not blind:
        return "single"
    if snap.review(key, reviewer, "first"):
        return "second"
    if snap.review(key, reviewer, "single"):
        return "single"  # reviewed without blinding before: it cannot be a blind read any more
    return "first"


def study_context(snap: Snapshot, entry: StudyEntry, doc: dict, *, reviewer: str, blind: bool, flt: Filter,
                  run_name: str, csrf: str) -> dict:
    read = read_mode(snap, entry.key, reviewer, blind)
    show_model = read != "first"
    prev_key, next_key, position, count = neighbours(snap, entry.key, reviewer, flt, blind)
    findings = _sorted_findings(doc) if show_model else []
    vocab = vocabulary_for(doc)
    reported = {f.get("code") for f in findings}  # any status: a verdict on the finding says it
    choices = [{"code": c, "label": e.label, "critical": e.critical, "reported": c in reported}
               for c, e in vocab.entries.items() if c != NO_FINDING]
    choices.sort(key=lambda c: c["label"].lower())
    mine = snap.review(entry.key, reviewer, read)
    earlier = snap.final_review(entry.key, reviewer) if read != "first" else None
    stale_review = None
    prefill = None
    if mine is not None and not snap.stale(mine):
        prefill = mine
    elif earlier is not None and snap.stale(earlier):
        stale_review = earlier
    elif mine is not None:
        stale_review = mine
    first = snap.review(entry.key, reviewer, "first") if read == "second" else None
    if prefill is None and first is not None:
        # the second read starts from the first read's own findings that the model did not report
        prefill = {"verdicts": [], "added": [a for a in first.get("added", []) if a["code"] not in reported],
                   "risk_level": first.get("risk_level"), "comment": "", "from_first": True}
    study = doc.get("study") or {}
    ctx = {k: v for k, v in (study.get("context") or {}).items() if v not in (None, "")}
    images = []
    for i, img in enumerate(doc.get("images") or [], start=1):
        images.append({
            "src": f"/study/{quote(entry.key)}/image/{i}", "kind": img.get("kind") or "", "view": img.get("view") or "",
            "width": img.get("width"), "height": img.get("height"), "windowing": img.get("windowing") or "",
            "frames": img.get("frames") or "", "series": img.get("series_description") or "",
            "source": img.get("source") if entry.include_phi else "",
            "shape": "×".join(str(x) for x in img.get("original_shape") or []),
            "has_thumb": bool(img.get("thumbnail")),
        })
    rows = []
    for n, f in enumerate(findings, start=1):
        rows.append({**f, "n": n, "segments": report_html.evidence_segments(f)})
    stale_verdicts = {v["finding_id"]: v.get("verdict") for v in (stale_review or {}).get("verdicts", [])}
    risk = doc.get("risk") or {}
    nav_q = flt.query()
    js = {
        "page": "study", "key": entry.key, "csrf": csrf, "read": read, "reviewer": reviewer,
        "report_sha256": entry.report_sha256,
        "save_url": f"/api/review/{quote(entry.key)}{nav_q}",
        "next": f"/study/{quote(next_key)}{nav_q}" if next_key else None,
        "prev": f"/study/{quote(prev_key)}{nav_q}" if prev_key else None,
        "worklist": f"/{nav_q}",
        "model_risk": risk.get("level") if show_model else None,
        "findings": [{"id": f.get("id"), "code": f.get("code"), "label": f.get("label"), "status": f.get("status")}
                     for f in findings],
        "vocabulary": [{"code": c["code"], "label": c["label"]} for c in choices],
        "reported": sorted(c for c in reported if c),
        "risk_keys": list(RISK_KEYS),
        "prefill": None if prefill is None else {
            "verdicts": {v["finding_id"]: {"verdict": v.get("verdict"), "note": v.get("note", "")}
                         for v in prefill.get("verdicts", [])},
            "added": [{"code": a["code"], "label": a.get("label") or a["code"], "laterality": a.get("laterality"),
                       "note": a.get("note", "")} for a in prefill.get("added", [])],
            "risk_level": prefill.get("risk_level"), "comment": prefill.get("comment", ""),
            "from_first": bool(prefill.get("from_first")), "time": prefill.get("time"),
        },
    }
    return {
        "title": run_name, "entry": entry, "doc": doc, "study": study, "ctx": ctx, "images": images,
        "show_model": show_model, "read": read, "blind": blind, "reviewer": reviewer, "rows": rows,
        "risk": risk, "answer_segments": answer_segments(doc) if show_model else [],
        "choices": choices, "lateralities": LATERALITIES, "risk_levels": RISK_LEVELS, "risk_keys": RISK_KEYS,
        "position": position, "count": count, "flt": flt, "show_label": SHOW[flt.show],
        "prev_href": js["prev"], "next_href": js["next"], "worklist_href": js["worklist"],
        "stale_review": stale_review, "stale_verdicts": stale_verdicts, "first": first,
        "phi": study.get("phi") if entry.include_phi else None, "js": js, "csrf": csrf,
        "demo_notice": doc.get("demo_notice"),
    }
