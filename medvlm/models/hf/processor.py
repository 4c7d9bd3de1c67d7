"""Loading a model directory's processor, including image-only use of processors whose video half needs torchvision."""

from __future__ import annotations

from pathlib import Path


def image_only_processor(processor_class):
    """A subclass of a multimodal processor that takes no video processor (transformers' video processors need torchvision).

    Qwen2.5-VL's processor builds a video processor on load, which imports torchvision; medvlm sends
    images only, so the same processor without its video half does the same work.
    """
    from transformers.processing_utils import ProcessorMixin

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        # The attributes the class's own __init__ derives from the tokenizer (token strings and ids).
        self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
        self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    # Same class name, so a saved copy names the real processor class.
    return type(processor_class.__name__, (processor_class,), {"__init__": __init__, "__module__": __name__})


def _needs_torchvision(exc: BaseException) -> bool:
    return "torchvision" in str(exc).lower()


def load_processor(local_dir: Path):
    """AutoProcessor for `local_dir`; an image-only processor when only its video processor cannot load."""
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

    try:
        return AutoProcessor.from_pretrained(local_dir)
    except (ImportError, OSError) as exc:
        # Without torchvision a video processor cannot be built (ImportError), and a folder with no video
        # processor config of its own cannot load one either (OSError); the image half may still work.
        if isinstance(exc, ImportError) and not _needs_torchvision(exc):
            raise
        if isinstance(exc, OSError) and "video" not in str(exc).lower():
            raise
        failure = exc
    import transformers

    processor_dict, _ = transformers.ProcessorMixin.get_processor_dict(local_dir)
    class_name = processor_dict.get("processor_class") or _processor_class_from_files(local_dir)
    processor_class = getattr(transformers, class_name or "", None)
    if processor_class is None or "video_processor" not in processor_class.get_attributes():
        raise failure
    try:
        return image_only_processor(processor_class)(
            image_processor=AutoImageProcessor.from_pretrained(local_dir),
            tokenizer=AutoTokenizer.from_pretrained(local_dir),
            chat_template=processor_dict.get("chat_template"),
        )
    except (ImportError, OSError, ValueError, TypeError):
        raise failure from None


def _processor_class_from_files(local_dir: Path) -> str | None:
    import json

    for name in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        path = Path(local_dir) / name
        if path.is_file():
            try:
                value = json.loads(path.read_text()).get("processor_class")
            except (OSError, ValueError, AttributeError):
                continue
            if value:
                return value
    return None


# Qwen2-VL-style processors size the image grid by a pixel budget. The published Qwen2.5-VL budget
# (12,845,056 px) turns one 2048-px radiograph into ~5,300 visual tokens (two views: ~10,700), which
# costs minutes per study on a CPU or a Jetson and gigabytes of activations. medvlm caps the budget at
# 1,280 merged 28x28 patches (1,003,520 px, ~1000x1000), the upper end of the range Qwen documents for
# trading detail against cost; the cap is recorded in each report's provenance.
QWEN_MAX_PIXELS = 1280 * 28 * 28


def cap_visual_tokens(processor) -> dict | None:
    """Apply medvlm's visual-token budget to a pixel-budget image processor; returns what was changed."""
    image_processor = getattr(processor, "image_processor", None)
    if image_processor is None or not type(image_processor).__name__.startswith("Qwen2VLImageProcessor"):
        return None
    import dataclasses

    size = getattr(image_processor, "size", None)
    if isinstance(size, dict):
        longest, capped = size.get("longest_edge"), {**size, "longest_edge": QWEN_MAX_PIXELS}
    elif dataclasses.is_dataclass(size):
        longest, capped = getattr(size, "longest_edge", None), dataclasses.replace(size, longest_edge=QWEN_MAX_PIXELS)
    else:
        return None
    if longest is None or longest <= QWEN_MAX_PIXELS:
        return None
    image_processor.size = capped
    if hasattr(image_processor, "max_pixels"):  # older transformers keep the budget in its own attribute too
        image_processor.max_pixels = QWEN_MAX_PIXELS
    return {"max_pixels": {"published": int(longest), "used": QWEN_MAX_PIXELS}}
