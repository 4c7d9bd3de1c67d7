"""Will the model fit? Estimate weights + activations from the files on disk, before loading anything."""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .base import ModelUnavailable
from .checkpoint import read_safetensors_header, safetensors_files

GB = 1024**3
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
TORCH_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# torch + transformers + tokenizers + Python itself, measured ~0.45 GB RSS on CPU before any weights.
RUNTIME_OVERHEAD = int(0.5 * GB)
TEXT_TOKENS_ALLOWANCE = 512  # system + user prompt text, generous
MEMORY_LIMIT_ENV = "MEDVLM_MEMORY_LIMIT_BYTES"
LARGEST_IMAGE_SIDE = 2048  # ingest keeps one image's long side within this (ingest.types.MAX_SIDE)
# Decoder-layer weights of the language model, under every naming the supported checkpoints use:
# Gemma 3 / Qwen2.5-VL (model.language_model.layers, language_model.model.layers, model.layers) and
# Idefics3 / SmolVLM (model.text_model.layers).
_LANGUAGE_LAYERS = re.compile(r"(^|\.)(language_model|text_model)\.(model\.)?layers\.|^model\.layers\.")


@dataclass(frozen=True)
class ParamCounts:
    """Parameter counts by role, read from safetensors headers (no tensor data is read)."""

    total: int
    quantizable: int  # 2-D Linear weights of the language model (what int8/int4 convert)
    tied_lm_head: int  # vocab x hidden when lm_head shares the embedding (a quantized lm_head is a new copy)
    checkpoint_bytes: int  # as stored on disk


@dataclass(frozen=True)
class ModelShape:
    """What activations scale with, from config.json."""

    layers: int
    kv_heads: int
    head_dim: int
    hidden: int
    intermediate: int
    vocab: int
    image_tokens: int  # language-model tokens per image
    patches: int  # vision-tower tokens per image
    vision_hidden: int
    vision_intermediate: int


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int  # resident while generating
    load_peak: int  # while loading/quantising
    activations: int  # KV cache + the largest transient tensors of one batch
    overhead: int

    @property
    def peak(self) -> int:
        return max(self.load_peak, self.weights + self.activations) + self.overhead


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def _text_config(config: dict) -> dict:
    return config.get("text_config") or config


def param_counts(model_dir: Path) -> ParamCounts:
    """Count parameters from safetensors headers; raises ModelUnavailable if there are none."""
    model_dir = Path(model_dir)
    files = safetensors_files(model_dir)
    if not files:
        raise ModelUnavailable(f"{model_dir} has no .safetensors weights; medvlm can only size and load safetensors.")
    total = quantizable = stored = 0
    names: set[str] = set()
    embed = 0
    for path in files:
        for name, meta in read_safetensors_header(path)[1].items():
            n = _numel(meta["shape"])
            names.add(name)
            total += n
            stored += n * DTYPE_BYTES.get(meta["dtype"], 4)
            is_linear = len(meta["shape"]) == 2 and name.endswith(".weight")
            if name.endswith("embed_tokens.weight"):
                embed = max(embed, n)
            elif is_linear and _LANGUAGE_LAYERS.search(name):
                quantizable += n
    config = _read_config(model_dir)
    tied = config.get("tie_word_embeddings", _text_config(config).get("tie_word_embeddings", True))
    has_head = any(n.endswith("lm_head.weight") for n in names)
    if has_head:
        quantizable += embed  # the separate lm_head is quantized like any Linear
    return ParamCounts(total, quantizable, embed if (tied and not has_head) else 0, stored)


