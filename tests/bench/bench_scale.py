"""Scale on one machine: `medvlm batch` over N small studies (demo model, few tokens) at two sizes.

Usage: python tests/bench/bench_scale.py WORK_DIR [--sizes 200,2000] [--tokens 4] [--pdf] [--no-browser]

For each size: generates N small PNG studies (tests/bench/make_bench_studies.py, 64 px), runs the real CLI in
a subprocess and reports its peak RSS (getrusage of the child), wall time and time per study, then times
`medvlm verify` on the run, then opens index.html in Chromium (Playwright, /usr/bin/chromium) and times
one sort (click on a column header) and one filter (typing into the text filter) until the next frame.
Prints a table and writes WORK_DIR/scale.json; asserts nothing (a benchmark, not a test).
PDFs are off unless --pdf (they dominate per-study time and say nothing about scaling).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHROMIUM = "/usr/bin/chromium"


def _child_peak(cmd: list[str], env: dict) -> tuple[int, float, int, str]:
    """(exit code, wall seconds, peak RSS bytes of the child, stderr tail), the child run through a tiny wrapper."""
    wrapper = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
               "p = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True); "
               "w = time.perf_counter() - t; "
               "print(p.returncode, w, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024); "
               "sys.stderr.write(p.stderr[-400:])")
    proc = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True, env=env)
    code, wall, peak = proc.stdout.split()
    return int(code), float(wall), int(peak), proc.stderr


def _steady_per_study(ledger: Path) -> float | None:
    """Seconds per study between the 10th percentile and the last study record (start-up and load excluded)."""
    from datetime import datetime

    times = []
    for line in ledger.read_text().splitlines():
        record = json.loads(line)
        if record.get("kind") == "attempt" and record.get("time"):
            times.append(datetime.fromisoformat(record["time"]).timestamp())
    if len(times) < 20:
        return None
    first = len(times) // 10
    return (times[-1] - times[first]) / (len(times) - 1 - first)


def _browser_times(index: Path) -> dict:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            t0 = time.perf_counter()
            page.goto(index.as_uri())
            page.wait_for_selector("#studies tbody tr")
            load = time.perf_counter() - t0
            rows = page.evaluate("document.querySelectorAll('#studies tbody tr').length")
            frame = "await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));"
            sort = {}
            for key in ("key", "rank"):
                sort[key] = page.evaluate(
                    "async (key) => { const b = document.querySelector(`th[data-sort='${key}'] button`);"
                    " if (!b) return null; const t = performance.now(); b.click(); " + frame +
                    " return performance.now() - t; }", key)
            filt = page.evaluate(
                "async () => { const i = document.getElementById('text-filter'); const t = performance.now();"
                " i.value = 'bench_01'; i.dispatchEvent(new Event('input')); " + frame +
                " const ms = performance.now() - t; return [ms, document.getElementById('shown').textContent]; }")
            clear = page.evaluate(
                "async () => { const i = document.getElementById('text-filter'); const t = performance.now();"
                " i.value = ''; i.dispatchEvent(new Event('input')); " + frame + " return performance.now() - t; }")
        finally:
            browser.close()
    return {"rows": rows, "load_s": load, "sort_ms": sort, "filter_ms": filt[0], "filter_shown": filt[1],
            "filter_clear_ms": clear}


def run_size(work: Path, n: int, tokens: int, pdf: bool, browser: bool) -> dict:
    studies = work / f"studies{n}"
    if not studies.is_dir():
        subprocess.run([sys.executable, str(HERE / "make_bench_studies.py"), str(studies), str(n), "64"], check=True,
                       stdout=subprocess.DEVNULL)
    out = work / f"run{n}"
    if out.exists():
        import shutil

        shutil.rmtree(out)
    env = {**os.environ}
    load_before = os.getloadavg()
    cmd = [sys.executable, "-m", "medvlm", "batch", str(studies), "--modality", "chest_xray", "--model", "demo",
           "--out", str(out), "--max-new-tokens", str(tokens), "--ignore-eos", *([] if pdf else ["--no-pdf"])]
    code, wall, peak, err = _child_peak(cmd, env)
    figures = {"studies": n, "exit": code, "wall_s": wall, "per_study_s": wall / n, "peak_rss": peak,
               "load_average_before": load_before, "load_average_after": os.getloadavg(), "stderr_tail": err[-300:]}
    figures["steady_per_study_s"] = _steady_per_study(out / "ledger.jsonl")
    run = json.loads((out / "run.json").read_text()) if (out / "run.json").is_file() else {}
    figures["batch_size"] = (run.get("config") or {}).get("batch_size")
    t0 = time.perf_counter()
    verify = subprocess.run([sys.executable, "-m", "medvlm", "verify", str(out)], capture_output=True, text=True, env=env)
    figures["verify_s"] = time.perf_counter() - t0
    figures["verify_exit"] = verify.returncode
    if browser:
        figures["browser"] = _browser_times(out / "index.html")
    return figures


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("work", type=Path)
    ap.add_argument("--sizes", default="200,2000")
    ap.add_argument("--tokens", type=int, default=4)
    ap.add_argument("--pdf", action="store_true")
    ap.add_argument("--no-browser", action="store_true")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    results = []
    for n in map(int, args.sizes.split(",")):
        fig = run_size(args.work, n, args.tokens, args.pdf, not args.no_browser)
        results.append(fig)
        b = fig.get("browser") or {}
        print(f"{n:6d} studies: exit {fig['exit']}, batch {fig['batch_size']}, wall {fig['wall_s']:.1f} s "
              f"({fig['per_study_s']:.3f} s/study incl. start-up; steady {fig['steady_per_study_s'] or 0:.3f} s/study), peak RSS {fig['peak_rss'] / 1024**3:.2f} GB, "
              f"verify {fig['verify_s']:.2f} s (exit {fig['verify_exit']}), "
              f"index rows {b.get('rows')}, load {b.get('load_s', 0):.2f} s, sort ms {b.get('sort_ms')}, "
              f"filter {b.get('filter_ms', 0):.0f} ms ({b.get('filter_shown')}), "
              f"load average {fig['load_average_before']} -> {fig['load_average_after']}", flush=True)
        (args.work / "scale.json").write_text(json.dumps(results, indent=2) + "\n")
    if len(results) >= 2:
        a, z = results[0], results[-1]
        k = z["studies"] / a["studies"]
        steady = (z["steady_per_study_s"] or 0) / (a["steady_per_study_s"] or 1)
        print(f"x{k:.0f} studies: peak RSS x{z['peak_rss'] / a['peak_rss']:.2f}, steady per-study time "
              f"x{steady:.2f}, verify time x{z['verify_s'] / a['verify_s']:.2f} "
              f"(linear would be x{k:.0f}); marginal time per study (startup and load cancel out) "
              f"{(z['wall_s'] - a['wall_s']) / (z['studies'] - a['studies']):.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
