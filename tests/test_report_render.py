"""HTML/PDF study reports: escaping, research-only marking on every page, fetch-nothing PDF renderer."""

from __future__ import annotations

import base64
import io
import re
from html.parser import HTMLParser

import pytest

from medvlm import DEMO_NOTICE, PHANTOM_NOTICE, RESEARCH_BANNER
from medvlm.report.html import mark_segments, render_report_html
from medvlm.report.pdf import BlockedResource, font_subsetter, html_to_pdf, refuse_external
from medvlm.report.write import render_study_files, write_study_files

from report_support import XSS_IMG, XSS_SCRIPT, make_report

pypdf = pytest.importorskip("pypdf")

HOSTILE_TEXT = (
    f"Small left pleural effusion. {XSS_SCRIPT} No pneumothorax. {XSS_IMG} "
    'See <img src="file:///etc/passwd"> and <link rel="stylesheet" href="http://example.invalid/x.css">.'
)


class Tags(HTMLParser):
    """Every start tag with its attributes, as a browser would see them."""

    def __init__(self, html: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def pdf_pages(pdf: bytes) -> list[str]:
    reader = pypdf.PdfReader(io.BytesIO(pdf))
    return [" ".join((page.extract_text() or "").split()) for page in reader.pages]


@pytest.fixture(scope="module")
def hostile():
    return make_report(text=HOSTILE_TEXT, study_description=f"CHEST {XSS_SCRIPT} {XSS_IMG}")


@pytest.mark.parametrize("for_pdf", [False, True])
def test_model_text_and_dicom_header_appear_only_escaped(hostile, for_pdf):
    doc, thumbs = hostile
    html = render_report_html(doc, thumbs, for_pdf=for_pdf)
    assert XSS_SCRIPT not in html and XSS_IMG not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    tags = Tags(html).tags
    assert [t for t, _ in tags if t == "script"] == []
    assert not any(k.startswith("on") for _, attrs in tags for k in attrs)
    # Only the thumbnails are images, and only as data: URIs; nothing else can be linked in.
    assert all(a["src"].startswith("data:image/png;base64,") for t, a in tags if t == "img")
    assert [t for t, _ in tags if t == "link"] == []


def test_highlight_escapes_the_evidence_sentence():
    doc, thumbs = make_report(text="Small left pleural effusion <b>bold</b>. No pneumothorax.")
    html = render_report_html(doc, thumbs)
    assert "<b>bold</b>" not in html
    assert '<mark class="st-present">pleural effusion</mark> &lt;b&gt;bold&lt;/b&gt;.' in html


def test_mark_segments_skip_overlaps_and_out_of_range_spans():
    segs = mark_segments("abcdef", [(1, 3, "x", None), (2, 4, "y", None), (5, 99, "z", None)])
    assert [(s["text"], s["cls"]) for s in segs] == [("a", None), ("bc", "x"), ("def", None)]
    assert mark_segments("", []) == [{"text": "", "cls": None, "title": None}]


def test_pdf_shows_hostile_text_literally_and_fetches_nothing(hostile):
    doc, thumbs = hostile
    refused: list[str] = []
    pdf = html_to_pdf(render_report_html(doc, thumbs, for_pdf=True), refused=refused)
    text = " ".join(pdf_pages(pdf))
    assert XSS_SCRIPT in text and XSS_IMG in text
    assert f"CHEST {XSS_SCRIPT} {XSS_IMG}" in text  # the DICOM StudyDescription
    squeezed = "".join(text.split())  # the line may wrap inside the URL
    assert '<imgsrc="file:///etc/passwd">' in squeezed
    assert refused == []  # the references stayed text: nothing even asked to be fetched
    assert b"/Subtype /Image" in pdf or b"/Subtype/Image" in pdf  # the thumbnail made it in


def test_research_banner_demo_notice_and_page_numbers_on_every_pdf_page():
    sentences = " ".join(f"Sentence {i} describes nothing in particular about the lungs." for i in range(260))
    doc, thumbs = make_report(text="Small left pleural effusion. " + sentences, n_images=2)
    pages = pdf_pages(html_to_pdf(render_report_html(doc, thumbs, for_pdf=True)))
    assert len(pages) >= 3
    for n, page in enumerate(pages, start=1):
        assert RESEARCH_BANNER in page, f"page {n} lacks the banner"
        assert f"page {n} of {len(pages)}" in page
        assert doc["study"]["key"] in page
    for n, page in enumerate(pages[1:], start=2):
        assert DEMO_NOTICE in page, f"page {n} lacks the demo notice"
    assert DEMO_NOTICE in pages[0]


def test_demo_notice_only_for_random_weights():
    doc, thumbs = make_report(random_weights=True)
    html = render_report_html(doc, thumbs)
    assert DEMO_NOTICE in html and 'class="demo"' in html
    real, thumbs = make_report(random_weights=False)
    html = render_report_html(real, thumbs)
    assert 'class="demo"' not in html and DEMO_NOTICE not in html
    assert RESEARCH_BANNER in html


def test_phantom_notice_in_json_html_and_on_every_pdf_page():
    sentences = " ".join(f"Sentence {i} describes nothing in particular about the lungs." for i in range(260))
    doc, thumbs = make_report(text="Small left pleural effusion. " + sentences, random_weights=False, phantom=True)
    assert doc["demo_notice"] == PHANTOM_NOTICE and doc["provenance"]["model"]["phantom"] is True
    html = render_report_html(doc, thumbs)
    assert PHANTOM_NOTICE in html and 'class="demo"' in html and DEMO_NOTICE not in html
    assert "synthetic phantom radiographs" in html and "random weights to exercise" not in html
    pages = pdf_pages(html_to_pdf(render_report_html(doc, thumbs, for_pdf=True)))
    assert len(pages) >= 3
    for n, page in enumerate(pages, start=1):
        assert PHANTOM_NOTICE in page, f"page {n} lacks the phantom notice"
        assert DEMO_NOTICE not in page


def test_report_shows_every_section_and_the_windowed_thumbnail():
    doc, thumbs = make_report()
    html = render_report_html(doc, thumbs)
    png = base64.b64encode(thumbs["image-1.png"]).decode()
    assert f'src="data:image/png;base64,{png}"' in html
    assert re.search(r'<div class="banner"[^>]*>' + re.escape(RESEARCH_BANNER), html)
    for needle in (
        "WC/WW 2047/4095 from header",  # windowing is shown with the image
        'class="badge lvl-moderate big"',
        "effusion-present",  # the rule that fired, with its evidence
        "“Small left pleural effusion.”",
        '<span class="pill st-absent">absent</span>',
        "Describe the findings.",  # the prompt
        "You are a radiology research assistant.",
        doc["provenance"]["model"]["weights_digest"],
        doc["images"][0]["sha256"],
        "float32 · none · cpu",
    ):
        assert needle in html, needle


def test_patient_identifiers_only_with_include_phi():
    doc, thumbs = make_report()
    html = render_report_html(doc, thumbs)
    assert "phi" not in doc["study"] and "Patient identifiers" not in html
    doc, thumbs = make_report(phi={"PatientName": "DOE^JANE <b>", "PatientID": "12345"})
    html = render_report_html(doc, thumbs)
    assert 'class="phi"' in html and "Patient identifiers" in html
    assert "DOE^JANE &lt;b&gt;" in html and "12345" in html


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "FILE:///etc/passwd",
        "http://example.invalid/x.png",
        "https://example.invalid/x.css",
        "//example.invalid/x.png",
        "/etc/passwd",
        "data:text/html;base64,PHNjcmlwdD4=",
        "data:image/svg+xml;base64,PHN2Zy8+",
        "data:image/png,notbase64",
    ],
)
def test_fetcher_refuses_anything_but_inline_images(url):
    with pytest.raises(BlockedResource):
        refuse_external(url)


