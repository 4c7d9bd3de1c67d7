"""What dtype, int8 and batching cost in accuracy: the phantom model on fresh phantoms, end to end, graded against truth.

usage: python tests/bench/bench_phantom.py [--n 200] [--seed 7] [--size 512] [--work DIR] [--no-serve]

Writes --n phantoms of --seed (7: never used by sample_data/train_phantom.py, which uses seed 1000)
with sample_data/make_phantoms.py's generator, runs `medvlm batch --model phantom` on them on the
CPU as fp32, bf16 and int8 at batch size 1 and 8, and once through `medvlm serve --model phantom`
with the endpoint backend (its default --quant auto = int8 on CPU; server batch size 8, 8 requests in flight), then `medvlm evaluate`s each
run against truth.csv. Prints one row per configuration: micro-F1 (95% bootstrap interval), studies
whose present findings match truth exactly, studies whose model text is byte-identical to fp32
batch 1, F1 per finding, and seconds per study. A benchmark: it prints figures, it asserts nothing.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from medvlm.config import RunConfig  # noqa: E402
from medvlm.evaluate import evaluate_run  # noqa: E402
from medvlm.phantoms import FINDING_CODES, TRUTH_NAME, generate  # noqa: E402
from medvlm.pipeline import run_batch  # noqa: E402
from serve_support import server_env, serving  # noqa: E402

SHORT = {"pneumothorax": "ptx", "pleural_effusion": "eff", "consolidation": "cons", "edema": "edema",
         "atelectasis": "atel", "mass": "mass", "nodule": "nod", "cardiomegaly": "cardio"}


def texts(out: Path) -> dict[str, str]:
    with open(out / "summary.csv", newline="") as fh:
        return {r["source"]: json.loads((out / r["report"]).read_text())["model_output"]["text"]
                for r in csv.DictReader(fh) if r["status"] == "ok"}


def seconds_per_study(run: Path, n: int) -> float:
    """Wall seconds of the run (run.json's started_at..finished_at) per study."""
    from datetime import datetime

    doc = json.loads((run / "run.json").read_text())
    span = datetime.fromisoformat(doc["finished_at"]) - datetime.fromisoformat(doc["started_at"])
    return span.total_seconds() / n


def value(interval: dict | None) -> float:
    return float("nan") if not interval else interval["value"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--size", type=int, default=512, help="phantom rows (the generator's default)")
    parser.add_argument("--work", type=Path, default=None, help="folder for phantoms and runs (default: a temp dir)")
    parser.add_argument("--no-serve", action="store_true", help="skip the medvlm serve + endpoint row")
    args = parser.parse_args()
    if args.seed == 1000:
        parser.error("seed 1000 is the phantom model's training seed; measure on another")
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-phantom-"))
    studies = work / f"phantoms-{args.seed}-{args.n}-{args.size}"
    if not (studies / TRUTH_NAME).is_file():  # phantoms already in --work are reused
        generate(studies, args.n, args.seed, args.size)
    truth = studies / TRUTH_NAME
    common = dict(studies=studies, model="phantom", write_pdf=False)
    configs = []
    for label, options in (("fp32", {"dtype": "float32", "quant": "none"}),
                           ("bf16", {"dtype": "bfloat16", "quant": "none"}),
                           ("int8", {"dtype": "auto", "quant": "int8"})):
        for batch in (1, 8):
            configs.append((f"cpu {label} batch {batch}", f"{label}-b{batch}",
                            dict(batch_size=batch, backend_options={"device": "cpu", **options})))
    rows = []
    for label, folder, extra in configs:
        if not (work / folder / "run.json").is_file():  # a finished run in --work is reused
            run_batch(RunConfig(out=work / folder, **common, **extra))
        rows.append((label, folder, seconds_per_study(work / folder, args.n)))
    serve_label = "medvlm serve (cpu, --quant auto = int8, batch 8) via endpoint"
    if not args.no_serve and (work / "serve-b8" / "run.json").is_file():
        rows.append((serve_label, "serve-b8", seconds_per_study(work / "serve-b8", args.n)))
    elif not args.no_serve:
        for name in ("MEDVLM_API_KEY", "OPENAI_API_KEY"):
            os.environ.pop(name, None)
        with serving("--model", "phantom", "--port", "0", "--batch-size", "8", "--max-wait-ms", "200",
                     env=server_env()) as server:
            run_batch(RunConfig(out=work / "serve-b8", backend="endpoint", batch_size=8,
                                backend_options={"url": server.url, "concurrency": 8}, **common))
            rows.append((serve_label, "serve-b8", seconds_per_study(work / "serve-b8", args.n)))
            server.stop()
    reference = texts(work / "fp32-b1")
    print(f"phantom model on {args.n} fresh phantoms (seed {args.seed}, {args.size} px rows); truth {truth}")
    head = (f"{'configuration':<48} {'micro-F1 [95% CI]':<22} {'exact':>6} {'same text':>9} "
            + " ".join(f"{SHORT[c]:>6}" for c in FINDING_CODES) + f" {'s/study':>8}")
    print(head)
    print("-" * len(head))
    for label, folder, seconds in rows:
        ev = evaluate_run(work / folder, truth, out=work / f"eval-{folder}").evaluation
        micro = ev["micro_f1"]
        per = {f["code"]: value(f["f1"]) for f in ev["findings"]}
        exact = ev["study_level"]["exact_match"]
        other = texts(work / folder)
        same = sum(1 for k, v in reference.items() if other.get(k) == v)
        ci = f"{micro['value']:.3f}" + (f" [{micro['low']:.3f}-{micro['high']:.3f}]" if micro["low"] is not None else "")
        print(f"{label:<48} {ci:<22} {exact['value']:>6.2f} {same / max(len(reference), 1):>9.2f} "
              + " ".join(f"{per.get(c, float('nan')):>6.3f}" for c in FINDING_CODES) + f" {seconds:>8.2f}")
    print(f"exact = share of studies whose present findings equal truth; same text = share byte-identical to "
          f"cpu fp32 batch 1; runs and evaluations under {work}")


if __name__ == "__main__":
    main()
