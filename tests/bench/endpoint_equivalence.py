"""How often batched generation changes the text: in-process batch 1 vs `medvlm serve` at batch 1 and batch N.

usage: python tests/bench/endpoint_equivalence.py [STUDIES=sample_data/studies] [--model demo]
       [--max-new-tokens 24] [--batch-size 4]

Prints, per pairing, how many studies got byte-identical model text (greedy decoding everywhere):
in-process batch 1 is the reference; then `batch --endpoint` against `medvlm serve --batch-size 1`
(concurrency 1), against `medvlm serve --batch-size N` (concurrency N, so requests share generate()
calls), and in-process `--batch-size N`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from medvlm.config import RunConfig  # noqa: E402
from medvlm.models import load_backend  # noqa: E402
from medvlm.pipeline import run_batch  # noqa: E402
from serve_support import server_env, serving  # noqa: E402

PROJECT = Path(__file__).resolve().parents[2]


def texts(out: Path) -> dict[str, str]:
    import csv

    with open(out / "summary.csv", newline="") as fh:
        return {r["source"]: json.loads((out / r["report"]).read_text())["model_output"]["text"]
                for r in csv.DictReader(fh) if r["status"] == "ok"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("studies", nargs="?", default=str(PROJECT / "sample_data" / "studies"))
    parser.add_argument("--model", default="demo")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="endpoint-equivalence-"))
    common = dict(studies=Path(args.studies), model=args.model, max_new_tokens=args.max_new_tokens, write_pdf=False)
    backend = load_backend(args.model, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens)
    run_batch(RunConfig(out=work / "b1", batch_size=1, **common), backend=backend)
    run_batch(RunConfig(out=work / f"b{args.batch_size}", batch_size=args.batch_size, **common), backend=backend)
    del backend
    for name in ("MEDVLM_API_KEY", "OPENAI_API_KEY"):
        os.environ.pop(name, None)
    for size in (1, args.batch_size):
        with serving("--model", args.model, "--port", "0", "--batch-size", str(size), "--max-wait-ms", "200",
                     env=server_env()) as server:
            run_batch(RunConfig(out=work / f"serve{size}", backend="endpoint", batch_size=size,
                                backend_options={"url": server.url, "concurrency": size}, **common))
            server.stop()
    reference = texts(work / "b1")
    print(f"model {args.model}, {len(reference)} studies, {args.max_new_tokens} new tokens, greedy")
    for label, folder in ((f"endpoint -> serve --batch-size 1 (concurrency 1)", "serve1"),
                          (f"endpoint -> serve --batch-size {args.batch_size} (concurrency {args.batch_size})", f"serve{args.batch_size}"),
                          (f"in-process --batch-size {args.batch_size}", f"b{args.batch_size}")):
        other = texts(work / folder)
        same = sum(1 for k, v in reference.items() if other.get(k) == v)
        print(f"{label:<55} identical text vs in-process batch 1: {same}/{len(reference)}")
    print(f"-> {work}")


if __name__ == "__main__":
    main()
