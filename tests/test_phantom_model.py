"""The `phantom` preset: weights shipped in the package, loaded like any HF model, reading phantoms correctly.

The model itself runs here (real weights, real CLI in a subprocess); how well it reads 200+ fresh
phantoms per dtype, int8 and batch size is tests/bench/bench_phantom.py's job.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from medvlm import PHANTOM_NOTICE
from medvlm.models.checkpoint import weights_digest
from medvlm.models.registry import model_identity, packaged_model_dir, resolve
from medvlm.phantoms import sample_study
from medvlm.phantoms.language import report_text
from medvlm.phantoms.spec import study_rng

PROJECT = Path(__file__).resolve().parent.parent
SAMPLES = PROJECT / "sample_data" / "studies"
PHANTOM_DIR = packaged_model_dir("phantom")


def _medvlm(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDVLM_MODEL")}
    env["PYTHONPATH"] = str(PROJECT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "medvlm", *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=PROJECT)


def _truth(path: Path) -> dict[str, set[str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return {r["study"]: set(filter(None, r["findings"].split(";"))) for r in csv.DictReader(fh)}


def test_phantom_preset_resolves_to_the_weights_shipped_in_the_package():
    resolved = resolve("phantom")
    assert resolved.local_dir == PHANTOM_DIR and resolved.random is None
    weights = PHANTOM_DIR / "model.safetensors"
    assert weights.is_file() and weights.stat().st_size < 25 * 2**20
    identity = model_identity("phantom")
    assert identity["weights_digest"] == weights_digest(PHANTOM_DIR) and identity["config_sha256"]
    meta = json.loads((PHANTOM_DIR / "medvlm_phantom_model.json").read_text(encoding="utf-8"))
    assert meta["phantom"] is True and meta["random_weights"] is False
    assert meta["training"]["seed"] == 1000 and meta["training"]["train_studies"] > 0
    assert json.loads((PHANTOM_DIR / "config.json").read_text())["architectures"] == ["Gemma3ForConditionalGeneration"]


def test_phantom_tokenizer_writes_report_text_with_normal_spacing():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(PHANTOM_DIR)
    for i in range(20):
        text = report_text(sample_study(3, i), study_rng(3, i, "text"))
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text
        assert tokenizer.unk_token_id not in ids


def test_cli_phantom_model_finds_the_sample_phantoms_findings_and_every_output_says_what_it_is(tmp_path):
    pypdf = pytest.importorskip("pypdf")
    out = tmp_path / "run"
    proc = _medvlm("batch", str(SAMPLES), "--modality", "chest_xray", "--model", "phantom", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    truth = _truth(SAMPLES / "truth.csv")
    with open(out / "summary.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(truth) == 6 and all(r["status"] == "ok" for r in rows)
    digest = weights_digest(PHANTOM_DIR)
    found: dict[str, set[str]] = {}
    for row in rows:
        doc = json.loads((out / row["report"]).read_text(encoding="utf-8"))
        assert doc["demo_notice"] == PHANTOM_NOTICE
        model = doc["provenance"]["model"]
        assert model["name"] == "phantom" and model["phantom"] is True and model["random_weights"] is False
        assert model["weights_digest"] == digest
        assert doc["model_output"]["answer_status"] == "complete"
        assert doc["model_output"]["text"].startswith("FINDINGS:") and "IMPRESSION:" in doc["model_output"]["text"]
        assert doc["risk"]["level"] != "indeterminate"  # a complete, gradeable answer
        folder = (out / row["report"]).parent
        assert PHANTOM_NOTICE in (folder / "report.html").read_text(encoding="utf-8")
        pdf = pypdf.PdfReader(io.BytesIO((folder / "report.pdf").read_bytes()))
        assert all(PHANTOM_NOTICE in " ".join(page.extract_text().split()) for page in pdf.pages)
        name = row["source"].split("/")[0]
        found[name] = {f["code"] for f in doc["findings"] if f["status"] == "present"} - {"no_finding"}
    assert PHANTOM_NOTICE in (out / "index.html").read_text(encoding="utf-8")
    # The six sample phantoms (seed 4242, never trained on) carry a mass, a pneumothorax, an effusion with
    # cardiomegaly and a consolidation, and two are normal. With the default flags (what `make run` shows) the
    # shipped model finds every one of those findings and reads both normal studies as normal; it adds one
    # finding that is not there (a nodule beside the lobar consolidation of study_003), and one is the most
    # this allows. Its accuracy on 200 fresh phantoms is bench_phantom's job.
    assert all(truth[name] <= found[name] for name in truth), (found, truth)
    assert all(found[name] == set() for name in truth if not truth[name]), found
    assert sum(len(found[name] - truth[name]) for name in truth) <= 1, (found, truth)

    proc = _medvlm("evaluate", str(out), "--truth", str(SAMPLES / "truth.csv"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    evaluation = json.loads((out / "evaluation.json").read_text(encoding="utf-8"))
    assert evaluation["counts"]["evaluated_studies"] == 6 and evaluation["model_notice"] == PHANTOM_NOTICE
    assert "evaluation.html" in (out / "index.html").read_text(encoding="utf-8")
