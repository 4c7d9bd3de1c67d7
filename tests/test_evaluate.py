"""`medvlm evaluate` on hand-made runs and tables whose answers are worked out by hand, plus a real demo run."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medvlm.cli import app
from medvlm.evaluate import evaluate_run
from medvlm.evaluate.metrics import wilson

runner = CliRunner()
PROJECT = Path(__file__).resolve().parent.parent

# The hand-made run: source, status, findings {code: status}, risk, answer status.
STUDIES = [
    ("s-alpha", "alpha/IM0001.dcm", "ok", {"pleural_effusion": "present", "pneumothorax": "absent"}, "moderate", "complete"),
    ("s-bravo", "bravo", "ok", {"cardiomegaly": "present", "pleural_effusion": "uncertain"}, "low", "complete"),
    ("s-charlie", "charlie.dcm", "ok", {"no_finding": "present"}, "normal", "complete"),
    ("s-delta", "delta/chest.png", "ok", {"pneumothorax": "present", "nodule": "present"}, "critical", "complete"),
    ("s-echo", "echo/IM0001.dcm", "error", {}, "", ""),
    ("s-fox", "foxtrot/IM0001.dcm", "ok", {}, "indeterminate", "empty"),
]
INPUTS = {"s-bravo": ["bravo/IM0001.dcm", "bravo/IM0002.dcm"]}


def make_run(root: Path) -> Path:
    """A run folder as `medvlm batch` leaves it (summary.csv + report.json per study), written by hand."""
    run = root / "run"
    run.mkdir()
    rows = []
    for key, source, status, findings, risk, answer in STUDIES:
        row = {"study_key": key, "source": source, "modality": "chest_xray", "status": status, "risk_level": risk,
               "present_findings": ";".join(sorted(c for c, s in findings.items() if s == "present")),
               "answer_status": answer, "stage": "" if status == "ok" else "model",
               "reason": "" if status == "ok" else "RuntimeError: boom", "report": ""}
        if status == "ok":
            (run / key).mkdir()
            doc = {"findings": [{"code": c, "status": s} for c, s in findings.items()],
                   "model_output": {"answer_status": answer, "text": "..."}, "risk": {"level": risk},
                   "demo_notice": None,
                   "provenance": {"inputs": [{"file": f, "sha256": "0" * 64} for f in INPUTS.get(key, [source])]}}
            (run / key / "report.json").write_text(json.dumps(doc), encoding="utf-8")
            row["report"] = f"{key}/report.json"
        rows.append(row)
    with open(run / "summary.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return run


def write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


LONG = """study,findings
alpha,pleural_effusion
bravo,cardiomegaly;pleural_effusion
charlie.dcm,
delta/chest.png,pneumothorax
echo,nodule
zulu,mass
"""


def by_code(ev: dict) -> dict:
    return {f["code"]: f for f in ev["findings"]}


def test_wilson_matches_published_values():
    w = wilson(8, 10)
    assert (round(w["low"], 3), round(w["high"], 3)) == (0.490, 0.943)
    w = wilson(1, 2)
    assert (round(w["low"], 4), round(w["high"], 4)) == (0.0945, 0.9055)
    assert wilson(0, 0) is None


def test_long_table_counts_and_f1_worked_by_hand(tmp_path):
    run = make_run(tmp_path)
    ev = evaluate_run(run, write(tmp_path / "truth.csv", LONG)).evaluation
    assert ev["truth"]["format"] == "long"
    assert ev["truth"]["codes"] == ["cardiomegaly", "pleural_effusion", "mass", "nodule", "pneumothorax"]
    f = by_code(ev)
    assert (f["cardiomegaly"]["tp"], f["cardiomegaly"]["fp"], f["cardiomegaly"]["fn"], f["cardiomegaly"]["tn"]) == (1, 0, 0, 3)
    # bravo's effusion is uncertain in the report: negative by default, so a false negative
    assert (f["pleural_effusion"]["tp"], f["pleural_effusion"]["fn"], f["pleural_effusion"]["tn"]) == (1, 1, 2)
    assert f["pleural_effusion"]["f1"]["value"] == pytest.approx(2 / 3)
    assert f["pleural_effusion"]["sensitivity"]["value"] == 0.5
    assert (f["nodule"]["fp"], f["nodule"]["tp"], f["nodule"]["f1"]["value"]) == (1, 0, 0.0)  # echo failed, delta FP
    assert f["mass"]["f1"] is None and f["mass"]["tn"] == 4  # zulu's mass is unmatched: no positive anywhere
    assert ev["micro_f1"]["value"] == pytest.approx(6 / 8)
    assert ev["macro_f1"]["value"] == pytest.approx((1 + 2 / 3 + 0 + 1) / 4)
    lo, hi = ev["micro_f1"]["low"], ev["micro_f1"]["high"]
    assert 0 <= lo <= 0.75 <= hi <= 1
    assert ev["study_level"]["exact_match"]["value"] == 0.5
    c = ev["counts"]
    assert (c["evaluated_studies"], c["unmatched_truth_rows"], c["unmatched_run_studies"], c["not_evaluated"]) == (4, 1, 1, 1)
    assert ev["matching"]["unmatched_truth"] == ["zulu"]
    assert ev["matching"]["unmatched_run"] == ["foxtrot/IM0001.dcm"]
    assert ev["matching"]["not_evaluated"][0]["id"] == "echo"
    assert ev["risk"]["by_truth"] == {"normal": {"normal": 1}, "abnormal": {"moderate": 1, "low": 1, "critical": 1}}


@pytest.mark.parametrize("policy, tp, fn, ignored, micro", [
    ("negative", 1, 1, 0, 6 / 8),
    ("positive", 2, 0, 0, 8 / 9),
    ("ignore", 1, 0, 1, 6 / 7),
])
def test_uncertain_as_policies(tmp_path, policy, tp, fn, ignored, micro):
    run = make_run(tmp_path)
    ev = evaluate_run(run, write(tmp_path / "truth.csv", LONG), uncertain_as=policy).evaluation
    eff = by_code(ev)["pleural_effusion"]
    assert (eff["tp"], eff["fn"], eff["ignored"]) == (tp, fn, ignored)
    assert ev["micro_f1"]["value"] == pytest.approx(micro)


WIDE = """Path,Sex,Age,Frontal/Lateral,No Finding,Cardiomegaly,Pleural Effusion,Pneumothorax,Nodule
alpha/IM0001.dcm,F,50,Frontal,,0,1,,
bravo,M,60,Frontal,,1.0,-1.0,0,
charlie.dcm,F,40,Frontal,1,,,,
delta/chest.png,M,70,Frontal,,,,1,0
"""


@pytest.mark.parametrize("policy, effusion", [("negative", (1, 0, 0, 3)), ("positive", (2, 0, 0, 2)), ("ignore", (1, 0, 0, 2))])
def test_wide_chexpert_style_table(tmp_path, policy, effusion):
    run = make_run(tmp_path)
    ev = evaluate_run(run, write(tmp_path / "wide.csv", WIDE), uncertain_as=policy).evaluation
    assert ev["truth"]["format"] == "wide"
    assert set(ev["truth"]["ignored_columns"]) == {"Sex", "Age", "Frontal/Lateral"}
    assert ev["truth"]["columns"]["Pleural Effusion"] == "pleural_effusion"
    f = by_code(ev)
    e = f["pleural_effusion"]
    assert (e["tp"], e["fp"], e["fn"], e["tn"]) == effusion  # bravo: label -1 and finding uncertain
    nf = f["no_finding"]  # charlie is the only normal study, and the only one with nothing asserted
    assert (nf["tp"], nf["fp"], nf["fn"], nf["tn"]) == (1, 0, 0, 3)
    assert (f["nodule"]["fp"], f["nodule"]["tn"]) == (1, 3)
    assert ev["counts"]["unmatched_run_studies"] == 2  # echo and foxtrot have no row


def test_nih_table_matches_by_file_name_and_lists_ambiguous_rows(tmp_path):
    run = make_run(tmp_path)
    nih = "Image Index,Finding Labels,Patient ID\nchest.png,Pneumothorax|Nodule,1\ncharlie.dcm,No Finding,2\nIM0001.dcm,Effusion,3\n"
    ev = evaluate_run(run, write(tmp_path / "nih.csv", nih)).evaluation
    assert ev["truth"]["format"] == "nih"
    assert {"atelectasis", "pleural_effusion", "hernia", "pneumothorax"} <= set(ev["truth"]["codes"])
    f = by_code(ev)
    assert (f["pneumothorax"]["tp"], f["nodule"]["tp"], f["nodule"]["fp"]) == (1, 1, 0)
    assert ev["counts"]["evaluated_studies"] == 2
    amb = ev["matching"]["ambiguous_truth"]
    assert amb and amb[0]["id"] == "IM0001.dcm" and "alpha/IM0001.dcm" in amb[0]["candidates"]


def test_mapping_file_for_unknown_labels(tmp_path):
    run = make_run(tmp_path)
    table = write(tmp_path / "t.csv", "study,Pleural Fluid,Heart Big\nalpha,1,0\nbravo,0,1\n")
    res = runner.invoke(app, ["evaluate", str(run), "--truth", str(table)])
    assert res.exit_code == 2 and "unknown label 'Pleural Fluid'" in res.output and "--map" in res.output
    mapping = write(tmp_path / "map.yaml", "Pleural Fluid: pleural_effusion\nHeart Big: cardiomegaly\n")
    ev = evaluate_run(run, table, mapping=mapping).evaluation
    assert ev["truth"]["columns"] == {"Pleural Fluid": "pleural_effusion", "Heart Big": "cardiomegaly"}
    assert by_code(ev)["cardiomegaly"]["tp"] == 1
    csv_map = write(tmp_path / "map.csv", "label,code\nPleural Fluid,pleural_effusion\nHeart Big,ignore\n")
    ev = evaluate_run(run, table, mapping=csv_map, out=tmp_path / "elsewhere").evaluation
    assert ev["truth"]["codes"] == ["pleural_effusion"]


@pytest.mark.parametrize("content, message", [
    ("foo,findings\nalpha,pleural_effusion\n", "no id column"),
    ("study,findings\nalpha,dragon scales\n", "unknown label 'dragon scales'"),
    ("study,findings\nalpha,nodule\nalpha,mass\n", "duplicate id 'alpha'"),
    (b"study,findings\nalph\xe9,nodule\n", "not UTF-8"),
    ("", "empty file"),
    ("study,Cardiomegaly\nalpha,yes\n", "no label columns"),
    ("study,findings\n", "no rows"),
])
def test_bad_tables_are_one_line_exit_2_and_write_nothing(tmp_path, content, message):
    run = make_run(tmp_path)
    before = sorted(p.name for p in run.iterdir())
    table = write(tmp_path / "bad.csv", content)
    res = runner.invoke(app, ["evaluate", str(run), "--truth", str(table)])
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1, res.output
    assert sorted(p.name for p in run.iterdir()) == before  # no lock, ledger or evaluation files


def test_usage_errors(tmp_path):
    run = make_run(tmp_path)
    table = write(tmp_path / "truth.csv", LONG)
    assert runner.invoke(app, ["evaluate", str(run), "--truth", str(tmp_path / "missing.csv")]).exit_code == 2
    res = runner.invoke(app, ["evaluate", str(run), "--truth", str(table), "--uncertain-as", "maybe"])
    assert res.exit_code == 2 and "--uncertain-as" in res.output
    res = runner.invoke(app, ["evaluate", str(tmp_path / "nope"), "--truth", str(table)])
    assert res.exit_code == 2 and "not a medvlm run folder" in res.output


def test_cli_table_and_files(tmp_path):
    run = make_run(tmp_path)
    table = write(tmp_path / "truth.csv", LONG)
    res = runner.invoke(app, ["evaluate", str(run), "--truth", str(table)])
    assert res.exit_code == 0, res.output
    assert "pleural_effusion" in res.output and "micro-F1 0.750" in res.output
    assert "1 rows unmatched" in res.output and "1 studies without a row" in res.output
    for name in ("evaluation.json", "evaluation.html", "evaluation.png"):
        assert (run / name).is_file()
    assert (run / "evaluation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (run / "evaluation.html").read_text(encoding="utf-8")
    assert "Wilson" in html and "bootstrap" in html and "data:image/png;base64," in html
    assert "zulu" in html and "foxtrot/IM0001.dcm" in html  # unmatched rows and studies are listed
    assert 'href="evaluation.html"' in (run / "index.html").read_text(encoding="utf-8")
    records = [json.loads(line) for line in (run / "ledger.jsonl").read_text().splitlines()]
    assert any(r["kind"] == "evaluation" and r["truth"]["sha256"] for r in records)


def test_real_demo_run_evaluated_links_from_index_and_still_verifies(tmp_path, _isolated_cache):
    """A real batch on phantoms with the demo model (meaningless text), then evaluate: the run stays verifiable."""
    from medvlm.audit.verify import verify_run
    from medvlm.phantoms import generate

    studies = tmp_path / "ph"
    generate(studies, 3, seed=1, size=96, png_share=0.0)
    out = tmp_path / "run"
    env = {**os.environ, "MEDVLM_CACHE_DIR": str(_isolated_cache)}
    proc = subprocess.run([sys.executable, "-m", "medvlm", "batch", str(studies), "--model", "demo", "--out", str(out),
                           "--max-new-tokens", "4", "--no-pdf"], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-1500:]
    result = evaluate_run(out, studies / "truth.csv")
    assert result.linked_from_index and result.evaluation["counts"]["evaluated_studies"] == 3
    assert result.evaluation["model_notice"]  # the demo notice travels onto the evaluation page
    assert 'href="evaluation.html"' in (out / "index.html").read_text(encoding="utf-8")
    assert verify_run(out).ok
    ledger = (out / "ledger.jsonl").read_bytes()
    elsewhere = evaluate_run(out, studies / "truth.csv", out=tmp_path / "eval")
    assert not elsewhere.linked_from_index and (tmp_path / "eval" / "evaluation.html").is_file()
    assert (out / "ledger.jsonl").read_bytes() == ledger  # evaluating into another folder leaves the run alone
