"""`medvlm verify`: an intact run passes; an edited report, a deleted report, a broken chain and a
report without a ledger record are each named."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from audit_support import attempts, make_png_studies, read_summary
from medvlm.audit.verify import verify_run
from medvlm.cli import app
from medvlm.config import RunConfig
from medvlm.pipeline import run_batch

runner = CliRunner()


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, demo_backend):
    """One real demo batch per module; each test tampers with its own copy."""
    root = tmp_path_factory.mktemp("verify")
    studies = make_png_studies(root / "studies", 4)
    out = root / "out"
    config = RunConfig(studies=studies, out=out, modality="chest_xray", model="demo", max_new_tokens=8, write_pdf=False)
    result = run_batch(config, backend=demo_backend)
    assert result.count("ok") == 4
    return root


@pytest.fixture
def run_dir(base_run, tmp_path):
    shutil.copytree(base_run / "studies", tmp_path / "studies")
    shutil.copytree(base_run / "out", tmp_path / "out")
    return tmp_path / "out"


def test_intact_run_verifies(run_dir):
    result = verify_run(run_dir)
    assert result.ok, [str(p) for p in result.problems]
    assert result.reports == 4 and result.files >= 8
    cli = runner.invoke(app, ["verify", str(run_dir)])
    assert cli.exit_code == 0 and cli.output.startswith("OK: ledger")


def test_tampering_is_named_and_exits_1(run_dir):
    keys = sorted(r["study_key"] for r in read_summary(run_dir))
    edited, deleted, stray = keys[0], keys[1], keys[2]
    doc = json.loads((run_dir / edited / "report.json").read_text())
    doc["risk"]["level"] = "normal"
    doc["model_output"]["text"] += " (edited)"
    (run_dir / edited / "report.json").write_text(json.dumps(doc, indent=2))
    (run_dir / deleted / "report.json").unlink()
    # Break the chain: drop the attempt record of `stray`, so its report also has no record.
    ledger = run_dir / "ledger.jsonl"
    lines = ledger.read_text().splitlines()
    lines = [ln for ln in lines if f'"study_key":"{stray}"' not in ln]
    ledger.write_text("\n".join(lines) + "\n")

    kinds = {(p.kind, p.where.split("/")[0] if "/" in p.where else p.where) for p in verify_run(run_dir).problems}
    assert ("report_edited", edited) in kinds
    assert ("report_deleted", deleted) in kinds
    assert ("unrecorded_report", stray) in kinds
    assert any(k == "broken_chain" for k, _ in kinds)

    cli = runner.invoke(app, ["verify", str(run_dir)])
    assert cli.exit_code == 1
    assert f"{edited}/report.json: report edited" in cli.output
    assert f"{deleted}/report.json: report deleted" in cli.output
    assert "broken chain" in cli.output
    assert f"{stray}/report.json: report without a ledger record" in cli.output


def test_edited_thumbnail_and_summary_are_named(run_dir):
    key = attempts(run_dir)[-1]["study_key"]
    (run_dir / key / "image-1.png").write_bytes(b"not the thumbnail")
    (run_dir / "summary.csv").write_text((run_dir / "summary.csv").read_text().replace(",ok,", ",error,", 1))
    kinds = {p.kind for p in verify_run(run_dir).problems}
    assert {"file_edited", "summary_mismatch"} <= kinds


def test_a_batch_refuses_to_append_to_a_broken_chain(run_dir, tmp_path, demo_backend):
    from medvlm.errors import UsageProblem

    ledger = run_dir / "ledger.jsonl"
    lines = ledger.read_text().splitlines()
    del lines[2]
    ledger.write_text("\n".join(lines) + "\n")
    config = RunConfig(studies=tmp_path / "studies", out=run_dir, model="demo", max_new_tokens=8, write_pdf=False)
    with pytest.raises(UsageProblem, match="broken chain"):
        run_batch(config, backend=demo_backend)


def test_not_a_run_folder_is_usage_error(tmp_path):
    assert runner.invoke(app, ["verify", str(tmp_path)]).exit_code == 2
    assert runner.invoke(app, ["verify", str(tmp_path / "missing")]).exit_code == 2
