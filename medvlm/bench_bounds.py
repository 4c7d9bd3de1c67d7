"""This machine's limits at the model's shapes (matmul rates, memory bandwidth) and how near prefill/decode come.

Measured in the same process as `medvlm bench`, with the kernels the model path runs: torch.matmul in
fp32 and bf16 (the vision tower is bf16 on CPUs with bf16 matrix instructions, else fp32), the dynamic
per-channel int8 Linear the language model is converted to (torch.ao, FBGEMM; activations quantised per
call, as in the model), and torch._int_mm (raw int8 GEMM, for reference). Bandwidth: the time to read a buffer larger than the caches.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

BANDWIDTH_BUFFER_BYTES = 256 * 1024**2


@dataclass(frozen=True)
class Shapes:
    """The matmul shapes that dominate the model: the MLP of the language model and of the vision tower."""

    hidden: int
    intermediate: int
    vision_hidden: int
    vision_intermediate: int
    prefill_rows: int  # tokens in one prefill call (batch x prompt length)
    decode_rows: int  # the batch size: one token per study per decode step
    vision_rows: int  # patches of one image


def _best_of(fn, repeat: int, budget_s: float = 1.5) -> float:
    """Fastest of `repeat` timed calls after one warm-up (stops early past the time budget)."""
    fn()
    best = float("inf")
    started = time.perf_counter()
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        if time.perf_counter() - started > budget_s:
            break
    return best


def matmul_rate(rows: int, k: int, n: int, kind: str) -> float:
    """Operations per second of (rows x k) @ (k x n) with the named kernel (2*rows*k*n ops per call)."""
    import torch

    torch.manual_seed(0)
    ops = 2 * rows * k * n
    with torch.inference_mode():
        if kind in ("fp32", "bf16"):
            dtype = torch.float32 if kind == "fp32" else torch.bfloat16
            a, b = torch.randn(rows, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
            seconds = _best_of(lambda: torch.matmul(a, b), 10)
        elif kind == "int8_dynamic":
            import warnings

            from torch.ao.nn.quantized.dynamic import Linear as QLinear
            from torch.ao.quantization import per_channel_dynamic_qconfig

            linear = torch.nn.Linear(k, n)
            linear.qconfig = per_channel_dynamic_qconfig
            engine = torch.backends.quantized.engine
            torch.backends.quantized.engine = "fbgemm"
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    q = QLinear.from_float(linear)
                x = torch.randn(rows, k)
                seconds = _best_of(lambda: q(x), 10)
            finally:
                torch.backends.quantized.engine = engine
        elif kind == "int8_mm":
            # torch._int_mm needs rows > 16 and multiples of 8 on CPU
            r = max(32, -(-rows // 8) * 8)
            a = torch.randint(-128, 127, (r, k), dtype=torch.int8)
            b = torch.randint(-128, 127, (k, n), dtype=torch.int8)
            seconds = _best_of(lambda: torch._int_mm(a, b), 10)
            ops = 2 * r * k * n
        else:
            raise ValueError(kind)
    return ops / seconds


def read_bandwidth(nbytes: int = BANDWIDTH_BUFFER_BYTES) -> float:
    """Bytes per second to stream a buffer larger than the caches through the cores (a float32 sum)."""
    import torch

    with torch.inference_mode():
        buf = torch.ones(nbytes // 4, dtype=torch.float32)
        seconds = _best_of(lambda: buf.sum(), 8)
    return nbytes / seconds


def measure(shapes: Shapes) -> dict:
    """Rates at the model's shapes: prefill rows for fp32/bf16/int8, decode rows for int8, vision rows for bf16."""
    h, i = shapes.hidden, shapes.intermediate
    rows = {
        "fp32 matmul, prefill (LM MLP)": ("fp32", shapes.prefill_rows, h, i),
        "bf16 matmul, prefill (LM MLP)": ("bf16", shapes.prefill_rows, h, i),
        "int8 dynamic Linear (fbgemm), prefill (LM MLP)": ("int8_dynamic", shapes.prefill_rows, h, i),
        "int8 torch._int_mm, prefill (LM MLP)": ("int8_mm", shapes.prefill_rows, h, i),
        "int8 dynamic Linear (fbgemm), decode (LM MLP)": ("int8_dynamic", shapes.decode_rows, h, i),
        "fp32 matmul, decode (LM MLP)": ("fp32", shapes.decode_rows, h, i),
        "bf16 matmul, vision tower MLP": ("bf16", shapes.vision_rows, shapes.vision_hidden, shapes.vision_intermediate),
        "fp32 matmul, vision tower MLP": ("fp32", shapes.vision_rows, shapes.vision_hidden, shapes.vision_intermediate),
    }
    rates = {}
    for label, (kind, m, k, n) in rows.items():
        try:
            rates[label] = {"kind": kind, "shape": [m, k, n], "gops": matmul_rate(m, k, n, kind) / 1e9}
        except (RuntimeError, ValueError) as exc:  # a kernel this build or CPU lacks: say so, go on
            rates[label] = {"kind": kind, "shape": [m, k, n], "gops": None, "error": str(exc).splitlines()[0][:120]}
    return {"matmul": rates, "read_bandwidth_gbs": read_bandwidth() / 1e9}


def _rate(bounds: dict, label: str) -> float | None:
    value = bounds["matmul"].get(label, {}).get("gops")
    return value * 1e9 if value else None


