"""`medvlm export`: studies and findings tables round-trip through pandas in every format."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from audit_support import make_png_studies, read_summary
from medvlm.audit.export import FINDING_COLUMNS, STUDY_COLUMNS, build_tables
from medvlm.cli import app
from medvlm.config import RunConfig
from medvlm.models.base import BackendBase, ModelInfo
from medvlm.pipeline import run_batch
from medvlm.records import ModelOutput

runner = CliRunner()


class FixedTextBackend(BackendBase):
    """Answers every study with the same report text, so the findings table has known rows."""

    info = ModelInfo(
        name="fixed", source="tests", local_dir=None, revision=None, random_weights=False,
        dtype="float32", quantization="none", device="cpu",
    )

    def generate(self, batch, *, max_new_tokens, ignore_eos=False):
        text = "Small left pleural effusion. No pneumothorax. Possible right lower lobe consolidation."
        return [ModelOutput(text=text, answer_status="complete", prompt_tokens=10, new_tokens=12) for _ in batch]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    studies = make_png_studies(root / "studies", 3)
    (studies / "broken.png").write_bytes(b"not a png")  # one error row
    out = root / "out"
    config = RunConfig(studies=studies, out=out, model="demo", max_new_tokens=8, write_pdf=False)
    run_batch(config, backend=FixedTextBackend())
    return out


def _expected(out):
    rows = read_summary(out)
    findings = 0
    for row in rows:
        path = out / row["study_key"] / "report.json"
        if row["status"] == "ok":
            findings += len(json.loads(path.read_text())["findings"])
    return rows, findings


READERS = {"csv": pd.read_csv, "parquet": pd.read_parquet, "jsonl": lambda p: pd.read_json(p, lines=True)}


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_export_round_trip(run_dir, tmp_path, fmt):
    rows, n_findings = _expected(run_dir)
    result = runner.invoke(app, ["export", str(run_dir), "--format", fmt, "--out", str(tmp_path / fmt)])
    assert result.exit_code == 0, result.output
    studies = READERS[fmt](tmp_path / fmt / f"studies.{fmt}")
    assert len(studies) == len(rows)
    assert list(studies.columns) == STUDY_COLUMNS
    assert sorted(studies["study_key"]) == sorted(r["study_key"] for r in rows)
    assert (studies["status"] == "ok").sum() == sum(r["status"] == "ok" for r in rows)
    assert studies.loc[studies["status"] == "ok", "report_sha256"].notna().all()
    assert n_findings >= 6
    if n_findings:
        findings = READERS[fmt](tmp_path / fmt / f"findings.{fmt}")
        assert len(findings) == n_findings
        assert list(findings.columns) == FINDING_COLUMNS
        assert set(findings["status"]) >= {"present", "absent"}


def test_findings_table_has_one_row_per_study_finding(run_dir):
    studies, findings = build_tables(run_dir)
    ok = studies[studies["status"] == "ok"]
    assert len(findings) == int(ok["n_findings"].sum())
    assert set(findings["study_key"]) <= set(ok["study_key"])


def test_deidentified_by_default(run_dir, tmp_path):
    studies, _ = build_tables(run_dir)
    assert "source" not in studies.columns and not any(c.startswith("phi_") for c in studies.columns)
    assert not studies.astype(str).apply(lambda col: col.str.contains("cxr-0|broken.png")).any().any()
    with_phi, _ = build_tables(run_dir, include_phi=True)
    assert "source" in with_phi.columns and with_phi["source"].notna().all()


def test_bad_format_is_usage_error(run_dir, tmp_path):
    result = runner.invoke(app, ["export", str(run_dir), "--format", "xlsx", "--out", str(tmp_path)])
    assert result.exit_code == 2
