"""<out>/index.html: every study listed (failures with their reason), links resolve, offline, data as text."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import pytest

from medvlm import DEMO_NOTICE, RESEARCH_BANNER
from medvlm.report.index import write_index
from medvlm.report.write import render_study_files, write_study_files

from report_support import XSS_IMG, XSS_SCRIPT, make_report


class Page(HTMLParser):
    def __init__(self, html: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.scripts: list[str] = []
        self._in_script = False
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag):
        self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.scripts.append(data)

    def rows(self) -> list[dict]:
        return [a for t, a in self.tags if t == "tr" and "data-risk" in a]


def ok_row(key: str, level: str, doc: dict) -> dict:
    present = ";".join(sorted(f["code"] for f in doc["findings"] if f["status"] == "present"))
    return {
        "study_key": key, "source": f"batch/{key}", "modality": "chest_xray", "status": "ok", "risk_level": level,
        "present_findings": present, "answer_status": "complete", "stage": "", "reason": "", "report": f"{key}/report.json",
    }  # fmt: skip


def bad_row(key: str, status: str, stage: str, reason: str, report: str = "") -> dict:
    return {
        "study_key": key, "source": f"batch/{key}", "modality": "", "status": status, "risk_level": "",
        "present_findings": "", "answer_status": "", "stage": stage, "reason": reason, "report": report,
    }  # fmt: skip


@pytest.fixture(scope="module")
def batch(tmp_path_factory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("batch")
    rows = []
    for key, level, text in (
        ("study-crit", "critical", "Large left pneumothorax. Small left pleural effusion."),
        ("study-norm", "normal", "No pneumothorax. The lungs are clear."),
        ("study-xss1", "moderate", f"Small left pleural effusion. {XSS_SCRIPT} {XSS_IMG}"),
    ):
        doc, thumbs = make_report(key=key, level=level, text=text)
        study_dir = out / key
        write_study_files(study_dir, {**thumbs, **render_study_files(doc, thumbs, pdf=False)})
        rows.append(ok_row(key, level, doc))
    rows += [
        bad_row("study-err1", "error", "ingest", f"InvalidDicomError: no preamble {XSS_SCRIPT}"),
        bad_row("study-skip", "skipped", "discover", "not an image or DICOM file"),
        bad_row("study-evil", "ok", "", "", report="../../../etc/passwd"),
    ]
    return out, rows


def test_index_lists_every_study_including_failures_with_their_reason(batch):
    out, rows = batch
    path = write_index(out, rows)
    assert path == out / "index.html"
    html = path.read_text(encoding="utf-8")
    page = Page(html)
    listed = {r["data-key"]: r for r in page.rows()}
    assert set(listed) == {r["study_key"] for r in rows}
    assert listed["study-err1"]["data-risk"] == "error" and listed["study-skip"]["data-risk"] == "skipped"
    assert "InvalidDicomError: no preamble &lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "error at ingest" in html and "skipped at discover" in html and "not an image or DICOM file" in html
    assert listed["study-crit"]["data-findings"] == "pleural_effusion"
    assert listed["study-norm"]["data-findings"] == ""
    # Most urgent first; studies without a grade after the graded ones.
    order = [r["data-key"] for r in page.rows()]
    assert order[0] == "study-crit" and order.index("study-norm") < order.index("study-err1")
    assert RESEARCH_BANNER in html and DEMO_NOTICE in html


def test_index_links_resolve_to_files_in_the_batch(batch):
    out, rows = batch
    html = write_index(out, rows).read_text(encoding="utf-8")
    hrefs = [a["href"] for t, a in Page(html).tags if t == "a" and "href" in a]
    assert hrefs, "no links"
    for href in hrefs:
        target = (out / unquote(href)).resolve()
        assert target.is_file(), href
        assert target.is_relative_to(out.resolve()), href
    assert {"study-crit/report.html", "study-crit/report.json"} <= set(hrefs)
    assert not any("passwd" in h for h in hrefs)  # a row pointing outside the batch gets no link
    evil = html[html.index('data-key="study-evil"') :].split("</tr>")[0]
    assert "report.json missing or unreadable" in evil and "<a " not in evil


def test_index_is_offline_and_its_script_treats_data_as_text(batch):
    out, rows = batch
    html = write_index(out, rows).read_text(encoding="utf-8")
    page = Page(html)
    assert XSS_SCRIPT not in html and XSS_IMG not in html
    assert [t for t, _ in page.tags if t in ("link", "img", "iframe", "object", "embed")] == []
    assert [a for t, a in page.tags if t == "script" and "src" in a] == []
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//|file:)""", html)
    assert "default-src 'none'" in html
    script = "\n".join(page.scripts)
    assert script.strip(), "sorting/filtering script missing"
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in script
    assert not any(k.startswith("on") and k != "onsubmit" for _, a in page.tags for k in a)


def test_index_notes_an_ok_row_whose_report_is_missing(tmp_path):
    row = ok_row("study-gone", "high", {"findings": []})
    html = write_index(tmp_path, [row]).read_text(encoding="utf-8")
    assert "report.json missing or unreadable" in html
    assert 'href="' not in html


def test_index_of_an_empty_batch(tmp_path):
    html = write_index(tmp_path, []).read_text(encoding="utf-8")
    assert "No studies were found" in html and RESEARCH_BANNER in html
