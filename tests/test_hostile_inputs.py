"""Hostile folders and files driven through the real CLI (issue 16): each case is bounded in time and
checks no traceback, the documented exit code, nothing written on a usage error, and `verify`
failing wherever a report was altered outside medvlm. The demo model answers (few tokens)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from audit_support import attempts, batch_args, read_summary, run_medvlm

pytestmark = pytest.mark.usefixtures("demo_model_dir")  # built once per session, before the timed runs

TIMEOUT = 180  # seconds per command: a hang fails the test instead of stalling the suite


def png(path: Path, seed: int = 0, size: int = 64) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size), dtype=np.uint8), mode="L").save(path)
    return path


def medvlm(*args: str, timeout: float = TIMEOUT):
    """Run the real CLI in a subprocess; no command may print a traceback."""
    proc = run_medvlm(*args, timeout=timeout)
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr[-3000:]
    return proc


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
