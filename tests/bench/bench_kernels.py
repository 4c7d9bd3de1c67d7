"""A/B of int8 kernel choices on the whole bench model, interleaved in one process, with text equality.

Usage: python tests/bench/bench_kernels.py [--model bench] [--kernels fbgemm,onednn] [--batch 4] [--tokens 9] [--reps 2]

Loads the model once per MEDVLM_INT8_KERNELS value (fbgemm, onednn, hybrid), then alternates generate()
calls between them on the same synthetic batch (so a busy shared machine hurts every variant alike), and
prints prefill s/study, decode ms/step and whether each variant's text equals the first one's. Asserts nothing.
"""

from __future__ import annotations

import argparse
import os

from bench_speed import _batch


def main() -> None:
    import torch

    from medvlm.models import load_backend

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="bench")
    ap.add_argument("--kernels", default="fbgemm,onednn")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=9)
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args()
    backends = {}
    for kernels in args.kernels.split(","):
        os.environ["MEDVLM_INT8_KERNELS"] = kernels
        backends[kernels] = load_backend(args.model, quant="int8", batch_size=args.batch, max_new_tokens=args.tokens)
        backends[kernels].generate(_batch(1), max_new_tokens=2, ignore_eos=True)  # warm-up
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, load average {os.getloadavg()}")
    texts, prefill, decode = {}, {k: [] for k in backends}, {k: [] for k in backends}
    for _ in range(args.reps):
        for name, backend in backends.items():
            prepared = backend.preprocess(_batch(args.batch))
            outs = backend.generate_prepared(prepared, max_new_tokens=args.tokens, ignore_eos=True)
            texts.setdefault(name, [o.text for o in outs])
            prefill[name].append(prepared.prefill_s / args.batch)
            decode[name].append(1000 * prepared.decode_s / max(args.tokens - 1, 1))
    first = next(iter(texts.values()))
    for name in backends:
        print(f"{name:8s} prefill s/study {min(prefill[name]):6.2f}  decode ms/step {min(decode[name]):7.1f}  "
              f"(all reps: {[round(x, 2) for x in prefill[name]]}, {[round(x) for x in decode[name]]})  "
              f"text identical to {next(iter(texts))}: {texts[name] == first}")
    print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
