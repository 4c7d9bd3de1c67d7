"""The endpoint backend: each study is one chat-completions request to an OpenAI-compatible server.

The images go as PNG `data:` URIs of exactly the bytes the report saves as image-N.png (they travel
back in ModelOutput.images); up to `concurrency` requests are in flight per batch; a study whose
requests keep failing comes back as an EndpointError in place of its ModelOutput (an error row).
"""

from __future__ import annotations

import base64
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from ...errors import first_line
from ...records import ModelOutput, Prompt, Study
from ..base import BackendBase, BatchTiming, ModelInfo
from .client import EndpointClient, EndpointError, Reply, Served
from .options import EndpointOptions

UNKNOWN_REMOTE = "unknown (remote)"
# `owned_by` values of servers known to honour `ignore_eos` in a chat-completions request.
IGNORE_EOS_SERVERS = {"llamacpp": "llama.cpp", "vllm": "vLLM", "sglang": "SGLang", "medvlm": "medvlm serve"}


def endpoint_identity(options: EndpointOptions, served: Served) -> dict:
    """What resume keys on: which server, which served model (as listed), and what it is sent."""
    return {
        "backend": "endpoint",
        "base_url": options.public_url,
        "model": served.model,
        "served": served.entry,
        "image": {"format": "png", "max_side": options.image_max_side},
        "temperature": 0,
        "seed": options.seed,
    }


def model_info(options: EndpointOptions, served: Served) -> ModelInfo:
    """Provenance of a remote model: what the server says, and `unknown (remote)` for what it cannot prove."""
    medvlm_meta = served.entry.get("medvlm") if isinstance(served.entry.get("medvlm"), dict) else {}
    return ModelInfo(
        name=served.model,
        source=options.public_url,
        local_dir=None,
        revision=None,
        random_weights=bool(medvlm_meta.get("random_weights")),
        phantom=bool(medvlm_meta.get("phantom")),
        dtype=UNKNOWN_REMOTE,
        quantization=UNKNOWN_REMOTE,
        device="remote",
        weights_digest=UNKNOWN_REMOTE,
        backend="endpoint",
        identity=endpoint_identity(options, served),
        details={
            "architecture": None,
            "server": served.owned_by,
            "listed": served.listed,
            "listing": served.entry,
            "concurrency": options.concurrency,
            "timeouts_s": {"connect": options.connect_timeout, "read": options.read_timeout},
            "retries": {"max_tries": options.max_tries, "budget_s": options.retry_budget},
            "image_max_side": options.image_max_side,
        },
    )


@dataclass
class PreparedRequest:
    messages: list[dict]
    images: tuple[bytes, ...]


@dataclass
class PreparedBatch:
    requests: list[PreparedRequest]
    preprocess_s: float = 0.0
    generated_tokens: int = 0
    outputs: list = field(default_factory=list)


class EndpointBackend(BackendBase):
    """A model behind an OpenAI-compatible chat-completions API."""

    def __init__(self, options: EndpointOptions, served: Served):
        self.options = options
        self.served = served
        self.info = model_info(options, served)
        self.client = EndpointClient(options)
        self._pool = DaemonPool(options.concurrency)

    def close(self) -> None:
        self.client.close()

    def preprocess(self, batch: list[tuple[Study, Prompt]]) -> PreparedBatch:
        """Encode every image once as PNG (the bytes sent are the bytes saved) and build the messages."""
        from ...report.write import thumbnail_png

        started = time.perf_counter()
        requests = []
        for study, prompt in batch:
            images = tuple(thumbnail_png(img.image, self.options.image_max_side) for img in study.images)
            requests.append(PreparedRequest(chat_messages(prompt, images), images))
        return PreparedBatch(requests, time.perf_counter() - started)

    def generate_prepared(self, prepared: PreparedBatch, *, max_new_tokens: int, ignore_eos: bool = False) -> list:
        """Up to `concurrency` requests in flight; one ModelOutput, or an EndpointError, per study in order."""
        futures = [self._pool.submit(self._ask, r, max_new_tokens, ignore_eos) for r in prepared.requests]
        outputs = [f.result() for f in futures]
        prepared.generated_tokens = sum(o.new_tokens for o in outputs if isinstance(o, ModelOutput))
        return outputs

    def timing(self, prepared: PreparedBatch) -> BatchTiming:
        return BatchTiming(prepared.preprocess_s, None, None, prepared.generated_tokens)

    def _ask(self, request: PreparedRequest, max_new_tokens: int, ignore_eos: bool) -> ModelOutput | EndpointError:
        payload: dict[str, Any] = {
            "model": self.served.model,
            "messages": request.messages,
            "max_tokens": max_new_tokens,
            "temperature": 0,
            "seed": self.options.seed,
            "stream": False,
        }
        if ignore_eos:
            payload["ignore_eos"] = True
        started = time.perf_counter()
        try:
            reply = self.client.request("POST", "chat/completions", json=payload)
        except EndpointError as exc:
            return exc
        except Exception as exc:  # noqa: BLE001 - anything the HTTP stack raises is this study's error
            return EndpointError(f"endpoint: {self.client.clean(first_line(exc))}")
        seconds = time.perf_counter() - started
        if reply.status >= 400:
            return EndpointError(f"endpoint: {self.client.error_text(reply)}")
        try:
            return answer_output(reply, request.images, max_new_tokens, ignore_eos, seconds)
        except EndpointError as exc:
            return EndpointError(self.client.clean(str(exc)))


