"""Reviews in the ledger: the record, reviews.jsonl, the lock and the queue, verify, export, import, agreement."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pytest

from medvlm.audit.ledger import read_ledger
from medvlm.audit.reviews import (REVIEWS_NAME, ReviewInvalid, ReviewSession, flush_pending, make_review,
                                  pending_reviews, save_review)
from medvlm.audit.session import LedgerSession
from medvlm.audit.verify import verify_run
from medvlm.errors import RunBusy
from medvlm.review import agreement, agreement_lines, import_reviews, write_agreement
from medvlm.review.agreement import cohen_kappa, weighted_kappa
from medvlm.review.importcsv import ImportProblem
from medvlm.review.runview import RunView
from review_support import make_run


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("review-base"))


@pytest.fixture
def run(base_run, tmp_path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(base_run, target)
    return target


def _records(run: Path, kind: str = "review") -> list[dict]:
    return [r for r in read_ledger(run / "ledger.jsonl").records if r.get("kind") == kind]


def _studies(run: Path) -> dict[str, dict]:
    """study key -> report.json, for studies with a report."""
    return {p.parent.name: json.loads(p.read_text()) for p in run.glob("*/report.json")}


def _study_with(run: Path, code: str, status: str = "present") -> tuple[str, dict]:
    for key, doc in sorted(_studies(run).items()):
        if any(f["code"] == code and f["status"] == status for f in doc["findings"]):
            return key, doc
    raise AssertionError(f"no study with {code} {status}")


def _review(run: Path, key: str, reviewer: str = "alice", verdict: str = "agree", **kw) -> dict:
    view = RunView(run)
    doc, problem = view.report(key)
    assert doc is not None, problem
    fields = dict(reviewer=reviewer, study_key=key, report_path=f"{key}/report.json",
                  report_sha256=view.snapshot().by_key[key].report_sha256, read="single", findings=doc["findings"],
                  verdicts={f["id"]: {"verdict": verdict} for f in doc["findings"]}, added=[], risk_level=doc["risk"]["level"],
                  comment="", model_risk_level=doc["risk"]["level"])
    fields.update(kw)
    return make_review(**fields)


# -- the record and the ledger -------------------------------------------------------------------


def test_a_saved_review_is_a_chained_ledger_record_with_every_verdict_and_reviews_jsonl_has_the_latest(run):
    key, doc = _study_with(run, "pleural_effusion")
    before = len(read_ledger(run / "ledger.jsonl").records)
    record = _review(run, key, comment="effusion is <b>left</b>",
                     added=[{"code": "atelectasis", "label": "Atelectasis", "laterality": "left"}],
                     risk_level="high")
    assert save_review(run, record) == "recorded"
    state = read_ledger(run / "ledger.jsonl")
    assert not state.problems and len(state.records) == before + 1  # no run_start/run_end around a save
    written = state.records[-1]
    assert written["kind"] == "review" and written["reviewer"] == "alice" and written["study_key"] == key
    assert written["report"] == {"path": f"{key}/report.json", "sha256": RunView(run).snapshot().by_key[key].report_sha256}
    assert [v["finding_id"] for v in written["verdicts"]] == [f["id"] for f in doc["findings"]]
    assert {v["model_status"] for v in written["verdicts"]} <= {"present", "absent", "uncertain"}
    assert written["added"] == [{"code": "atelectasis", "label": "Atelectasis", "laterality": "left", "note": ""}]
    lines = [json.loads(x) for x in (run / REVIEWS_NAME).read_text().splitlines()]
    assert len(lines) == 1 and lines[0]["review_id"] == written["review_id"] and lines[0]["ledger_line"] == before + 1
    # A second save by the same reviewer supersedes the first in reviews.jsonl; the ledger keeps both.
    assert save_review(run, _review(run, key, verdict="disagree")) == "recorded"
    lines = [json.loads(x) for x in (run / REVIEWS_NAME).read_text().splitlines()]
    assert len(lines) == 1 and {v["verdict"] for v in lines[0]["verdicts"]} == {"disagree"}
    assert len(_records(run)) == 2
    result = verify_run(run)
    assert result.ok, [str(p) for p in result.problems]
    assert result.reviews == 2 and "2 review records" in result.summary_line()


@pytest.mark.parametrize("change, message", [
    ({"reviewer": "  "}, "name is empty"),
    ({"reviewer": "x" * 65}, "longer than 64"),
    ({"read": "third"}, "read must be one of"),
    ({"risk_level": "severe"}, "risk level must be one of"),
    ({"verdicts": {"f-0000000000000000": {"verdict": "agree"}}}, "not in the report reviewed"),
    ({"comment": "a\x00b"}, "control characters"),
    ({"comment": "x" * 4001}, "longer than 4000"),
    ({"added": [{"code": "atelectasis", "laterality": "up"}]}, "laterality must be one of"),
])
def test_a_malformed_review_is_refused_with_the_reason(run, change, message):
    key, _ = _study_with(run, "pleural_effusion")
    with pytest.raises(ReviewInvalid, match=message):
        _review(run, key, **change)


def test_a_finding_the_model_reported_cannot_also_be_added(run):
    key, _ = _study_with(run, "pleural_effusion")
    with pytest.raises(ReviewInvalid, match="added although the model reported it"):
        _review(run, key, added=[{"code": "pleural_effusion"}])


def test_a_blind_first_read_has_no_verdicts(run):
    key, doc = _study_with(run, "pleural_effusion")
    with pytest.raises(ReviewInvalid, match="blind first read has no verdicts"):
        _review(run, key, read="first")
    first = _review(run, key, read="first", verdicts={}, added=[{"code": "pleural_effusion", "laterality": "right"}])
    assert first["verdicts"] == [] and first["added"][0]["code"] == "pleural_effusion"


def test_incremental_ledger_reads_give_the_full_answer_and_notice_an_edit_before_the_tail(run):
    path = run / "ledger.jsonl"
    first = read_ledger(path)
    key, _ = _study_with(run, "pleural_effusion")
    save_review(run, _review(run, key))
    again = read_ledger(path, previous=first)
    full = read_ledger(path)
    assert again.records == full.records and not again.problems and again.prefix_sha256 == full.prefix_sha256
    data = path.read_bytes()
    path.write_bytes(data.replace(b'"status":"ok"', b'"status":"OK"', 1))  # edit an early record
    edited = read_ledger(path, previous=again)
    assert [p.kind for p in edited.problems][:1] == ["record_edited"]


# -- the lock: per save, so nothing is lost ------------------------------------------------------


def test_a_save_while_a_batch_holds_the_run_is_queued_and_written_in_order_when_it_is_free(run):
    keys = sorted(_studies(run))[:3]
    with LedgerSession(run) as batch:  # what `medvlm batch` holds for its whole run
        assert save_review(run, _review(run, keys[0])) == "queued"
        assert save_review(run, _review(run, keys[1], reviewer="bob")) == "queued"
        assert len(pending_reviews(run)) == 2 and not _records(run)
        with pytest.raises(RunBusy):
            flush_pending(run)
        batch.append({"kind": "note", "time": "x"})
    problems = [p.kind for p in verify_run(run).problems]
    assert "review_pending" in problems
    # the next save flushes the queue first, so the ledger keeps the order of saving
    assert save_review(run, _review(run, keys[2])) == "recorded"
    assert [r["study_key"] for r in _records(run)] == keys
    assert all(r.get("queued") and r.get("recorded_at") for r in _records(run)[:2])
    assert not pending_reviews(run)
    assert verify_run(run).ok


def test_a_queued_review_is_never_written_twice(run):
    key = sorted(_studies(run))[0]
    record = _review(run, key)
    with LedgerSession(run):
        save_review(run, record)
    (path, queued), = pending_reviews(run)
    assert flush_pending(run) == 1
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(queued))  # a crash between the append and the removal of the file
    assert flush_pending(run) == 0
    assert len(_records(run)) == 1 and not pending_reviews(run)


def test_a_regrade_waits_for_a_review_save_instead_of_refusing(run):
    from medvlm.audit.maintenance import RegradeAudit

    held = threading.Event()

    def slow_save():
        with ReviewSession(run) as session:
            held.set()
            time.sleep(2.0)
            session.append_reviews([_review(run, sorted(_studies(run))[0])])

    thread = threading.Thread(target=slow_save)
    thread.start()
    assert held.wait(30)
    started = time.monotonic()
    with RegradeAudit(run):  # would raise RunBusy at once for a batch holder
        waited = time.monotonic() - started
    thread.join()
    assert waited > 0.5 and len(_records(run)) == 1
    assert verify_run(run).ok


def test_two_reviewers_saving_at_once_lose_nothing(run):
    keys = sorted(_studies(run))
    errors = []

    def reviewer(name):
        try:
            for key in keys:
                assert save_review(run, _review(run, key, reviewer=name)) == "recorded"
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=reviewer, args=(n,)) for n in ("alice", "bob", "carol")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(_records(run)) == 3 * len(keys)
    assert len((run / REVIEWS_NAME).read_text().splitlines()) == 3 * len(keys)
    assert verify_run(run).ok


# -- verify ----------------------------------------------------------------------------------------


def test_verify_names_an_edited_reviews_jsonl_an_edited_review_and_a_review_of_an_unknown_report(run):
    key, _ = _study_with(run, "pleural_effusion")
    save_review(run, _review(run, key))
    (run / REVIEWS_NAME).write_text((run / REVIEWS_NAME).read_text().replace('"agree"', '"disagree"', 1))
    kinds = {p.kind: p for p in verify_run(run).problems}
    assert kinds["reviews_mismatch"].where == REVIEWS_NAME
    (run / REVIEWS_NAME).unlink()
    assert "missing" in {p.kind: p for p in verify_run(run).problems}["reviews_mismatch"].message
    # a review that names a report the ledger never recorded for that study (chained correctly)
    bogus = _review(run, key, report_sha256="0" * 64)
    with ReviewSession(run) as session:
        session.append_reviews([bogus])
    problems = verify_run(run).problems
    assert any(p.kind == "review_unknown_report" and p.where.startswith("ledger.jsonl line") for p in problems)
    # editing a review record in place breaks its hash
    data = (run / "ledger.jsonl").read_text()
    (run / "ledger.jsonl").write_text(data.replace('"reviewer":"alice"', '"reviewer":"mallory"', 1))
    assert "record_edited" in {p.kind for p in verify_run(run).problems}


def test_a_regraded_report_makes_its_reviews_stale_not_moved(run):
    from medvlm.regrade import regrade_run

    key, _ = _study_with(run, "pleural_effusion")
    record = _review(run, key)
    save_review(run, record)
    regrade_run(run, pdf=False)
    snap = RunView(run).snapshot()
    review = snap.review(key, "alice", "single")
    assert review["report"]["sha256"] == record["report"]["sha256"]  # still about the version reviewed
    assert snap.stale(review)
    assert verify_run(run).ok  # a stale review is history, not damage
    result = agreement(run)
    assert result["counts"]["stale"] == 1


# -- export ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_export_has_a_reviews_table_one_row_per_study_reviewer_and_finding(run, tmp_path, fmt):
    import pandas as pd

    from medvlm.audit.export import export_run

    key, doc = _study_with(run, "pleural_effusion")
    save_review(run, _review(run, key, added=[{"code": "atelectasis", "laterality": "left"}], comment="=HYPERLINK(x)"))
    other = next(k for k in sorted(_studies(run)) if k != key)
    save_review(run, _review(run, other, reviewer="bob", verdict="unsure"))
    written = export_run(run, tmp_path / "export", fmt)
    path, rows = written["reviews"]
    df = pd.read_parquet(path) if fmt == "parquet" else pd.read_csv(path, keep_default_na=False)
    n_other = len(_studies(run)[other]["findings"])
    assert rows == len(df) == len(doc["findings"]) + 1 + n_other
    mine = df[df["reviewer"] == "alice"]
    assert set(mine["verdict"]) == {"agree", "added"}
    added = mine[mine["verdict"] == "added"].iloc[0]
    assert added["code"] == "atelectasis" and added["laterality"] == "left"
    assert set(df[df["reviewer"] == "bob"]["verdict"]) == {"unsure"}
    assert set(df["study_key"]) == {key, other}
    assert {"finding_id", "model_status", "reviewer_risk_level", "report_sha256", "stale"} <= set(df.columns)


# -- import ----------------------------------------------------------------------------------------


def _csv(path: Path, rows: list[list[str]], header=("study_key", "reviewer", "code", "verdict", "risk_level", "comment"),
         sep: str = ",", bom: bool = False) -> Path:
    import csv
    import io

    buf = io.StringIO()
    writer = csv.writer(buf, delimiter=sep, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    path.write_text(("\ufeff" if bom else "") + buf.getvalue(), encoding="utf-8")
    return path


def test_import_records_one_review_per_study_and_reviewer(run, tmp_path):
    key, doc = _study_with(run, "pleural_effusion")
    codes = [f["code"] for f in doc["findings"]]
    rows = [[key, "alice", c, "agree", "", ""] for c in codes]
    rows += [[key, "alice", "Atelectasis", "added", "", "left base"], [key, "alice", "", "", "high", "check lateral"],
             [key, "bob", codes[0], "disagree", "low", "'=not a formula"], ["", "", "", "", "", ""]]
    result = import_reviews(run, _csv(tmp_path / "reviews.csv", rows, sep=";", bom=True))
    assert len(result.records) == 2 and result.reviewers == ["alice", "bob"] and result.rows == len(codes) + 3
    alice = next(r for r in _records(run) if r["reviewer"] == "alice")
    assert alice["source"] == "import" and alice["risk_level"] == "high" and alice["comment"] == "check lateral"
    assert alice["added"] == [{"code": "atelectasis", "label": "Atelectasis", "laterality": None, "note": "left base"}]
    assert {v["verdict"] for v in alice["verdicts"]} == {"agree"}
    assert alice["import"]["file"] == "reviews.csv" and len(alice["import"]["sha256"]) == 64
    bob = next(r for r in _records(run) if r["reviewer"] == "bob")
    assert bob["verdicts"][[v["code"] for v in bob["verdicts"]].index(codes[0])]["note"] == "=not a formula"
    assert verify_run(run).ok


def test_a_file_with_bad_rows_imports_nothing_and_names_every_bad_row(run, tmp_path):
    key, doc = _study_with(run, "pleural_effusion")
    code = doc["findings"][0]["code"]
    rows = [
        [key, "alice", code, "agree", "", ""],                 # row 2 fine
        ["s-nope", "alice", code, "agree", "", ""],            # row 3 unknown study
        [key, "alice", "flying_saucer", "agree", "", ""],      # row 4 unknown code
        [key, "alice", code, "yes", "", ""],                   # row 5 bad verdict
        [key, "alice", code, "disagree", "", ""],              # row 6 same code twice
        [key, "alice", "atelectasis", "agree", "", ""],        # row 7 model did not report it
        [key, "carol", code, "added", "", ""],                 # row 8 added although reported
        [key, "bob", "", "", "severe", ""],                    # row 9 bad risk level
        [key, "", code, "agree", "", ""],                      # row 10 no reviewer
    ]
    before = (run / "ledger.jsonl").read_bytes()
    with pytest.raises(ImportProblem) as caught:
        import_reviews(run, _csv(tmp_path / "bad.csv", rows))
    lines = caught.value.lines
    assert [line.split(":")[0] for line in lines] == [f"bad.csv row {n}" for n in range(3, 11)]
    assert "not a study of this run" in lines[0] and "not in the chest_xray vocabulary" in lines[1]
    assert "agree, disagree, unsure, added" in lines[2] and "already given in row 2" in lines[3]
    assert "did not report atelectasis" in lines[4] and "instead of added" in lines[5]
    assert "risk_level 'severe'" in lines[6] and "name is empty" in lines[7]
    assert "nothing imported: 8 bad rows" in str(caught.value)
    assert (run / "ledger.jsonl").read_bytes() == before and not (run / REVIEWS_NAME).exists()


@pytest.mark.parametrize("content, message", [
    (b"study_key,reviewer,verdict\ns-1,a,agree\n", "missing column code"),
    (b"study_key,reviewer,code,verdict\n", "no rows"),
    (b"\xff\xfe\x00s\x00t", "not UTF-8"),
    (b"", "is empty"),
    (b"study_key,reviewer,code,verdict,code\n", "appears twice"),
])
def test_an_unusable_file_is_one_line(run, tmp_path, content, message):
    path = tmp_path / "x.csv"
    path.write_bytes(content)
    with pytest.raises(ImportProblem, match=message):
        import_reviews(run, path)


def test_the_import_command_prints_each_bad_row_and_exits_2(run, tmp_path):
    from review_support import env, medvlm_cmd
    import subprocess

    key, doc = _study_with(run, "pleural_effusion")
    bad = _csv(tmp_path / "bad.csv", [[key, "alice", "nope", "agree", "", ""], ["s-x", "alice", "nope", "agree", "", ""]])
    proc = subprocess.run(medvlm_cmd("review", str(run), "--import", str(bad)), capture_output=True, text=True,
                          env=env(), timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith("bad.csv row 2: code 'nope'") and lines[1].startswith("bad.csv row 3: study_key")
    assert lines[-1].startswith("error: nothing imported: 2 bad rows") and "Traceback" not in proc.stderr
    good = _csv(tmp_path / "good.csv", [[key, "alice", doc["findings"][0]["code"], "agree", "normal", ""]])
    proc = subprocess.run(medvlm_cmd("review", str(run), "--import", str(good)), capture_output=True, text=True,
                          env=env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("imported 1 reviews (1 studies; reviewers alice) from 1 rows")


# -- agreement ---------------------------------------------------------------------------------------


def test_kappa_matches_worked_examples():
    # Cohen's kappa: 20 both yes, 5 only A, 10 only B, 15 both no -> po 0.7, pe 0.5 -> 0.4
    pairs = [(True, True)] * 20 + [(True, False)] * 5 + [(False, True)] * 10 + [(False, False)] * 15
    assert cohen_kappa(pairs) == pytest.approx(0.4)
    assert cohen_kappa([(True, True)] * 5) is None  # chance agreement 1: undefined, not 1.0
    # Linear-weighted kappa on 5 levels: 2 studies exact at 0 and 4, one off by one (0 vs 1).
    # p = {(0,0):1/3, (4,4):1/3, (0,1):1/3}; po_w = 1/3 + 1/3 + 0.75/3 = 0.9167
    # rows (2/3 at 0, 1/3 at 4), cols (1/3 at 0, 1, 4): pe_w = 2/9 + 2/9*0.75 + 1/9*0.25 + 1/9 = 19/36
    assert weighted_kappa([(0, 0), (4, 4), (0, 1)]) == pytest.approx((11 / 12 - 19 / 36) / (1 - 19 / 36))
    assert weighted_kappa([(2, 2)] * 4) is None


def test_agreement_of_two_imported_reviewers_who_disagree(run, tmp_path):
    studies = _studies(run)
    rows = []
    expected_present = {"confirmed": 0, "rejected": 0}
    for i, (key, doc) in enumerate(sorted(studies.items())):
        present = [f for f in doc["findings"] if f["status"] == "present" and f["code"] != "no_finding"]
        for f in doc["findings"]:
            rows.append([key, "alice", f["code"], "agree", "", ""])
            # bob rejects the first present finding of every other study
            bob = "disagree" if (i % 2 == 0 and present and f is present[0]) else "agree"
            rows.append([key, "bob", f["code"], bob, "", ""])
            if f in present:
                expected_present["confirmed"] += 1 + (bob == "agree")
                expected_present["rejected"] += bob == "disagree"
        if i == 1:
            rows.append([key, "bob", "atelectasis", "added", "", ""])
        rows.append([key, "alice", "", "", doc["risk"]["level"], ""])
        rows.append([key, "bob", "", "", "high" if i % 3 == 0 else doc["risk"]["level"], ""])
    import_reviews(run, _csv(tmp_path / "two.csv", rows))
    result, path = write_agreement(run)
    assert path == run / "agreement.json" and json.loads(path.read_text())["counts"] == result["counts"]
    total = result["model_vs_reviewer"]["total"]
    assert total["confirmed"] == expected_present["confirmed"] and total["rejected"] == expected_present["rejected"]
    assert total["ppv"]["value"] == pytest.approx(total["confirmed"] / (total["confirmed"] + total["rejected"]))
    assert total["missed_added"] == 1 and total["missed"] >= 1
    (pair,) = result["reviewer_pairs"]
    assert (pair["a"], pair["b"], pair["studies"]) == ("alice", "bob", len(studies))
    atelectasis = next(f for f in pair["findings"] if f["code"] == "atelectasis")
    assert atelectasis["only_b"] == 1 and atelectasis["n"] == len(studies)
    assert pair["risk"]["n"] + pair["risk"]["indeterminate"] == len(studies)
    lines = agreement_lines(result)
    assert lines[0].startswith(f"Agreement in run run: {len(studies)} of {len(studies)} studies with a report reviewed")
    assert any(line.startswith("Reviewer vs reviewer: alice vs bob") for line in lines)
    assert any("weighted kappa" in line for line in lines)
    index = (run / "index.html").read_text()
    assert "Reader review" in index and "alice vs bob" in index
    assert any(r["kind"] == "agreement" for r in read_ledger(run / "ledger.jsonl").records)
    assert verify_run(run).ok
    (run / "agreement.json").write_text("{}")
    assert "file_edited" in {p.kind for p in verify_run(run).problems}


def test_a_report_written_before_finding_ids_gets_the_ids_a_regrade_would_give(run):
    from medvlm.finding_ids import ids_for_codes
    from medvlm.review.runview import _with_finding_ids

    key, doc = _study_with(run, "pleural_effusion")
    expected = [f["id"] for f in doc["findings"]]
    for f in doc["findings"]:
        del f["id"]
    _with_finding_ids(doc, key)
    assert [f["id"] for f in doc["findings"]] == expected == ids_for_codes(
        key, doc["model_output"]["text"], [f["code"] for f in doc["findings"]])
