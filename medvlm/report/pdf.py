"""PDF reports through WeasyPrint, with a URL fetcher that fetches nothing but inline images."""

from __future__ import annotations

import base64
import binascii
import logging
import re

# Only base64 images produced by html.data_uri() are ever needed by a report.
_DATA_URI = re.compile(r"data:(image/(?:png|jpeg));base64,([A-Za-z0-9+/=\s]*)\Z", re.DOTALL)
MAX_INLINE_BYTES = 8 << 20


class BlockedResource(ValueError):
    """A PDF resource that is not an inline image (network, local file, anything else)."""


def decode_inline(url: str) -> tuple[str, bytes]:
    """(mime type, bytes) of a base64 data: image URI; BlockedResource for anything else."""
    match = _DATA_URI.match(url)
    if not match:
        raise BlockedResource(f"medvlm PDF renderer refuses to fetch {url[:80]!r}")
    try:
        body = base64.b64decode(match[2], validate=False)
    except (binascii.Error, ValueError) as exc:
        raise BlockedResource(f"malformed inline image: {exc}") from None
    if len(body) > MAX_INLINE_BYTES:
        raise BlockedResource(f"inline image of {len(body)} bytes exceeds {MAX_INLINE_BYTES}")
    return match[1], body


def refuse_external(url: str, *args, **kwargs):
    """Fetch `url` the way WeasyPrint's fetcher would, but only for inline data: images."""
    mime, body = decode_inline(url)
    try:
        from weasyprint.urls import URLFetcherResponse  # WeasyPrint >= 66
    except ImportError:
        return {"string": body, "mime_type": mime, "redirected_url": url}
    return URLFetcherResponse(url, body, headers={"Content-Type": mime})


def make_fetcher(refused: list[str] | None = None):
    """A WeasyPrint url_fetcher built on refuse_external; refused URLs are appended to `refused`."""
    refused = [] if refused is None else refused
    try:
        from weasyprint.urls import URLFetcher
    except ImportError:  # WeasyPrint < 66 takes a plain function

        def fetch_fn(url, *args, **kwargs):
            try:
                return refuse_external(url)
            except BlockedResource:
                refused.append(url)
                raise

        return fetch_fn

    class InlineOnlyFetcher(URLFetcher):
        def __init__(self):
            # No handlers are used: fetch() never reaches urllib.
            super().__init__(allowed_protocols=("data",), fail_on_errors=False)

        def fetch(self, url, headers=None):
            try:
                return refuse_external(url)
            except BlockedResource:
                refused.append(url)
                raise

    return InlineOnlyFetcher()


def font_subsetter() -> str:
    """Which library WeasyPrint will subset the PDF's fonts with on this machine.

    "harfbuzz": HarfBuzz's C subsetter (libharfbuzz-subset >= 4.1). "fonttools": WeasyPrint's
    pure-Python fallback, which more than doubles the time per PDF (0.55 against 0.25 s per bench
    report on a 2-core Xeon) and competes with the model for the cores. "unavailable": WeasyPrint
    cannot be imported. Mirrors the condition in WeasyPrint's own font code (an internal name, so
    anything unexpected reads as "fonttools" rather than failing).
    """
    try:
        from weasyprint.text import ffi
    except Exception:  # noqa: BLE001 - missing Pango/WeasyPrint: PDFs cannot be written at all
        return "unavailable"
    subset = getattr(ffi, "harfbuzz_subset", None)
    try:
        return "harfbuzz" if subset and ffi.harfbuzz.hb_version_atleast(4, 1, 0) else "fonttools"
    except Exception:  # noqa: BLE001 - a WeasyPrint whose internals moved
        return "fonttools"


FONTTOOLS_HINT = ("PDF fonts are subset by fontTools in pure Python here, about twice the time per PDF; "
                  "install HarfBuzz's subset library (Debian/Ubuntu: libharfbuzz-subset0) or use --no-pdf")


def html_to_pdf(html: str, *, refused: list[str] | None = None) -> bytes:
    """Render HTML (from render_report_html(..., for_pdf=True)) to PDF bytes without fetching anything."""
    import weasyprint

    # WeasyPrint logs every refused fetch and CSS nit at WARNING; keep the console for study errors.
    logging.getLogger("weasyprint").setLevel(logging.ERROR)
    logging.getLogger("fontTools").setLevel(logging.ERROR)
    document = weasyprint.HTML(string=html, base_url=None, url_fetcher=make_fetcher(refused))
    return document.write_pdf()
