"""Render reports to HTML with one Jinja2 template family shared with the PDF writer."""

from __future__ import annotations

import base64
from functools import lru_cache
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from .. import DEMO_NOTICE, DISCLAIMER, PHANTOM_NOTICE, RESEARCH_BANNER
from ..paths import data_dir

TEMPLATES = data_dir("report/templates")
# Most urgent first; used for badges, sorting and the index filters.
RISK_ORDER: tuple[str, ...] = ("critical", "high", "moderate", "indeterminate", "low", "normal")
STATUS_ORDER: tuple[str, ...] = ("present", "uncertain", "absent")


@lru_cache(maxsize=1)
def environment() -> Environment:
    # Autoescape is on for every template: model text and DICOM headers are untrusted. No template
    # uses |safe; marked-up text is built from (text, flag) segments that the template escapes.
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(enabled_extensions=("html", "j2"), default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals.update(
        banner=RESEARCH_BANNER,
        demo_notice_text=DEMO_NOTICE,
        phantom_notice_text=PHANTOM_NOTICE,
        disclaimer_text=DISCLAIMER,
        risk_order=RISK_ORDER,
    )
    return env


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def mark_segments(text: str, spans: list[tuple[int, int, str, str]]) -> list[dict]:
    """Split `text` into plain and marked segments; spans are (start, end, css class, title), first wins."""
    out: list[dict] = []
    pos = 0
    for start, end, cls, title in sorted(spans, key=lambda s: (s[0], -s[1])):
        if start < pos or not (0 <= start < end <= len(text)):
            continue  # overlapping or out of range: leave that text unmarked
        if start > pos:
            out.append({"text": text[pos:start], "cls": None, "title": None})
        out.append({"text": text[start:end], "cls": cls, "title": title})
        pos = end
    if pos < len(text) or not out:
        out.append({"text": text[pos:], "cls": None, "title": None})
    return out


def evidence_segments(finding: dict) -> list[dict]:
    """The evidence sentence of a finding with its matching words marked."""
    ev = finding.get("evidence") or {}
    sentence = ev.get("sentence") or ev.get("text") or ""
    offset = ev.get("sentence_start", 0)
    span = (ev.get("start", 0) - offset, ev.get("end", 0) - offset, f"st-{finding.get('status')}", None)
    return mark_segments(sentence, [span])


def model_text_segments(text: str, findings: list[dict]) -> list[dict]:
    """The whole model answer with every finding mention marked by its status."""
    spans = []
    for f in findings:
        ev = f.get("evidence") or {}
        if "start" in ev and "end" in ev:
            spans.append((ev["start"], ev["end"], f"st-{f.get('status')}", f"{f.get('label')}: {f.get('status')}"))
    return mark_segments(text, spans)


def _sorted_findings(findings: list[dict]) -> list[dict]:
    rank = {s: i for i, s in enumerate(STATUS_ORDER)}
    return sorted(findings, key=lambda f: (rank.get(f.get("status"), 9), not f.get("critical"), f.get("label", "")))


def report_context(doc: dict, thumbnails: dict[str, bytes], *, for_pdf: bool = False) -> dict:
    """Template variables for one report (images as data URIs, findings sorted and marked)."""
    images = []
    for img in doc["images"]:
        png = thumbnails.get(img.get("thumbnail") or "")
        images.append({**img, "data_uri": data_uri(png) if png else None})
    findings = [{**f, "segments": evidence_segments(f)} for f in _sorted_findings(doc.get("findings", []))]
    present = [f for f in findings if f["status"] == "present"]
    return {
        "doc": doc,
        "images": images,
        "findings": findings,
        "present": present,
        "answer_segments": model_text_segments(doc["model_output"]["text"], doc.get("findings", [])),
        "for_pdf": for_pdf,
    }


def render_report_html(doc: dict, thumbnails: dict[str, bytes], *, for_pdf: bool = False) -> str:
    """HTML for one study report; images are embedded as data URIs (no external references)."""
    context = report_context(doc, thumbnails, for_pdf=for_pdf)
    return environment().get_template("report.html.j2").render(**context)


def render_index_html(context: dict) -> str:
    """HTML for the batch index (context built by medvlm.report.index)."""
    return environment().get_template("index.html.j2").render(for_pdf=False, **context)
