"""Studies/min through `medvlm serve` at client concurrency 1, 4 and 8 vs in-process --batch-size 8, in one run.

usage: python tests/bench/bench_serve.py [STUDIES=/tmp/bench16] [--model bench] [--max-new-tokens 64]
       [--server-batch-size 8] [--concurrency 1,4,8] [--out DIR]

Every study generates exactly --max-new-tokens tokens (ignore_eos on both sides), PDFs are off, and
model loading is outside the timed part (the in-process model is loaded before its batch; the
server is timed from its ready line). Make the studies with tests/bench/make_bench_studies.py.
Prints one table; the server's mean batch size per phase comes from its /health counters.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/ for serve_support

from medvlm.config import RunConfig  # noqa: E402
from medvlm.models import load_backend  # noqa: E402
from medvlm.pipeline import run_batch  # noqa: E402
from serve_support import server_env, serving  # noqa: E402


def timed_batch(config: RunConfig, backend=None) -> tuple[float, int]:
    started = time.perf_counter()
    result = run_batch(config, backend=backend)
    return time.perf_counter() - started, result.count("ok")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("studies", nargs="?", default="/tmp/bench16")
    parser.add_argument("--model", default="bench")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--server-batch-size", type=int, default=8)
    parser.add_argument("--concurrency", default="1,4,8")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    studies = Path(args.studies)
    if not studies.is_dir():
        sys.exit(f"{studies} not found: python tests/bench/make_bench_studies.py {studies} 16")
    out = Path(args.out or tempfile.mkdtemp(prefix="bench-serve-"))
    common = dict(studies=studies, model=args.model, max_new_tokens=args.max_new_tokens, ignore_eos=True, write_pdf=False)
    rows = []

    backend = load_backend(args.model, batch_size=8, max_new_tokens=args.max_new_tokens)
    seconds, ok = timed_batch(RunConfig(out=out / "in-process", batch_size=8, **common), backend)
    rows.append(("in-process", "batch 8", ok, seconds, "8 (fixed)"))
    del backend

    for name in ("MEDVLM_API_KEY", "OPENAI_API_KEY"):
        os.environ.pop(name, None)
    with serving("--model", args.model, "--port", "0", "--batch-size", str(args.server_batch_size),
                 "--max-wait-ms", "50", env=server_env()) as server:
        health = server.url.removesuffix("/v1") + "/health"
        for concurrency in [int(c) for c in args.concurrency.split(",")]:
            before = httpx.get(health, timeout=30).json()
            config = RunConfig(out=out / f"serve-c{concurrency}", backend="endpoint", batch_size=concurrency,
                               backend_options={"url": server.url, "concurrency": concurrency}, **common)
            seconds, ok = timed_batch(config)
            after = httpx.get(health, timeout=30).json()
            batches = after["batches"] - before["batches"]
            mean = (after["requests"] - before["requests"]) / batches if batches else 0
            rows.append(("medvlm serve", f"concurrency {concurrency}", ok, seconds, f"{mean:.1f}"))
        server.stop()

    print(f"model {args.model}, {args.max_new_tokens} new tokens per study, server --batch-size {args.server_batch_size}, "
          f"{os.cpu_count()} CPUs")
    print(f"{'path':<14} {'setting':<15} {'studies':>7} {'seconds':>8} {'studies/min':>12} {'mean server batch':>18}")
    for path, setting, ok, seconds, mean in rows:
        print(f"{path:<14} {setting:<15} {ok:>7} {seconds:>8.1f} {60 * ok / seconds:>12.2f} {mean:>18}")
    base = rows[0][2] / rows[0][3]
    for path, setting, ok, seconds, _ in rows[1:]:
        print(f"{setting} / in-process batch 8: {(ok / seconds) / base:.2f}x")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
