"""Random-weight replicas of the real presets: published configs, real token layout, reduced depth and width.

A replica is an ordinary Hugging Face model directory built from the preset's published config,
generation config and processor configs (shipped in medvlm/models/preset_configs/<preset>/), with:
- the same architecture class, vocabulary size, token ids, image processor settings, tokens per
  image and generation config (stop tokens) as the real model;
- two decoder layers and a narrow hidden size (the weights are random, the text is meaningless);
- a tokenizer with the real vocabulary size and the real special tokens at their real ids (a small
  byte-level BPE trained here fills the ordinary ids), special/non-special flags as published;
- the model's documented chat format, written here and checked against the real chat templates in
  ../shared/data/models by tests/test_replicas.py.
"""

from __future__ import annotations

import copy
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from medvlm.models.registry import preset_config_dir

# --- chat formats (written for medvlm; each reproduces the model's documented prompt format) -------------------

# Gemma 3: no system role; a system message is prefixed to the first user turn; images are <start_of_image>.
GEMMA_TURNS = (
    "{{ bos_token }}"
    "{%- set ns = namespace(prefix='') -%}"
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'system' -%}"
    "{%- set ns.prefix = (m['content'] if m['content'] is string else m['content'][0]['text']) + '\n\n' -%}"
    "{%- else -%}"
    "{{ '<start_of_turn>' + ('model' if m['role'] == 'assistant' else m['role']) + '\n' + ns.prefix }}"
    "{%- set ns.prefix = '' -%}"
    "{%- if m['content'] is string -%}{{ m['content'] | trim }}{%- else -%}"
    "{%- for part in m['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{ '<start_of_image>' }}"
    "{%- elif part['type'] == 'text' -%}{{ part['text'] | trim }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{ '<end_of_turn>\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)

