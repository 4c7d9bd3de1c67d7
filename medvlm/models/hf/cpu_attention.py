"""Vision-tower attention for bf16 on CPU: two batched bf16 matmuls and a softmax instead of SDPA.

On the 2-core AVX512-bf16 machine, at the bench model's vision shape (batch 8, 12 heads, 1024 patches,
head dim 64), torch's CPU flash-attention kernel ran at ~151 GOP/s and was ~45% of the vision tower's
time; the same attention as bf16 matmuls ran at ~408 GOP/s (the tower's Linear layers run at ~750).
Its numerics differ from the flash kernel's (the softmax is taken and kept in bf16: max difference 0.006
on random inputs), so it is used only where it was measured: a SigLIP vision tower (Gemma 3 / MedGemma)
held in bf16 on CPU, without an attention mask, in eval mode. Anything else goes to SDPA unchanged.
MEDVLM_CPU_ATTENTION=sdpa turns it off.
"""

from __future__ import annotations

import os

from ...errors import ModelUnavailable

CPU_ATTENTION_ENV = "MEDVLM_CPU_ATTENTION"  # "matmul" (default) or "sdpa"
NAME = "medvlm_cpu_bf16_matmul"
VISION_TYPES = ("siglip_vision_model",)
SCORES_BYTES = 64 << 20


def matmul_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """softmax(q k^T * scale) v in the inputs' dtype; returns (batch, tokens, heads, dim) like SDPA's wrapper."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if (
        attention_mask is not None or module.training or query.device.type != "cpu"
        or query.dtype != torch.bfloat16 or query.shape[1] != key.shape[1]
    ):
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    batch, heads, tokens, _ = query.shape
    # A few images at a time, so the score matrix stays near SCORES_BYTES instead of the whole batch's.
    step = max(1, SCORES_BYTES // (heads * tokens * key.shape[-2] * query.element_size()))
    out = torch.empty(batch, tokens, heads, value.shape[-1], dtype=query.dtype)
    for start in range(0, batch, step):
        part = slice(start, start + step)
        probs = torch.softmax(torch.matmul(query[part] * scale, key[part].transpose(-1, -2)), dim=-1)
        out[part] = torch.matmul(probs, value[part]).transpose(1, 2)
    return out, None


def use_for_vision(model) -> str | None:
    """Route a bf16 SigLIP vision tower's attention on CPU to matmul_attention; returns what was chosen."""
    import torch
    from transformers import AttentionInterface

    choice = os.environ.get(CPU_ATTENTION_ENV, "matmul")
    if choice not in ("matmul", "sdpa"):
        raise ModelUnavailable(f"{CPU_ATTENTION_ENV} must be matmul or sdpa (got {choice!r}).")
    if choice == "sdpa":
        return None
    tower = getattr(getattr(model, "model", model), "vision_tower", None)
    config = getattr(tower, "config", None)
    if config is None or getattr(config, "model_type", None) not in VISION_TYPES:
        return None
    if config._attn_implementation != "sdpa":
        return None
    param = next(tower.parameters(), None)
    if param is None or param.device.type != "cpu" or param.dtype != torch.bfloat16:
        return None
    AttentionInterface.register(NAME, matmul_attention)
    config._attn_implementation = NAME
    return "vision attention as bf16 matmuls"
