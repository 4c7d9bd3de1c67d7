"""The review server over HTTP (a real `medvlm review` process on 127.0.0.1): the gate, escaping, PHI, limits, saves."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from medvlm.audit.ledger import read_ledger
from medvlm.audit.session import LedgerSession
from medvlm.audit.verify import verify_run
from review_support import ReviewProcess, env, make_run, medvlm_cmd


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("review-app"))


@pytest.fixture
def run(base_run, tmp_path) -> Path:
    shutil.copytree(base_run, tmp_path / "run")
    return tmp_path / "run"


@pytest.fixture(scope="module")
def server(base_run, tmp_path_factory):
    """One read-mostly server for the gate tests (a copy of the run, reviewer alice)."""
    run = tmp_path_factory.mktemp("review-app-gate") / "run"
    shutil.copytree(base_run, run)
    with ReviewProcess(run, "--reviewer", "alice") as proc:
        proc.run = run
        yield proc


@contextmanager
def _client(server, **kw):
    """An httpx client that opened the printed address once (so it holds the cookie)."""
    with httpx.Client(base_url=server.base, timeout=30, **kw) as client:
        response = client.get(f"/?token={server.token}")
        assert response.status_code == 303 and response.headers["location"] == "/"
        yield client


def _page_data(html: str) -> dict:
    return json.loads(re.search(r'id="page-data">(.*?)</script>', html, re.S).group(1))


def _keys(run: Path) -> list[str]:
    return sorted(p.parent.name for p in run.glob("*/report.json"))


def _save_body(client: httpx.Client, key: str, **kw) -> tuple[dict, dict]:
    data = _page_data(client.get(f"/study/{key}").text)
    body = {"report_sha256": data["report_sha256"], "read": data["read"],
            "verdicts": {f["id"]: {"verdict": "agree"} for f in data["findings"]}, "added": [], "risk_level": "low",
            "comment": ""}
    body.update(kw)
    return data, body


# -- the gate ----------------------------------------------------------------------------------------


def test_it_listens_on_loopback_only_and_prints_one_line_with_the_token(server):
    port = int(server.base.rsplit(":", 1)[1])
    assert server.line.startswith(f"medvlm review: http://127.0.0.1:{port}/?token=")
    assert len(server.token) >= 40
    addresses = {a[4][0] for a in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)} - {"127.0.0.1"}
    for address in addresses:  # the machine's other addresses do not answer
        with pytest.raises(OSError):
            socket.create_connection((address, port), timeout=2).close()
    with open(f"/proc/{server.proc.pid}/net/tcp") as fh:
        listening = [line.split()[1] for line in fh.readlines()[1:] if line.split()[3] == "0A"]
    assert f"0100007F:{port:04X}" in listening and not any(l.endswith(f":{port:04X}") and not l.startswith("0100007F")
                                                             for l in listening)


@pytest.mark.parametrize("path", ["/", "/study/x", "/study/x/image/1", "/static/review.js", "/favicon.ico", "/nope"])
def test_every_request_without_the_token_or_its_cookie_is_403(server, path):
    guessed = {f"medvlm_review_{server.base.rsplit(':', 1)[1]}": "0" * 64}
    with httpx.Client(base_url=server.base, timeout=30, cookies=guessed) as client:
        assert client.get(path).status_code == 403
    with httpx.Client(base_url=server.base, timeout=30) as client:
        assert client.get(path).status_code == 403
        assert client.get(f"{path}?token=wrong").status_code == 403
        assert client.post("/api/review/x", json={}).status_code == 403
        response = client.get(path)
        assert "access token" in response.text and server.token not in response.text


def test_the_token_is_traded_for_a_strict_cookie_and_dropped_from_the_address(server):
    with httpx.Client(base_url=server.base, timeout=30) as client:
        response = client.get(f"/?show=todo&token={server.token}")
        assert response.status_code == 303 and response.headers["location"] == "/?show=todo"
        cookie = response.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and server.token not in cookie
        page = client.get("/?show=todo")
        assert page.status_code == 200 and server.token not in page.text
        for header, value in (("content-security-policy", "script-src 'self'"), ("cache-control", "no-store"),
                              ("referrer-policy", "no-referrer"), ("x-frame-options", "DENY")):
            assert value in page.headers[header]
        # the token only works on a GET
        assert client.post(f"/api/reviewer?token={server.token}", json={}).status_code == 403


def test_a_foreign_host_header_is_refused_even_with_the_cookie(server):
    with _client(server) as client:
        assert client.get("/").status_code == 200
        assert client.get("/", headers={"Host": "evil.example:80"}).status_code == 403  # DNS rebinding
        port = server.base.rsplit(":", 1)[1]
        assert client.get("/", headers={"Host": f"localhost:{port}"}).status_code == 200


def test_writes_need_the_csrf_token_same_origin_json_and_a_small_body(server):
    key = _keys(server.run)[0]
    with _client(server) as client:
        data, body = _save_body(client, key)
        url = f"/api/review/{key}"
        assert client.post(url, json=body).status_code == 403  # no CSRF token
        assert client.post(url, json=body, headers={"X-CSRF-Token": "0" * 64}).status_code == 403
        csrf = {"X-CSRF-Token": data["csrf"]}
        assert client.post(url, json=body, headers={**csrf, "Origin": "http://evil.example"}).status_code == 403
        assert client.post(url, json=body, headers={**csrf, "Sec-Fetch-Site": "cross-site"}).status_code == 403
        assert client.post(url, content=json.dumps(body), headers={**csrf, "Content-Type": "text/plain"}).status_code == 415
        big = {**body, "comment": "x" * 70_000}
        assert client.post(url, json=big, headers=csrf).status_code == 413
        for method in ("PUT", "DELETE", "PATCH"):
            assert client.request(method, url, json=body, headers=csrf).status_code == 405
        assert client.post(url, content=b"{not json", headers={**csrf, "Content-Type": "application/json"}).json() == {
            "ok": False, "error": "the request body is not JSON"}
    assert not [r for r in read_ledger(server.run / "ledger.jsonl").records if r.get("kind") == "review"]


# -- what is shown ------------------------------------------------------------------------------------


def test_model_text_is_escaped_and_no_patient_identifier_or_source_path_is_shown(server):
    with _client(server) as client:
        pages = [client.get("/").text]
        for key in _keys(server.run):
            pages.append(client.get(f"/study/{key}").text)
    html = "\n".join(pages)
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in html and "<script>alert" not in html
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "PHANTOM^" not in html and "PH7-" not in html  # PatientName / PatientID of the DICOM phantoms
    assert "phantom_0000" not in html  # folder and file names may identify; shown only with --include-phi
    for doc in (json.loads(p.read_text()) for p in server.run.glob("*/report.json")):
        assert "phi" not in doc["study"]


def test_with_include_phi_the_identifiers_are_shown(tmp_path):
    run = make_run(tmp_path, include_phi=True)
    with ReviewProcess(run, "--reviewer", "alice") as proc, _client(proc) as client:
        html = "\n".join(client.get(f"/study/{k}").text for k in _keys(run))
    assert "PHANTOM^P0000" in html and "Patient identifiers" in html


def test_a_study_without_a_report_and_unknown_pages_say_so_without_a_traceback(server):
    with _client(server) as client:
        failed = [k for k in re.findall(r'data-key="([^"]+)"', client.get("/").text) if k not in _keys(server.run)]
        assert failed, "the run has a failed study"
        page = client.get(f"/study/{failed[0]}")
        assert page.status_code == 409 and "has no report" in page.text and "Traceback" not in page.text
        missing = client.get("/study/s-does-not-exist")
        assert missing.status_code == 404 and "no such study" in missing.text
        assert client.get(f"/study/{_keys(server.run)[0]}/image/99").status_code == 404
        assert client.get("/static/../ledger.jsonl").status_code in (403, 404)
        assert client.get("/static/%2e%2e%2fledger.jsonl").status_code == 404


def test_an_edited_report_is_not_offered_for_review(run):
    key, other = _keys(run)[:2]
    path = run / key / "report.json"
    path.write_text(path.read_text().replace('"present"', '"absent"'))
    with ReviewProcess(run, "--reviewer", "alice") as proc:
        with _client(proc) as client:
            assert client.get(f"/study/{other}").status_code == 200
            page = client.get(f"/study/{key}")
            assert page.status_code == 409 and "differs from the version recorded in the ledger" in page.text
        code, out, err = proc.stop()
    assert code == 0 and "Traceback" not in err, err


def test_an_internal_error_gives_the_client_one_sentence_and_the_terminal_one_line(run, monkeypatch, capfd):
    """A fault inside page building (forced here, in-process) never reaches the client as a traceback."""
    import uvicorn

    from medvlm.review import pages
    from medvlm.review.app import ReviewServer
    from medvlm.review.server import bind

    def broken(*args, **kwargs):
        raise RuntimeError("boom in /secret/place")

    monkeypatch.setattr(pages, "study_context", broken)
    sock = bind(0)
    app = ReviewServer(run, port=sock.getsockname()[1], reviewer="alice")
    server = uvicorn.Server(uvicorn.Config(app.asgi(), log_level="warning", access_log=False, lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{sock.getsockname()[1]}"
        with httpx.Client(base_url=base, timeout=30) as client:
            deadline = time.monotonic() + 20
            while True:
                try:
                    client.get(f"/?token={app.keys.token}")
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            page = client.get(f"/study/{_keys(run)[0]}")
        assert page.status_code == 500 and "Internal error in the review server" in page.text
        assert "boom" not in page.text and "Traceback" not in page.text and "secret" not in page.text
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        sock.close()
    err = capfd.readouterr().err
    assert "internal error on GET /study/" in err and "RuntimeError: boom" in err and "Traceback" not in err
    assert "Traceback" in (run / ".medvlm" / "review-errors.log").read_text()


# -- saving ---------------------------------------------------------------------------------------------


def test_a_save_is_checked_against_the_report_the_reviewer_was_shown(run):
    key = _keys(run)[0]
    with ReviewProcess(run, "--reviewer", "alice") as proc, _client(proc) as client:
        data, body = _save_body(client, key)
        csrf = {"X-CSRF-Token": data["csrf"]}
        url = f"/api/review/{key}"
        bad = client.post(url, json={**body, "verdicts": {"f-0123456789abcdef": {"verdict": "agree"}}}, headers=csrf)
        assert bad.status_code == 400 and "not in the report reviewed" in bad.json()["error"]
        bad = client.post(url, json={**body, "added": [{"code": "flying_saucer"}]}, headers=csrf)
        assert bad.status_code == 400 and "is not a finding of the chest_xray vocabulary" in bad.json()["error"]
        bad = client.post(url, json={**body, "report_sha256": "0" * 64}, headers=csrf)
        assert bad.status_code == 409 and "reload" in bad.json()["error"]
        bad = client.post(url, json={**body, "read": "first"}, headers=csrf)
        assert bad.status_code == 409 and "a single read is due" in bad.json()["error"]
        good = client.post(url, json={**body, "added": [{"code": "atelectasis", "laterality": "right"}]}, headers=csrf)
        assert good.status_code == 200 and good.json()["status"] == "recorded" and good.json()["next"].startswith("/study/")
        # the worklist and the page now show the review
        assert "1</b> of <b>6</b> reviewed" in client.get("/").text
        again = _page_data(client.get(f"/study/{key}").text)
        assert again["prefill"]["added"][0]["code"] == "atelectasis" and again["prefill"]["risk_level"] == "low"
    (review,) = [r for r in read_ledger(run / "ledger.jsonl").records if r.get("kind") == "review"]
    assert review["reviewer"] == "alice" and review["app"]["port"] == int(proc.base.rsplit(":", 1)[1])
    assert verify_run(run).ok


def test_saves_while_a_batch_holds_the_run_are_queued_and_written_when_it_ends(run):
    keys = _keys(run)[:2]
    with ReviewProcess(run, "--reviewer", "alice") as proc, _client(proc) as client:
        with LedgerSession(run):  # what `medvlm batch` holds from start to end
            for key in keys:
                data, body = _save_body(client, key)
                response = client.post(f"/api/review/{key}", json=body, headers={"X-CSRF-Token": data["csrf"]})
                assert response.json()["status"] == "queued" and "as soon as" in response.json()["message"]
            assert "2 saved reviews waiting" in client.get("/").text
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            reviews = [r for r in read_ledger(run / "ledger.jsonl").records if r.get("kind") == "review"]
            if len(reviews) == 2:
                break
            time.sleep(0.5)
        assert [r["study_key"] for r in reviews] == keys
    assert verify_run(run).ok


def test_two_review_servers_and_a_regrade_at_once_lose_nothing(run):
    keys = _keys(run)
    results: dict[str, list] = {"alice": [], "bob": []}
    with ReviewProcess(run, "--reviewer", "alice") as a, ReviewProcess(run, "--reviewer", "bob") as b:
        def review_all(proc, name):
            with _client(proc) as client:
                for key in keys:
                    data, body = _save_body(client, key)
                    r = client.post(f"/api/review/{key}", json=body, headers={"X-CSRF-Token": data["csrf"]})
                    results[name].append(r.json().get("status") or r.json())

        threads = [threading.Thread(target=review_all, args=(a, "alice")), threading.Thread(target=review_all, args=(b, "bob"))]
        for t in threads:
            t.start()
        regrade = subprocess.run(medvlm_cmd("regrade", str(run), "--no-pdf"), capture_output=True, text=True, env=env(),
                                 timeout=300)
        for t in threads:
            t.join()
        assert regrade.returncode == 0, regrade.stderr
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            reviews = [r for r in read_ledger(run / "ledger.jsonl").records if r.get("kind") == "review"]
            if len(reviews) == 2 * len(keys):
                break
            time.sleep(0.5)
    assert all(s in ("recorded", "queued") for s in results["alice"] + results["bob"]), results
    assert sorted((r["reviewer"], r["study_key"]) for r in reviews) == sorted(
        (n, k) for n in ("alice", "bob") for k in keys)
    result = verify_run(run)
    assert result.ok, [str(p) for p in result.problems]


def test_a_review_of_a_report_regraded_since_is_shown_as_stale(run):
    key = _keys(run)[0]
    with ReviewProcess(run, "--reviewer", "alice") as proc, _client(proc) as client:
        data, body = _save_body(client, key)
        assert client.post(f"/api/review/{key}", json=body, headers={"X-CSRF-Token": data["csrf"]}).json()["ok"]
        regrade = subprocess.run(medvlm_cmd("regrade", str(run), "--no-pdf"), capture_output=True, text=True, env=env(),
                                 timeout=300)
        assert regrade.returncode == 0, regrade.stderr
        page = client.get(f"/study/{key}").text
        assert "was of an earlier version of this report" in page
        assert _page_data(page)["prefill"] is None  # not silently carried over to the new version
        assert "earlier: agree" in page
        assert "report changed since review" in client.get("/").text
        assert key in client.get("/?show=stale").text
        # a save made from the page opened before the regrade is kept as a review of that version
        stale = client.post(f"/api/review/{key}", json=body, headers={"X-CSRF-Token": data["csrf"]}).json()
        assert stale["ok"] and stale["stale"] and "earlier version" in stale["message"]


def test_the_port_in_use_and_a_folder_that_is_not_a_run_are_one_line_exit_2(run, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        proc = subprocess.run(medvlm_cmd("review", str(run), "--no-browser", "--port", str(port)), capture_output=True,
                              text=True, env=env(), timeout=120)
    assert proc.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in proc.stderr and "Traceback" not in proc.stderr
    (tmp_path / "empty").mkdir()
    for target in (tmp_path / "empty", tmp_path / "missing"):
        proc = subprocess.run(medvlm_cmd("review", str(target), "--no-browser"), capture_output=True, text=True, env=env(),
                              timeout=120)
        assert proc.returncode == 2 and proc.stderr.startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1
    proc = subprocess.run(medvlm_cmd("review", str(run), "--no-browser", "--reviewer", "\x01bad"), capture_output=True,
                          text=True, env=env(), timeout=120)
    assert proc.returncode == 2 and "control characters" in proc.stderr
