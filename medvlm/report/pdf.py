"""PDF reports through WeasyPrint, with a URL fetcher that fetches nothing."""

from __future__ import annotations

import logging


class BlockedResource(ValueError):
    pass


def refuse_external(url: str, *args, **kwargs):
    """WeasyPrint URL fetcher: only inline data: URIs are allowed (no network, no local files)."""
    if url.startswith("data:"):
        from weasyprint.urls import default_url_fetcher

        return default_url_fetcher(url, *args, **kwargs)
    raise BlockedResource(f"medvlm PDF renderer refuses to fetch {url[:80]!r}")


def html_to_pdf(html: str) -> bytes:
    """Render HTML (from render_report_html(..., for_pdf=True)) to PDF bytes."""
    import weasyprint

    # WeasyPrint logs every refused fetch and CSS nit at WARNING; keep the console for study errors.
    logging.getLogger("weasyprint").setLevel(logging.ERROR)
    logging.getLogger("fontTools").setLevel(logging.ERROR)
    return weasyprint.HTML(string=html, base_url=None, url_fetcher=refuse_external).write_pdf()