def test_fetcher_serves_inline_png():
    doc, thumbs = make_report()
    uri = "data:image/png;base64," + base64.b64encode(thumbs["image-1.png"]).decode()
    res = refuse_external(uri)
    body = res.read() if hasattr(res, "read") else res["string"]
    assert body == thumbs["image-1.png"]


def test_pdf_renderer_refuses_references_in_a_template():
    """If a template ever carried a real reference, the renderer still would not follow it."""
    html = (
        '<html><head><link rel="stylesheet" href="file:///etc/passwd"></head><body>'
        '<img src="file:///etc/passwd"><img src="http://example.invalid/a.png">'
        '<div style="background: url(https://example.invalid/b.png)">x</div></body></html>'
    )
    refused: list[str] = []
    pdf = html_to_pdf(html, refused=refused)
    assert pdf.startswith(b"%PDF")
    assert set(refused) == {"file:///etc/passwd", "http://example.invalid/a.png", "https://example.invalid/b.png"}
    assert b"root:" not in pdf


def test_font_subsetter_names_the_library_weasyprint_uses(caplog):
    """`medvlm bench` says which font subsetter PDFs get; WeasyPrint warns on its fontTools fallback."""
    import logging

    import weasyprint

    expected = font_subsetter()
    assert expected in ("harfbuzz", "fonttools")
    caplog.set_level(logging.WARNING, logger="weasyprint")
    logging.getLogger("weasyprint").setLevel(logging.WARNING)  # html_to_pdf lowers it for reports
    pdf = weasyprint.HTML(string="<p>Effusion, <b>right</b>.</p>").write_pdf()
    assert pdf.startswith(b"%PDF")
    fell_back = any("fontTools instead of HarfBuzz" in r.getMessage() for r in caplog.records)
    assert fell_back == (expected == "fonttools"), [r.getMessage() for r in caplog.records]