# Qwen2.5-VL: ChatML with a default system turn; an image is <|vision_start|><|image_pad|><|vision_end|>.
QWEN_CHATML = (
    "{%- for m in messages -%}"
    "{%- if loop.first and m['role'] != 'system' -%}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}"
    "{%- endif -%}"
    "{{ '<|im_start|>' + m['role'] + '\n' }}"
    "{%- if m['content'] is string -%}{{ m['content'] }}{%- else -%}"
    "{%- for part in m['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{ '<|im_end|>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)

# Idefics3 / SmolVLM: "<|im_start|>User:<image>text<end_of_utterance>\nAssistant:" (colon without space before an image).
IDEFICS3_TURNS = (
    "{{ '<|im_start|>' }}"
    "{%- for m in messages -%}"
    "{{ m['role'] | capitalize }}{{ ':' if m['content'][0]['type'] == 'image' else ': ' }}"
    "{%- for part in m['content'] -%}"
    "{%- if part['type'] == 'text' -%}{{ part['text'] }}"
    "{%- elif part['type'] == 'image' -%}{{ '<image>' }}{%- endif -%}"
    "{%- endfor -%}"
    "{{ '<end_of_utterance>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'Assistant:' }}{%- endif -%}"
)


@dataclass(frozen=True)
class TokenLayout:
    """A tokenizer's published layout: its length and the tokens whose ids matter, with their special flag."""

    size: int  # len(tokenizer): base vocabulary plus added tokens
    tokens: dict[int, tuple[str, bool]]  # id -> (content, special)
    roles: dict[str, str]  # bos/eos/pad/unk -> content
    extra: dict[str, str] = field(default_factory=dict)  # model-specific named tokens (boi_token, image_token, ...)


_GEMMA_TOKENS = {
    0: ("<pad>", True), 1: ("<eos>", True), 2: ("<bos>", True), 3: ("<unk>", True), 4: ("<mask>", False),
    5: ("[multimodal]", False), 100: ("<unused94>", False), 101: ("<unused95>", False),
    105: ("<start_of_turn>", True), 106: ("<end_of_turn>", True), 107: ("\n", False), 108: ("\n\n", False),
    255999: ("<start_of_image>", False), 256000: ("<end_of_image>", False), 262144: ("<image_soft_token>", True),
}
GEMMA_LAYOUT = TokenLayout(
    size=262145,
    tokens=_GEMMA_TOKENS,
    roles={"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"},
    extra={"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"},
)

_QWEN_NAMES = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>",
    "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
]
QWEN_LAYOUT = TokenLayout(
    size=151665,
    tokens={151643 + i: (name, i < 14) for i, name in enumerate(_QWEN_NAMES)},
    roles={"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
)

_SMOL_BASE = {0: ("<|endoftext|>", True), 1: ("<|im_start|>", True), 2: ("<|im_end|>", True)}
SMOLVLM_256M_LAYOUT = TokenLayout(
    size=49280,
    tokens={
        **_SMOL_BASE,
        49152: ("<global-img>", True),
        **{49153 + 6 * (r - 1) + (c - 1): (f"<row_{r}_col_{c}>", True) for r in range(1, 7) for c in range(1, 7)},
        49189: ("<fake_token_around_image>", True), 49190: ("<image>", True),
        **{49191 + i: (f"<|reserved_special_token_{i}|>", True) for i in range(88)},
        49279: ("<end_of_utterance>", True),
    },
    roles={"bos_token": "<|im_start|>", "eos_token": "<end_of_utterance>", "pad_token": "<|im_end|>",
           "unk_token": "<|endoftext|>"},
)
SMOLVLM_2B_LAYOUT = TokenLayout(
    size=49155,
    tokens={**_SMOL_BASE, 49152: ("<fake_token_around_image>", True), 49153: ("<image>", True),
            49154: ("<end_of_utterance>", True)},
    roles={"bos_token": "<|im_start|>", "eos_token": "<end_of_utterance>", "pad_token": "<|im_end|>",
           "unk_token": "<|endoftext|>"},
)


@dataclass(frozen=True)
class ReplicaSpec:
    preset: str
    family: str  # gemma3, qwen2_5_vl, idefics3
    layout: TokenLayout
    chat_template: str
    shared_dir: str | None  # the real files in ../shared/data/models, when there are any
    # Token ids that must stop generation (the published generation config's eos_token_id, as a list).
    stop_ids: tuple[int, ...] = ()


REPLICAS: dict[str, ReplicaSpec] = {
    s.preset: s
    for s in (
        ReplicaSpec("medgemma-4b", "gemma3", GEMMA_LAYOUT, GEMMA_TURNS, "medgemma-4b-it", (1, 106)),
        ReplicaSpec("medgemma-1.5-4b", "gemma3", GEMMA_LAYOUT, GEMMA_TURNS, None, (1, 106)),
        ReplicaSpec("smolvlm-256m", "idefics3", SMOLVLM_256M_LAYOUT, IDEFICS3_TURNS, "smolvlm-256m-instruct", (49279,)),
        ReplicaSpec("smolvlm-2b", "idefics3", SMOLVLM_2B_LAYOUT, IDEFICS3_TURNS, None, (49154,)),
        ReplicaSpec("qwen2.5-vl-3b", "qwen2_5_vl", QWEN_LAYOUT, QWEN_CHATML, "qwen2.5-vl-3b-instruct", (151645, 151643)),
    )
}

# --- reduced configs: keep vocabulary, token ids, image geometry; shrink depth and width ---------------------------

_TEXT_SMALL = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
               "num_key_value_heads": 1, "head_dim": 32}


