"""Hugging Face transformers backend: AutoProcessor + AutoModelForImageTextToText."""

from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..audit.weights import weights_digest
from ..errors import first_line
from ..records import ModelOutput, Prompt, Study
from .base import ModelInfo, ModelUnavailable
from .registry import resolve

QUANT_MODES = ("none", "int8", "int4", "auto")
DTYPES = ("auto", "float32", "bfloat16", "float16")


def _pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelUnavailable(f"--device {device} was requested but no CUDA device is visible to torch.")
    return device


def _pick_dtype(dtype: str, device: str, mode: str = "none"):
    import torch

    if dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32  # CPU: fp32 compute (dynamic int8 dequantises into fp32)
    return getattr(torch, dtype)


def _pick_quant(quant: str, device: str) -> str:
    if quant == "auto":
        if device.startswith("cuda"):
            return "int4" if _bnb_available() else "none"
        return "int8"
    return quant


def _bnb_available() -> bool:
    try:
        import bitsandbytes  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken install is "not available"
        return False
    return True


def _bnb_config(mode: str, compute_dtype):
    from transformers import BitsAndBytesConfig

    if mode == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype)


def _language_model(model):
    inner = getattr(model, "model", model)
    return getattr(inner, "language_model", None)


def _vision_dtype(model):
    import torch

    tower = getattr(getattr(model, "model", model), "vision_tower", None)
    for p in (tower or model).parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


try:  # torch is optional until a model loads; the int8 wrapper class needs nn.Module as its base
    from torch.nn import Module as _TorchModule
except ImportError:  # pragma: no cover
    _TorchModule = object

INT8_KERNELS_ENV = "MEDVLM_INT8_KERNELS"  # fbgemm (default, fastest measured), onednn or hybrid (both)
PREFILL_ROWS = 32
STREAMED_LOAD_ENV = "MEDVLM_STREAMED_LOAD"  # 0: CPU int8 loads through from_pretrained (the old, higher-peak path)  # rows (batch x tokens) from which a matmul counts as prefill


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


def _convert_linears(module, kernels: str) -> None:
    """Replace every nn.Linear under `module` by its int8 form, in place (each fp32 weight is freed as it goes)."""
    import torch
    from torch.ao.nn.quantized.dynamic import Linear as QLinear
    from torch.ao.quantization import per_channel_dynamic_qconfig

    for name, child in list(module.named_children()):
        if type(child) is torch.nn.Linear:
            child.float()
            if kernels == "hybrid":
                new = HybridInt8Linear(child)
            else:
                engine = torch.backends.quantized.engine
                torch.backends.quantized.engine = kernels
                try:
                    child.qconfig = per_channel_dynamic_qconfig
                    new = QLinear.from_float(child)
                finally:
                    torch.backends.quantized.engine = engine
            setattr(module, name, new)
        else:
            _convert_linears(child, kernels)


