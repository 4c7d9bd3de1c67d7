"""End to end: the real CLI over the committed sample studies with the real demo model."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pypdf import PdfReader
from typer.testing import CliRunner

from medvlm import DEMO_NOTICE, RESEARCH_BANNER
from medvlm.cli import app
from medvlm.report.validate import validate_report

SAMPLE_STUDIES = Path(__file__).resolve().parent.parent / "sample_data" / "studies"

runner = CliRunner()


def _read_summary(out: Path) -> list[dict]:
    with open(out / "summary.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory, _isolated_cache):
    """`medvlm batch` run as a user runs it: a subprocess on the console script's module."""
    if not SAMPLE_STUDIES.is_dir():
        pytest.fail("sample_data/studies is missing: run `make sample-data`")
    out = tmp_path_factory.mktemp("run") / "demo"
    env = {**os.environ, "MEDVLM_CACHE_DIR": str(_isolated_cache)}
    proc = subprocess.run(
        [sys.executable, "-m", "medvlm", "batch", str(SAMPLE_STUDIES), "--modality", "chest_xray",
         "--model", "demo", "--out", str(out), "--max-new-tokens", "32", "--batch-size", "2"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    return proc, out


def test_batch_exits_zero_and_writes_one_row_per_study(sample_run):
    proc, out = sample_run
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    rows = _read_summary(out)
    assert len(rows) >= 4
    assert all(r["status"] == "ok" for r in rows), rows
    assert len({r["study_key"] for r in rows}) == len(rows)


def test_every_report_validates_and_says_research_only_and_demo(sample_run):
    _, out = sample_run
    for row in _read_summary(out):
        study_dir = out / row["study_key"]
        doc = json.loads((study_dir / "report.json").read_text(encoding="utf-8"))
        validate_report(doc)
        assert doc["research_use_only"] is True
        assert doc["demo_notice"] == DEMO_NOTICE
        assert doc["provenance"]["model"]["random_weights"] is True
        assert doc["risk"]["level"] == row["risk_level"]
        html = (study_dir / "report.html").read_text(encoding="utf-8")
        assert RESEARCH_BANNER in html and DEMO_NOTICE in html
        pdf_text = " ".join(page.extract_text() for page in PdfReader(study_dir / "report.pdf").pages)
        assert "RESEARCH USE ONLY" in pdf_text
        assert "random weights" in pdf_text
        for f in doc["findings"]:
            ev = f["evidence"]
            assert doc["model_output"]["text"][ev["start"] : ev["end"]] == ev["text"]
        if doc["model_output"]["answer_status"] != "complete":
            assert doc["risk"]["level"] != "normal"


def test_no_patient_identifiers_in_any_output(sample_run):
    """The sample DICOMs carry fake names/IDs; none may leak into any file medvlm wrote."""
    import pydicom

    _, out = sample_run
    identifiers = set()
    for path in SAMPLE_STUDIES.rglob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        for keyword in ("PatientName", "PatientID", "PatientBirthDate", "StudyInstanceUID", "AccessionNumber"):
            value = str(ds.get(keyword, "") or "")
            if len(value) >= 4:
                identifiers.add(value)
    assert identifiers, "sample data should carry identifiers to test against"
    for path in out.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".html", ".csv", ".jsonl"):
            text = path.read_text(encoding="utf-8", errors="replace")
            for ident in identifiers:
                assert ident not in text, f"{ident!r} leaked into {path.name}"


def test_regrade_round_trips_the_run(sample_run, tmp_path):
    import shutil

    _, out = sample_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    before = {r["study_key"]: r for r in _read_summary(copy)}
    result = runner.invoke(app, ["regrade", str(copy), "--no-pdf"])
    assert result.exit_code == 0, result.output
    after = {r["study_key"]: r for r in _read_summary(copy)}
    assert before.keys() == after.keys()
    for key in after:
        doc = json.loads((copy / key / "report.json").read_text())
        validate_report(doc)
        assert doc["provenance"]["regraded_at"]
        assert after[key]["risk_level"] == before[key]["risk_level"]  # same text, same rules: same grade
        assert not (copy / key / "report.pdf").exists()  # --no-pdf removes the PDF of the old grade
    from medvlm.audit.verify import verify_run

    verdict = verify_run(copy)
    assert not verdict.problems, [p.message for p in verdict.problems]


def test_regrade_with_edited_rules_records_them_and_keeps_the_audit_chain(sample_run, tmp_path):
    """An edited rules file is applied without the model; its path and hash reach every report and the ledger."""
    import shutil

    from medvlm.audit.verify import verify_run
    from medvlm.paths import PACKAGE_DIR

    _, out = sample_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    rules_text = (PACKAGE_DIR / "risk" / "rules" / "chest_xray.yaml").read_text()
    custom = tmp_path / "rules.yaml"
    custom.write_text(rules_text + "\n# local edit: the content hash changes\n")
    result = runner.invoke(app, ["regrade", str(copy), "--rules", str(custom), "--no-pdf"])
    assert result.exit_code == 0, result.output
    for row in _read_summary(copy):
        doc = json.loads((copy / row["study_key"] / "report.json").read_text())
        assert doc["provenance"]["rules"]["path"] == str(custom)
        assert doc["provenance"]["rules"]["sha256"] == hashlib.sha256(custom.read_bytes()).hexdigest()
    assert not verify_run(copy).problems


def test_missing_model_is_one_line_exit_2(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "no-cache"))
    result = runner.invoke(app, ["batch", str(SAMPLE_STUDIES), "--model", "qwen2.5-vl-3b", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "not on this machine" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "o").exists()


def test_usage_errors_exit_2(tmp_path):
    assert runner.invoke(app, ["batch", str(tmp_path / "nope"), "--model", "demo"]).exit_code == 2
    assert runner.invoke(app, ["batch", str(SAMPLE_STUDIES), "--modality", "xray", "--model", "demo"]).exit_code == 2
    assert runner.invoke(app, ["batch", str(SAMPLE_STUDIES), "--batch-size", "0", "--model", "demo"]).exit_code == 2


def test_models_lists_presets_and_availability():
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0
    for name in ("medgemma-4b", "smolvlm-256m", "qwen2.5-vl-3b", "demo"):
        assert name in result.output