def test_write_rendered_writes_html_and_pdf_from_one_template_family(tmp_path):
    doc, thumbs = make_report()
    hashes = write_study_files(tmp_path, render_study_files(doc, thumbs))  # the test document is schema-valid
    assert set(hashes) == {"report.json", "report.html", "report.pdf"}
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    pdf_text = " ".join(pdf_pages((tmp_path / "report.pdf").read_bytes()))
    for needle in ("Small left pleural effusion.", "Provenance", "Prompt sent to the model", doc["study"]["key"]):
        assert needle in html and needle in pdf_text
    assert render_study_files(doc, thumbs, pdf=False).keys() == {"report.json", "report.html"}


def test_thumbnail_of_a_grey_rgb_image_is_one_channel_with_the_same_pixels_and_colour_stays_rgb():
    import numpy as np
    from PIL import Image

    from medvlm.report.write import thumbnail_png

    rng = np.random.default_rng(3)
    grey = rng.integers(0, 256, (300, 200), dtype=np.uint8)
    rgb = Image.fromarray(np.stack([grey] * 3, axis=-1), "RGB")
    back = Image.open(io.BytesIO(thumbnail_png(rgb)))
    assert back.mode == "L" and np.array_equal(np.asarray(back.convert("RGB")), np.asarray(rgb))
    tinted = np.stack([grey] * 3, axis=-1)
    tinted[10, 10, 2] ^= 1  # one channel of one pixel differs: not grey
    back = Image.open(io.BytesIO(thumbnail_png(Image.fromarray(tinted, "RGB"))))
    assert back.mode == "RGB" and np.array_equal(np.asarray(back), tinted)
    big = Image.fromarray(np.stack([np.tile(grey, (4, 4))] * 3, axis=-1), "RGB")  # 1200 x 800: downscaled to fit 512
    assert Image.open(io.BytesIO(thumbnail_png(big))).size == (341, 512)
    assert thumbnail_png(rgb) == thumbnail_png(rgb.copy())  # deterministic bytes (a remote backend sends them)
