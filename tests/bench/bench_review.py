"""How long the review app makes a reviewer wait per study (prints figures, asserts nothing).

Builds a run of N phantom studies (the scripted reader of tests/review_support.py), starts
`medvlm review` and drives Debian's chromium with the keyboard as a reviewer of normal studies
does: `A` (agree with all), `=` (the model's risk), `Enter` (save and open the next). Per study it
times the app's share: from the keys to the next study's page being ready (save + ledger append +
next page + image), i.e. what is added to the reader's own reading time. Also prints the save
request alone, measured in the page (fetch round trip).

usage: python tests/bench/bench_review.py [N=20] [--ledger-records M]
  --ledger-records M   first append M synthetic attempt records to the ledger (a long run's ledger)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from review_support import ANSWERS, ReviewProcess, make_run  # noqa: E402


def _pad_ledger(run: Path, n: int) -> None:
    from medvlm.audit.ledger import read_ledger
    from medvlm.audit.session import LedgerSession

    template = next(r for r in read_ledger(run / "ledger.jsonl").records if r.get("kind") == "attempt")
    with LedgerSession(run) as session:
        for i in range(n):
            session.append({**template, "study_key": f"x-{i:08d}", "status": "error", "report": None, "files": {}})


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n", nargs="?", type=int, default=20)
    parser.add_argument("--ledger-records", type=int, default=0)
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        answers = {i: ANSWERS[i % len(ANSWERS)] for i in range(args.n)}
        t0 = time.perf_counter()
        run = make_run(Path(tmp), answers=answers, n=args.n)
        if args.ledger_records:
            _pad_ledger(run, args.ledger_records)
        print(f"run of {args.n} studies built in {time.perf_counter() - t0:.1f} s"
              + (f"; ledger padded with {args.ledger_records} records" if args.ledger_records else ""))
        with ReviewProcess(run, "--reviewer", "bench") as server, sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium",
                                        args=["--no-sandbox", "--headless", "--disable-gpu", "--no-first-run"])
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(server.url)
            page.keyboard.press("Enter")
            page.wait_for_url("**/study/**")
            page.locator("#view-img").wait_for()
            per_study, saves = [], []
            while True:
                current = page.url
                started = time.perf_counter()
                page.keyboard.press("Shift+A")
                page.keyboard.press("=")
                pressed = time.perf_counter()
                with page.expect_response(lambda r: "/api/review/" in r.url):
                    page.keyboard.press("Enter")
                saves.append(time.perf_counter() - pressed)
                page.wait_for_url(lambda url, current=current: url != current)
                if "/study/" not in page.url:
                    break  # the last study: Enter went back to the worklist
                page.locator("#view-img").wait_for()
                page.wait_for_load_state("load")
                per_study.append(time.perf_counter() - started)
            browser.close()
    per_study.sort()
    print(f"{len(saves)} studies reviewed with A, =, Enter")
    print(f"app time per study (keys -> next study ready): median {statistics.median(per_study):.3f} s, "
          f"p90 {per_study[int(0.9 * (len(per_study) - 1))]:.3f} s, max {per_study[-1]:.3f} s")
    print(f"save (Enter -> response): median {statistics.median(saves):.3f} s, max {max(saves):.3f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
