"""CPU int8: per-channel dynamic int8 kernels for the language model's Linear layers (torch.ao)."""

from __future__ import annotations

import contextlib
import warnings

from ...errors import ModelUnavailable

# Where the parts of a VLM live, by architecture: Gemma 3 / LLaVA-style (language_model, vision_tower,
# multi_modal_projector), Qwen2.5-VL (language_model, visual with its merger inside), Idefics3/SmolVLM
# (text_model, vision_model, connector).
LANGUAGE_PARTS = ("language_model", "text_model")
VISION_PARTS = ("vision_tower", "visual", "vision_model")
PROJECTOR_PARTS = ("multi_modal_projector", "connector")


def _parts(model, names):
    inner = getattr(model, "model", model)
    return [getattr(inner, name) for name in names if getattr(inner, name, None) is not None]


def language_model(model):
    found = _parts(model, LANGUAGE_PARTS)
    return found[0] if found else None


def vision_modules(model) -> list:
    """The vision encoder and the projector into the language model, whatever the architecture calls them."""
    return _parts(model, VISION_PARTS) + _parts(model, PROJECTOR_PARTS)


def vision_dtype(model):
    import torch

    towers = _parts(model, VISION_PARTS)
    for p in (towers[0] if towers else model).parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


try:  # torch is optional until a model loads; the int8 wrapper class needs nn.Module as its base
    from torch.nn import Module as _TorchModule
except ImportError:  # pragma: no cover
    _TorchModule = object

INT8_KERNELS_ENV = "MEDVLM_INT8_KERNELS"  # fbgemm (default, fastest measured), onednn or hybrid (both)
PREFILL_ROWS = 32  # rows (batch x tokens) from which a matmul counts as prefill


class HybridInt8Linear(_TorchModule):
    """A Linear with per-channel int8 weights packed twice: oneDNN (AMX/VNNI) for prefill, FBGEMM for decode.

    On a 2-core Sapphire Rapids one Linear alone ran ~1.5x faster on oneDNN for prefill-sized inputs and ~2x
    slower for decode-sized ones, but in the whole bench model (prefill 3.02 s/study vs 2.88, decode 18.6 tok/s
    vs 65 at batch 8) plain FBGEMM won, so this is opt-in (MEDVLM_INT8_KERNELS=hybrid); it costs one extra
    int8 byte per weight.
    """

    def __init__(self, linear):
        import torch
        from torch.ao.nn.quantized.dynamic import Linear as QLinear
        from torch.ao.quantization import per_channel_dynamic_qconfig

        super().__init__()
        linear.qconfig = per_channel_dynamic_qconfig
        engine = torch.backends.quantized.engine
        try:
            torch.backends.quantized.engine = "onednn"
            self.prefill = QLinear.from_float(linear)
            torch.backends.quantized.engine = "fbgemm"
            self.decode = QLinear.from_float(linear)
        finally:
            torch.backends.quantized.engine = engine
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x):
        rows = x.numel() // x.shape[-1]
        return (self.prefill if rows >= PREFILL_ROWS else self.decode)(x)


@contextlib.contextmanager
def quantized_engine(kernels: str):
    """torch's quantized engine is `kernels` inside, and what it was after.

    "hybrid" is not an engine: HybridInt8Linear packs each weight with oneDNN and with FBGEMM and sets
    the engine itself, so for it this leaves the engine alone.
    """
    import torch

    if kernels == "hybrid":
        yield
        return
    before, torch.backends.quantized.engine = torch.backends.quantized.engine, kernels
    try:
        yield
    finally:
        torch.backends.quantized.engine = before


def convert_linears(module, kernels: str) -> None:
    """Replace every nn.Linear under `module` by its int8 form, in place (each fp32 weight is freed as it goes)."""
    import torch

    for name, child in list(module.named_children()):
        if type(child) is torch.nn.Linear:
            if kernels == "hybrid":
                child.float()
                new = HybridInt8Linear(child)
            else:  # the streamed load's threads find the engine already set: saving and restoring it is a no-op
                with quantized_engine(kernels):
                    new = dynamic_int8_linear(child)
            setattr(module, name, new)
        else:
            convert_linears(child, kernels)


def dynamic_int8_linear(linear):
    """QLinear.from_float(linear) under per_channel_dynamic_qconfig, with the same int8 weights and scales,
    in fewer passes over the weight.

    from_float takes the min/max of each row from an fp32 copy, and first packs a zero weight of the full
    size (its constructor) only to pack the real one over it. Here the min/max come from the weight as it
    is (a bf16 -> fp32 conversion is exact, so they are the same numbers), the rounding is from_float's
    own (_quantize_weight with the same observer), and the constructor packs a 1 x 1 placeholder. The
    bench model's streamed load went from 7.6-8.0 to 6.7-6.9 CPU-seconds (4.0-4.2 to 3.6-3.7 s wall);
    tests compare the packed weights with from_float's.
    """
    import torch
    from torch.ao.nn.quantized.dynamic import Linear as QLinear
    from torch.ao.nn.quantized.modules.utils import _quantize_weight
    from torch.ao.quantization import per_channel_dynamic_qconfig

    with torch.no_grad():
        weight = linear.weight.detach()
        observer = per_channel_dynamic_qconfig.weight()
        if observer.dtype != torch.qint8 or observer.ch_axis != 0 or weight.dim() != 2 or weight.numel() == 0:
            linear.float()
            linear.qconfig = per_channel_dynamic_qconfig
            return QLinear.from_float(linear)
        low, high = torch.aminmax(weight, dim=1)
        observer.min_val.resize_(low.shape).copy_(low)
        observer.max_val.resize_(high.shape).copy_(high)
        qweight = _quantize_weight(weight.float(), observer)
        bias = None if linear.bias is None else linear.bias.detach().float()
        new = QLinear(1, 1, dtype=torch.qint8)
        new.in_features, new.out_features = linear.in_features, linear.out_features
        new.set_weight_bias(qweight, bias)
    return new


