"""Every CSV medvlm writes (summary.csv, extract, export) is safe to open in a spreadsheet and reads back row for row.

Cells that a spreadsheet would run as a formula get one leading apostrophe (csvsafe.py, docs/export.md);
a CR or LF inside a cell is quoted so pandas and the csv module see one row per record; Parquet and
JSON lines keep the raw text. Files are read back with the csv module and, when installed, pandas.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from audit_support import cli
from medvlm import csvsafe

SAMPLE_PNG = Path(__file__).resolve().parent.parent / "sample_data" / "studies" / "png_study_001" / "chest.png"
TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
HOSTILE = ["=cmd|' /C calc'!A0", "@SUM(A1)", "+1+2", "-2+3", "\tTAB", "\rCR", "'quoted", "=HYPERLINK(\"http://x\")"]


def _medvlm(*args, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return cli(*args, cwd=cwd, timeout=timeout)


def _csv_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _assert_no_formula_cells(rows: list[dict]) -> None:
    for row in rows:
        for column, value in row.items():
            assert not (value or "").startswith(TRIGGERS), (column, value)


# ---------------------------------------------------------------- the rule itself


@pytest.mark.parametrize("text", HOSTILE + ["plain", "", "a=b", "x\r\ny", "12"])
def test_neutralise_is_reversible_and_leaves_no_formula_start(text):
    written = csvsafe.neutralise(text)
    assert not written.startswith(TRIGGERS)
    assert csvsafe.restore(written) == text
    if text[:1] not in TRIGGERS + ("'",):
        assert written == text  # ordinary text is written as is


def test_numbers_stay_numbers_and_missing_values_are_empty():
    text = csvsafe.to_text(["n", "f", "neg", "none"], [{"n": -5, "f": -0.5, "neg": "-5", "none": None}])
    assert text.splitlines()[1] == "-5,-0.5,'-5,"


def test_cr_and_lf_inside_cells_are_quoted_and_records_end_in_lf():
    rows = [{"a": "one\rtwo", "b": "x"}, {"a": "three\nfour", "b": "y"}, {"a": "five\r\nsix", "b": "z"}]
    text = csvsafe.to_text(["a", "b"], rows)
    assert text.count("\n") - sum(r["a"].count("\n") for r in rows) == 4  # header + 3 records, LF-terminated
    back = [{k: csvsafe.restore(v) for k, v in r.items()} for r in csv.DictReader(io.StringIO(text, newline=""))]
    assert back == rows
    assert len(pd.read_csv(io.StringIO(text))) == 3


# ---------------------------------------------------------------- summary.csv and export through the real CLI


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory, demo_model_dir):
    """A real batch over PNG studies whose names a spreadsheet would execute, and one with a bare CR."""
    root = tmp_path_factory.mktemp("csvsafe")
    studies = root / "studies"
    studies.mkdir()
    names = ["=cmd|' ", "@SUM(A1)", "+1+2", "-2+3", "a\rb"]
    for name in names[1:]:
        shutil.copy(SAMPLE_PNG, studies / f"{name}.png")
    (studies / names[0]).mkdir()  # `=cmd|' /C calc'!A0.png`: the slash makes a study folder
    shutil.copy(SAMPLE_PNG, studies / names[0] / "C calc'!A0.png")
    out = root / "run"
    proc = _medvlm("batch", studies, "--model", "demo", "--max-new-tokens", "8", "--no-pdf", "--out", out, cwd=root)
    return proc, out, root, len(names)


def test_summary_csv_neutralises_file_names_and_keeps_one_row_per_study(hostile_run):
    proc, out, _, n = hostile_run
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = _csv_rows(out / "summary.csv")
    assert len(rows) == n
    _assert_no_formula_cells(rows)
    sources = {csvsafe.restore(r["source"]) for r in rows}
    assert {"@SUM(A1).png", "+1+2.png", "-2+3.png", "a\rb.png"} <= sources
    assert any(s.startswith("=cmd|' ") for s in sources)
    assert sources == {r["source"] for r in csvsafe.read_rows(out / "summary.csv")}
    frame = pd.read_csv(out / "summary.csv", dtype=str, keep_default_na=False)
    assert len(frame) == n
    assert set(csvsafe.read_csv(out / "summary.csv", dtype=str, keep_default_na=False)["source"]) == sources


def test_export_csv_with_phi_is_neutralised_and_jsonl_keeps_raw_text(hostile_run):
    _, out, root, n = hostile_run
    proc = _medvlm("export", out, "--format", "csv", "--include-phi", "--out", root / "csv", cwd=root)
    assert proc.returncode == 0, proc.stderr
    rows = _csv_rows(root / "csv" / "studies.csv")
    assert len(rows) == n
    _assert_no_formula_cells(rows)
    raw = {csvsafe.restore(r["source"]) for r in rows}
    assert "@SUM(A1).png" in raw and "a\rb.png" in raw
    for table in ("findings", "reviews"):
        _assert_no_formula_cells(_csv_rows(root / "csv" / f"{table}.csv"))
    assert len(pd.read_csv(root / "csv" / "studies.csv")) == n
    proc = _medvlm("export", out, "--format", "jsonl", "--include-phi", "--out", root / "jsonl", cwd=root)
    assert proc.returncode == 0, proc.stderr
    lines = (root / "jsonl" / "studies.jsonl").read_text(encoding="utf-8").splitlines()
    assert {json.loads(line)["source"] for line in lines} == raw  # raw text, no apostrophes


def test_export_parquet_keeps_raw_text(hostile_run):
    _, out, root, n = hostile_run
    proc = _medvlm("export", out, "--format", "parquet", "--include-phi", "--out", root / "pq", cwd=root)
    assert proc.returncode == 0, proc.stderr
    sources = set(pd.read_parquet(root / "pq" / "studies.parquet")["source"])
    assert "@SUM(A1).png" in sources and "a\rb.png" in sources


# ---------------------------------------------------------------- medvlm extract


def test_extract_neutralises_evidence_and_ids_and_pandas_reads_every_row(tmp_path):
    src = tmp_path / "reports.csv"
    with open(src, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "report"])
        writer.writerow(["=1+1", "=cmd|' /C calc'!A0 pneumothorax."])
        writer.writerow(["r2", "+SUM(1) no effusion."])
        writer.writerow(["r3", "Small left\rpleural effusion. No pneumothorax."])
        writer.writerow(["@r4", "-Cardiomegaly."])
    out = tmp_path / "findings.csv"
    proc = _medvlm("extract", src, "--id-column", "id", "--text-column", "report", "--out", out, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = _csv_rows(out)
    reported = int(proc.stdout.split()[0])
    assert len(rows) == reported >= 5
    _assert_no_formula_cells(rows)
    restored = csvsafe.read_rows(out)
    assert {"=1+1", "r2", "r3", "@r4"} <= {r["id"] for r in restored}
    assert any(r["evidence"].startswith("=cmd|' /C calc'!A0") for r in restored)
    assert any(r["evidence"].startswith("+SUM(1)") for r in restored)
    assert any("\r" in r["evidence"] for r in restored)  # a bare CR inside a quoted cell, still one row
    assert len(pd.read_csv(out, dtype=str, keep_default_na=False)) == reported
