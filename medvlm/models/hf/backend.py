"""The transformers backend: AutoProcessor + AutoModelForImageTextToText, greedy generation, answer status."""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import ModelUnavailable, first_line
from ...records import ModelOutput, Prompt, Study
from ..base import BackendBase, BatchTiming, ModelInfo
from ..checkpoint import weights_digest
from ..registry import resolve
from . import cpu_attention, cpu_mlp, int8, kv_cache, options, streamed_load
from .identity import hf_identity
from .processor import cap_visual_tokens, load_processor
from .tokens import control_token_ids

log = logging.getLogger("medvlm.models")

# Written by sample_data/train_phantom.py next to the weights: the model learned only synthetic phantoms.
PHANTOM_META = "medvlm_phantom_model.json"


class HFBackend(BackendBase):
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
        requested = options.HFOptions(device=device, dtype=dtype, quant=quant)
        requested.check()
        resolved = resolve(name_or_path)
        local_dir = resolved.local_dir
        if resolved.random:
            from ..demo import BENCH_SPEC, DEMO_SPEC, ensure_random_model

            local_dir = ensure_random_model(DEMO_SPEC if resolved.random == "demo" else BENCH_SPEC)
        import torch
        from transformers import AutoModelForImageTextToText
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        model_type = _model_type(local_dir)
        chosen = options.resolve_options(requested, model_type)  # refuses pairs this device cannot run
        dev, mode, torch_dtype = chosen.device, chosen.quant, getattr(torch, chosen.dtype)
        if dev == "cpu" and chosen.dtype == "bfloat16" and not options.cpu_bf16_in_hardware():
            log.warning("this CPU has no bf16 matrix instructions: --dtype bfloat16 runs on a generic path many "
                        "times slower than float32 (use --dtype auto)")
        estimate = None
        if check_memory:
            from ..memory import check_model_fits

            estimate = check_model_fits(
                Path(local_dir), model=resolved.name, dtype=chosen.dtype, quant=mode,
                device=dev, batch_size=batch_size, max_new_tokens=max_new_tokens, images_per_study=images_per_study,
            )
        kwargs: dict = {"dtype": torch_dtype}
        quant_desc = "none"
        cpu_int8 = mode == "int8" and not dev.startswith("cuda")
        if dev.startswith("cuda") and mode in ("int8", "int4"):
            if not options.bnb_available():
                raise ModelUnavailable(
                    f"--quant {mode} on CUDA needs bitsandbytes: pip install 'medvlm[cuda]' (or use --quant none)."
                )
            kwargs["quantization_config"] = options.bnb_config(mode, torch_dtype)
            quant_desc = "int8 (bitsandbytes LLM.int8)" if mode == "int8" else "nf4 (bitsandbytes 4-bit)"
            kwargs["device_map"] = dev
        elif cpu_int8:
            # Load at half width and convert one decoder layer at a time, so fp32 and int8 copies
            # of the whole language model never coexist (peak = bf16 model + one fp32 layer).
            kwargs["dtype"] = torch.bfloat16
        int8_load = None
        try:
            self.processor = load_processor(local_dir)
            model = None
            if cpu_int8 and os.environ.get(streamed_load.STREAMED_LOAD_ENV, "1") != "0":
                try:
                    model = streamed_load.load_cpu_int8_streamed(local_dir, int8.int8_kernels())
                    int8_load = "streamed and converted decoder layer by decoder layer"
                except streamed_load.StreamFallback as exc:
                    model = None
                    int8_load = f"loaded with from_pretrained in bf16 (streamed load not possible: {first_line(exc)})"
                    int8.release_freed_memory()
            elif cpu_int8:
                int8_load = f"loaded with from_pretrained in bf16 ({streamed_load.STREAMED_LOAD_ENV}=0)"
            if model is None:
                model = AutoModelForImageTextToText.from_pretrained(local_dir, **kwargs)
        except (OSError, ValueError, KeyError, ImportError) as exc:
            raise ModelUnavailable(f"cannot load model from {local_dir}: {_reason(exc)}") from None
        if getattr(self.processor, "image_processor", None) is None:
            raise ModelUnavailable(f"cannot load model from {local_dir}: its processor has no image processor.")
        image_overrides = cap_visual_tokens(self.processor)
        model.eval()
        if "device_map" not in kwargs:
            model.to(dev)
        if cpu_int8:
            quant_desc = f"{int8.quantize_cpu_int8(model, chosen.vision_dtype or 'bfloat16')}; checkpoint {int8_load}"
            int8.release_freed_memory()
        vision_attention = inplace_mlp = None
        self._kv_cache_arg = None  # the generate() keyword an in-place KV cache goes under, where one is used
        if dev == "cpu":
            int8.reuse_freed_memory()
            vision_attention = cpu_attention.use_for_vision(model)
            inplace_mlp = cpu_mlp.use_inplace(model)
            if kv_cache.choice() == "inplace" and kv_cache.new_cache(model, 1) is not None:
                self._kv_cache_arg = kv_cache.cache_argument()
        self.model = model
        self._pixel_dtype = int8.vision_dtype(model)
        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        if getattr(tokenizer, "pad_token", None) is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"  # decoder-only generation needs left padding in a batch
        self.tokenizer = tokenizer
        self.eos_ids = self._eos_ids()
        self.markup_ids = control_token_ids(tokenizer, self.processor) - self.eos_ids
        random_meta = Path(local_dir) / "medvlm_random_model.json"
        meta = json.loads(random_meta.read_text()) if random_meta.is_file() else {}
        phantom_meta = Path(local_dir) / PHANTOM_META
        phantom = phantom_meta.is_file() and bool(json.loads(phantom_meta.read_text(encoding="utf-8")).get("phantom"))
        self.info = ModelInfo(
            name=resolved.name,
            source=resolved.source,
            local_dir=str(local_dir),
            revision=resolved.revision or meta.get("spec_digest"),
            random_weights=bool(meta.get("random_weights")),
            phantom=phantom,
            dtype=chosen.dtype,
            quantization=quant_desc,
            device=dev,
            weights_digest=weights_digest(local_dir),
            backend="hf",
            identity=hf_identity(resolved.name, chosen, model_type),
            parameters=sum(p.numel() for p in model.parameters()),
            details={
                "architecture": type(model).__name__,
                "model_type": model_type,
                "quant_mode": mode,
                "int8_load": int8_load,
                "image_processor_overrides": image_overrides,
                "threads": torch.get_num_threads(),
                "attention": "; ".join(
                    str(a) for a in (getattr(model.config, "_attn_implementation", None), vision_attention) if a
                ) or None,
                "mlp": inplace_mlp,
                "kv_cache": kv_cache.DESCRIPTION if self._kv_cache_arg else None,
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
        if not any(images):  # a text-only batch (medvlm serve); processors reject a list of empty image lists
            images = None
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
        if self._kv_cache_arg:
            cache = kv_cache.new_cache(self.model, inputs["input_ids"].shape[1] + max_new_tokens)
            if cache is not None:
                gen_kwargs[self._kv_cache_arg] = cache
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
            kept = [t for t in tokens if t not in self.markup_ids]
            text = self.tokenizer.decode(kept, skip_special_tokens=False).strip()
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

    def timing(self, prepared: "PreparedBatch") -> BatchTiming:
        return BatchTiming(prepared.preprocess_s, prepared.prefill_s, prepared.decode_s, prepared.generated_tokens)


def _model_type(local_dir) -> str | None:
    try:
        return json.loads((Path(local_dir) / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


def _reason(exc: BaseException) -> str:
    """One line for a load failure; transformers' ImportErrors start with an empty line."""
    if "torchvision" in str(exc).lower():
        return "its processor needs torchvision (pip install torchvision, the build matching your torch)"
    return first_line(exc)


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

