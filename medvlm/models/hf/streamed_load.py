"""The streamed CPU-int8 loader: build the model with meta parameters and fill it by decoder layer (two at a time)."""

from __future__ import annotations

import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..checkpoint import read_safetensors_header, safetensors_files
from .int8 import convert_linears, language_model, quantized_engine, release_freed_memory

STREAMED_LOAD_ENV = "MEDVLM_STREAMED_LOAD"  # 0: CPU int8 loads through from_pretrained (the old, higher-peak path)

LOAD_THREADS = 2  # decoder layers read and converted at once


class StreamFallback(Exception):
    """The streamed CPU-int8 load cannot reproduce from_pretrained exactly here: use from_pretrained."""


_META_LOCK = threading.Lock()


def _params_on_meta():
    """A context in which new nn.Parameters are created on the meta device and buffers really on CPU.

    Parameters get no memory; buffers (rotary inv_freq, embed_scale, ... most of them non-persistent and so
    absent from the checkpoint) are computed by the modules' own __init__ exactly as from_pretrained does.
    nn.Module.register_parameter is replaced for the duration, but the replacement acts only on the
    thread that entered the context (other threads building modules meanwhile are unaffected), and
    one such construction runs at a time.
    """
    import contextlib

    import torch

    @contextlib.contextmanager
    def ctx():
        with _META_LOCK:
            original = torch.nn.Module.register_parameter
            owner = threading.get_ident()

            def register_parameter(module, name, param):
                original(module, name, param)
                if threading.get_ident() == owner and param is not None and param.device.type != "meta":
                    kwargs = {"requires_grad": param.requires_grad}
                    module._parameters[name] = type(param)(param.to("meta"), **kwargs)

            torch.nn.Module.register_parameter = register_parameter
            try:
                yield
            finally:
                torch.nn.Module.register_parameter = original

    return ctx()


_SAFETENSORS_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
}


def _read_tensor(f, data_start: int, entry: dict):
    """One tensor read with a plain read() into anonymous memory.

    Not through safetensors' mmap: the pages of an mapped file count in RSS for as long as the mapping
    lives, while read() leaves them in the page cache, which the kernel can drop.
    """
    import torch

    if entry["dtype"] not in _SAFETENSORS_DTYPES:
        raise StreamFallback(f"checkpoint dtype {entry['dtype']} not handled")
    begin, end = entry["data_offsets"]
    raw = torch.empty(end - begin, dtype=torch.uint8)
    f.seek(data_start + begin)
    if end > begin and f.readinto(memoryview(raw.numpy())) != end - begin:
        raise OSError(f"short read from {f.name}")
    return raw.view(getattr(torch, _SAFETENSORS_DTYPES[entry["dtype"]])).reshape(entry["shape"])


def _checkpoint_key_map(model, files: list[Path]) -> dict[str, tuple[Path, str]]:
    """model state_dict key -> (file, checkpoint key), with transformers' own key renames applied.

    Raises StreamFallback unless the renamed checkpoint keys cover the model's state_dict exactly (tied
    parameters excepted) with equal shapes, and no tensor-transforming conversion applies.
    """
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key
    except ImportError as exc:  # another transformers version: do not guess its renames
        raise StreamFallback(f"transformers key-rename API unavailable: {exc}") from None

    meta_sd = model.state_dict()
    conversions = get_model_conversion_mapping(model)
    renamings = [c for c in conversions if isinstance(c, WeightRenaming)]
    converters = [c for c in conversions if isinstance(c, WeightConverter)]
    prefix = getattr(model, "base_model_prefix", None)
    mapping: dict[str, tuple[Path, str]] = {}
    for file in files:
        _, header = read_safetensors_header(file)
        for key, entry in header.items():
            target, converter = rename_source_key(key, renamings, converters, prefix, meta_sd)
            if target not in meta_sd and key in meta_sd:
                target, converter = rename_source_key(key, [], [], prefix, meta_sd)
            if converter is not None:
                raise StreamFallback(f"checkpoint key {key} needs a tensor conversion")
            if target not in meta_sd or target in mapping:
                raise StreamFallback(f"checkpoint key {key} does not match the model")
            if tuple(entry["shape"]) != tuple(meta_sd[target].shape) or entry["dtype"] not in _SAFETENSORS_DTYPES:
                raise StreamFallback(f"checkpoint key {key} has another shape or an unknown dtype")
            mapping[target] = (file, key)
    return mapping


