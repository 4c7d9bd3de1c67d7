"""A/B of the in-place KV cache against transformers' DynamicCache on CPU, interleaved in one process.

Usage: python tests/bench/bench_kv_cache.py [--model bench] [--batch 8] [--tokens 64] [--reps 5]

Loads the model twice (MEDVLM_CPU_KV_CACHE=dynamic, then inplace), then alternates generate() calls between
them on the same synthetic batch (so a busy machine hurts both alike), and prints decode ms/step per call and
whether the texts are identical. A benchmark: it prints figures, it asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics

from bench_speed import _batch


def main() -> None:
    import torch

    from medvlm.models import load_backend

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="bench")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    backends = {}
    for choice in ("dynamic", "inplace"):
        os.environ["MEDVLM_CPU_KV_CACHE"] = choice
        backends[choice] = load_backend(args.model, quant="int8", batch_size=args.batch, max_new_tokens=args.tokens)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, load average {os.getloadavg()}")
    texts, decode = {}, {name: [] for name in backends}
    for _ in range(args.reps):
        for name, backend in backends.items():
            prepared = backend.preprocess(_batch(args.batch))
            outs = backend.generate_prepared(prepared, max_new_tokens=args.tokens, ignore_eos=True)
            texts.setdefault(name, []).append([o.text for o in outs])
            decode[name].append(1000 * prepared.decode_s / max(args.tokens - 1, 1))
    for name in backends:
        print(f"{name:8s} decode ms/step median {statistics.median(decode[name]):6.1f}  min {min(decode[name]):6.1f}  "
              f"(all: {[round(x, 1) for x in decode[name]]})  text identical to dynamic: {texts[name] == texts['dynamic']}")
    print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
