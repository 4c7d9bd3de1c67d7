"""A real peer server: the demo model converted to GGUF (text model + vision projector) by llama.cpp's own
converter, served by llama.cpp through llama-cpp-python's OpenAI-compatible server, read by
`medvlm batch --endpoint`.

Slow (the converter and the server start take a while) and needs llama-cpp-python[server] plus the
converter from llama.cpp's source (LLAMA_CPP_CONVERTER=.../convert_hf_to_gguf.py); `.ci/run`
installs both. Skips with a message when either is missing.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from audit_support import read_summary, run_medvlm
from conftest import SAMPLE_STUDIES
from llamacpp_support import convert, export_for_llamacpp, free_port, llamacpp_server_cmd

pytestmark = pytest.mark.slow


def _missing(reason: str):
    """Skip on a developer machine; fail in CI, where .ci/run installs the peer (MEDVLM_REQUIRE_PEER=1)."""
    if os.environ.get("MEDVLM_REQUIRE_PEER") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def converter() -> Path:
    try:
        import llama_cpp.server  # noqa: F401
    except ImportError as exc:
        _missing(f"llama-cpp-python[server] is not installed ({exc.name} missing); .ci/run installs it")
    path = Path(os.environ.get("LLAMA_CPP_CONVERTER", ""))
    if not path.is_file():
        _missing("LLAMA_CPP_CONVERTER does not name llama.cpp's convert_hf_to_gguf.py; .ci/run sets it")
    return path


@pytest.fixture(scope="module")
def gguf_files(converter, demo_model_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("gguf")
    exported = export_for_llamacpp(Path(demo_model_dir), work / "export")
    return convert(converter, exported, work, mmproj=False), convert(converter, exported, work, mmproj=True)


@pytest.fixture(scope="module")
def llamacpp_server(gguf_files, tmp_path_factory):
    model, mmproj = gguf_files
    port = free_port()
    log = tmp_path_factory.mktemp("llamacpp") / "server.log"
    env = {k: v for k, v in os.environ.items() if k not in ("MEDVLM_API_KEY", "OPENAI_API_KEY")}
    with open(log, "w") as fh:
        proc = subprocess.Popen(llamacpp_server_cmd(model, mmproj, port), stdout=fh, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama-cpp-python server exited {proc.returncode}: {log.read_text()[-3000:]}")
            try:
                if httpx.get(url + "/models", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama-cpp-python server not up within 180 s: {log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url, proc, log
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)


def test_medvlm_batch_reads_the_demo_gguf_served_by_llamacpp(llamacpp_server, tmp_path):
    url, proc, log = llamacpp_server
    out = tmp_path / "run"
    r = run_medvlm("batch", str(SAMPLE_STUDIES), "--endpoint", url, "--concurrency", "1", "--max-new-tokens", "16",
                   "--no-pdf", "--out", str(out), timeout=900)
    assert r.returncode == 0, r.stderr[-3000:] + log.read_text()[-3000:]
    rows = read_summary(out)
    assert len(rows) == 6 and all(row["status"] == "ok" for row in rows)
    for row in rows:
        doc = json.loads((out / row["report"]).read_text())
        prov = doc["provenance"]
        assert prov["model"]["backend"] == "endpoint" and prov["model"]["name"] == "demo-gguf"
        assert prov["model"]["weights_digest"] == "unknown (remote)"
        assert prov["request"]["usage"]["prompt_tokens"] > 49  # the image's 49 soft tokens are in the prompt
        assert doc["model_output"]["answer_status"] in ("complete", "truncated", "empty")
        assert prov["request"]["finish_reason"] in ("stop", "length")
        if doc["model_output"]["answer_status"] != "complete":
            assert doc["risk"]["level"] == "indeterminate"
    assert run_medvlm("verify", str(out)).returncode == 0
    assert proc.poll() is None  # the peer is still serving


def test_ignore_eos_is_refused_in_one_line_for_llama_cpp_python(llamacpp_server, tmp_path):
    """llama-cpp-python's server (owned_by 'me') takes no ignore_eos: refused before anything is written."""
    url, _, _ = llamacpp_server
    out = tmp_path / "never"
    r = run_medvlm("batch", str(SAMPLE_STUDIES), "--endpoint", url, "--ignore-eos", "--out", str(out))
    assert r.returncode == 2 and "--ignore-eos cannot be honoured" in r.stderr and not out.exists()
    assert len(r.stderr.strip().splitlines()) == 1