def load_cpu_int8_streamed(local_dir, kernels: str):
    """Build the model with meta parameters, then fill and int8-convert it by decoder layer (LOAD_THREADS at a time).

    The same bf16 -> fp32 -> int8 steps as from_pretrained(dtype=bfloat16) + _quantize_cpu_int8, but the
    checkpoint is read one tensor at a time, so the process never holds
    the whole checkpoint's file pages plus a whole bf16 copy (tensors are read with read(), not mmap). Raises StreamFallback where it cannot
    reproduce from_pretrained exactly (unknown key names, tensor conversions, fp32-kept modules, ...).
    """
    from collections import defaultdict

    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText, GenerationConfig

    local_dir = Path(local_dir)
    files = safetensors_files(local_dir)
    if not files:
        raise StreamFallback("no safetensors checkpoint")
    config = AutoConfig.from_pretrained(local_dir)
    with _params_on_meta():
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.bfloat16)
    if getattr(model, "_keep_in_fp32_modules", None) or getattr(model, "_keep_in_fp32_modules_strict", None):
        raise StreamFallback("model keeps some modules in fp32")
    language = language_model(model)
    layers = list(getattr(language, "layers", None) or []) if language is not None else []
    if not layers:
        raise StreamFallback("no decoder layers to stream")
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
            raise StreamFallback(f"parameter {owners[0][2]} is not in the checkpoint")
    for key in model.state_dict():  # persistent buffers must come from the checkpoint too
        if key not in mapping and key not in param_names:
            raise StreamFallback(f"buffer {key} is not in the checkpoint")
    buffer_keys = [k for k in mapping if k not in param_names]

    layer_of = {}
    for i, layer in enumerate(layers):
        for mod in layer.modules():
            layer_of[id(mod)] = i
    groups: dict[int, list[int]] = defaultdict(list)  # -1: everything outside the decoder layers
    for pid, owners in slots.items():
        where = {layer_of.get(id(mod), -1) for mod, _, _ in owners}
        if len(where) != 1:
            raise StreamFallback("a tied parameter spans decoder layers")
        groups[where.pop()].append(pid)

    headers = {file: read_safetensors_header(file) for file in files}

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

    def load_layer(i: int) -> None:
        group = groups.pop(i, [])
        fill(group)
        convert_linears(layers[i], kernels)  # bf16 -> fp32 -> int8, as _quantize_cpu_int8 does
        for pid in group:  # the replaced Linear modules (and their fp32 weights) must not stay referenced
            del slots[pid], params[pid]
        # glibc keeps the freed fp32/bf16 copies (its mmap threshold grows to 32 MB) and the
        # int8 weights allocated in between stop the heap from shrinking: hand them back per layer.
        # The replaced modules hold no reference cycles, so reference counting has freed them already.
        release_freed_memory(collect=False)

    # Reading, rounding and packing one layer runs mostly on one core (torch's quantize and FBGEMM's
    # prepack are single-threaded): two layers at a time halve the load on a 2-core machine, at the
    # cost of one more fp32 layer held at once. Hybrid kernels switch torch's global engine per Linear,
    # so they convert one layer at a time.
    workers = 1 if kernels == "hybrid" else min(LOAD_THREADS, os.cpu_count() or 1)
    with warnings.catch_warnings(), quantized_engine(kernels):
        warnings.simplefilter("ignore")
        fill(groups.pop(-1, []), buffer_keys)
        with ThreadPoolExecutor(workers, thread_name_prefix="medvlm-load") as pool:
            for _ in pool.map(load_layer, range(len(layers))):  # re-raises a layer's exception here
                pass
    release_freed_memory()
    if any(p.device.type == "meta" for p in model.parameters()) or any(b.device.type == "meta" for b in model.buffers()):
        raise StreamFallback("some tensors were left unfilled")
    model.config.name_or_path = str(local_dir)
    if (local_dir / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(local_dir)
    return model
