"""A second backend registered by name runs the whole batch without any change to the stages."""

from __future__ import annotations

import json
import logging

import pytest
from audit_support import make_png_studies

from medvlm.audit.verify import verify_run
from medvlm.config import RunConfig
from medvlm.errors import UsageProblem
from medvlm.models import backends
from medvlm.pipeline import run_batch


@pytest.fixture
def echo_registered(monkeypatch):
    monkeypatch.setitem(backends.BUILTIN, "echo", "plugins.echo_backend:KIND")


def _config(tmp_path, **options):
    return RunConfig(studies=tmp_path / "studies", out=tmp_path / "out", model="echo-1", backend="echo",
                     backend_options=options, write_pdf=False, batch_size=2)


def test_registered_backend_runs_a_batch_and_its_identity_drives_provenance_and_resume(tmp_path, echo_registered, caplog):
    make_png_studies(tmp_path / "studies", 3)
    result = run_batch(_config(tmp_path, sentence="No pneumothorax"))
    assert result.count("ok") == 3
    report = json.loads(next((tmp_path / "out").glob("*/report.json")).read_text())
    assert report["model_output"]["text"] == "No pneumothorax (1 image(s))."
    assert report["provenance"]["model"]["backend"] == "echo"
    identity = report["provenance"]["model"]["identity"]
    assert identity == {"backend": "echo", "model": "echo-1", "sentence": "No pneumothorax"}
    ledger = [json.loads(line) for line in (tmp_path / "out" / "ledger.jsonl").read_text().splitlines()]
    assert ledger[0]["components"]["model"] == identity  # resume keys on the same identity as provenance
    assert verify_run(tmp_path / "out").ok

    assert run_batch(_config(tmp_path, sentence="No pneumothorax")).count("ok") == 3
    counts = json.loads((tmp_path / "out" / "ledger.jsonl").read_text().splitlines()[-1])["counts"]
    assert counts == {"resumed": 3}
    with caplog.at_level(logging.WARNING, logger="medvlm.audit"):
        run_batch(_config(tmp_path, sentence="Small left effusion"))
    assert "redoing studies done earlier because model changed" in caplog.text


def test_unknown_backend_and_bad_options_are_one_line_usage_errors(tmp_path, echo_registered):
    make_png_studies(tmp_path / "studies", 1)
    with pytest.raises(UsageProblem, match="unknown backend 'nope'; available: .*echo"):
        run_batch(RunConfig(studies=tmp_path / "studies", out=tmp_path / "out", backend="nope"))
    with pytest.raises(UsageProblem, match="the echo backend has no option 'color'"):
        run_batch(_config(tmp_path, color="red"))
    assert not (tmp_path / "out").exists()  # nothing written before the configuration is known to be valid
