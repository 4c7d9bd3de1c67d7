"""How extraction time grows with the size of one report (issue 16 item 11: it must grow linearly).

Usage: python tests/bench/bench_extract_scaling.py [--sizes 10000,100000,1000000] [--shapes report,run_on,...]

Prints, per text shape and size, the seconds `extract()` takes and the ratio to the previous size
(about 10x per 10x size when linear; about 100x when quadratic). Shapes: an ordinary report
repeated, one run-on sentence of findings, one word repeated, letters without spaces, a bullet list.
"""

from __future__ import annotations

import argparse
import time

SHAPES = {
    "report": "Findings: There is a small left pleural effusion. No pneumothorax. Heart size is normal. "
              "Mild bibasilar atelectasis, possibly pneumonia.\n\nImpression: 1. Small effusion. 2. No acute process.\n",
    "run_on": "no pneumothorax, small left effusion, possible pneumonia and mild edema, ",
    "one_word": "pneumothorax ",
    "letters": "abcdefghij",
    "bullets": "- effusion\n",
    "abbreviations": "Dr. ",
}


def main() -> None:
    from medvlm.findings.extract import extract

    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--shapes", default=",".join(SHAPES))
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    extract("warm up: small effusion.")
    print(f"{'shape':<14}{'chars':>10}{'seconds':>10}{'x prev':>8}{'findings':>10}")
    for shape in args.shapes.split(","):
        previous = None
        for n in sizes:
            text = (SHAPES[shape] * (n // len(SHAPES[shape]) + 1))[:n]
            t0 = time.perf_counter()
            found = extract(text)
            seconds = time.perf_counter() - t0
            ratio = f"{seconds / previous:.1f}" if previous else "-"
            print(f"{shape:<14}{n:>10}{seconds:>10.2f}{ratio:>8}{len(found):>10}", flush=True)
            previous = seconds


if __name__ == "__main__":
    main()
