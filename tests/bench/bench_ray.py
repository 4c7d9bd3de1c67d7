"""Studies/min of the local executor vs `--executor ray` (1 and 2 workers) on the bench model, in one run.

usage: python tests/bench/bench_ray.py [STUDIES=/tmp/bench16] [--model bench] [--batch-size 4]
                                       [--max-new-tokens 32] [--no-pdf] [--json OUT.json]

Runs, one after the other on the same studies with the same settings (exactly --max-new-tokens per
study, --ignore-eos), each into a fresh output folder:
  local          the local executor (this process: prefetch, model and render threads, all cores)
  ray 1w x 2cpu  one model actor holding 2 CPUs (2 torch threads, like local): Ray's own overhead
  ray 1w x 1cpu  one model actor, 1 CPU (Ray's default per actor)
  ray 2w x 1cpu  two model actors, 1 CPU each (each loads its own model)
and prints, per run: wall seconds, seconds to the first result (model load, and for Ray: starting
the instance, resolving the model on a worker, starting the actors), end-to-end studies/min,
studies/min after the first result, and the model's own seconds per study. Asserts nothing.
Studies missing? `python tests/bench/make_bench_studies.py /tmp/bench16 16` writes them.
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
from pathlib import Path

RUNS = [
    ("local", "local", {}),
    ("ray 1w x 2cpu", "ray", {"workers": 1, "cpus_per_worker": 2}),
    ("ray 1w x 1cpu", "ray", {"workers": 1}),
    ("ray 2w x 1cpu", "ray", {"workers": 2}),
]


def one_run(label: str, executor: str, options: dict, args, out: Path) -> dict:
    from medvlm.config import RunConfig
    from medvlm.pipeline import run_batch

    config = RunConfig(studies=args.studies, out=out, model=args.model, batch_size=args.batch_size,
                       max_new_tokens=args.max_new_tokens, ignore_eos=True, write_pdf=args.pdf,
                       executor=executor, executor_options=options)
    times: list[float] = []
    t0 = time.perf_counter()
    result = run_batch(config, on_progress=lambda done, total, row: times.append(time.perf_counter() - t0))
    wall = time.perf_counter() - t0
    n = result.count("ok")
    first = times[0] if times else wall
    burst = sum(1 for t in times if t <= first + 1.0)  # studies that arrived with the first batch
    after = (len(times) - burst) / (times[-1] - first) * 60 if len(times) > burst and times[-1] > first else None
    stats = result.stats
    figures = {
        "label": label, "studies_ok": n, "failed": result.failed, "wall_s": wall, "first_result_s": first,
        "studies_per_min": n / wall * 60, "studies_per_min_after_first": after,
        "model_s_per_study": stats.get("model_s", 0.0) / max(n, 1), "load_s": stats.get("load_s", 0.0),
        "ray_connect_s": stats.get("ray_connect_s"), "ray_identity_s": stats.get("ray_identity_s"),
        "model_loads": stats.get("model_loads"), "render_s_per_study": stats.get("render_s", 0.0) / max(n, 1),
        "decode_s_per_study": stats.get("decode_s", 0.0) / max(n, 1),
        "writer_s_per_study": stats.get("writer_s", 0.0) / max(n, 1) if "writer_s" in stats else None,
    }
    del result
    gc.collect()
    return figures


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("studies", nargs="?", type=Path, default=Path("/tmp/bench16"))
    ap.add_argument("--model", default="bench")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--no-pdf", dest="pdf", action="store_false")
    ap.add_argument("--runs", default=",".join(r[0] for r in RUNS), help="comma-separated labels to run")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if not args.studies.is_dir():
        raise SystemExit(f"{args.studies} not found: python tests/bench/make_bench_studies.py {args.studies} 16")
    wanted = set(args.runs.split(","))
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        for i, (label, executor, options) in enumerate(RUNS):
            if label in wanted:
                rows.append(one_run(label, executor, options, args, Path(tmp) / f"run{i}"))
                print(f"done: {label} ({rows[-1]['wall_s']:.1f} s)", flush=True)
    n = len(list(args.studies.iterdir()))
    print(f"\n{n} studies, model {args.model}, --batch-size {args.batch_size}, --max-new-tokens {args.max_new_tokens}"
          f" (ignore EOS), PDF {'on' if args.pdf else 'off'}")
    print(f"{'run':15s} {'ok':>3s} {'wall s':>7s} {'1st result s':>12s} {'studies/min':>11s} "
          f"{'after 1st':>9s} {'model s/study':>13s} {'load s':>7s} {'ray init s':>10s}")
    for r in rows:
        after = f"{r['studies_per_min_after_first']:.2f}" if r["studies_per_min_after_first"] else "-"
        ray_init = (r["ray_connect_s"] or 0) + (r["ray_identity_s"] or 0)
        print(f"{r['label']:15s} {r['studies_ok']:3d} {r['wall_s']:7.1f} {r['first_result_s']:12.1f} "
              f"{r['studies_per_min']:11.2f} {after:>9s} {r['model_s_per_study']:13.2f} {r['load_s']:7.1f} "
              f"{ray_init:10.1f}")
    for r in rows:
        writer = f", driver writes {r['writer_s_per_study'] * 1000:.0f} ms/study" if r["writer_s_per_study"] else ""
        print(f"{r['label']}: decode {r['decode_s_per_study']:.2f} s/study, render {r['render_s_per_study']:.2f} "
              f"s/study{writer}, models loaded {r['model_loads'] or 1}")
    base = next((r for r in rows if r["label"] == "local"), None)
    if base:
        for r in rows:
            if r is not base:
                print(f"{r['label']} / local: studies/min x{r['studies_per_min'] / base['studies_per_min']:.2f}, "
                      f"extra wall {r['wall_s'] - base['wall_s']:+.1f} s")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