def _release_freed_memory() -> None:
    """Hand the freed bf16/fp32 copies back to the OS (glibc keeps freed heap pages otherwise)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def _int8_kernels() -> str:
    import os

    kernels = os.environ.get(INT8_KERNELS_ENV, "fbgemm")
    if kernels not in ("hybrid", "fbgemm", "onednn"):
        raise ModelUnavailable(f"{INT8_KERNELS_ENV} must be hybrid, fbgemm or onednn (got {kernels!r}).")
    return kernels


def _quantize_cpu_int8(model) -> str:
    """Per-channel dynamic int8 on the language model's Linear layers (lm_head too), one decoder layer at a time."""
    import torch

    kernels = _int8_kernels()
    language = _language_model(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if language is None:
            model.float()
            _convert_linears(model, kernels)
            return f"int8 dynamic per-channel (torch.ao, {kernels}) on all Linear layers"
        for layer in getattr(language, "layers", None) or [language]:
            _convert_linears(layer, kernels)  # bf16 -> fp32 -> int8 one Linear at a time
        # Norms and embeddings go back to fp32 (dynamic int8 takes fp32 activations). The vision tower
        # and projector stay bf16: they are compute-bound (one pass per image) and AMX/AVX512-bf16
        # runs them several times faster than fp32; their output is cast to fp32 where it joins the text.
        inner = getattr(model, "model", model)
        keep_bf16 = [m for m in (getattr(inner, "vision_tower", None), getattr(inner, "multi_modal_projector", None)) if m is not None]
        for m in keep_bf16:
            m.to(torch.bfloat16)
        for m in model.children():
            if m is not inner:
                m.float()
        for name, m in inner.named_children():
            if m not in keep_bf16:
                m.float()
        holder = torch.nn.Module()
        if type(getattr(model, "lm_head", None)) is torch.nn.Linear:
            holder.lm_head = model.lm_head
            _convert_linears(holder, kernels)
            model.lm_head = holder.lm_head
    vision = "vision tower bf16" if keep_bf16 else "no vision tower"
    return (
        f"int8 dynamic per-channel (torch.ao, {kernels} kernels) on language-model Linear layers incl. lm_head; "
        f"{vision}; loaded bf16, converted layer by layer"
    )


class _StreamFallback(Exception):
    """The streamed CPU-int8 load cannot reproduce from_pretrained exactly here: use from_pretrained."""


def _params_on_meta():
    """A context in which new nn.Parameters are created on the meta device and buffers really on CPU.

    Parameters get no memory; buffers (rotary inv_freq, embed_scale, ... most of them non-persistent and so
    absent from the checkpoint) are computed by the modules' own __init__ exactly as from_pretrained does.
    """
    import contextlib

    import torch

    @contextlib.contextmanager
    def ctx():
        original = torch.nn.Module.register_parameter

        def register_parameter(module, name, param):
            original(module, name, param)
            if param is not None and param.device.type != "meta":
                kwargs = {"requires_grad": param.requires_grad}
                module._parameters[name] = type(param)(param.to("meta"), **kwargs)

        torch.nn.Module.register_parameter = register_parameter
        try:
            yield
        finally:
            torch.nn.Module.register_parameter = original

    return ctx()


def _checkpoint_files(local_dir: Path) -> list[Path]:
    single = local_dir / "model.safetensors"
    if single.is_file():
        return [single]
    index = local_dir / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [local_dir / n for n in names]
    raise _StreamFallback("no safetensors checkpoint")


_SAFETENSORS_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
}


