"""Sweep quantization modes and batch sizes on the bench model: prefill s/study and decode tokens/s.

Usage: python tests/bench/bench_speed.py [--model bench] [--modes none:float32,none:bfloat16,int8:float32]
                                         [--batches 1,4,8] [--tokens 17] [--threads N]
       python tests/bench/bench_speed.py --headline STUDIES [--model bench] [--tokens 64]

--headline: the default command as a user types it (`medvlm batch STUDIES --model bench --ignore-eos
--max-new-tokens 64`, no speed flags, a subprocess timed from start to exit, so its model load and
start-up are included) against the seed-style loop (fp32, one study at a time, plain HF generate on the
same model and inputs, its load excluded), one after the other in one run, with the load average.

Each mode loads the model once through medvlm's own loader (HFBackend) and times
preprocess / prefill / decode with the same synthetic 1024x1024 study. Prints a table; asserts nothing.
The model is built once and cached (MEDVLM_CACHE_DIR). Use `medvlm bench` for the whole pipeline.
"""

from __future__ import annotations

import argparse
import gc
import time

from PIL import Image


def _batch(n: int):
    from medvlm.prompts import load_template, render_prompt
    from medvlm.records import ImageInput, Study, StudyContext, StudyRef

    img = Image.radial_gradient("L").resize((1024, 1024)).convert("RGB")
    template = load_template("chest_xray")
    out = []
    for i in range(n):
        study = Study(StudyRef(f"s{i}", f"s{i}", ()), (ImageInput("x.png", "0" * 64, img, "raster", (1024, 1024)),),
                      StudyContext(age_years=60, sex="F", view="PA"))
        out.append((study, render_prompt(study, template)))
    return out


def headline(studies: str, model: str, tokens: int) -> None:
    """Default command (load included) vs seed-style loop (load excluded), same inputs, one run."""
    import os
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    from medvlm.bench import run_seed_style
    from medvlm.config import RunConfig

    work = Path(tempfile.mkdtemp(prefix="medvlm-headline-"))
    load0 = os.getloadavg()
    cmd = [sys.executable, "-m", "medvlm", "batch", studies, "--modality", "chest_xray", "--model", model,
           "--out", str(work / "default"), "--ignore-eos", "--max-new-tokens", str(tokens)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    default_s = time.perf_counter() - t0
    load1 = os.getloadavg()
    if proc.returncode != 0:
        print(proc.stderr[-2000:])
        raise SystemExit(f"default command failed with exit {proc.returncode}")
    import json

    chosen = json.loads((work / "default" / "run.json").read_text())["config"]
    seed = run_seed_style(RunConfig(studies=Path(studies), out=work / "seed", model=model, max_new_tokens=tokens,
                                    ignore_eos=True))
    load2 = os.getloadavg()
    print(f"default command ({' '.join(cmd[1:])}): {default_s:.1f} s including start-up and model load; "
          f"batch size {chosen['batch_size']} ({chosen.get('batch_size_choice', {}).get('reason', '')})")
    print(f"seed-style loop (fp32, batch 1, plain generate): {seed.wall_s:.1f} s excluding its {seed.load_s:.1f} s load; "
          f"{seed.studies_ok} studies, {seed.generated_tokens} tokens")
    print(f"ratio: {seed.wall_s / default_s:.2f}x   load average before {load0}, between {load1}, after {load2}")
    print(f"outputs under {work}")


def main() -> None:
    import psutil
    import torch

    from medvlm.models import load_backend

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="bench")
    ap.add_argument("--modes", default="none:float32,none:bfloat16,int8:float32")
    ap.add_argument("--batches", default="1,4,8")
    ap.add_argument("--tokens", type=int, default=17)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--headline", metavar="STUDIES", help="default command vs seed-style loop on these studies")
    args = ap.parse_args()
    if args.headline:
        headline(args.headline, args.model, args.tokens if args.tokens != 17 else 64)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    print("mode            batch  preprocess s/study  prefill s/study  decode tok/s  rss GB")
    for mode in args.modes.split(","):
        quant, dtype = mode.split(":")
        backend = load_backend(args.model, quant=quant, dtype=dtype, batch_size=max(map(int, args.batches.split(","))))
        backend.generate(_batch(1), max_new_tokens=2, ignore_eos=True)  # warm-up
        for b in map(int, args.batches.split(",")):
            prepared = backend.preprocess(_batch(b))
            backend.generate_prepared(prepared, max_new_tokens=args.tokens, ignore_eos=True)
            decode_tps = prepared.size * (args.tokens - 1) / prepared.decode_s
            rss = psutil.Process().memory_info().rss / 1024**3
            print(f"{mode:15s} {b:5d}  {prepared.preprocess_s / b:18.2f}  {prepared.prefill_s / b:15.2f}"
                  f"  {decode_tps:12.1f}  {rss:6.2f}", flush=True)
        del backend
        gc.collect()
        time.sleep(1)


if __name__ == "__main__":
    main()
