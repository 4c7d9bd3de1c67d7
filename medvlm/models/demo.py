"""Random-weight Gemma3-shaped VLMs built locally (demo and bench presets).

No weights can be downloaded on many research machines, so medvlm builds a real transformers
VLM architecture from a config, with random weights and a tokenizer trained here with the
`tokenizers` library, and saves it as an ordinary Hugging Face model directory. It is then
loaded through exactly the same code path as any real model. Its text is meaningless.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..paths import cache_dir, data_dir

# Bumped whenever the construction below changes, so stale cached builds are rebuilt.
BUILD_VERSION = "4"

SPECIAL_TOKENS = {
    "pad_token": "<pad>",
    "eos_token": "<eos>",
    "bos_token": "<bos>",
    "unk_token": "<unk>",
}
EXTRA_TOKENS = {
    "boi_token": "<start_of_image>",
    "eoi_token": "<end_of_image>",
    "image_token": "<image_soft_token>",
    "sot_token": "<start_of_turn>",
    "eot_token": "<end_of_turn>",
}

# A chat template in the Gemma turn format, written for medvlm: system text is folded into the
# first user turn, images become the boi token that the processor expands.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- set sys = namespace(text='') -%}"
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'system' -%}"
    "{%- for c in (m['content'] if m['content'] is not string else [{'type': 'text', 'text': m['content']}]) -%}"
    "{%- if c['type'] == 'text' -%}{%- set sys.text = sys.text + c['text'] + '\n\n' -%}{%- endif -%}"
    "{%- endfor -%}"
    "{%- else -%}"
    "<start_of_turn>{{ ('model' if m['role'] == 'assistant' else m['role']) + '\\n' }}"
    "{%- if loop.index0 <= 1 and m['role'] == 'user' -%}{{ sys.text }}{%- set sys.text = '' -%}{%- endif -%}"
    "{%- if m['content'] is string -%}{{ m['content'] }}{%- else -%}"
    "{%- for c in m['content'] -%}"
    "{%- if c['type'] == 'image' -%}<start_of_image>"
    "{%- elif c['type'] == 'text' -%}{{ c['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "<end_of_turn>{{ '\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<start_of_turn>{{ 'model\\n' }}{%- endif -%}"
)


@dataclass(frozen=True)
class RandomVLMSpec:
    """Size of a random-weight Gemma3-shaped model."""

    name: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vision_hidden: int
    vision_intermediate: int
    vision_layers: int
    vision_heads: int
    image_size: int
    patch_size: int
    mm_tokens_per_image: int
    vocab_size: int
    seed: int = 0

    def digest(self) -> str:
        blob = json.dumps(self.__dict__, sort_keys=True) + BUILD_VERSION
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


DEMO_SPEC = RandomVLMSpec(
    name="demo",
    hidden_size=64,
    intermediate_size=128,
    num_layers=2,
    num_heads=2,
    num_kv_heads=1,
    head_dim=32,
    vision_hidden=64,
    vision_intermediate=128,
    vision_layers=2,
    vision_heads=2,
    image_size=224,
    patch_size=16,
    mm_tokens_per_image=49,
    vocab_size=2048,
)

# Realistic size for benchmarks (~0.6 B parameters, 512-px images, Gemma3-shaped).
BENCH_SPEC = RandomVLMSpec(
    name="bench",
    hidden_size=1152,
    intermediate_size=6912,
    num_layers=20,
    num_heads=4,
    num_kv_heads=1,
    head_dim=256,
    vision_hidden=768,
    vision_intermediate=3072,
    vision_layers=12,
    vision_heads=12,
    image_size=512,
    patch_size=16,
    mm_tokens_per_image=256,
    vocab_size=32000,
)


def _training_corpus() -> list[str]:
    """Text the tokenizer is trained on: medvlm's own prompts and finding vocabularies."""
    texts: list[str] = []
    roots = [data_dir("prompts"), data_dir("findings/vocab")]
    for root in roots:
        if root.is_dir():
            for path in sorted(root.glob("*.yaml")):
                texts.append(path.read_text(encoding="utf-8"))
    # A few sentence shapes so common report words become single tokens.
    organs = ["lungs", "heart", "pleura", "mediastinum", "bones", "brain", "abdomen", "aorta"]
    states = ["clear", "normal", "enlarged", "stable", "unremarkable", "abnormal", "within normal limits"]
    for organ in organs:
        for state in states:
            texts.append(f"The {organ} are {state}. No acute findings in the {organ}.")
    return texts