def _safetensors_header(file: Path) -> tuple[int, dict[str, dict]]:
    """(offset of the data section, {key: {dtype, shape, data_offsets}}) of one .safetensors file."""
    import struct

    with open(file, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    header.pop("__metadata__", None)
    return 8 + size, header


def _read_tensor(f, data_start: int, entry: dict):
    """One tensor read with a plain read() into anonymous memory.

    Not through safetensors' mmap: the pages of an mapped file count in RSS for as long as the mapping
    lives, while read() leaves them in the page cache, which the kernel can drop.
    """
    import torch

    if entry["dtype"] not in _SAFETENSORS_DTYPES:
        raise _StreamFallback(f"checkpoint dtype {entry['dtype']} not handled")
    begin, end = entry["data_offsets"]
    raw = torch.empty(end - begin, dtype=torch.uint8)
    f.seek(data_start + begin)
    if end > begin and f.readinto(memoryview(raw.numpy())) != end - begin:
        raise OSError(f"short read from {f.name}")
    return raw.view(getattr(torch, _SAFETENSORS_DTYPES[entry["dtype"]])).reshape(entry["shape"])


def _checkpoint_key_map(model, files: list[Path]) -> dict[str, tuple[Path, str]]:
    """model state_dict key -> (file, checkpoint key), with transformers' own key renames applied.

    Raises _StreamFallback unless the renamed checkpoint keys cover the model's state_dict exactly (tied
    parameters excepted) with equal shapes, and no tensor-transforming conversion applies.
    """
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key
    except ImportError as exc:  # another transformers version: do not guess its renames
        raise _StreamFallback(f"transformers key-rename API unavailable: {exc}") from None

    meta_sd = model.state_dict()
    conversions = get_model_conversion_mapping(model)
    renamings = [c for c in conversions if isinstance(c, WeightRenaming)]
    converters = [c for c in conversions if isinstance(c, WeightConverter)]
    prefix = getattr(model, "base_model_prefix", None)
    mapping: dict[str, tuple[Path, str]] = {}
    for file in files:
        _, header = _safetensors_header(file)
        for key, entry in header.items():
            target, converter = rename_source_key(key, renamings, converters, prefix, meta_sd)
            if target not in meta_sd and key in meta_sd:
                target, converter = rename_source_key(key, [], [], prefix, meta_sd)
            if converter is not None:
                raise _StreamFallback(f"checkpoint key {key} needs a tensor conversion")
            if target not in meta_sd or target in mapping:
                raise _StreamFallback(f"checkpoint key {key} does not match the model")
            if tuple(entry["shape"]) != tuple(meta_sd[target].shape) or entry["dtype"] not in _SAFETENSORS_DTYPES:
                raise _StreamFallback(f"checkpoint key {key} has another shape or an unknown dtype")
            mapping[target] = (file, key)
    return mapping


def _load_cpu_int8_streamed(local_dir, kernels: str):
    """Build the model with meta parameters, then fill and int8-convert it one decoder layer at a time.

    The same bf16 -> fp32 -> int8 steps as from_pretrained(dtype=bfloat16) + _quantize_cpu_int8, but the
    checkpoint is read one tensor at a time, so the process never holds
    the whole checkpoint's file pages plus a whole bf16 copy (tensors are read with read(), not mmap). Raises _StreamFallback where it cannot
    reproduce from_pretrained exactly (unknown key names, tensor conversions, fp32-kept modules, ...).
    """
    from collections import defaultdict

    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText, GenerationConfig

    local_dir = Path(local_dir)
    files = _checkpoint_files(local_dir)
    config = AutoConfig.from_pretrained(local_dir)
    with _params_on_meta():
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.bfloat16)
    if getattr(model, "_keep_in_fp32_modules", None) or getattr(model, "_keep_in_fp32_modules_strict", None):
        raise _StreamFallback("model keeps some modules in fp32")
    language = _language_model(model)
    layers = list(getattr(language, "layers", None) or []) if language is not None else []
    if not layers:
        raise _StreamFallback("no decoder layers to stream")
    mapping = _checkpoint_key_map(model, files)

    # Every parameter object with all the (module, name) slots that share it (tied weights).
    slots: dict[int, list[tuple[Any, str, str]]] = defaultdict(list)
    params: dict[int, Any] = {}
    for mod_name, mod in model.named_modules(remove_duplicate=False):
        for name, p in mod._parameters.items():
            if p is not None and (mod, name) not in [(m, n) for m, n, _ in slots[id(p)]]:
                slots[id(p)].append((mod, name, f"{mod_name}.{name}" if mod_name else name))
                params[id(p)] = p
    param_names = {full for owners in slots.values() for _, _, full in owners}
    for pid, owners in slots.items():
        if not any(full in mapping for _, _, full in owners):
            raise _StreamFallback(f"parameter {owners[0][2]} is not in the checkpoint")
    for key in model.state_dict():  # persistent buffers must come from the checkpoint too
        if key not in mapping and key not in param_names:
            raise _StreamFallback(f"buffer {key} is not in the checkpoint")
    buffer_keys = [k for k in mapping if k not in param_names]

    layer_of = {}
    for i, layer in enumerate(layers):
        for mod in layer.modules():
            layer_of[id(mod)] = i
    groups: dict[int, list[int]] = defaultdict(list)  # -1: everything outside the decoder layers
    for pid, owners in slots.items():
        where = {layer_of.get(id(mod), -1) for mod, _, _ in owners}
        if len(where) != 1:
            raise _StreamFallback("a tied parameter spans decoder layers")
        groups[where.pop()].append(pid)

    headers = {file: _safetensors_header(file) for file in files}

    def fill(pids: list[int], extra_keys=()) -> None:
        by_file: dict[Path, list[tuple[Any, str]]] = defaultdict(list)
        for pid in pids:
            meta = params[pid]
            new = torch.nn.Parameter(torch.empty(meta.shape, dtype=meta.dtype), requires_grad=meta.requires_grad)
            for mod, name, _ in slots[pid]:
                mod._parameters[name] = new
            full = next(full for _, _, full in slots[pid] if full in mapping)
            by_file[mapping[full][0]].append((new, mapping[full][1]))
        for key in extra_keys:
            mod_name, _, buf = key.rpartition(".")
            target = model.get_submodule(mod_name)._buffers[buf]
            by_file[mapping[key][0]].append((target, mapping[key][1]))
        for file, items in by_file.items():
            data_start, header = headers[file]
            with open(file, "rb") as f:
                for target, key in items:
                    with torch.no_grad():
                        target.copy_(_read_tensor(f, data_start, header[key]))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fill(groups.pop(-1, []), buffer_keys)
        for i, layer in enumerate(layers):
            group = groups.pop(i, [])
            fill(group)
            _convert_linears(layer, kernels)  # bf16 -> fp32 -> int8, as _quantize_cpu_int8 does
            for pid in group:  # the replaced Linear modules (and their fp32 weights) must not stay referenced
                del slots[pid], params[pid]
            del group
            # glibc keeps the freed fp32/bf16 copies (its mmap threshold grows to 32 MB) and the
            # int8 weights allocated in between stop the heap from shrinking: hand them back per layer.
            _release_freed_memory()
    if any(p.device.type == "meta" for p in model.parameters()) or any(b.device.type == "meta" for b in model.buffers()):
        raise _StreamFallback("some tensors were left unfilled")
    model.config.name_or_path = str(local_dir)
    if (local_dir / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(local_dir)
    return model


class HFBackend:
    """A transformers VLM loaded once and used for every batch."""

    def __init__(
        self,
        name_or_path: str,
        *,
        device: str = "auto",
        dtype: str = "auto",
        quant: str = "auto",
        batch_size: int = 1,
        max_new_tokens: int = 256,
        images_per_study: int = 2,
        check_memory: bool = True,
    ):
        if quant not in QUANT_MODES:
            raise ModelUnavailable(f"unknown --quant {quant!r}; expected one of {', '.join(QUANT_MODES)}")
        if dtype not in DTYPES:
            raise ModelUnavailable(f"unknown --dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
        resolved = resolve(name_or_path)
        local_dir = resolved.local_dir
        if resolved.random:
            from .demo import BENCH_SPEC, DEMO_SPEC, ensure_random_model

            local_dir = ensure_random_model(DEMO_SPEC if resolved.random == "demo" else BENCH_SPEC)
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        dev = _pick_device(device)
        mode = _pick_quant(quant, dev)
        torch_dtype = _pick_dtype(dtype, dev, mode)
        estimate = None
        if check_memory:
            from .memory import check_model_fits

            estimate = check_model_fits(
                Path(local_dir), model=resolved.name, dtype=str(torch_dtype).replace("torch.", ""), quant=mode,
                device=dev, batch_size=batch_size, max_new_tokens=max_new_tokens, images_per_study=images_per_study,
            )
        kwargs: dict = {"dtype": torch_dtype}
        quant_desc = "none"
        cpu_int8 = mode == "int8" and not dev.startswith("cuda")
        if dev.startswith("cuda") and mode in ("int8", "int4"):
            if not _bnb_available():
                raise ModelUnavailable(
                    f"--quant {mode} on CUDA needs bitsandbytes: pip install 'medvlm[cuda]' (or use --quant none)."
                )
            kwargs["quantization_config"] = _bnb_config(mode, torch_dtype)
            quant_desc = "int8 (bitsandbytes LLM.int8)" if mode == "int8" else "nf4 (bitsandbytes 4-bit)"
            kwargs["device_map"] = dev
        elif mode == "int4" and not dev.startswith("cuda"):
            raise ModelUnavailable(
                "--quant int4 needs a CUDA GPU with bitsandbytes (nf4); on CPU use --quant int8 or --quant none."
            )
        elif cpu_int8:
            if torch_dtype != torch.float32:
                raise ModelUnavailable("--quant int8 on CPU needs --dtype float32 or auto (dynamic int8 computes in fp32).")
            # Load at half width and convert one decoder layer at a time, so fp32 and int8 copies
            # of the whole language model never coexist (peak = bf16 model + one fp32 layer).
            kwargs["dtype"] = torch.bfloat16
        try:
            self.processor = AutoProcessor.from_pretrained(local_dir)
            model = None
            if cpu_int8 and os.environ.get(STREAMED_LOAD_ENV, "1") != "0":
                try:
                    model = _load_cpu_int8_streamed(local_dir, _int8_kernels())
                except _StreamFallback:
                    model = None
                    _release_freed_memory()
            if model is None:
                model = AutoModelForImageTextToText.from_pretrained(local_dir, **kwargs)
        except (OSError, ValueError, KeyError, ImportError) as exc:
            raise ModelUnavailable(f"cannot load model from {local_dir}: {first_line(exc)}") from None
        model.eval()
        if "device_map" not in kwargs:
            model.to(dev)
        if cpu_int8:
            quant_desc = _quantize_cpu_int8(model)
            _release_freed_memory()
        self.model = model
        self._pixel_dtype = _vision_dtype(model)
        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        if getattr(tokenizer, "pad_token", None) is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"  # decoder-only generation needs left padding in a batch
        self.tokenizer = tokenizer
        self.eos_ids = self._eos_ids()
        random_meta = Path(local_dir) / "medvlm_random_model.json"
        meta = json.loads(random_meta.read_text()) if random_meta.is_file() else {}
        self.info = ModelInfo(
            name=resolved.name,
            source=resolved.source,
            local_dir=str(local_dir),
            revision=resolved.revision or meta.get("spec_digest"),
            random_weights=bool(meta.get("random_weights")),
            dtype=str(torch_dtype).replace("torch.", ""),
            quantization=quant_desc,
            device=dev,
            weights_digest=weights_digest(local_dir),
            parameters=sum(p.numel() for p in model.parameters()),
            details={
                "architecture": type(model).__name__,
                "quant_mode": mode,
                "threads": torch.get_num_threads(),
                "attention": getattr(model.config, "_attn_implementation", None),
                "memory_estimate_bytes": (
                    {"weights": estimate.weights, "load_peak": estimate.load_peak, "activations": estimate.activations}
                    if estimate else None
                ),
            },
        )

    def _eos_ids(self) -> set[int]:
        ids: set[int] = set()
        gen = getattr(self.model, "generation_config", None)
        eos = getattr(gen, "eos_token_id", None)
        if isinstance(eos, int):
            ids.add(eos)
        elif eos:
            ids.update(eos)
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return ids

    def _messages(self, study: Study, prompt: Prompt) -> list[dict]:
        content = [{"type": "image"} for _ in study.images]
        content.append({"type": "text", "text": prompt.text})
        return [
            {"role": "system", "content": [{"type": "text", "text": prompt.system}]},
            {"role": "user", "content": content},
        ]

    def preprocess(self, batch: list[tuple[Study, Prompt]]) -> "PreparedBatch":
        """Chat template + one processor call for the whole batch (safe to run in a background thread)."""
        started = time.perf_counter()
        texts = [
            self.processor.apply_chat_template(self._messages(s, p), add_generation_prompt=True, tokenize=False)
            for s, p in batch
        ]
        images = [[img.image for img in s.images] for s, _ in batch]
        inputs = self.processor(text=texts, images=images, return_tensors="pt", padding=True)
        inputs = inputs.to(self.model.device)
        if "pixel_values" in inputs and inputs["pixel_values"].is_floating_point():
            inputs["pixel_values"] = inputs["pixel_values"].to(self._pixel_dtype)
        return PreparedBatch(inputs=inputs, size=len(batch), preprocess_s=time.perf_counter() - started)

    def generate_prepared(
        self, prepared: "PreparedBatch", *, max_new_tokens: int, ignore_eos: bool = False
    ) -> list[ModelOutput]:
        """One generate() call on a preprocessed batch; fills prepared.prefill_s and prepared.decode_s."""
        import torch
        from transformers import LogitsProcessorList

        inputs = prepared.inputs
        first_token = _FirstTokenClock()
        gen_kwargs: dict = {"max_new_tokens": max_new_tokens, "do_sample": False}
        if ignore_eos:
            gen_kwargs["min_new_tokens"] = max_new_tokens
        started = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(**inputs, **gen_kwargs, logits_processor=LogitsProcessorList([first_token]))
        ended_at = time.perf_counter()
        first = first_token.at or ended_at
        prepared.prefill_s = first - started
        prepared.decode_s = ended_at - first
        prompt_len = inputs["input_ids"].shape[1]
        attention = inputs["attention_mask"]
        seconds = (prepared.preprocess_s + ended_at - started) / max(prepared.size, 1)
        results = []
        pad_id = self.tokenizer.pad_token_id
        for row, new in enumerate(out[:, prompt_len:].tolist()):
            ended = False
            tokens: list[int] = []
            for tok in new:
                if tok in self.eos_ids and not ignore_eos:
                    ended = True
                    break
                if tok == pad_id and tokens and not ignore_eos:
                    ended = True
                    break
                tokens.append(tok)
            text = self.tokenizer.decode(tokens, skip_special_tokens=True).strip()
            if not text:
                status = "empty"
            elif ended:
                status = "complete"
            else:
                status = "truncated"
            results.append(
                ModelOutput(
                    text=text,
                    answer_status=status,
                    prompt_tokens=int(attention[row].sum()),
                    new_tokens=len(tokens),
                    seconds=seconds,
                )
            )
        prepared.new_tokens = sum(r.new_tokens for r in results)
        prepared.generated_tokens = (out.shape[1] - prompt_len) * prepared.size
        return results

    def generate(
        self, batch: list[tuple[Study, Prompt]], *, max_new_tokens: int, ignore_eos: bool = False
    ) -> list[ModelOutput]:
        """One processor call and one generate() call for the whole batch."""
        return self.generate_prepared(self.preprocess(batch), max_new_tokens=max_new_tokens, ignore_eos=ignore_eos)


@dataclass
class PreparedBatch:
    """Processor output for one batch plus where its time went."""

    inputs: Any
    size: int
    preprocess_s: float = 0.0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    new_tokens: int = 0  # kept tokens (after EOS) summed over the batch
    generated_tokens: int = 0  # tokens the model produced, padding rows included


class _FirstTokenClock:
    """A logits processor that only notes when the first token's logits exist (prefill finished)."""

    def __init__(self):
        self.at: float | None = None

    def __call__(self, input_ids, scores):
        if self.at is None:
            self.at = time.perf_counter()
        return scores


def load_backend(
    name_or_path: str,
    *,
    device: str = "auto",
    dtype: str = "auto",
    quant: str = "auto",
    batch_size: int = 1,
    max_new_tokens: int = 256,
    images_per_study: int = 2,
    check_memory: bool = True,
) -> HFBackend:
    """Resolve, size-check and load a model once; raises ModelUnavailable with a one-line reason."""
    return HFBackend(
        name_or_path, device=device, dtype=dtype, quant=quant, batch_size=batch_size,
        max_new_tokens=max_new_tokens, images_per_study=images_per_study, check_memory=check_memory,
    )
