"""Write one study's outputs (thumbnails, report.json, report.html, report.pdf) atomically."""

from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import Image

from ..fileio import atomic_write_bytes, atomic_write_text
from .html import render_report_html
from .validate import validate_report

THUMB_MAX = 512


def thumbnail_png(image: Image.Image) -> bytes:
    """A downscaled PNG of the image exactly as the model received it (windowing applied)."""
    thumb = image.copy()
    thumb.thumbnail((THUMB_MAX, THUMB_MAX))
    buf = io.BytesIO()
    thumb.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def report_json_bytes(doc: dict) -> bytes:
    return (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def write_report_json(study_dir: Path, doc: dict) -> str:
    """Validate, then write report.json; returns its SHA-256. Nothing is written if invalid."""
    validate_report(doc)
    return atomic_write_bytes(Path(study_dir) / "report.json", report_json_bytes(doc))


def write_rendered(study_dir: Path, doc: dict, thumbs: dict[str, bytes], *, pdf: bool = True) -> dict[str, str]:
    """report.html and (optionally) report.pdf from the same template family; returns name -> sha256."""
    study_dir = Path(study_dir)
    hashes = {"report.html": atomic_write_text(study_dir / "report.html", render_report_html(doc, thumbs))}
    if pdf:
        from .pdf import html_to_pdf

        hashes["report.pdf"] = atomic_write_bytes(
            study_dir / "report.pdf", html_to_pdf(render_report_html(doc, thumbs, for_pdf=True))
        )
    return hashes


def read_thumbnails(study_dir: Path, doc: dict) -> dict[str, bytes]:
    """Thumbnails referenced by a written report (used when re-rendering without the images)."""
    out = {}
    for img in doc.get("images", []):
        name = img.get("thumbnail")
        if name and (Path(study_dir) / name).is_file():
            out[name] = (Path(study_dir) / name).read_bytes()
    return out
