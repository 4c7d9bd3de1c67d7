"""Which generated token ids are markup (never part of the answer text) and which mark a reasoning block."""

from __future__ import annotations

import re

# Delimiters of reasoning blocks some instruction-tuned models emit before the answer. They stay in the
# stored text (the findings extractor recognises the block and grades only the answer after it).
# MedGemma 1.5 writes `<unused94>thought ... <unused95>`; Qwen3/DeepSeek-style models `<think> ... </think>`.
REASONING_MARKERS = frozenset({"<unused94>", "<unused95>", "<think>", "</think>"})

# Added tokens that name no text even when the tokenizer does not flag them special: reserved/unused
# slots, `<|...|>` control tokens (fill-in-the-middle, tool calls, vision), tool-call tags, masks.
_CONTROL = re.compile(r"^(<unused\d+>|<\|[^<>\s]*\|>|</?tool_call>|<mask>|\[multimodal\]|<\|?reserved[^<>\s]*>)$")


def control_token_ids(tokenizer, processor=None) -> set[int]:
    """Ids to drop from generated text: special tokens, image placeholders and control-like added tokens.

    `skip_special_tokens` alone is not enough: in the published Gemma 3 tokenizer `<start_of_image>`,
    `<end_of_image>`, `<mask>` and the `<unusedN>` slots are added tokens *not* flagged special, and in
    Qwen2.5-VL so are `<tool_call>` and the fill-in-the-middle tokens; a model that emits one would put
    it into the report text. Added tokens that are real text (Gemma's newline runs, HTML tags) are kept.
    """
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    markup = {str(v) for k, v in vars(processor).items() if k.endswith("_token") and isinstance(v, str)} if processor else set()
    markup |= {str(getattr(tokenizer, name)) for name in ("boi_token", "eoi_token", "image_token", "video_token")
               if isinstance(getattr(tokenizer, name, None), str)}
    for token_id, token in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        content = getattr(token, "content", str(token))
        if content in REASONING_MARKERS:
            continue
        if getattr(token, "special", False) or content in markup or _CONTROL.match(content):
            ids.add(int(token_id))
    unknown = getattr(tokenizer, "unk_token_id", None)
    for marker in REASONING_MARKERS:  # a tokenizer may flag them special: keep them anyway
        marker_id = tokenizer.convert_tokens_to_ids(marker)
        if marker_id is not None and marker_id != unknown:
            ids.discard(marker_id)
    return ids
