"""The review app as a reviewer uses it: Debian's chromium driven by Playwright against `medvlm review` (a real server).

Skips with a message when /usr/bin/chromium or the playwright package is missing; CI installs both.
A screenshot of the review page is written to $MEDVLM_SCREENSHOT_DIR when set (else the test's tmp folder).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from medvlm.audit.ledger import read_ledger
from medvlm.audit.verify import verify_run
from browser_support import chromium
from review_support import ReviewProcess, make_run

@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("review-browser"))


@pytest.fixture
def run(base_run, tmp_path) -> Path:
    shutil.copytree(base_run, tmp_path / "run")
    return tmp_path / "run"


def _reviews(run: Path) -> list[dict]:
    return [r for r in read_ledger(run / "ledger.jsonl").records if r.get("kind") == "review"]


def _watch(page, problems: list):
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("dialog", lambda d: (problems.append(f"dialog: {d.message}"), d.dismiss()))
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)


def _study_key(page) -> str:
    return re.search(r"/study/([^/?]+)", page.url).group(1)


def _wait_for_next_study(page, key: str) -> str:
    page.wait_for_url(lambda url: "/study/" in url and key not in url, timeout=20000)
    page.wait_for_selector("#page-data", state="attached")
    return _study_key(page)


def _screenshot_path(tmp_path: Path, name: str) -> Path:
    folder = Path(os.environ.get("MEDVLM_SCREENSHOT_DIR") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


def test_three_studies_reviewed_with_the_keyboard_are_kept_after_a_reload_and_strangers_get_403(run, tmp_path):
    problems: list[str] = []
    with ReviewProcess(run, "--reviewer", "alice") as server, chromium() as browser:
        assert server.line.startswith("medvlm review: http://127.0.0.1:") and "token=" in server.line
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        _watch(page, problems)
        page.goto(server.url)
        assert "token=" not in page.url  # the token is traded for a cookie and leaves the address bar
        assert re.search(r"0\s+of\s+6\s+reviewed by alice", page.inner_text(".progress"))
        assert "1 failed or skipped study has no report" in page.inner_text("body")

        # Study 1 (most urgent first): a normal review in three keys - agree with all, the model's risk, save and next.
        page.keyboard.press("Enter")
        page.wait_for_url(re.compile(r"/study/"))
        first = _study_key(page)
        page.keyboard.press("Shift+A")
        page.keyboard.press("=")
        page.keyboard.press("Enter")
        second = _wait_for_next_study(page, first)

        # Study 2: disagree with the selected (first) finding, add a missed finding with its side, own risk, a comment.
        rows = page.locator("#findings tbody tr")
        n_findings = rows.count()
        assert n_findings >= 1
        disagreed_id = rows.nth(0).get_attribute("data-id")
        page.keyboard.press("d")
        page.keyboard.press("Shift+A")  # agree with the rest
        page.keyboard.press("m")
        assert page.evaluate("document.activeElement.id") == "add-code"
        page.keyboard.type("Atel")  # type-ahead in the select picks Atelectasis
        page.keyboard.press("Tab")
        page.keyboard.type("l")  # side: left
        page.keyboard.press("Enter")
        assert page.inner_text("#added-list").startswith("Atelectasis (left)")
        page.keyboard.press("4")  # high
        page.keyboard.press("c")
        page.keyboard.type("Effusion looks larger on the left <b>check</b>")
        page.keyboard.press("Escape")
        page.keyboard.press("Enter")
        third = _wait_for_next_study(page, second)

        # Study 3: one unmarked finding is caught before saving; Enter again saves anyway.
        marks = page.locator("#findings tbody tr").count()
        page.keyboard.press("1")  # normal
        if marks:
            page.keyboard.press("Enter")
            assert "without a verdict" in page.inner_text("#status")
            page.keyboard.press("a")
            page.keyboard.press("Shift+A")
        page.keyboard.press("Shift+Enter")  # save and stay
        page.locator("#status", has_text="saved to the ledger").wait_for()

        # Back to the worklist: three reviewed; study 2 (a finding disagreed with) and study 3 (graded normal where
        # the model said moderate) count as disagreements.
        page.keyboard.press("w")
        page.wait_for_url(lambda url: "/study/" not in url)
        assert re.search(r"3\s+of\s+6\s+reviewed by alice", page.inner_text(".progress"))
        assert "2 with a disagreement" in page.inner_text(".progress")

        # Reload study 2: every mark is back from the server.
        page.goto(f"{server.base}/study/{second}")
        page.reload()
        row = page.locator(f'#findings tr[data-id="{disagreed_id}"]')
        assert row.locator("button[data-v=disagree]").get_attribute("aria-pressed") == "true"
        pressed = page.locator("#findings button[data-v=agree][aria-pressed=true]").count()
        assert pressed == n_findings - 1
        assert page.inner_text("#added-list").startswith("Atelectasis (left)")
        assert page.locator("#riskbtns button[data-risk=high]").get_attribute("aria-pressed") == "true"
        assert page.input_value("#comment") == "Effusion looks larger on the left <b>check</b>"
        shot = _screenshot_path(tmp_path, "review-study.png")
        page.screenshot(path=str(shot), full_page=False)

        # Without the token or its cookie: 403, for pages, images, the script and saves.
        stranger = browser.new_context()
        other = stranger.new_page()
        for path in ("/", f"/study/{second}", f"/study/{second}/image/1", "/static/review.js", f"/?token={'x' * 43}"):
            assert other.goto(server.base + path).status == 403, path
        assert "403 Forbidden" in other.inner_text("body")
        assert stranger.request.post(f"{server.base}/api/review/{second}", data="{}",
                                     headers={"Content-Type": "application/json"}).status == 403
        stranger.close()
    assert not problems, problems

    reviews = _reviews(run)
    assert [r["study_key"] for r in reviews] == [first, second, third]
    assert {v["verdict"] for v in reviews[0]["verdicts"]} == {"agree"}
    assert reviews[0]["risk_level"] == reviews[0]["model_risk_level"]
    two = reviews[1]
    assert {v["finding_id"]: v["verdict"] for v in two["verdicts"]}[disagreed_id] == "disagree"
    assert two["added"] == [{"code": "atelectasis", "label": "Atelectasis", "laterality": "left", "note": ""}]
    assert two["risk_level"] == "high" and two["comment"] == "Effusion looks larger on the left <b>check</b>"
    assert reviews[2]["risk_level"] == "normal"
    assert verify_run(run).ok
    # the screenshot is a real page, not a blank frame
    from PIL import Image, ImageStat

    with Image.open(shot) as img:
        assert img.size == (1400, 900)
        assert max(ImageStat.Stat(img.convert("L")).stddev) > 20


def test_model_text_that_looks_like_html_is_shown_as_text_and_never_runs(run):
    problems: list[str] = []
    with ReviewProcess(run, "--reviewer", "alice") as server, chromium() as browser:
        page = browser.new_page()
        _watch(page, problems)
        page.goto(server.url)
        keys = [tr.get_attribute("data-key") for tr in page.locator("#worklist tbody tr").all()]
        for key in keys:
            response = page.goto(f"{server.base}/study/{key}")
            if response.status != 200:
                continue  # the failed study: a page saying why
            if "<script>alert" in page.inner_text("#answer"):
                assert page.locator("#answer script, #answer img").count() == 0
                break
        else:
            pytest.fail("the study whose answer carries HTML was not found")
    assert not problems, problems


def test_blind_first_read_hides_the_model_until_saved_then_the_second_read_is_kept_beside_it(run):
    problems: list[str] = []
    with ReviewProcess(run, "--reviewer", "bob", "--blind") as server, chromium() as browser:
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        _watch(page, problems)
        page.goto(server.url)
        assert "hidden until your first read" in page.inner_text("#worklist")
        assert page.locator("#worklist .badge.lvl-critical").count() == 0  # no model risk leaks into the list
        page.keyboard.press("Enter")
        page.wait_for_url(re.compile(r"/study/"))
        key = _study_key(page)
        doc = json.loads((run / key / "report.json").read_text())
        html = page.content()
        assert "blind first read" in page.inner_text("#blind-note").lower()
        assert page.locator("#findings").count() == 0 and page.locator("#answer").count() == 0
        model_words = doc["model_output"]["text"].split("\n")[0][10:40]
        assert model_words not in html
        assert json.loads(page.inner_text("#page-data"))["findings"] == []
        page.keyboard.press("m")
        page.keyboard.type("Pneumot")
        page.keyboard.press("Enter")
        page.keyboard.press("5")  # critical
        page.keyboard.press("Enter")  # save the first read; the page comes back as the second read
        page.wait_for_selector("#first-read")
        assert "Your first read" in page.inner_text("#first-read")
        assert page.locator("#findings tbody tr").count() == len(doc["findings"])
        page.keyboard.press("Shift+A")
        page.keyboard.press("=")
        page.keyboard.press("Enter")
        page.wait_for_url(lambda url: key not in url)
    assert not problems, problems
    reads = [(r["read"], r["blind"]) for r in _reviews(run)]
    assert reads == [("first", True), ("second", True)]
    first, second = _reviews(run)
    assert first["verdicts"] == [] and [a["code"] for a in first["added"]] == ["pneumothorax"]
    assert first["risk_level"] == "critical" and len(second["verdicts"]) == len(doc["findings"])
    assert verify_run(run).ok


def test_two_reviewers_in_two_browsers_on_one_server_both_keep_their_reviews(run):
    problems: list[str] = []
    with ReviewProcess(run) as server, chromium() as browser:
        pages = []
        for name in ("carol", "dave"):
            context = browser.new_context()
            page = context.new_page()
            _watch(page, problems)
            page.goto(server.url)
            page.fill("#reviewer-input", name)
            page.keyboard.press("Enter")
            page.wait_for_selector("#reviewer-name")
            page.wait_for_load_state("load")  # the keyboard script (end of body) runs before "load"; keys before it are lost
            assert page.inner_text("#reviewer-name") == name
            page.keyboard.press("Enter")
            page.wait_for_url(re.compile(r"/study/"))
            pages.append(page)
        assert _study_key(pages[0]) == _study_key(pages[1])
        for page in pages:  # both on the same study; saves interleave
            page.keyboard.press("Shift+A")
            page.keyboard.press("=")
        key = _study_key(pages[0])
        for page in pages:
            page.keyboard.press("Enter")
        for page in pages:
            _wait_for_next_study(page, key)
    assert not problems, problems
    reviews = _reviews(run)
    assert sorted(r["reviewer"] for r in reviews) == ["carol", "dave"]
    assert len({r["study_key"] for r in reviews}) == 1
    assert verify_run(run).ok