def _train_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"], byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = list(SPECIAL_TOKENS.values()) + list(EXTRA_TOKENS.values())
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_corpus(), trainer=trainer)
    return tok


def _build(spec: RandomVLMSpec, target: Path) -> None:
    import torch
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3Processor,
        PreTrainedTokenizerFast,
    )
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the build is one quiet step of a batch, not a download

    raw = _train_tokenizer(spec.vocab_size)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        **SPECIAL_TOKENS,
        extra_special_tokens=EXTRA_TOKENS,
        padding_side="left",
        model_max_length=8192,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    ids = {k: tokenizer.convert_tokens_to_ids(v) for k, v in {**SPECIAL_TOKENS, **EXTRA_TOKENS}.items()}
    vocab_size = len(tokenizer)

    config = Gemma3Config(
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": spec.hidden_size,
            "intermediate_size": spec.intermediate_size,
            "num_hidden_layers": spec.num_layers,
            "num_attention_heads": spec.num_heads,
            "num_key_value_heads": spec.num_kv_heads,
            "head_dim": spec.head_dim,
            "max_position_embeddings": 8192,
            "sliding_window": 512,
            "pad_token_id": ids["pad_token"],
            "bos_token_id": ids["bos_token"],
            "eos_token_id": [ids["eos_token"], ids["eot_token"]],
        },
        vision_config={
            "hidden_size": spec.vision_hidden,
            "intermediate_size": spec.vision_intermediate,
            "num_hidden_layers": spec.vision_layers,
            "num_attention_heads": spec.vision_heads,
            "image_size": spec.image_size,
            "patch_size": spec.patch_size,
            "vision_use_head": False,
        },
        mm_tokens_per_image=spec.mm_tokens_per_image,
        boi_token_index=ids["boi_token"],
        eoi_token_index=ids["eoi_token"],
        image_token_index=ids["image_token"],
        pad_token_id=ids["pad_token"],
        bos_token_id=ids["bos_token"],
        eos_token_id=[ids["eos_token"], ids["eot_token"]],
    )
    torch.manual_seed(spec.seed)
    model = Gemma3ForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = [ids["eos_token"], ids["eot_token"]]
    model.generation_config.pad_token_id = ids["pad_token"]
    model.generation_config.bos_token_id = ids["bos_token"]
    model.generation_config.do_sample = False
    image_processor = Gemma3ImageProcessorPil(
        size={"height": spec.image_size, "width": spec.image_size},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    processor = Gemma3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
        image_seq_length=spec.mm_tokens_per_image,
    )
    model.save_pretrained(target, safe_serialization=True)
    processor.save_pretrained(target)
    (target / "medvlm_random_model.json").write_text(
        json.dumps(
            {
                "preset": spec.name,
                "spec_digest": spec.digest(),
                "random_weights": True,
                "notice": "random weights built by medvlm; generated text is meaningless",
                "parameters": sum(p.numel() for p in model.parameters()),
            },
            indent=2,
        )
    )


def is_random_model_dir(path: Path) -> bool:
    """True for a directory built by this module (its text is meaningless)."""
    return (Path(path) / "medvlm_random_model.json").is_file()


def ensure_random_model(spec: RandomVLMSpec = DEMO_SPEC, root: Path | None = None) -> Path:
    """Return the cached model directory for `spec`, building it on first use."""
    root = Path(root) if root else cache_dir() / "models"
    target = root / f"{spec.name}-{spec.digest()}"
    if is_random_model_dir(target):
        return target
    root.mkdir(parents=True, exist_ok=True)
    # Build in a temp dir and rename, so a crash never leaves a half-built cache entry.
    tmp = Path(tempfile.mkdtemp(prefix=f".{spec.name}-", dir=root))
    try:
        _build(spec, tmp)
        try:
            os.replace(tmp, target)
        except OSError:
            if not is_random_model_dir(target):  # another process did not win the race
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