def param_counts_from_config(model_dir: Path) -> ParamCounts:
    """Count parameters by building the architecture from config.json on the meta device (no weights needed)."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText
    from transformers.utils import logging as hf_logging

    from .hf.int8 import language_model

    hf_logging.set_verbosity_error()
    try:
        config = AutoConfig.from_pretrained(model_dir)
        with torch.device("meta"):
            model = AutoModelForImageTextToText.from_config(config)
    except (OSError, ValueError, KeyError, TypeError, ImportError) as exc:
        from ..errors import first_line

        raise ModelUnavailable(f"cannot build the architecture in {model_dir}/config.json: {first_line(exc)}") from None
    total = sum(p.numel() for p in model.parameters())  # a tied lm_head is one parameter, counted once
    language = language_model(model)
    layers = getattr(language, "layers", None) if language is not None else None
    quantizable = sum(
        m.weight.numel() for m in (layers or language or model).modules() if isinstance(m, torch.nn.Linear)
    )
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    tied = head is not None and embed is not None and head.weight is embed.weight
    if head is not None and not tied:
        quantizable += head.weight.numel()
    width = TORCH_DTYPE_BYTES.get(str(_read_config(model_dir).get("torch_dtype", "bfloat16")), 2)
    return ParamCounts(total, quantizable, head.weight.numel() if tied else 0, total * width)


def _read_config(model_dir: Path, name: str = "config.json") -> dict:
    try:
        value = json.loads((Path(model_dir) / name).read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _processor_settings(model_dir: Path) -> dict:
    """Image processor settings, from preprocessor_config.json or (newer saves) processor_config.json."""
    processor = _read_config(model_dir, "processor_config.json")
    merged = dict(processor.get("image_processor") or {})
    merged.update(_read_config(model_dir, "preprocessor_config.json"))
    merged.update({k: v for k, v in processor.items() if k != "image_processor"})
    return merged


def _edge(value, default: int) -> int:
    if isinstance(value, dict):
        value = value.get("longest_edge", value.get("height", default))
    return int(value or default)


def image_tokens(config: dict, settings: dict) -> tuple[int, int]:
    """(language-model tokens, vision-encoder patches) per image for this architecture and processor.

    Gemma 3: a fixed number of soft tokens per image. Idefics3/SmolVLM: the image is resized to at most
    `size.longest_edge`, split into `max_image_size` tiles plus one global view, each tile giving
    `image_seq_len` tokens. Qwen2-VL style: a pixel budget (medvlm's cap, processor.QWEN_MAX_PIXELS)
    divided into 28x28 merged patches.
    """
    vision = config.get("vision_config") or {}
    patch = int(vision.get("patch_size", 14) or 14)
    image = int(vision.get("image_size", 896) or 896)
    kind = str(settings.get("image_processor_type", ""))
    if kind.startswith("Qwen2VL") or "max_pixels" in settings or config.get("model_type") in ("qwen2_vl", "qwen2_5_vl"):
        from .hf.processor import QWEN_MAX_PIXELS

        budget = _edge(settings.get("size"), 0) or int(settings.get("max_pixels") or QWEN_MAX_PIXELS)
        budget = min(budget, QWEN_MAX_PIXELS, LARGEST_IMAGE_SIDE**2)
        merge = int(settings.get("merge_size", vision.get("spatial_merge_size", 2)) or 2)
        unit = int(settings.get("patch_size", patch)) * merge
        tokens = max(1, budget // (unit * unit))
        return tokens + 2, tokens * merge * merge  # + vision start/end markers
    seq = settings.get("image_seq_len") or config.get("image_seq_len")
    if config.get("model_type") == "idefics3" or seq:
        scale = int(config.get("scale_factor", 1) or 1)
        per_tile_patches = (image // patch) ** 2
        seq = int(seq or per_tile_patches // (scale * scale))
        tile = _edge(settings.get("max_image_size"), image)
        longest = min(_edge(settings.get("size"), tile), LARGEST_IMAGE_SIDE)
        tiles = math.ceil(longest / tile) ** 2 + 1 if settings.get("do_image_splitting", True) and longest > tile else 1
        return tiles * (seq + 3), tiles * per_tile_patches  # + row/column and fake-image markers
    tokens = int(config.get("mm_tokens_per_image", settings.get("image_seq_length", 256)) or 256)
    return tokens + 4, (image // patch) ** 2  # + begin/end-of-image and the newlines around them


def model_shape(model_dir: Path) -> ModelShape:
    """Sizes that activations depend on; missing keys fall back to conservative guesses."""
    config = _read_config(model_dir)
    text = _text_config(config)
    vision = config.get("vision_config") or {}
    heads = int(text.get("num_attention_heads", 16))
    hidden = int(text.get("hidden_size", 2048))
    tokens, patches = image_tokens(config, _processor_settings(model_dir))
    return ModelShape(
        layers=int(text.get("num_hidden_layers", 32)),
        kv_heads=int(text.get("num_key_value_heads", heads)),
        head_dim=int(text.get("head_dim") or hidden // max(heads, 1)),
        hidden=hidden,
        intermediate=int(text.get("intermediate_size", 4 * hidden)),
        vocab=int(text.get("vocab_size", config.get("vocab_size", 32000))),
        image_tokens=tokens,
        patches=patches,
        vision_hidden=int(vision.get("hidden_size", 1152)),
        vision_intermediate=int(vision.get("intermediate_size", 4304)),
    )


def sliding_layers(model_dir: Path) -> dict:
    """How many decoder layers attend within a sliding window, and the window, from config.json's layer_types
    (Gemma 3 and others that list them); no window where the config names none."""
    text = _text_config(_read_config(model_dir))
    window, types = text.get("sliding_window"), text.get("layer_types") or []
    count = sum(1 for t in types if t == "sliding_attention")
    if not window or not count:
        return {"sliding_layers": 0, "window": None}
    return {"sliding_layers": count, "window": int(window)}


def estimate(
    counts: ParamCounts,
    shape: ModelShape,
    *,
    dtype: str,
    quant: str,
    device: str,
    batch_size: int,
    max_new_tokens: int,
    images_per_study: int,
) -> MemoryEstimate:
    """Bytes needed to load and run the model with these settings (quant is the resolved mode)."""
    width = TORCH_DTYPE_BYTES.get(dtype, 4)
    rest = counts.total - counts.quantizable
    cuda = device.startswith("cuda")
    if quant == "int8" and not cuda:
        # Dynamic int8 keeps everything else in fp32 (conservative: the vision tower is bf16); a tied
        # lm_head becomes its own int8 copy; the hybrid kernels keep two packings of every int8 weight.
        per_weight = 2 if os.environ.get("MEDVLM_INT8_KERNELS") == "hybrid" else 1
        weights = (counts.quantizable + counts.tied_lm_head) * per_weight + rest * 4
        # Loaded in bfloat16 and converted layer by layer, so the peak is the bf16 model plus the
        # fp32 copy of the parts that stay in floating point.
        load_peak = counts.total * 2 + rest * 4
    elif quant == "int8":
        weights = counts.quantizable + rest * width
        load_peak = weights
    elif quant == "int4":
        weights = counts.quantizable // 2 + counts.quantizable // 32 + rest * width  # nf4 + block scales
        load_peak = weights
    else:
        weights = counts.total * width
        load_peak = weights
    act = 4 if (quant == "int8" and not cuda) else width
    seq = images_per_study * shape.image_tokens + TEXT_TOKENS_ALLOWANCE + max_new_tokens
    kv_cache = 2 * shape.layers * shape.kv_heads * shape.head_dim * seq * batch_size * act
    # Prefill of one batch: hidden states, MLP intermediates (gate, up, product) and last-token logits.
    prefill = batch_size * seq * (4 * shape.hidden + 3 * shape.intermediate) * act + batch_size * shape.vocab * 4
    vision = batch_size * images_per_study * shape.patches * (4 * shape.vision_hidden + 2 * shape.vision_intermediate) * act
    return MemoryEstimate(weights, load_peak, kv_cache + max(prefill, vision), RUNTIME_OVERHEAD)


def _is_jetson() -> bool:
    """Jetson boards share one memory between CPU and GPU."""
    return Path("/etc/nv_tegra_release").exists() or Path("/sys/module/tegra_fuse").exists()


def available_bytes(device: str) -> tuple[int, str]:
    """Memory the model may use on `device` and a short description of where that number comes from."""
    override = os.environ.get(MEMORY_LIMIT_ENV)
    if override:
        return int(float(override)), f"{MEMORY_LIMIT_ENV}"
    import psutil

    ram = psutil.virtual_memory().available
    if device.startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(device))
        if _is_jetson():
            return min(free, ram), "shared CPU/GPU memory (Jetson)"
        return free, f"free memory on {device}"
    return ram, "available RAM"


def _gb(n: int) -> str:
    return f"{n / GB:.1f} GB"


def check_fits(
    est: MemoryEstimate, available: int, *, where: str, model: str, device: str, quant: str, batch_size: int
) -> None:
    """Raise ModelUnavailable with one sentence and a suggestion when the estimate exceeds what is available."""
    if est.peak <= available:
        return
    tips = []
    if quant in ("none",):
        tips.append("--quant int4" if device.startswith("cuda") else "--quant int8")
    elif quant == "int8" and device.startswith("cuda"):
        tips.append("--quant int4")
    if batch_size > 1:
        tips.append(f"--batch-size {max(1, batch_size // 2)}")
    tips.append("a smaller preset (smolvlm-256m)")
    raise ModelUnavailable(
        f"model {model!r} needs about {_gb(est.peak)} (weights {_gb(est.weights)}, load peak {_gb(est.load_peak)}, "
        f"activations {_gb(est.activations)} at batch size {batch_size}) but only {_gb(available)} is available "
        f"({where}); try {', '.join(tips)}."
    )


def check_model_fits(
    model_dir: Path,
    *,
    model: str,
    dtype: str,
    quant: str,
    device: str,
    batch_size: int,
    max_new_tokens: int,
    images_per_study: int,
) -> MemoryEstimate:
    """Estimate from the files on disk and refuse (ModelUnavailable) when it will not fit."""
    est = estimate(
        param_counts(model_dir),
        model_shape(model_dir),
        dtype=dtype,
        quant=quant,
        device=device,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        images_per_study=images_per_study,
    )
    available, where = available_bytes(device)
    check_fits(est, available, where=where, model=model, device=device, quant=quant, batch_size=batch_size)
    return est


# --batch-size auto: the largest batch up to a per-device ceiling whose estimate fits in a share of the
# memory available. On CPU decode is bound by reading the weights once per step, so tokens/s grow with
# the batch while prefill (compute-bound) does not care; 8 was the best measured on the bench model
# (2-core EPYC, int8): larger batches add padding and delay the first reports for little decode gain.
AUTO_BATCH_CEILING = {"cpu": 8, "cuda": 16}
AUTO_BATCH_MEMORY_SHARE = 0.8  # room for the next batch being preprocessed and reports being rendered


@dataclass(frozen=True)
class BatchChoice:
    """What `--batch-size` resolved to, and why (recorded in run.json and each report's provenance)."""

    size: int
    requested: int | str
    reason: str

    def as_dict(self) -> dict:
        return {"requested": self.requested, "resolved": self.size, "reason": self.reason}


def choose_batch_size(peak_at, available: int | None, *, ceiling: int, studies: int) -> tuple[int, str]:
    """The largest batch <= min(ceiling, studies) whose estimated peak (peak_at(b)) fits the memory share."""
    top = max(1, min(ceiling, studies))
    if available is None:
        return top, f"device ceiling {ceiling}, {studies} studies to do (no memory figure for this device here)"
    budget = int(available * AUTO_BATCH_MEMORY_SHARE)
    size = top
    while size > 1 and peak_at(size) > budget:
        size -= 1
    why = f"device ceiling {ceiling}, {studies} studies to do, estimated peak {_gb(peak_at(size))} at batch {size}"
    return size, f"{why} of {_gb(budget)} ({int(AUTO_BATCH_MEMORY_SHARE * 100)}% of available)"


def auto_batch_size(
    model_dir: Path, *, dtype: str, quant: str, device: str, max_new_tokens: int, images_per_study: int, studies: int,
) -> BatchChoice:
    """`--batch-size auto` for an in-process model: ceiling by device, lowered until the estimate fits."""
    counts, shape = param_counts(model_dir), model_shape(model_dir)

    def peak_at(b: int) -> int:
        return estimate(counts, shape, dtype=dtype, quant=quant, device=device, batch_size=b,
                        max_new_tokens=max_new_tokens, images_per_study=images_per_study).peak

    kind = "cuda" if device.startswith("cuda") else "cpu"
    available = None
    try:
        available = available_bytes(device)[0]
    except Exception:  # noqa: BLE001 - e.g. a CUDA device that only a remote worker has: no local figure
        available = None
    size, reason = choose_batch_size(peak_at, available, ceiling=AUTO_BATCH_CEILING[kind], studies=studies)
    return BatchChoice(size, "auto", f"auto on {device}: {reason}")