def reduced_config(preset: str) -> dict:
    """The preset's published config.json with two decoder layers and a narrow width (token layout kept)."""
    config = json.loads((preset_config_dir(preset) / "config.json").read_text())
    config = copy.deepcopy(config)
    family = REPLICAS[preset].family
    if family == "gemma3":
        config["text_config"].update(_TEXT_SMALL, query_pre_attn_scalar=32,
                                     layer_types=["sliding_attention", "full_attention"])
        config["vision_config"].update(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    elif family == "qwen2_5_vl":
        config.update({k: v for k, v in _TEXT_SMALL.items() if k != "head_dim"})
        config["rope_scaling"] = {"type": "mrope", "mrope_section": [4, 6, 6]}  # sums to head_dim / 2 = 16
        config["vision_config"].update(depth=2, hidden_size=32, intermediate_size=64, num_heads=2,
                                       out_hidden_size=64, fullatt_block_indexes=[1])
    elif family == "idefics3":
        config["text_config"].update(_TEXT_SMALL)
        config["vision_config"].update(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    return config


# --- tokenizer -------------------------------------------------------------------------------------------------

def _corpus() -> list[str]:
    from medvlm.paths import data_dir

    texts = []
    for kind in ("prompts", "findings/vocab"):
        texts += [p.read_text(encoding="utf-8") for p in sorted(data_dir(kind).glob("*.yaml"))]
    texts += ["**Findings:** The lungs are clear. No pleural effusion or pneumothorax.\n- Heart size normal.\n"] * 3
    return texts


def build_tokenizer(layout: TokenLayout, chat_template: str):
    """A fast tokenizer of exactly `layout.size` tokens with the layout's tokens at their ids."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    trained = Tokenizer(models.BPE())
    trained.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trained.train_from_iterator(_corpus(), trainers.BpeTrainer(
        vocab_size=1200, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    learned = sorted(trained.get_vocab().items(), key=lambda kv: kv[1])
    merges = json.loads(trained.to_str())["model"]["merges"]
    reserved = layout.tokens
    free = (i for i in range(layout.size) if i not in reserved)
    vocab = {content: i for i, (content, _) in reserved.items()}
    for token, _ in learned:
        if token not in vocab:
            vocab[token] = next(free)
    for i in free:  # ids the real model uses for word pieces this small corpus does not need
        vocab[f"\u0120w{i}"] = i  # decodes as " w<id>": plain words, never markup
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in merges]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_tokens([AddedToken(c, special=s, normalized=False) for _, (c, s) in sorted(reserved.items())])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, **layout.roles, extra_special_tokens=layout.extra or None, padding_side="left",
        model_max_length=131072,
    )
    fast.chat_template = chat_template
    assert len(fast) == layout.size, (len(fast), layout.size)
    return fast


# --- processor and model -------------------------------------------------------------------------------------------

def build_processor(preset: str, tokenizer):
    from transformers import AutoImageProcessor

    spec = REPLICAS[preset]
    facts = preset_config_dir(preset)
    image_processor = AutoImageProcessor.from_pretrained(facts)
    processor_config = facts / "processor_config.json"
    extra = json.loads(processor_config.read_text()) if processor_config.is_file() else {}
    extra.pop("processor_class", None)
    if spec.family == "gemma3":
        from transformers import Gemma3Processor

        return Gemma3Processor(image_processor=image_processor, tokenizer=tokenizer, chat_template=spec.chat_template,
                               **extra)
    if spec.family == "idefics3":
        from transformers import Idefics3Processor

        return Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer,
                                 chat_template=spec.chat_template, **extra)
    from medvlm.models.hf.processor import image_only_processor
    from transformers import Qwen2_5_VLProcessor

    return image_only_processor(Qwen2_5_VLProcessor)(image_processor=image_processor, tokenizer=tokenizer,
                                                     chat_template=spec.chat_template)


def build_replica(preset: str, target: Path, *, seed: int = 0) -> Path:
    """Write a random-weight replica of `preset` into `target` (an ordinary HF model directory)."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText, GenerationConfig

    spec = REPLICAS[preset]
    target = Path(target)
    if (target / "replica.json").is_file():
        return target
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    reduced = reduced_config(preset)
    config = AutoConfig.for_model(reduced.pop("model_type"), **reduced)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config).eval()
    model.generation_config = GenerationConfig.from_pretrained(preset_config_dir(preset))
    tokenizer = build_tokenizer(spec.layout, spec.chat_template)
    build_processor(preset, tokenizer)  # the processor must accept this tokenizer and template
    model.save_pretrained(tmp, safe_serialization=True)
    # The files a published model folder has: its processor configs as published, the tokenizer and its chat template.
    tokenizer.save_pretrained(tmp)
    for name in ("preprocessor_config.json", "processor_config.json"):
        if (preset_config_dir(preset) / name).is_file():
            shutil.copyfile(preset_config_dir(preset) / name, tmp / name)
    (tmp / "replica.json").write_text(json.dumps({"preset": preset, "random_weights": True}))
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target
