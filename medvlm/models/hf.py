"""Hugging Face transformers backend: AutoProcessor + AutoModelForImageTextToText."""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

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


def _pick_dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
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


def _quantize_cpu_int8(model) -> str:
    """Dynamic int8 on the language model's Linear layers (weights int8, activations quantised per batch)."""
    import torch
    from torch.ao.quantization import quantize_dynamic

    # The vision tower runs once per image and is sensitive to quantisation; the language model
    # dominates decode time, so only its Linear layers are converted (lm_head included).
    targets = []
    lm = getattr(model, "model", model)
    language = getattr(lm, "language_model", None)
    if language is not None:
        targets.append((lm, "language_model"))
    if getattr(model, "lm_head", None) is not None:
        targets.append((model, "lm_head"))
    if not targets:
        targets.append((None, None))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if targets == [(None, None)]:
            quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
            return "int8 dynamic (torch.ao) on all Linear layers"
        for parent, attr in targets:
            module = getattr(parent, attr)
            setattr(parent, attr, quantize_dynamic(module, {torch.nn.Linear}, dtype=torch.qint8, inplace=True))
    return "int8 dynamic (torch.ao) on language-model Linear layers"


class HFBackend:
    """A transformers VLM loaded once and used for every batch."""

    def __init__(self, name_or_path: str, *, device: str = "auto", dtype: str = "auto", quant: str = "auto"):
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
        torch_dtype = _pick_dtype(dtype, dev)
        mode = _pick_quant(quant, dev)
        kwargs: dict = {"dtype": torch_dtype}
        quant_desc = "none"
        if dev.startswith("cuda") and mode in ("int8", "int4"):
            if not _bnb_available():
                raise ModelUnavailable(
                    f"--quant {mode} on CUDA needs bitsandbytes: pip install 'medvlm[cuda]' (or use --quant none)."
                )
            from transformers import BitsAndBytesConfig

            if mode == "int8":
                kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
                quant_desc = "int8 (bitsandbytes LLM.int8)"
            else:
                kwargs["quantization_config"] = BitsAndBytesConfig(
                    load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch_dtype
                )
                quant_desc = "nf4 (bitsandbytes 4-bit)"
            kwargs["device_map"] = dev
        elif mode == "int4" and not dev.startswith("cuda"):
            raise ModelUnavailable("--quant int4 is only supported on CUDA (bitsandbytes nf4); use --quant int8 on CPU.")
        try:
            self.processor = AutoProcessor.from_pretrained(local_dir)
            model = AutoModelForImageTextToText.from_pretrained(local_dir, **kwargs)
        except (OSError, ValueError, KeyError, ImportError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelUnavailable(f"cannot load model from {local_dir}: {first}") from None
        model.eval()
        if "device_map" not in kwargs:
            model.to(dev)
        if mode == "int8" and not dev.startswith("cuda"):
            if torch_dtype != torch.float32:
                raise ModelUnavailable("--quant int8 on CPU needs --dtype float32 (dynamic int8 computes in fp32).")
            quant_desc = _quantize_cpu_int8(model)
        self.model = model
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
            parameters=sum(p.numel() for p in model.parameters()),
            details={"architecture": type(model).__name__},
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

    def generate(
        self, batch: list[tuple[Study, Prompt]], *, max_new_tokens: int, ignore_eos: bool = False
    ) -> list[ModelOutput]:
        """One processor call and one generate() call for the whole batch."""
        import torch

        started = time.perf_counter()
        texts = [
            self.processor.apply_chat_template(self._messages(s, p), add_generation_prompt=True, tokenize=False)
            for s, p in batch
        ]
        images = [[img.image for img in s.images] for s, _ in batch]
        inputs = self.processor(text=texts, images=images, return_tensors="pt", padding=True)
        inputs = inputs.to(self.model.device)
        if "pixel_values" in inputs and inputs["pixel_values"].is_floating_point():
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        gen_kwargs: dict = {"max_new_tokens": max_new_tokens, "do_sample": False}
        if ignore_eos:
            gen_kwargs["min_new_tokens"] = max_new_tokens
        with torch.inference_mode():
            out = self.model.generate(**inputs, **gen_kwargs)
        prompt_len = inputs["input_ids"].shape[1]
        attention = inputs["attention_mask"]
        seconds = (time.perf_counter() - started) / max(len(batch), 1)
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
        return results


def load_backend(name_or_path: str, *, device: str = "auto", dtype: str = "auto", quant: str = "auto") -> HFBackend:
    """Resolve and load a model once; raises ModelUnavailable with a one-line reason."""
    return HFBackend(name_or_path, device=device, dtype=dtype, quant=quant)
