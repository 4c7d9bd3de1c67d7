"""Crash-safe, idempotent batches: SIGKILL mid-batch then rerun; changed rules are redone."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from audit_support import (
    attempts, batch_args, ledger_records, make_png_studies, medvlm_cmd, pinned_resources, read_summary, run_medvlm,
)
from medvlm.audit.verify import verify_run
from medvlm.config import RunConfig
from medvlm.pipeline import run_batch
from medvlm.report.validate import validate_report

N = 6


def _latest(out):
    latest = {}
    for record in attempts(out):
        latest[record["study_key"]] = record
    return latest


def test_sigkill_mid_batch_then_rerun_completes_each_study_once(tmp_path, demo_model_dir):
    studies = make_png_studies(tmp_path / "studies", N)
    out = tmp_path / "out"
    # one study per batch: with --batch-size auto all six would be recorded at once, after the kill window
    args = batch_args(studies, out, "--batch-size", "1", *pinned_resources(tmp_path / "resources"))
    proc = subprocess.Popen(medvlm_cmd(*args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    try:
        while not attempts(out) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        still_running = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    if not still_running:
        pytest.fail(f"the batch ended before it could be killed: {proc.stderr.read().decode()[-1500:]}")
    done_before = {r["study_key"] for r in attempts(out)}
    assert 1 <= len(done_before) < N, "kill landed after the last study"
    assert not any(r.get("kind") == "run_end" for r in ledger_records(out))  # it really died mid-run

    rerun = run_medvlm(*args)
    assert rerun.returncode == 0, rerun.stderr[-2000:]

    rows = read_summary(out)
    assert len(rows) == N and len({r["study_key"] for r in rows}) == N
    assert all(r["status"] == "ok" for r in rows)
    latest = _latest(out)
    assert set(latest) == {r["study_key"] for r in rows}
    # Studies finished before the kill were reused, not redone: exactly one ok attempt each.
    per_study = {}
    for record in attempts(out):
        per_study[record["study_key"]] = per_study.get(record["study_key"], 0) + 1
    assert all(per_study[k] == 1 for k in done_before), (per_study, rerun.stderr[-1500:], ledger_records(out)[-1])
    end = [r for r in ledger_records(out) if r.get("kind") == "run_end"][-1]
    assert end["counts"].get("resumed", 0) == len(done_before)
    for row in rows:
        validate_report(json.loads((out / row["study_key"] / "report.json").read_text()))
    result = verify_run(out)
    assert result.ok, [str(p) for p in result.problems]

    again = run_medvlm(*args)  # a third run does nothing new
    assert again.returncode == 0
    assert len(attempts(out)) == sum(per_study.values())


@pytest.fixture
def done_run(tmp_path, demo_backend):
    studies = make_png_studies(tmp_path / "studies", 3)
    pinned = pinned_resources(tmp_path / "resources")
    files = {"prompt_file": Path(pinned[1]), "vocab_file": Path(pinned[3]), "rules_file": Path(pinned[5])}
    config = RunConfig(studies=studies, out=tmp_path / "out", model="demo", max_new_tokens=8, write_pdf=False, **files)
    assert run_batch(config, backend=demo_backend).count("ok") == 3
    return config


def test_changed_rules_are_detected_and_redone(done_run, demo_backend, tmp_path, caplog):
    rules = tmp_path / "rules-v2.yaml"
    rules.write_text(done_run.rules_file.read_text() + "\n# tightened\n")
    before = len(attempts(done_run.out))
    changed = RunConfig(**{**done_run.__dict__, "rules_file": rules})
    with caplog.at_level("WARNING", logger="medvlm.audit"):
        result = run_batch(changed, backend=demo_backend)
    assert result.count("ok") == 3
    assert len(attempts(done_run.out)) == before + 3
    assert "resources.chest_xray.rules changed" in caplog.text
    assert verify_run(done_run.out).ok


def test_same_config_is_reused_and_changed_input_is_redone(done_run, demo_backend):
    before = len(attempts(done_run.out))
    assert run_batch(done_run, backend=demo_backend).count("ok") == 3
    assert len(attempts(done_run.out)) == before  # nothing redone
    first = sorted(done_run.studies.glob("*.png"))[0]
    from PIL import Image

    Image.new("L", (80, 80), 7).save(first)
    run_batch(done_run, backend=demo_backend)
    assert len(attempts(done_run.out)) == before + 1


def test_report_without_ledger_record_is_redone(done_run, demo_backend):
    """Killed after report.json was written but before its ledger record: redone, not adopted."""
    ledger = done_run.out / "ledger.jsonl"
    lines = ledger.read_text().splitlines()
    last_attempt = max(i for i, ln in enumerate(lines) if '"kind":"attempt"' in ln)
    key = json.loads(lines[last_attempt])["study_key"]
    ledger.write_text("\n".join(lines[:last_attempt]) + "\n")  # as if the process died before appending
    assert any(p.kind == "unrecorded_report" for p in verify_run(done_run.out).problems)
    run_batch(done_run, backend=demo_backend)
    assert _latest(done_run.out)[key]["status"] == "ok"
    assert verify_run(done_run.out).ok


def test_torn_ledger_tail_is_repaired_by_the_next_batch(done_run, demo_backend):
    with open(done_run.out / "ledger.jsonl", "ab") as fh:
        fh.write(b'{"kind":"attempt","st')
    assert [p.kind for p in verify_run(done_run.out).problems] == ["torn_tail"]
    run_batch(done_run, backend=demo_backend)
    kinds = [r.get("kind") for r in ledger_records(done_run.out)]
    assert "repair" in kinds
    assert verify_run(done_run.out).ok