def release_freed_memory(collect: bool = True) -> None:
    """Hand the freed bf16/fp32 copies back to the OS (glibc keeps freed heap pages otherwise).

    collect=False skips the full garbage collection (about 0.2 s each with transformers loaded) where the
    freed tensors were released by reference counting alone.
    """
    import gc

    if collect:
        gc.collect()
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def _glibc():
    """glibc through ctypes, or None where the C library is another (nothing to tune there)."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim, libc.mallopt  # noqa: B018 - both are glibc extensions
    except (OSError, AttributeError):
        return None
    return libc


MALLOC_REUSE_ENV = "MEDVLM_MALLOC_REUSE"  # 0: leave glibc's malloc thresholds as they are
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt() parameter numbers from glibc's malloc.h


def reuse_freed_memory(limit: int = 1 << 30, keep: int = 256 << 20) -> bool:
    """Serve buffers up to `limit` bytes from the heap, and keep up to `keep` bytes of freed heap for reuse.

    glibc serves every allocation over its mmap threshold (32 MB at most) with a fresh mapping and
    unmaps it on free; a batch-8 forward allocates and frees such activation buffers in every layer,
    and the kernel zeroes each new page: measured, about a quarter of a CPU batch's time was spent in
    the kernel, mostly clearing pages. With the thresholds raised those buffers come from the heap and
    are reused. `keep` bounds what that costs in resident memory: keeping 1 GB of free heap added
    0.3-0.6 GB to the bench batch's peak RSS (2.41-2.51 GB vs 1.89-2.11, over the 2.34 GB target);
    256 MB gave 2.03-2.33 GB. Call it after the weights are loaded (their load trims the heap itself).
    Returns whether the thresholds were set (not glibc, or MEDVLM_MALLOC_REUSE=0: False).
    """
    import os

    libc = _glibc()
    if libc is None or os.environ.get(MALLOC_REUSE_ENV, "1") == "0":
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, limit)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, keep))


def int8_kernels() -> str:
    import os

    kernels = os.environ.get(INT8_KERNELS_ENV, "fbgemm")
    if kernels not in ("hybrid", "fbgemm", "onednn"):
        raise ModelUnavailable(f"{INT8_KERNELS_ENV} must be hybrid, fbgemm or onednn (got {kernels!r}).")
    return kernels


def quantize_cpu_int8(model, vision_dtype: str = "bfloat16") -> str:
    """Per-channel dynamic int8 on the language model's Linear layers (lm_head too), one decoder layer at a time;
    the vision tower and projector in `vision_dtype` (options.cpu_vision_dtype: bf16 only where the CPU has
    bf16 matrix instructions)."""
    import torch

    kernels = int8_kernels()
    language = language_model(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if language is None:
            model.float()
            convert_linears(model, kernels)
            return f"int8 dynamic per-channel (torch.ao, {kernels}) on all Linear layers"
        for layer in getattr(language, "layers", None) or [language]:
            convert_linears(layer, kernels)  # bf16 -> fp32 -> int8 one Linear at a time
        # Norms and embeddings go back to fp32 (dynamic int8 takes fp32 activations). The vision tower
        # and projector stay bf16 where the CPU has bf16 matrix instructions: they are compute-bound (one
        # pass per image) and AMX/AVX512-bf16 runs them several times faster than fp32; their output is
        # cast to fp32 where it joins the text. Without them the bench model's tower ran 18x slower in bf16.
        inner = getattr(model, "model", model)
        vision_parts = vision_modules(model)
        for m in vision_parts:
            m.to(getattr(torch, vision_dtype))
        for m in model.children():
            if m is not inner:
                m.float()
        for name, m in inner.named_children():
            if m not in vision_parts:
                m.float()
        holder = torch.nn.Module()
        if type(getattr(model, "lm_head", None)) is torch.nn.Linear:
            holder.lm_head = model.lm_head
            convert_linears(holder, kernels)
            model.lm_head = holder.lm_head
    short = {"bfloat16": "bf16", "float32": "fp32"}.get(vision_dtype, vision_dtype)
    vision = f"vision tower {short}" if vision_parts else "no vision tower"
    return (
        f"int8 dynamic per-channel (torch.ao, {kernels} kernels) on language-model Linear layers incl. lm_head; "
        f"{vision}"
    )
