"""The HTTP side of `medvlm serve`: an OpenAI-compatible API over one loaded backend (FastAPI).

(No `from __future__ import annotations` here: FastAPI reads the handlers' annotations at runtime.)

GET /health, GET /v1/models, GET /v1/models/{id}, POST /v1/chat/completions (JSON or SSE). Every
error a client can see is OpenAI-shaped JSON with one line; no traceback ever leaves the server.
"""

import asyncio
import hashlib
import hmac
import json
import logging
import time
import uuid
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..errors import first_line
from ..models.base import Backend
from ..records import ModelOutput
from .batcher import Batcher, ShuttingDown
from .requests import ApiError, ChatRequest, Limits, parse_chat_request

log = logging.getLogger("medvlm.serve")


@dataclass
class ServeState:
    """What the handlers share."""

    backend: Backend
    model_name: str
    batcher: Batcher
    limits: Limits
    api_key: str | None
    created: int
    draining: bool = False

    @property
    def system_fingerprint(self) -> str:
        """medvlm's version plus a digest of the served model's identity (weights digest included)."""
        info = self.backend.info
        doc = json.dumps({"identity": self.backend.identity, "weights": info.weights_digest}, sort_keys=True, default=str)
        return f"medvlm-{__version__}-{hashlib.sha256(doc.encode()).hexdigest()[:12]}"

    def model_entry(self) -> dict:
        info = self.backend.info
        return {
            "id": self.model_name,
            "object": "model",
            "created": self.created,
            "owned_by": "medvlm",
            # What a medvlm client records as served-model facts (and resumes on): stable across restarts.
            "medvlm": {
                "random_weights": info.random_weights,
                "phantom": info.phantom,
                "weights_digest": info.weights_digest,
                "identity": self.backend.identity,
            },
        }


def finish_reason(output: ModelOutput, max_tokens: int) -> str:
    """complete -> stop, truncated -> length; an empty answer says whether the token budget ran out."""
    if output.answer_status == "truncated":
        return "length"
    if output.answer_status == "empty" and output.new_tokens >= max_tokens:
        return "length"
    return "stop"


def create_app(state: ServeState) -> FastAPI:
    """The app over one loaded backend (imported only by `medvlm serve`: fastapi is an optional extra)."""
    app = FastAPI(title="medvlm serve", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.medvlm = state

    def error_response(exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc: StarletteHTTPException):
        message = {404: "no such endpoint", 405: "method not allowed"}.get(exc.status_code, str(exc.detail))
        return error_response(ApiError(exc.status_code, f"{message}: {request.method} {request.url.path}"[:200]))

    @app.exception_handler(Exception)
    async def _internal(request, exc: Exception):
        log.error("internal error on %s: %s", request.url.path, first_line(exc))
        return error_response(ApiError(500, "internal server error", kind="server_error"))

    def authorize(request: Request) -> None:
        if state.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), state.api_key.encode()):
            raise ApiError(401, "missing or wrong API key (Authorization: Bearer KEY)", code="invalid_api_key")

    @app.get("/health")
    async def health():
        stats = state.batcher.stats
        doc = {"status": "ok", "model": state.model_name, "requests": stats.requests, "batches": stats.batches,
               "largest_batch": stats.largest}
        if state.draining:
            return JSONResponse({**doc, "status": "shutting down"}, status_code=503)
        return doc

    @app.get("/v1/models")
    async def list_models(request: Request):
        authorize(request)
        return {"object": "list", "data": [state.model_entry()]}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str, request: Request):
        authorize(request)
        if model_id != state.model_name:
            raise ApiError(404, f"The model '{model_id[:100]}' does not exist", param="model", code="model_not_found")
        return state.model_entry()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        authorize(request)
        if state.draining:
            raise ApiError(503, "the server is shutting down", kind="server_error")
        with state.batcher.arriving():  # a batch being formed waits for requests still being read
            body = await read_json(request, state.limits.max_body_bytes)
            # decoding images off the event loop, so requests sent together are read side by side
            chat = await asyncio.to_thread(parse_chat_request, body, state.model_name, state.limits)
            started = time.perf_counter()
            future = state.batcher.submit(chat)
        try:
            output = await asyncio.wrap_future(future)
        except ShuttingDown:
            raise ApiError(503, "the server is shutting down", kind="server_error") from None
        except ApiError:
            raise
        except Exception as exc:  # noqa: BLE001 - the model failed on this request: one line, no traceback
            log.error("model error: %s", first_line(exc))
            raise ApiError(500, f"model error: {first_line(exc)}"[:300], kind="server_error") from None
        elapsed = time.perf_counter() - started
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        reason = finish_reason(output, chat.max_tokens)
        usage = {"prompt_tokens": output.prompt_tokens, "completion_tokens": output.new_tokens,
                 "total_tokens": output.prompt_tokens + output.new_tokens}
        if chat.stream:
            return StreamingResponse(sse_chunks(state, chat, output, completion_id, reason, usage),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        return {
            "id": completion_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": state.model_name,
            "system_fingerprint": state.system_fingerprint,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": output.text},
                         "finish_reason": reason, "logprobs": None}],
            "usage": usage,
            "medvlm": {"answer_status": output.answer_status, "seconds": round(elapsed, 4)},
        }

    return app


async def read_json(request, limit: int):
    """The request body as JSON, refusing more than `limit` bytes before reading them all."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise ApiError(413, f"request body of {int(declared)} bytes exceeds the limit of {limit} bytes")
        except ValueError:
            raise ApiError(400, "bad Content-Length header") from None
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "the request body is not valid JSON") from None


async def sse_chunks(state: ServeState, chat: ChatRequest, output: ModelOutput, completion_id: str, reason: str,
                     usage: dict):
    """Server-sent events in OpenAI's chunk format (the answer arrives as one content delta after generation)."""
    created = int(time.time())

    def chunk(delta: dict, finish: str | None, **extra) -> str:
        doc = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": state.model_name,
               "system_fingerprint": state.system_fingerprint,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}], **extra}
        return f"data: {json.dumps(doc)}\n\n"

    yield chunk({"role": "assistant", "content": ""}, None)
    if output.text:
        yield chunk({"content": output.text}, None)
    yield chunk({}, reason)
    if chat.include_usage:
        doc = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": state.model_name,
               "system_fingerprint": state.system_fingerprint, "choices": [], "usage": usage}
        yield f"data: {json.dumps(doc)}\n\n"
    yield "data: [DONE]\n\n"
