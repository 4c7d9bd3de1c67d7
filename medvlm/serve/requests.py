"""Reading a chat-completions request into what medvlm's backends take, with OpenAI-shaped errors.

Everything a client can get wrong is an ApiError with an HTTP status and one line; nothing here
fetches a URL (images must be `data:` URIs) or trusts a size before checking it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import re
import warnings
from dataclasses import dataclass, field
from typing import Any

from ..records import ImageInput, Prompt, Study, StudyContext, StudyRef

_DATA_URI = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,(?P<data>.*)$",
                       re.DOTALL)


class ApiError(Exception):
    """A request the server refuses: HTTP status, one-line message, OpenAI error type/param/code."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status = status
        self.message = " ".join(message.split())
        self.param = param
        self.code = code
        self.kind = kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class Limits:
    """What one request may ask for."""

    max_body_bytes: int = 32 * 1024 * 1024
    max_images: int = 8
    max_image_pixels: int = 4096 * 4096
    max_tokens: int = 2048  # the largest max_tokens accepted
    default_max_tokens: int = 512


@dataclass
class ChatRequest:
    """A validated request: one study and its prompt, and how to generate."""

    study: Study
    prompt: Prompt
    max_tokens: int
    ignore_eos: bool = False
    stream: bool = False
    include_usage: bool = False
    extras: dict = field(default_factory=dict)

    @property
    def batch_key(self) -> tuple:
        """Requests with equal keys can share one generate() call (text-only requests batch apart)."""
        return (self.max_tokens, self.ignore_eos, bool(self.study.images))


def parse_chat_request(body: Any, served_model: str, limits: Limits) -> ChatRequest:
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "'model' is required (a string)", param="model")
    if model != served_model:
        raise ApiError(404, f"The model '{model}' does not exist; this server serves '{served_model}'",
                       param="model", code="model_not_found")
    n = body.get("n", 1)
    if n is not None and (not _is_int(n) or n != 1):
        raise ApiError(400, "only n=1 is supported", param="n")
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise ApiError(400, "'stream' must be true or false", param="stream")
    ignore_eos = body.get("ignore_eos", False)
    if ignore_eos is not None and not isinstance(ignore_eos, bool):
        raise ApiError(400, "'ignore_eos' must be true or false", param="ignore_eos")
    max_tokens = _max_tokens(body, limits)
    temperature = body.get("temperature")
    if temperature is not None and (not _is_number(temperature) or not 0 <= temperature <= 2):
        raise ApiError(400, "'temperature' must be a number between 0 and 2", param="temperature")
    options = body.get("stream_options")
    include_usage = bool(isinstance(options, dict) and options.get("include_usage") is True)
    system, text, images = _messages(body.get("messages"), limits)
    study = Study(
        ref=StudyRef(key="request", source="request", files=()),
        images=tuple(images),
        context=StudyContext(),
    )
    prompt = Prompt(modality="request", template_id="request", template_hash="0" * 64, system=system, text=text)
    return ChatRequest(study, prompt, max_tokens, bool(ignore_eos), bool(stream), include_usage,
                       {"temperature": temperature})


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def _max_tokens(body: dict, limits: Limits) -> int:
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if not _is_int(value) or not 1 <= value <= limits.max_tokens:
            raise ApiError(400, f"'{name}' must be an integer from 1 to {limits.max_tokens} (got {value!r})"[:200],
                           param=name)
        return value
    return min(limits.default_max_tokens, limits.max_tokens)


def _messages(messages: Any, limits: Limits) -> tuple[str, str, list[ImageInput]]:
    """(system text, user text, images) from a single-turn conversation."""
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list", param="messages")
    systems: list[str] = []
    user_turns = 0
    texts: list[str] = []
    images: list[ImageInput] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ApiError(400, f"messages[{i}] must be an object", param=f"messages[{i}]")
        role = message.get("role")
        content = message.get("content")
        if role in ("system", "developer"):
            if user_turns:
                raise ApiError(400, "system messages must come before the user message", param=f"messages[{i}]")
            systems.append(_text_only(content, i))
        elif role == "user":
            user_turns += 1
            if user_turns > 1:
                raise ApiError(400, "medvlm serve answers one user message (no multi-turn conversations)",
                               param=f"messages[{i}]")
            _user_content(content, i, texts, images, limits)
        elif role in ("assistant", "tool", "function"):
            raise ApiError(400, "medvlm serve answers one user message (no assistant or tool turns)",
                           param=f"messages[{i}]")
        else:
            raise ApiError(400, f"messages[{i}] has an unknown role {str(role)[:40]!r}", param=f"messages[{i}].role")
    if not user_turns:
        raise ApiError(400, "the conversation has no user message", param="messages")
    return "\n\n".join(systems), "\n\n".join(texts), images


def _text_only(content: Any, i: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ApiError(400, f"messages[{i}] (system) may only hold text", param=f"messages[{i}].content")
            parts.append(part["text"])
        return "\n\n".join(parts)
    raise ApiError(400, f"messages[{i}].content must be a string or a list of parts", param=f"messages[{i}].content")


def _user_content(content: Any, i: int, texts: list[str], images: list[ImageInput], limits: Limits) -> None:
    if isinstance(content, str):
        texts.append(content)
        return
    if not isinstance(content, list):
        raise ApiError(400, f"messages[{i}].content must be a string or a list of parts", param=f"messages[{i}].content")
    for j, part in enumerate(content):
        where = f"messages[{i}].content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url":
            ref = part.get("image_url")
            url = ref.get("url") if isinstance(ref, dict) else ref
            if not isinstance(url, str):
                raise ApiError(400, f"{where}: image_url needs a url", param=where)
            if len(images) >= limits.max_images:
                raise ApiError(400, f"too many images: more than {limits.max_images} in one request", param=where)
            images.append(decode_image(url, len(images) + 1, limits, where))
        else:
            raise ApiError(400, f"{where}: unsupported content part (expected text or image_url)", param=where)


def decode_image(url: str, number: int, limits: Limits, where: str) -> ImageInput:
    """A data: URI -> an RGB ImageInput; remote URLs are refused (the server fetches nothing)."""
    from PIL import Image, UnidentifiedImageError

    if not url.startswith("data:"):
        raise ApiError(400, f"image {number}: only data: URIs are accepted (this server fetches no URL)", param=where)
    match = _DATA_URI.match(url)
    if not match or not match.group("b64"):
        raise ApiError(400, f"image {number}: not a base64 data: URI", param=where)
    try:
        raw = base64.b64decode(match.group("data"), validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"image {number}: bad base64 data", param=where) from None
    if not raw:
        raise ApiError(400, f"image {number}: empty image data", param=where)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            probe = Image.open(io.BytesIO(raw))
            width, height = probe.size
            if width * height > limits.max_image_pixels:
                raise ApiError(400, f"image {number}: {width}x{height} pixels exceeds the limit of "
                                    f"{limits.max_image_pixels} pixels", param=where)
            probe.load()
    except ApiError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ApiError(400, f"image {number}: not an image medvlm can read (PNG, JPEG, ...) or too large",
                       param=where) from None
    except (OSError, ValueError, SyntaxError):
        raise ApiError(400, f"image {number}: truncated or corrupt image data", param=where) from None
    fmt = probe.format or "image"
    rgb = probe.convert("RGB")
    return ImageInput(
        source=f"request image {number}",
        sha256=hashlib.sha256(raw).hexdigest(),
        image=rgb,
        kind="raster",
        original_shape=(height, width),
        photometric=f"{fmt} {probe.mode}",
    )
