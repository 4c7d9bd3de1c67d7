"""index.html's sort and filter in a real browser (Debian's chromium via Playwright), on a few hundred rows."""

from __future__ import annotations

from browser_support import chromium

from medvlm.report.index import write_index

N = 300


def _rows() -> list[dict]:
    rows = []
    for i in range(N):
        status = "error" if i % 7 == 0 else "ok"
        rows.append({"study_key": f"r-{(i * 7919) % 1000:04d}x{i}", "source": f"bench_{i:04d}.png", "modality": "chest_xray",
                     "status": status, "risk_level": "" if status == "error" else ("high", "low", "normal")[i % 3],
                     "present_findings": "", "answer_status": "truncated", "stage": "model" if status == "error" else "",
                     "reason": "boom" if status == "error" else "", "report": ""})
    return rows


def _keys(page) -> list[str]:
    return page.evaluate("Array.from(document.querySelectorAll('#studies tbody tr'), tr => tr.getAttribute('data-key'))")


def test_sort_by_key_both_ways_and_filter_by_text(tmp_path):
    index = write_index(tmp_path, _rows())
    with chromium() as browser:
        page = browser.new_page()
        page.goto(index.as_uri())
        before = _keys(page)
        assert len(before) == N
        page.click("th[data-sort='key'] button")
        ascending = _keys(page)
        assert ascending == sorted(before)
        assert page.get_attribute("th[data-sort='key']", "aria-sort") == "ascending"
        page.click("th[data-sort='key'] button")
        assert _keys(page) == ascending[::-1]
        page.click("th[data-sort='rank'] button")
        ranks = page.evaluate("Array.from(document.querySelectorAll('#studies tbody tr'), tr => Number(tr.getAttribute('data-rank')))")
        assert ranks == sorted(ranks) and len(set(ranks)) > 1
        page.fill("#text-filter", "bench_012")
        visible = page.evaluate("Array.from(document.querySelectorAll('#studies tbody tr')).filter(tr => !tr.hidden).length")
        assert visible == 10  # bench_0120 .. bench_0129
        assert page.inner_text("#shown") == f"showing 10 of {N}"
