"""Median PDF rendering time over a finished run's reports (prints figures, asserts nothing).

usage: python tests/bench/bench_pdf.py RUN_DIR [REPEATS=3]
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

from medvlm.report.html import render_report_html
from medvlm.report.pdf import html_to_pdf
from medvlm.report.write import read_thumbnails


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    run, repeats = Path(argv[1]), int(argv[2]) if len(argv) == 3 else 3
    reports = sorted(run.glob("*/report.json"))
    if not reports:
        print(f"no reports under {run}", file=sys.stderr)
        return 2
    docs = [(json.loads(p.read_text(encoding="utf-8")), p.parent) for p in reports]
    html_to_pdf(render_report_html(docs[0][0], {}, for_pdf=True))  # first call loads fonts; not counted
    times, sizes = [], []
    for doc, folder in docs:
        thumbs = read_thumbnails(folder, doc)
        for _ in range(repeats):
            t0 = time.perf_counter()
            pdf = html_to_pdf(render_report_html(doc, thumbs, for_pdf=True))
            times.append(time.perf_counter() - t0)
        sizes.append(len(pdf))
    print(f"{len(docs)} reports x {repeats}: median {statistics.median(times):.3f} s per PDF "
          f"(min {min(times):.3f}, max {max(times):.3f}); median size {statistics.median(sizes) / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
