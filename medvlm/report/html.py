"""Render reports to HTML with one Jinja2 template family shared with the PDF writer."""

from __future__ import annotations

import base64
from functools import lru_cache
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from .. import DEMO_NOTICE, RESEARCH_BANNER

TEMPLATES = Path(__file__).resolve().parent / "templates"


@lru_cache(maxsize=1)
def environment() -> Environment:
    # Autoescape is on for every template: model text and DICOM headers are untrusted.
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(enabled_extensions=("html", "j2"), default=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals.update(banner=RESEARCH_BANNER, demo_notice_text=DEMO_NOTICE)
    return env


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def render_report_html(doc: dict, thumbnails: dict[str, bytes], *, for_pdf: bool = False) -> str:
    """HTML for one study report; images are embedded as data URIs (no external references)."""
    images = []
    for img in doc["images"]:
        png = thumbnails.get(img.get("thumbnail") or "")
        images.append({**img, "data_uri": data_uri(png) if png else None})
    return environment().get_template("report.html.j2").render(doc=doc, images=images, for_pdf=for_pdf)
