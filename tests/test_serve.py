"""`medvlm serve` as a real server on 127.0.0.1, and `medvlm batch --endpoint` against it.

One server (demo model, batch size 1, an API key) is shared by the module; tests that stop or kill a
server start their own. Every server is stopped by the test that started it.
"""

from __future__ import annotations

import base64
import io
import json
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from medvlm.config import RunConfig
from medvlm.pipeline import run_batch

from audit_support import medvlm_cmd, read_summary, run_medvlm
from conftest import SAMPLE_STUDIES
from serve_support import files_containing, server_env, serving

API_KEY = "sk-medvlm-test-4f1e9a7c2b"
TOKENS = 24


def png_uri(size=(64, 64), color=(120, 60, 30)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def chat(content, **extra) -> dict:
    return {"model": "demo", "max_tokens": 4, "messages": [{"role": "user", "content": content}], **extra}


@pytest.fixture(scope="module")
def server(demo_model_dir):
    with serving("--model", "demo", "--port", "0", "--batch-size", "1", env=server_env(API_KEY)) as proc:
        yield proc
        assert proc.stop() == 0
        assert "stopped after" in proc.output()
        assert "Traceback" not in proc.output()


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url + "/", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120) as c:
        yield c


@pytest.fixture
def keyed_env(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("MEDVLM_API_KEY", API_KEY)


def reports_by_source(out: Path) -> dict[str, dict]:
    docs = {}
    for row in read_summary(out):
        if row["status"] == "ok":
            docs[row["source"]] = json.loads((out / row["report"]).read_text())
    return docs


def test_endpoint_gives_the_in_process_text_findings_and_grades(server, demo_backend, tmp_path, keyed_env):
    local = tmp_path / "local"
    run_batch(RunConfig(studies=SAMPLE_STUDIES, out=local, model="demo", write_pdf=False, batch_size=1,
                        max_new_tokens=TOKENS), backend=demo_backend)
    remote = tmp_path / "remote"
    result = run_batch(RunConfig(studies=SAMPLE_STUDIES, out=remote, model="demo", backend="endpoint",
                                 backend_options={"url": server.url, "concurrency": 1}, batch_size=1,
                                 max_new_tokens=TOKENS, write_pdf=False))
    assert result.failed == 0
    a, b = reports_by_source(local), reports_by_source(remote)
    assert set(a) == set(b) and len(a) == 6
    for source in a:
        assert b[source]["model_output"]["text"] == a[source]["model_output"]["text"], source
        assert b[source]["model_output"]["answer_status"] == a[source]["model_output"]["answer_status"]
        assert b[source]["model_output"]["prompt_tokens"] == a[source]["model_output"]["prompt_tokens"]
        assert [(f["code"], f["status"]) for f in b[source]["findings"]] == [(f["code"], f["status"]) for f in a[source]["findings"]]
        assert b[source]["risk"]["level"] == a[source]["risk"]["level"]
    doc = b["study_002_pa_lateral"]
    prov = doc["provenance"]
    assert prov["model"]["backend"] == "endpoint"
    assert prov["model"]["weights_digest"] == "unknown (remote)"
    assert prov["model"]["identity"]["base_url"] == server.url and prov["model"]["identity"]["model"] == "demo"
    assert prov["model"]["random_weights"] is True and doc["demo_notice"]  # the server says it is the demo model
    assert prov["request"]["served_model"] == "demo"
    assert prov["request"]["system_fingerprint"].startswith("medvlm-")
    assert prov["request"]["usage"]["completion_tokens"] == doc["model_output"]["new_tokens"]
    assert prov["request"]["latency_s"] > 0 and prov["request"]["attempts"] == 1
    # The PNG bytes sent are the image-N.png files the report links (two images for the PA + lateral study).
    study_dir = remote / read_summary(remote)[[r["source"] for r in read_summary(remote)].index("study_002_pa_lateral")]["study_key"]
    assert [i["thumbnail"] for i in doc["images"]] == ["image-1.png", "image-2.png"]
    assert all((study_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for name in ("image-1.png", "image-2.png"))
    assert files_containing(remote, API_KEY) == []


def test_image_bytes_sent_are_the_saved_image_files(server, tmp_path, keyed_env):
    """The server side's sha256 of what it received equals the saved image-N.png hash (via the ledger)."""
    from medvlm.models.endpoint import KIND
    from medvlm.models.base import LoadRequest
    from medvlm import ingest
    from medvlm.stages import study_images

    backend = KIND.load(LoadRequest("demo", KIND.check_options({"url": server.url, "image_max_side": 128})))
    key = b"k" * 32
    ref = next(r for r in ingest.discover(SAMPLE_STUDIES, key, "chest_xray") if r.source == "study_002_pa_lateral")
    study = ingest.load_study(ref, "chest_xray", max_images=2, root=SAMPLE_STUDIES)
    from medvlm.records import Prompt

    prepared = backend.preprocess([(study, Prompt("chest_xray", "t", "0" * 64, "You are a radiologist.", "Describe."))])
    sent = prepared.requests[0].messages[-1]["content"]
    uris = [p["image_url"]["url"] for p in sent if p["type"] == "image_url"]
    [output] = backend.generate_prepared(prepared, max_new_tokens=4)
    saved = study_images(study, output)
    assert [base64.b64decode(u.split(",", 1)[1]) for u in uris] == [saved["image-1.png"], saved["image-2.png"]]
    assert max(Image.open(io.BytesIO(saved["image-1.png"])).size) == 128  # the option decides what is sent and saved
    backend.close()


@pytest.mark.parametrize("body, status, words", [
    (chat([{"type": "image_url", "image_url": {"url": "data:image/png;base64,%%%not-base64"}}]), 400, "bad base64"),
    (chat([{"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(b"GIF? no, text").decode()}}]), 400, "not an image"),
    (chat([{"type": "image_url", "image_url": {"url": png_uri()}}] * 9 + [{"type": "text", "text": "x"}]), 400, "too many images"),
    (chat([{"type": "image_url", "image_url": {"url": "https://example.org/x.png"}}]), 400, "only data: URIs"),
    ({**chat("hi"), "model": "gpt-4o"}, 404, "does not exist"),
    (chat("hi", max_tokens=0), 400, "max_tokens"),
    (chat("hi", max_tokens=10**6), 400, "max_tokens"),
    (chat("hi", max_tokens="12"), 400, "max_tokens"),
    (chat("hi", n=3), 400, "n=1"),
    ({"model": "demo", "messages": [{"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}]}, 400, "one user message"),
    ({"model": "demo", "messages": []}, 400, "messages"),
    ([1, 2], 400, "JSON object"),
])
def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(client, body, status, words):
    response = client.post("chat/completions", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert words in error["message"] and "\n" not in error["message"] and "Traceback" not in response.text
    assert set(error) == {"message", "type", "param", "code"}
    ok = client.post("chat/completions", json=chat([{"type": "image_url", "image_url": {"url": png_uri()}},
                                                    {"type": "text", "text": "Describe."}]))
    assert ok.status_code == 200 and ok.json()["choices"][0]["finish_reason"] in ("stop", "length")


def test_raw_garbage_truncated_images_big_bodies_and_wrong_keys(client, server):
    assert client.post("chat/completions", content=b"{not json", headers={"Content-Type": "application/json"}).status_code == 400
    buf = io.BytesIO()
    Image.new("RGB", (300, 300), (9, 9, 9)).save(buf, format="PNG")
    truncated = "data:image/png;base64," + base64.b64encode(buf.getvalue()[:200]).decode()
    r = client.post("chat/completions", json=chat([{"type": "image_url", "image_url": {"url": truncated}}]))
    assert r.status_code == 400 and "image 1" in r.json()["error"]["message"]
    huge = "data:image/png;base64," + base64.b64encode(_png_bytes((5000, 4000))).decode()
    r = client.post("chat/completions", json=chat([{"type": "image_url", "image_url": {"url": huge}}]))
    assert r.status_code == 400 and "exceeds the limit" in r.json()["error"]["message"]
    r = client.post("chat/completions", content=b"x" * (33 * 1024 * 1024), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "limit" in r.json()["error"]["message"]
    for headers in ({}, {"Authorization": "Bearer wrong-key-123"}, {"Authorization": API_KEY}):
        r = httpx.post(server.url + "/chat/completions", json=chat("hi"), headers=headers, timeout=30)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert API_KEY not in r.text
    assert httpx.get(server.url + "/models", timeout=30).status_code == 401
    assert client.get("models").json()["data"][0]["id"] == "demo"
    assert httpx.get(server.url.removesuffix("/v1") + "/health", timeout=30).json()["status"] == "ok"
    r = client.get("no/such/path")
    assert r.status_code == 404 and "error" in r.json()


def _png_bytes(size) -> bytes:
    buf = io.BytesIO()
    Image.new("L", size, 0).save(buf, format="PNG")
    return buf.getvalue()


def test_streaming_answer_is_the_same_text_as_json(client):
    body = chat([{"type": "image_url", "image_url": {"url": png_uri()}}, {"type": "text", "text": "Describe."}], max_tokens=6)
    plain = client.post("chat/completions", json=body).json()
    with client.stream("POST", "chat/completions", json={**body, "stream": True, "stream_options": {"include_usage": True}}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == plain["choices"][0]["message"]["content"]
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == plain["choices"][0]["finish_reason"]
    assert chunks[-1]["usage"] == plain["usage"]


def test_unknown_model_unreachable_server_and_wrong_key_exit_2_before_the_output_folder(server, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDVLM_API_KEY", API_KEY)
    out = tmp_path / "never"
    r = run_medvlm("batch", str(SAMPLE_STUDIES), "--endpoint", server.url, "--model", "medgemma:4b", "--out", str(out))
    assert r.returncode == 2 and "does not serve 'medgemma:4b'; it serves demo" in r.stderr
    assert "Traceback" not in r.stderr and not out.exists()
    monkeypatch.setenv("MEDVLM_API_KEY", "sk-wrong-key-0000")
    r = run_medvlm("batch", str(SAMPLE_STUDIES), "--endpoint", server.url, "--out", str(out))
    assert r.returncode == 2 and "refused the request (HTTP 401" in r.stderr and not out.exists()
    assert "sk-wrong-key-0000" not in r.stderr
    r = run_medvlm("batch", str(SAMPLE_STUDIES), "--endpoint", "http://127.0.0.1:9/v1", "--out", str(out))
    assert r.returncode == 2 and "cannot reach the model server at http://127.0.0.1:9/v1: connection refused" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not out.exists()


def test_ignore_eos_reaches_the_server(server, tmp_path, keyed_env):
    out = tmp_path / "eos"
    r = run_medvlm("batch", str(SAMPLE_STUDIES / "study_001_pa"), "--endpoint", server.url, "--ignore-eos",
                   "--max-new-tokens", "7", "--no-pdf", "--out", str(out))
    assert r.returncode == 0, r.stderr
    doc = next(iter(reports_by_source(out).values()))
    assert doc["model_output"]["new_tokens"] == 7 and doc["provenance"]["request"]["finish_reason"] == "length"


def test_concurrent_requests_share_one_generate_call(demo_model_dir):
    """Four clients at once, batch size 4 and a generous wait: the server runs them as one batch."""
    with serving("--model", "demo", "--port", "0", "--batch-size", "4", "--max-wait-ms", "2000",
                 env=server_env()) as proc:
        body = chat([{"type": "image_url", "image_url": {"url": png_uri()}}, {"type": "text", "text": "Describe."}])
        answers = []

        def ask():
            answers.append(httpx.post(proc.url + "/chat/completions", json=body, timeout=120).status_code)

        threads = [threading.Thread(target=ask) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert answers == [200] * 4
        assert proc.stop(signal.SIGINT) == 0
        assert "stopped after 4 requests in 1 batches (largest 4)" in proc.output()


def test_sigterm_lets_the_running_batch_finish_and_refuses_the_waiting(demo_model_dir):
    with serving("--model", "demo", "--port", "0", "--batch-size", "1", env=server_env()) as proc:
        body = chat([{"type": "image_url", "image_url": {"url": png_uri()}}, {"type": "text", "text": "Describe."}],
                    max_tokens=200, ignore_eos=True)
        results: list = []

        def ask():
            try:
                r = httpx.post(proc.url + "/chat/completions", json=body, timeout=120)
                results.append((r.status_code, r.json()))
            except httpx.HTTPError as exc:
                results.append((None, str(exc)))

        threads = [threading.Thread(target=ask) for _ in range(3)]
        for t in threads:
            t.start()
            time.sleep(0.3)
        time.sleep(0.5)  # the first is generating, the others wait their turn
        assert proc.stop(signal.SIGTERM) == 0
        for t in threads:
            t.join(60)
        codes = sorted(str(code) for code, _ in results)
        assert "200" in codes, results  # in flight: finished and answered
        assert all(code in (200, 503) for code, _ in results), results
        for code, doc in results:
            if code == 503:
                assert doc["error"]["message"] == "the server is shutting down"
    assert "Traceback" not in proc.output()


def test_server_killed_mid_batch_then_rerun_redoes_only_the_failed(tmp_path, demo_model_dir):
    """SIGKILL the server during a batch: those studies are one-line error rows, exit 1, verify passes;
    after the server is back on the same address, the rerun redoes exactly those studies."""
    env = server_env(API_KEY)
    out = tmp_path / "run"
    with serving("--model", "demo", "--port", "0", "--batch-size", "1", env=env) as first:
        port = first.port
        import subprocess

        batch = subprocess.Popen(
            medvlm_cmd("batch", str(SAMPLE_STUDIES), "--endpoint", f"http://127.0.0.1:{port}/v1", "--concurrency", "1",
                       "--max-new-tokens", "200", "--ignore-eos", "--max-tries", "2", "--retry-budget", "2",
                       "--out", str(out)),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not (out / "summary.csv").is_file():
            time.sleep(0.2)
        while time.monotonic() < deadline and not [r for r in read_summary(out) if r["status"] == "ok"]:
            time.sleep(0.2)
        first.kill()  # SIGKILL while later studies are waiting or generating
        stdout, stderr = batch.communicate(timeout=240)
    assert batch.returncode == 1, stderr
    rows = read_summary(out)
    ok = {r["source"] for r in rows if r["status"] == "ok"}
    failed = {r["source"]: r["reason"] for r in rows if r["status"] == "error"}
    assert ok and failed and len(ok) + len(failed) == 6
    for reason in failed.values():
        assert reason.startswith("endpoint: ") and "\n" not in reason
        assert "connection refused after 2 tries" in reason or "closed the connection" in reason, reason
    assert "Traceback" not in stderr
    assert run_medvlm("verify", str(out)).returncode == 0
    with serving("--model", "demo", "--port", str(port), "--batch-size", "1", env=env) as second:
        r = subprocess_run_batch(out, port, env)
        assert second.stop() == 0
    assert r.returncode == 0, r.stderr
    rows = read_summary(out)
    assert all(row["status"] == "ok" for row in rows) and len(rows) == 6
    ledger = [json.loads(line) for line in (out / "ledger.jsonl").read_text().splitlines()]
    second_run = [rec for rec in ledger if rec["kind"] == "run_start"][-1]["run_id"]
    redone = [rec["row"]["source"] for rec in ledger if rec["kind"] == "attempt" and rec["run_id"] == second_run]
    assert sorted(redone) == sorted(failed)  # the rerun attempted exactly the studies that had failed
    assert run_medvlm("verify", str(out)).returncode == 0
    hits = files_containing(out, API_KEY)
    assert hits == [], hits
    assert API_KEY not in stdout + stderr + r.stdout + r.stderr


def subprocess_run_batch(out: Path, port: int, env: dict):
    import subprocess

    return subprocess.run(
        medvlm_cmd("batch", str(SAMPLE_STUDIES), "--endpoint", f"http://127.0.0.1:{port}/v1", "--concurrency", "1",
                   "--max-new-tokens", "200", "--ignore-eos", "--max-tries", "2", "--retry-budget", "2", "--out", str(out)),
        capture_output=True, text=True, env=env, timeout=300,
    )


def test_serve_refuses_to_bind_beyond_loopback_without_a_key(tmp_path):
    r = run_medvlm("serve", "--model", "demo", "--host", "0.0.0.0", "--port", "0")
    assert r.returncode == 2 and "--api-key" in r.stderr and "Traceback" not in r.stderr
