"""The endpoint backend against a scripted OpenAI-compatible server on 127.0.0.1 (a real HTTP server whose
answers each test chooses: 429 with Retry-After, 503, odd finish reasons, a server that echoes secrets).
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from medvlm.config import RunConfig
from medvlm.errors import ModelUnavailable, UsageProblem
from medvlm.models.endpoint import KIND
from medvlm.models.endpoint.client import EndpointError, backoff_seconds, retry_after_seconds
from medvlm.pipeline import run_batch
from medvlm.redact import redact_url

from audit_support import read_summary
from conftest import SAMPLE_STUDIES
from serve_support import files_containing

NORMAL_TEXT = "The lungs are clear. No pleural effusion or pneumothorax. Heart size is normal. No acute cardiopulmonary abnormality."


class Script:
    """What the scripted server answers: a list per path, the last entry repeating; every request recorded."""

    def __init__(self, models=("m1",), owned_by="vllm"):
        self.models = [{"id": m, "object": "model", "created": int(time.time()), "owned_by": owned_by} for m in models]
        self.chat: list = [answer(NORMAL_TEXT, "stop")]
        self.models_status = 200
        self.requests: list[dict] = []
        self.lock = threading.Lock()

    def next_chat(self):
        with self.lock:
            return self.chat.pop(0) if len(self.chat) > 1 else self.chat[0]


def answer(text, finish, model="m1", usage=(300, 12)):
    return (200, {}, {"id": "chatcmpl-1", "object": "chat.completion", "model": model, "system_fingerprint": "fp_test",
                      "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
                      "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)}})


@pytest.fixture
def scripted():
    script = Script()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _send(self, status, headers, body):
            data = json.dumps(body).encode() if not isinstance(body, bytes) else body
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            script.requests.append({"path": self.path, "headers": dict(self.headers)})
            if self.path == "/v1/models":
                if script.models_status != 200:
                    return self._send(script.models_status, {}, {"error": {"message": "nope"}})
                return self._send(200, {}, {"object": "list", "data": script.models})
            self._send(404, {}, {"error": {"message": "not found"}})

        def do_POST(self):
            length = int(self.headers.get("Content-Length", 0))
            body = json.loads(self.rfile.read(length))
            script.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
            status, headers, doc = script.next_chat()
            if callable(doc):
                doc = doc(self.headers)
            self._send(status, headers, doc)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    script.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        yield script
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(autouse=True)
def no_key(monkeypatch):
    monkeypatch.delenv("MEDVLM_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


def one_study():
    from medvlm import ingest
    from medvlm.records import Prompt

    ref = next(r for r in ingest.discover(SAMPLE_STUDIES, b"k" * 32, "chest_xray") if r.source.startswith("study_001_pa"))
    study = ingest.load_study(ref, "chest_xray", max_images=2, root=SAMPLE_STUDIES)
    return study, Prompt("chest_xray", "t", "0" * 64, "You are a radiologist.", "Describe the image.")


def backend_for(script, **options):
    return KIND.load(_request(script.url, options))


def _request(url, options, model="m1"):
    from medvlm.models.base import LoadRequest

    return LoadRequest(model, KIND.check_options({"url": url, **options}))


def ask(backend, n=1, **kw):
    pair = one_study()
    prepared = backend.preprocess([pair] * n)
    return backend.generate_prepared(prepared, max_new_tokens=kw.get("max_new_tokens", 12), ignore_eos=kw.get("ignore_eos", False))


def test_retry_after_and_backoff_are_bounded():
    assert retry_after_seconds("3") == 3.0 and retry_after_seconds(" 0 ") == 0.0
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    now = time.time()
    assert 9 <= retry_after_seconds(formatdate(now + 10, usegmt=True), now=now) <= 11
    assert retry_after_seconds(formatdate(now - 100, usegmt=True), now=now) == 0.0
    for attempt in range(1, 40):
        pause = backoff_seconds(attempt)
        step = min(30.0, 0.5 * 2 ** (attempt - 1))
        assert step / 2 <= pause <= step  # exponential, jittered, capped at 30 s


def test_429_with_retry_after_is_waited_out_then_answered(scripted):
    scripted.chat = [(429, {"Retry-After": "1"}, {"error": {"message": "slow down"}}), answer(NORMAL_TEXT, "stop")]
    started = time.monotonic()
    [output] = ask(backend_for(scripted))
    assert time.monotonic() - started >= 1.0
    assert output.answer_status == "complete" and output.request["attempts"] == 2
    body = scripted.requests[-1]["body"]
    assert body["temperature"] == 0 and body["seed"] == 0 and body["max_tokens"] == 12 and body["model"] == "m1"
    assert body["messages"][0] == {"role": "system", "content": "You are a radiologist."}
    parts = body["messages"][1]["content"]
    assert parts[0]["type"] == "image_url" and parts[0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert parts[-1] == {"type": "text", "text": "Describe the image."}
    assert "ignore_eos" not in body


def test_5xx_until_the_tries_run_out_is_that_study_s_one_line_error(scripted):
    scripted.chat = [(503, {}, {"error": {"message": "model overloaded\nsecond line"}})]
    [output] = ask(backend_for(scripted, max_tries=3))
    assert isinstance(output, EndpointError)
    assert str(output) == "endpoint: HTTP 503: model overloaded after 3 tries"  # its first line
    assert sum(1 for r in scripted.requests if r["path"] == "/v1/chat/completions") == 3


def test_retry_after_beyond_the_budget_gives_up_at_once(scripted):
    scripted.chat = [(429, {"Retry-After": "120"}, {"error": {"message": "quota"}})]
    started = time.monotonic()
    [output] = ask(backend_for(scripted, retry_budget=5))
    assert time.monotonic() - started < 3
    assert "Retry-After 120 s exceeds the retry budget of 5 s" in str(output) and "after 1 try" in str(output)


def test_a_4xx_is_not_retried(scripted):
    scripted.chat = [(400, {}, {"error": {"message": "image too large for context"}})]
    [output] = ask(backend_for(scripted))
    assert str(output) == "endpoint: HTTP 400: image too large for context"
    assert sum(1 for r in scripted.requests if r["path"] == "/v1/chat/completions") == 1


def test_concurrency_puts_several_requests_in_flight(scripted):
    in_flight = {"now": 0, "most": 0}
    lock = threading.Lock()

    def slow(headers):
        with lock:
            in_flight["now"] += 1
            in_flight["most"] = max(in_flight["most"], in_flight["now"])
        time.sleep(0.5)
        with lock:
            in_flight["now"] -= 1
        return answer(NORMAL_TEXT, "stop")[2]

    scripted.chat = [(200, {}, slow)]
    outputs = ask(backend_for(scripted, concurrency=4), n=4)
    assert all(o.answer_status == "complete" for o in outputs)
    assert in_flight["most"] == 4


@pytest.mark.parametrize("text, finish, status, level", [
    (NORMAL_TEXT, "stop", "complete", "normal"),
    (NORMAL_TEXT, "length", "truncated", "indeterminate"),
    ("", "stop", "empty", "indeterminate"),
    (NORMAL_TEXT, "content_filter", "error", "indeterminate"),
    (NORMAL_TEXT, None, "error", "indeterminate"),
])
def test_finish_reason_sets_the_answer_status_and_a_bad_answer_is_never_normal(scripted, tmp_path, text, finish, status, level):
    scripted.chat = [answer(text, finish)]
    out = tmp_path / "run"
    run_batch(RunConfig(studies=SAMPLE_STUDIES / "study_001_pa", out=out, model="m1", backend="endpoint",
                        backend_options={"url": scripted.url}, write_pdf=False))
    [row] = read_summary(out)
    assert (row["status"], row["answer_status"], row["risk_level"]) == ("ok", status, level)
    doc = json.loads((out / row["report"]).read_text())
    assert doc["provenance"]["request"]["finish_reason"] == finish
    assert doc["provenance"]["request"]["system_fingerprint"] == "fp_test"
    assert doc["provenance"]["model"]["identity"]["served"] == {"id": "m1", "owned_by": "vllm"}


def test_the_only_served_model_is_used_and_several_need_a_name(scripted):
    assert KIND.identity("", {"url": scripted.url})["model"] == "m1"
    scripted.models = scripted.models + [{"id": "m2", "owned_by": "vllm"}]
    with pytest.raises(ModelUnavailable, match=r"serves 2 models \(m1, m2\); choose one with --model"):
        KIND.identity("", {"url": scripted.url})
    assert KIND.identity("m2", {"url": scripted.url})["model"] == "m2"
    scripted.models_status = 404  # no listing: a named model is used as given
    identity = KIND.identity("llava", {"url": scripted.url})
    assert identity["model"] == "llava" and identity["served"] == {"id": "llava"}


def test_ignore_eos_is_sent_to_known_servers_and_refused_for_others(scripted):
    scripted.chat = [answer(NORMAL_TEXT, "length", usage=(300, 12))]
    [output] = ask(backend_for(scripted, ignore_eos=True), ignore_eos=True)
    assert scripted.requests[-1]["body"]["ignore_eos"] is True and output.answer_status == "truncated"
    scripted.chat = [answer(NORMAL_TEXT, "stop", usage=(300, 5))]
    [output] = ask(backend_for(scripted, ignore_eos=True), ignore_eos=True)
    assert str(output) == "endpoint: the server stopped at end-of-sequence although ignore_eos was sent"
    scripted.models[0]["owned_by"] = "library"  # Ollama
    with pytest.raises(ModelUnavailable, match="--ignore-eos cannot be honoured by a server whose models are owned_by 'library'"):
        KIND.identity("m1", {"url": scripted.url, "ignore_eos": True})


def test_a_different_served_model_redoes_the_studies_with_one_warning(scripted, tmp_path, caplog):
    out = tmp_path / "run"
    config = RunConfig(studies=SAMPLE_STUDIES / "study_001_pa", out=out, model="m1", backend="endpoint",
                       backend_options={"url": scripted.url}, write_pdf=False)
    run_batch(config)
    run_batch(config)
    assert sum(1 for r in scripted.requests if r["path"] == "/v1/chat/completions") == 1  # resumed
    scripted.models[0]["meta"] = {"n_params": 4_000_000_000, "size": 2_500_000_000}  # another GGUF behind the same id
    with caplog.at_level(logging.WARNING, logger="medvlm.audit"):
        run_batch(config)
    assert sum(1 for r in scripted.requests if r["path"] == "/v1/chat/completions") == 2
    assert "redoing studies done earlier because model changed" in caplog.text


def test_api_key_goes_as_bearer_and_is_written_nowhere(scripted, tmp_path, monkeypatch):
    key = "sk-secret-0123456789abcdef"
    monkeypatch.setenv("MEDVLM_API_KEY", key)
    # A careless server that echoes the Authorization header into its error message.
    scripted.chat = [(500, {}, lambda headers: {"error": {"message": f"upstream failed for {headers.get('Authorization')}"}})]
    out = tmp_path / "run"
    result = run_batch(RunConfig(studies=SAMPLE_STUDIES, out=out, model="m1", backend="endpoint",
                                 backend_options={"url": scripted.url, "max_tries": 2, "retry_budget": 1},
                                 write_pdf=False))
    assert result.failed == 6
    assert all(r["headers"].get("Authorization") == f"Bearer {key}" for r in scripted.requests)
    reasons = {r["reason"] for r in read_summary(out)}
    assert reasons == {"endpoint: HTTP 500: upstream failed for Bearer *** after 2 tries"}
    assert files_containing(out, key) == []


def test_url_credentials_are_sent_as_basic_auth_and_redacted_everywhere(scripted, tmp_path):
    url = scripted.url.replace("http://", "http://reader:pa55word-xyz@")
    scripted.chat = [answer(NORMAL_TEXT, "stop")]
    out = tmp_path / "run"
    run_batch(RunConfig(studies=SAMPLE_STUDIES / "study_001_pa", out=out, model="m1", backend="endpoint",
                        backend_options={"url": url}, write_pdf=True))
    expected = "Basic " + base64.b64encode(b"reader:pa55word-xyz").decode()
    assert {r["headers"].get("Authorization") for r in scripted.requests} == {expected}
    [row] = read_summary(out)
    assert row["status"] == "ok"
    doc = json.loads((out / row["report"]).read_text())
    assert doc["provenance"]["model"]["source"] == redact_url(url) == scripted.url.replace("http://", "http://***@")
    for secret in ("pa55word-xyz", expected.split()[1]):
        assert files_containing(out, secret) == []
    from pypdf import PdfReader

    text = "".join(page.extract_text() for page in PdfReader(out / row["report"].replace(".json", ".pdf")).pages)
    assert "pa55word" not in text and "***@" in text.replace("\n", "")


def test_key_and_url_credentials_together_are_refused(scripted, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-other-123456")
    with pytest.raises(UsageProblem, match="use one"):
        KIND.identity("m1", {"url": scripted.url.replace("http://", "http://u:p@")})


def test_unusable_options_are_one_line_usage_errors():
    for options, words in [({"url": "ftp://x"}, "http(s) URL"), ({"url": "http://h/v1", "concurrency": 0}, "concurrency"),
                           ({"url": "http://h/v1", "colour": 1}, "no option 'colour'"),
                           ({"url": "http://h:99999/v1"}, "not a valid URL"), ({}, "needs a URL")]:
        with pytest.raises(ModelUnavailable, match=words.replace("(", r"\(").replace(")", r"\)")):
            KIND.check_options(options)
    assert KIND.check_options({"url": "http://h:8080"})["url"] == "http://h:8080/v1"
