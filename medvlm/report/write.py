"""Write one study's outputs (thumbnails, report.json, report.html, report.pdf) atomically."""

from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import Image, ImageChops

from ..fileio import atomic_write_bytes
from .html import render_report_html
from .validate import validate_report

THUMB_MAX = 512


def thumbnail_png(image: Image.Image, max_side: int = THUMB_MAX) -> bytes:
    """A PNG of the image exactly as the model received it (windowing applied), downscaled to fit max_side.

    Deterministic for the same pixels, so the bytes a remote backend sends can be the report's image-N.png.
    An RGB image whose three channels are equal (every radiograph the ingest stage makes) is stored as
    one grey channel: the same pixels, a third of the bytes to compress. Written at zlib level 6 without
    PIL's optimize pass, which tried every filter and took about 3x as long for ~20% fewer bytes.
    """
    thumb = image.copy()
    thumb.thumbnail((max_side, max_side))
    if thumb.mode == "RGB":
        red, green, blue = thumb.split()
        if ImageChops.difference(red, green).getbbox() is None and ImageChops.difference(red, blue).getbbox() is None:
            thumb = red
    buf = io.BytesIO()
    thumb.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def report_json_bytes(doc: dict) -> bytes:
    return (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def render_study_files(doc: dict, thumbs: dict[str, bytes], *, pdf: bool = True) -> dict[str, bytes]:
    """report.json (validated first: an invalid report raises and nothing is produced), report.html and
    optionally report.pdf, from one template family; returns file name -> bytes."""
    validate_report(doc)
    files = {"report.json": report_json_bytes(doc), "report.html": render_report_html(doc, thumbs).encode("utf-8")}
    if pdf:
        from .pdf import html_to_pdf

        files["report.pdf"] = html_to_pdf(render_report_html(doc, thumbs, for_pdf=True))
    return files


# Written in this order so a report.json never exists without the images it names.
_WRITE_ORDER = {"report.json": 1, "report.html": 2, "report.pdf": 3}


def write_study_files(study_dir: Path, files: dict[str, bytes]) -> dict[str, str]:
    """Write a study's files atomically (images first, report.json before its renderings); name -> SHA-256."""
    study_dir = Path(study_dir)
    return {name: atomic_write_bytes(study_dir / name, files[name])
            for name in sorted(files, key=lambda n: (_WRITE_ORDER.get(n, 0), n))}


def read_thumbnails(study_dir: Path, doc: dict) -> dict[str, bytes]:
    """Thumbnails referenced by a written report (used when re-rendering without the images)."""
    out = {}
    for img in doc.get("images", []):
        name = img.get("thumbnail")
        if name and (Path(study_dir) / name).is_file():
            out[name] = (Path(study_dir) / name).read_bytes()
    return out