class DaemonPool:
    """N daemon worker threads: a request still waiting on a slow server never holds up interpreter exit
    (Ctrl-C ends the batch at once; concurrent.futures' pool would join its workers, up to the read timeout)."""

    def __init__(self, size: int):
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        for i in range(size):
            threading.Thread(target=self._work, name=f"medvlm-endpoint-{i}", daemon=True).start()

    def submit(self, fn, *args) -> Future:
        future: Future = Future()
        self._jobs.put((future, fn, args))
        return future

    def _work(self) -> None:
        while True:
            future, fn, args = self._jobs.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
                future.set_exception(exc)


def chat_messages(prompt: Prompt, images: tuple[bytes, ...]) -> list[dict]:
    """The system prompt, then one user turn: the images (PNG data: URIs) followed by the prompt text.

    The same order as the in-process chat template (models/hf/backend.py), so a model served by
    `medvlm serve` sees the same tokens either way.
    """
    content: list[dict] = [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(png).decode("ascii")}}
        for png in images
    ]
    content.append({"type": "text", "text": prompt.text})
    messages: list[dict] = []
    if prompt.system:
        messages.append({"role": "system", "content": prompt.system})
    messages.append({"role": "user", "content": content})
    return messages


def answer_status(text: str, finish_reason: Any) -> str:
    """finish_reason -> how the answer ended: empty content is `empty`, `length` truncated, `stop` complete, else error."""
    if not text:
        return "empty"
    if finish_reason == "length":
        return "truncated"
    if finish_reason == "stop":
        return "complete"
    return "error"


def answer_output(reply: Reply, images: tuple[bytes, ...], max_new_tokens: int, ignore_eos: bool,
                  seconds: float) -> ModelOutput:
    """A ModelOutput from a chat-completions body (EndpointError when the body is not one)."""
    body = reply.body
    choices = body.get("choices") if isinstance(body, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise EndpointError("endpoint: the server's answer is not a chat completion (no choices)")
    choice = choices[0]
    message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    content = message.get("content")
    if isinstance(content, list):  # some servers answer with content parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if content is not None and not isinstance(content, str):
        raise EndpointError("endpoint: the server's answer has no text content")
    text = (content or "").strip()
    finish = choice.get("finish_reason")
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else None
    prompt_tokens = _count(usage, "prompt_tokens")
    new_tokens = _count(usage, "completion_tokens")
    if ignore_eos and finish == "stop" and (new_tokens is None or new_tokens < max_new_tokens):
        raise EndpointError("endpoint: the server stopped at end-of-sequence although ignore_eos was sent")
    status = answer_status(text, finish)
    request = {
        "served_model": body.get("model"),
        "system_fingerprint": body.get("system_fingerprint"),
        "finish_reason": finish,
        "usage": {k: v for k, v in usage.items() if isinstance(v, (int, float))} if usage else None,
        "latency_s": round(reply.latency_s, 4),
        "seconds_with_retries": round(seconds, 4),
        "attempts": reply.attempts,
        "response_id": body.get("id") if isinstance(body.get("id"), str) else None,
    }
    error = None if status != "error" else f"finish_reason {finish!r}"
    return ModelOutput(
        text=text,
        answer_status=status,
        prompt_tokens=prompt_tokens or 0,
        new_tokens=new_tokens or 0,
        seconds=seconds,
        error=error,
        images=images,
        request=request,
    )


def _count(usage: dict | None, key: str) -> int | None:
    value = usage.get(key) if usage else None
    return int(value) if isinstance(value, (int, float)) and value >= 0 else None