def shares(bounds: dict, *, lm_linear_params: int, lm_weight_bytes: int, vision_params: int, prompt_tokens: int,
           images: int, patches_per_image: int, prefill_s: float, decode_steps: int, decode_s: float,
           batch_size: int, vision_kind: str, lm_kind: str, kv_bytes_per_step: int = 0) -> dict:
    """Prefill and decode against the bounds: bound time / measured time (1.0 = at the limit).

    Prefill ops = 2 x LM Linear parameters x prompt tokens (padding included) + 2 x vision parameters x patches;
    attention is left out (a lower bound on the work, so the share is if anything understated).
    Decode: each step reads every LM weight once and the keys and values cached so far (kv_bytes_per_step,
    the mean over the answer), so the step cannot beat those bytes / read bandwidth; the compute bound
    (2 x params x batch at the best rate measured for that precision) is shown beside it.
    """
    vision_rate = _rate(bounds, f"{vision_kind} matmul, vision tower MLP")
    lm_label = {"int8": "int8 dynamic Linear (fbgemm), prefill (LM MLP)", "fp32": "fp32 matmul, prefill (LM MLP)",
                "bf16": "bf16 matmul, prefill (LM MLP)"}[lm_kind]
    lm_rate = _rate(bounds, lm_label)
    vision_ops = 2 * vision_params * patches_per_image * images
    lm_ops = 2 * lm_linear_params * prompt_tokens
    out: dict = {"prefill_ops": vision_ops + lm_ops, "prefill_s": prefill_s}
    if vision_rate and lm_rate and prefill_s:
        bound = vision_ops / vision_rate + lm_ops / lm_rate
        out.update(prefill_bound_s=bound, prefill_share=bound / prefill_s, prefill_gops=(vision_ops + lm_ops) / prefill_s / 1e9,
                   prefill_bound_s_per_image=bound / max(images, 1), prefill_s_per_image=prefill_s / max(images, 1))
    bandwidth = bounds["read_bandwidth_gbs"] * 1e9
    if decode_steps and decode_s:
        step = decode_s / decode_steps
        memory_bound = (lm_weight_bytes + kv_bytes_per_step) / bandwidth
        # the machine's compute limit for this precision: the best rate measured at any shape (the
        # decode-shape kernel rate is in the table; using it here would call a slow kernel the limit)
        kinds = {"int8": ("int8_dynamic", "int8_mm"), "bf16": ("bf16",), "fp32": ("fp32",)}[lm_kind]
        measured = [row["gops"] * 1e9 for row in bounds["matmul"].values() if row.get("gops") and row["kind"] in kinds]
        decode_rate = max(measured) if measured else None
        compute_bound = 2 * lm_linear_params * batch_size / decode_rate if decode_rate else 0.0
        out.update(decode_step_s=step, decode_memory_bound_s=memory_bound, decode_compute_bound_s=compute_bound,
                   decode_kv_bytes_per_step=kv_bytes_per_step, decode_kv_bound_s=kv_bytes_per_step / bandwidth,
                   decode_share=max(memory_bound, compute_bound) / step,
                   decode_tokens_per_s=batch_size / step,
                   decode_bound_tokens_per_s=batch_size / max(memory_bound, compute_bound))
    return out


def kv_bytes_per_step(*, layers: int, kv_heads: int, head_dim: int, width: int, rows: float, context: float,
                      sliding_layers: int = 0, window: int | None = None) -> int:
    """Bytes of cached keys and values one decode step reads: every layer, both tensors, every row's context
    (a sliding-window layer reads at most its window)."""
    per_position = 2 * kv_heads * head_dim * width * rows
    full = layers - sliding_layers
    sliding_context = min(context, window) if window else context
    return int(per_position * (full * context + sliding_layers * sliding_context))


def bound_lines(bounds: dict, share: dict | None) -> list[str]:
    """Printable lines: the microbenchmark, then the shares."""
    lines = [f"read bandwidth: {bounds['read_bandwidth_gbs']:.1f} GB/s"]
    for label, row in bounds["matmul"].items():
        m, k, n = row["shape"]
        rate = f"{row['gops']:.0f} GOP/s" if row.get("gops") else f"n/a ({row.get('error', '')})"
        lines.append(f"{label} [{m}x{k} @ {k}x{n}]: {rate}")
    if share:
        if "prefill_share" in share:
            lines.append(
                f"prefill: {share['prefill_s_per_image']:.2f} s/image vs bound {share['prefill_bound_s_per_image']:.2f} "
                f"s/image -> {100 * share['prefill_share']:.0f}% of the matmul bound ({share['prefill_gops']:.0f} GOP/s)"
            )
        if "decode_share" in share:
            lines.append(
                f"decode: {1000 * share['decode_step_s']:.0f} ms/step ({share['decode_tokens_per_s']:.1f} tok/s) vs bound "
                f"{1000 * max(share['decode_memory_bound_s'], share['decode_compute_bound_s']):.0f} ms/step "
                f"(weights and KV cache/bandwidth {1000 * share['decode_memory_bound_s']:.0f} ms, of which KV "
                f"{1000 * share.get('decode_kv_bound_s', 0.0):.0f} ms; compute "
                f"{1000 * share['decode_compute_bound_s']:.0f} ms) -> {100 * share['decode_share']:.0f}% of the bound"
            )
    return lines
