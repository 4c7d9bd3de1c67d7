"""Hostile folders and files driven through the real CLI (issue 16): each case is bounded in time and
checks no traceback, the documented exit code, nothing written on a usage error, and `verify`
failing wherever a report was altered outside medvlm. The demo model answers (few tokens)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from audit_support import attempts, batch_args, cli, png, read_summary

pytestmark = pytest.mark.usefixtures("demo_model_dir")  # built once per session, before the timed runs

TIMEOUT = 180  # seconds per command: a hang fails the test instead of stalling the suite


def medvlm(*args: str, timeout: float = TIMEOUT):
    return cli(*args, timeout=timeout)


def batch(studies: Path, out: Path, *extra: str):
    return medvlm(*batch_args(studies, out, *extra))


def reports(out: Path) -> dict[str, dict]:
    """source -> report.json of every study with a report."""
    docs = {}
    for path in sorted(out.glob("*/report.json")):
        doc = json.loads(path.read_text(encoding="utf-8"))
        docs[doc["images"][0]["source"]] = doc
    return docs


def notes_of(doc: dict) -> list[str]:
    return list(doc["study"].get("notes") or doc.get("notes") or [])


# ------------------------------------------------------------------ discovery (items 2, 3, 7)


def test_output_folder_inside_the_studies_folder_is_never_read_back(tmp_path):
    """Item 2: `cd data && medvlm batch .` twice (default --out runs/latest inside .) finds the same studies."""
    data = tmp_path / "data"
    png(data / "a.png", 1)
    png(data / "b.png", 2)
    out = data / "runs" / "latest"
    first = batch(data, out)
    assert first.returncode == 0, first.stderr
    second = batch(data, out)
    assert second.returncode == 0, second.stderr
    rows = read_summary(out)
    assert sorted(r["source"] for r in rows) == ["a.png", "b.png"]
    assert all(r["status"] == "ok" for r in rows)
    assert all("runs/" not in (r.get("source") or "") for r in attempts(out) for r in [r["row"]])


def test_out_equal_to_the_studies_folder_or_a_run_given_as_studies_is_a_usage_error(tmp_path):
    """Item 2: --out equal to the studies folder, or a run folder given as STUDIES: exit 2, nothing written."""
    data = tmp_path / "data"
    png(data / "a.png", 1)
    before = sorted(p.name for p in data.iterdir())
    proc = batch(data, data)
    assert proc.returncode == 2
    assert "is the studies folder" in proc.stderr
    assert sorted(p.name for p in data.iterdir()) == before  # nothing written into it
    run = tmp_path / "run"
    assert batch(data, run).returncode == 0
    other = tmp_path / "other"
    proc = batch(run, other)
    assert proc.returncode == 2 and "is a medvlm output folder" in proc.stderr
    assert not other.exists()


def test_non_utf8_file_name_is_a_study_with_an_escaped_source(tmp_path):
    """Item 3: a file named with bytes \\xff\\xfe (latin-1 zip) is read; its source shows escapes; resume works."""
    data = tmp_path / "data"
    png(data / "ok.png", 1)
    raw = os.fsencode(data) + b"/\xff\xfe.png"
    with open(raw, "wb") as fh:
        fh.write((data / "ok.png").read_bytes())
    out = tmp_path / "out"
    proc = batch(data, out)
    assert proc.returncode == 0, proc.stderr
    rows = {r["source"]: r for r in read_summary(out)}
    assert set(rows) == {"\\xff\\xfe.png", "ok.png"}
    assert rows["\\xff\\xfe.png"]["status"] == "ok"
    again = batch(data, out)  # the same key again: resumed, not a second row
    assert again.returncode == 0 and len(read_summary(out)) == 2
    assert medvlm("verify", str(out)).returncode == 0


def test_links_out_of_the_folder_and_named_pipes_are_not_read(tmp_path):
    """Item 7: a link to /, a FIFO named x.dcm and a FIFO notes.csv beside an image: no hang, one line each."""
    data = tmp_path / "data"
    png(data / "a.png", 1)
    png(data / "sub" / "b.png", 2)
    os.symlink("/", data / "root")
    os.mkfifo(data / "x.dcm")
    os.mkfifo(data / "sub" / "notes.csv")
    out = tmp_path / "out"
    t0 = time.monotonic()
    proc = batch(data, out)
    assert time.monotonic() - t0 < TIMEOUT
    assert proc.returncode == 0, proc.stderr
    rows = {r["source"]: r for r in read_summary(out)}
    assert rows["a.png"]["status"] == rows["sub/b.png"]["status"] == "ok"
    assert rows["root"]["status"] == "skipped" and "outside the studies folder" in rows["root"]["reason"]
    assert rows["x.dcm"]["status"] == "skipped" and "named pipe" in rows["x.dcm"]["reason"]
    assert rows["sub/notes.csv"]["status"] == "skipped" and "named pipe" in rows["sub/notes.csv"]["reason"]
    assert len(rows) == 5  # nothing from / was listed


def test_a_link_inside_the_folder_is_still_followed(tmp_path):
    """Item 7: the rule refuses links out of the studies folder only; --follow-links follows those too."""
    data = tmp_path / "data"
    png(data / "real" / "a.png", 1)
    os.symlink(data / "real", data / "alias")
    outside = png(tmp_path / "elsewhere" / "c.png", 3)
    os.symlink(outside, data / "c.png")
    out = tmp_path / "out"
    proc = batch(data, out)
    assert proc.returncode == 0, proc.stderr
    rows = {r["source"]: r for r in read_summary(out)}
    assert rows["alias/a.png"]["status"] == "ok"  # the link comes first by name; the folder is then skipped
    assert rows["c.png"]["status"] == "skipped"
    followed = batch(data, tmp_path / "out2", "--follow-links")
    assert followed.returncode == 0, followed.stderr
    assert {r["source"]: r["status"] for r in read_summary(tmp_path / "out2")}["c.png"] == "ok"


# ------------------------------------------------------------------ sidecars (items 5, 8)


def test_one_broken_sidecar_does_not_poison_its_neighbours(tmp_path):
    """Item 5: deeply nested JSON is rejected for its own image only; a BOM is fine; bad values are noted."""
    data = tmp_path / "data"
    for i, name in enumerate(("a", "b", "deepjson", "bom", "values")):
        png(data / f"{name}.png", i)
    (data / "deepjson.json").write_text("[" * 200_000 + "]" * 200_000)
    (data / "bom.json").write_text(json.dumps({"age": 61, "sex": "F", "indication": "cough"}), encoding="utf-8-sig")
    (data / "values.json").write_text('{"age": "abc", "sex": 123, "view": [1, 2], "indication": NaN}')
    (data / "a.json").write_text(json.dumps({"age": -5}))
    (data / "b.json").write_text(json.dumps({"age": 500, "sex": "male"}))
    out = tmp_path / "out"
    proc = batch(data, out)
    assert proc.returncode == 0, proc.stderr
    assert all(r["status"] == "ok" for r in read_summary(out))
    docs = reports(out)
    assert any("deepjson.json rejected (nested more than" in n for n in notes_of(docs["deepjson.png"]))
    bom = docs["bom.png"]["study"]["context"]
    assert (bom["age_years"], bom["sex"], bom["indication"]) == (61, "F", "cough")
    values = " | ".join(notes_of(docs["values.png"]))
    for said in ("age abc ignored", "sex 123 ignored", "view ignored", "indication ignored"):
        assert said in values
    assert docs["values.png"]["study"]["context"]["age_years"] is None
    assert "age -5 ignored" in " | ".join(notes_of(docs["a.png"]))
    b_notes = " | ".join(notes_of(docs["b.png"]))
    assert "age 500 ignored" in b_notes and docs["b.png"]["study"]["context"]["sex"] == "M"


def test_a_folder_table_is_parsed_once_per_batch(tmp_path):
    """Item 8: NIH layout (images/*.png + one big Data_Entry table): the table is read once, not per image."""
    from medvlm.ingest import raster

    images = tmp_path / "images"
    names = [f"{i:08d}_000.png" for i in range(30)]
    for i, name in enumerate(names[:6]):
        png(images / name, i)
    rows = ["Image Index,Finding Labels,Patient Age,Patient Gender,View Position"]
    rows += [f"{n},No Finding,{40 + i % 50},{'MF'[i % 2]},PA" for i, n in enumerate(names)]
    rows += [f"other_{i:06d}.png,No Finding,50,M,AP" for i in range(20_000)]
    (images / "Data_Entry_2017.csv").write_text("\n".join(rows) + "\n")
    raster._table_at.cache_clear()
    raster._tables_at.cache_clear()
    read = []
    parse = raster._parse_table
    raster._parse_table = lambda path: read.append(path) or parse(path)
    try:
        found = [raster.sidecar_for(images / n) for n in names[:6]]
    finally:
        raster._parse_table = parse
    assert read == [images / "Data_Entry_2017.csv"]
    assert [f[0]["age"] for f in found] == [str(40 + i) for i in range(6)]
    assert all(f[1] == "Data_Entry_2017.csv" for f in found)
    out = tmp_path / "out"
    proc = batch(images, out)  # and through the CLI: each image's context comes from its table row
    assert proc.returncode == 0, proc.stderr
    docs = reports(out)
    assert docs[names[3]]["study"]["context"]["age_years"] == 43


# ------------------------------------------------------------------ the audit trail (items 1, 9)


def _tamper(report: Path, text: str) -> None:
    doc = json.loads(report.read_text(encoding="utf-8"))
    doc["model_output"]["text"] = text
    report.write_text(json.dumps(doc), encoding="utf-8")


def test_regrade_refuses_a_tampered_report_and_verify_keeps_failing(tmp_path):
    """Item 1: an edited model_output.text is not laundered by regrade; --adopt-edits records the adoption."""
    studies = tmp_path / "studies"
    png(studies / "a.png", 1)
    png(studies / "b.png", 2)
    out = tmp_path / "out"
    assert batch(studies, out).returncode == 0
    target = sorted(out.glob("*/report.json"))[0]
    key = target.parent.name
    _tamper(target, "Large right tension pneumothorax.")
    assert medvlm("verify", str(out)).returncode == 1

    proc = medvlm("regrade", str(out), "--no-pdf")
    assert proc.returncode == 1
    assert f"{key}/report.json: edited outside medvlm" in proc.stderr and "--adopt-edits" in proc.stderr
    assert "1 reports regraded" in proc.stdout  # the untouched study is regraded
    assert json.loads(target.read_text())["risk"]["level"] != "critical"  # the edit was not graded
    check = medvlm("verify", str(out))
    assert check.returncode == 1 and f"{key}/report.json: report edited" in check.stdout

    # A second edit (an image replaced) is refused as well.
    other = sorted(out.glob("*/report.json"))[1].parent
    png(other / "image-1.png", 99)
    proc = medvlm("regrade", str(out), "--no-pdf")
    assert proc.returncode == 1 and f"{other.name}/image-1.png: edited outside medvlm" in proc.stderr

    adopted = medvlm("regrade", str(out), "--no-pdf", "--adopt-edits")
    assert adopted.returncode == 0, adopted.stderr
    assert "2 edited reports adopted" in adopted.stdout
    records = [json.loads(line) for line in (out / "ledger.jsonl").read_text().splitlines()]
    adopt = [r for r in records if r["kind"] == "adopt"]
    assert {r["study_key"] for r in adopt} == {key, other.name}
    first = next(r for r in adopt if r["study_key"] == key)
    assert first["files"][f"{key}/report.json"]["found"] != first["files"][f"{key}/report.json"]["recorded"]
    assert json.loads(target.read_text())["risk"]["level"] == "critical"  # adopted: now graded as edited
    check = medvlm("verify", str(out))
    assert check.returncode == 0 and "2 edited reports adopted" in check.stdout


def test_regrade_refuses_a_report_without_a_ledger_record(tmp_path):
    """Item 1: a report.json copied in by hand (no recorded attempt) is not adopted silently."""
    studies = tmp_path / "studies"
    png(studies / "a.png", 1)
    out = tmp_path / "out"
    assert batch(studies, out).returncode == 0
    source = next(out.glob("*/report.json"))
    (out / "r-0000000000000000").mkdir()
    (out / "r-0000000000000000" / "report.json").write_bytes(source.read_bytes())
    proc = medvlm("regrade", str(out), "--no-pdf")
    assert proc.returncode == 1 and "r-0000000000000000/report.json: no ledger record" in proc.stderr
    assert medvlm("verify", str(out)).returncode == 1


def test_regrade_verify_and_export_refuse_a_folder_that_is_not_a_run(tmp_path):
    """Item 9: a studies folder given to regrade/verify/export: one line, exit 2, nothing written."""
    studies = tmp_path / "studies"
    png(studies / "a.png", 1)
    before = sorted(p.name for p in studies.rglob("*"))
    for args in (("regrade", str(studies)), ("verify", str(studies)),
                 ("export", str(studies), "--out", str(tmp_path / "exported"))):
        proc = medvlm(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and "not a medvlm run folder" in lines[0], proc.stderr
    assert sorted(p.name for p in studies.rglob("*")) == before
    assert not (tmp_path / "exported").exists()


def test_verify_and_export_during_a_batch_say_a_batch_is_running(tmp_path):
    """Item 9: while a batch holds the run (the real run lock, opened as `medvlm batch` does), verify and
    export refuse with 'a batch is running' instead of false problems or a partial table."""
    import subprocess
    import sys

    from test_audit_lock import HOLDER

    studies = tmp_path / "studies"
    png(studies / "a.png", 1)
    out = tmp_path / "out"
    assert batch(studies, out).returncode == 0
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(studies), str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        for args in (("verify", str(out)), ("export", str(out), "--out", str(tmp_path / "exported")),
                     ("regrade", str(out), "--no-pdf")):
            proc = medvlm(*args)
            assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
            assert "a batch is running" in proc.stderr and f"pid {holder.pid}" in proc.stderr
        assert not (tmp_path / "exported").exists()
    finally:
        holder.kill()
        holder.wait()
    assert medvlm("verify", str(out)).returncode == 0  # the lock died with its holder


# ------------------------------------------------------------------ context fields (item 6)


def _indication_studies(root: Path, indication: str) -> Path:
    """Four studies in one batch; the first has a sidecar with the given indication."""
    for i in range(4):
        png(root / f"c{i}.png", i)
    (root / "c0.json").write_text(json.dumps({"indication": indication}))
    return root


def test_a_huge_indication_is_cut_with_a_note_and_its_batch_mates_are_unharmed(tmp_path):
    """Item 6: a 1 MB indication with --batch-size 4 is cut to the documented limit (noted in the report)."""
    from medvlm.prompts import CONTEXT_LIMITS

    studies = _indication_studies(tmp_path / "studies", "persistent cough " * 60_000)
    out = tmp_path / "out"
    proc = batch(studies, out, "--batch-size", "4")
    assert proc.returncode == 0, proc.stderr
    assert [r["status"] for r in read_summary(out)] == ["ok"] * 4
    doc = reports(out)["c0.png"]
    limit = CONTEXT_LIMITS["indication"]
    assert len(doc["study"]["context"]["indication"]) == limit
    assert f"indication cut to {limit:,} of {len(('persistent cough ' * 60_000).strip()):,} characters" in " | ".join(notes_of(doc))
    assert doc["model_output"]["prompt_tokens"] < 2000


def test_a_study_that_fails_inside_a_batched_generate_does_not_fail_its_batch_mates(tmp_path):
    """Item 6: a prompt template that still makes one study's prompt huge (its indication repeated 3000
    times): generate() fails for the batch, each study is retried alone, only that study is an error."""
    studies = _indication_studies(tmp_path / "studies", "cough " * 200)
    template = tmp_path / "huge.yaml"
    template.write_text(
        "id: huge-test\nmodality: chest_xray\nsystem: You describe chest radiographs.\n"
        "user: |\n  Describe the findings.\n  {% if indication %}{{ indication * 3000 }}{% endif %}\n"
    )
    out = tmp_path / "out"
    proc = batch(studies, out, "--batch-size", "4", "--prompt", str(template))
    assert proc.returncode == 1, proc.stderr
    rows = {r["source"]: r for r in read_summary(out)}
    assert rows["c0.png"]["status"] == "error" and rows["c0.png"]["stage"] == "model"
    assert "\n" not in rows["c0.png"]["reason"]
    assert [rows[f"c{i}.png"]["status"] for i in (1, 2, 3)] == ["ok"] * 3


# ------------------------------------------------------------------ DICOM windows (item 10)


def test_bad_dicom_window_values_fall_back_to_the_percentile_window_naming_the_value(tmp_path):
    """Item 10: WindowWidth 0, or a center `abc\\1`: the study is read with the documented percentile
    window and the report's windowing names the bad value (window values are not PHI)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_bad_files", Path(__file__).resolve().parents[1] / "sample_data" / "make_bad_files.py")
    bad = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bad)  # type: ignore[union-attr]
    studies = tmp_path / "studies"
    studies.mkdir()
    zero = bad.image_dataset("ww-zero")
    zero.WindowCenter, zero.WindowWidth = "2048", "0"
    zero.save_as(studies / "ww0.dcm", enforce_file_format=True)
    text = bad.image_dataset("wc-text")
    text.WindowCenter, text.WindowWidth = "999\\1", "400\\1"
    text.save_as(studies / "abc.dcm", enforce_file_format=True)
    raw = (studies / "abc.dcm").read_bytes()
    assert raw.count(b"999\\1") == 1
    (studies / "abc.dcm").write_bytes(raw.replace(b"999\\1", b"abc\\1"))  # what no writer would let through
    out = tmp_path / "out"
    proc = batch(studies, out)
    assert proc.returncode == 0, proc.stderr
    assert [r["status"] for r in read_summary(out)] == ["ok", "ok"]
    windowing = {doc["images"][0]["source"]: doc["images"][0]["windowing"] for doc in reports(out).values()}
    assert windowing["ww0.dcm"].startswith("percentile 0.5-99.5")
    assert "WindowWidth 0 is below 1" in windowing["ww0.dcm"]
    assert windowing["abc.dcm"].startswith("percentile 0.5-99.5")
    assert "WC/WW abc\\1/400\\1 is not a number" in windowing["abc.dcm"]


def test_regrade_rebuilds_summary_rows_from_the_ledger_not_from_an_edited_summary(tmp_path):
    """Item 1: an edit to summary.csv is not carried into the regraded summary (and its run_end hash)."""
    studies = tmp_path / "studies"
    png(studies / "a.png", 1)
    out = tmp_path / "out"
    assert batch(studies, out).returncode == 0
    summary = out / "summary.csv"
    summary.write_text(summary.read_text(encoding="utf-8").replace("a.png", "someone-else.png"), encoding="utf-8")
    assert medvlm("verify", str(out)).returncode == 1
    assert medvlm("regrade", str(out), "--no-pdf").returncode == 0
    assert [r["source"] for r in read_summary(out)] == ["a.png"]
    assert medvlm("verify", str(out)).returncode == 0
