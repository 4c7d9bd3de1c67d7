"""`medvlm models`: the presets table, its machine-readable forms, and `--check` from a config alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from medvlm.cli import app
from medvlm.models.memory import GB
from medvlm.models.registry import PRESETS

runner = CliRunner()
REAL_PRESETS = [name for name, p in PRESETS.items() if not p.random]


@pytest.mark.parametrize("preset", REAL_PRESETS)
def test_check_sizes_every_preset_without_weights(preset, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))  # no weights anywhere
    result = runner.invoke(app, ["models", "--check", preset])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("model") and preset in lines[0]
    assert any(line.startswith("parameters") for line in lines)
    for mode in ("none", "int8", "int4"):
        assert f"--quant {mode}" in result.output
    for target in ("this machine", "Jetson Orin NX 16 GB", "Jetson AGX Orin 64 GB"):
        assert target in result.output


def test_check_json_is_one_object_with_parameters_and_bytes_per_mode():
    result = runner.invoke(app, ["models", "--check", "medgemma-4b", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["architecture"] == "Gemma3ForConditionalGeneration"
    assert 4.2e9 < doc["parameters"] < 4.4e9
    assert set(doc["estimated_bytes"]["cuda"]) == {"none", "int8", "int4"}
    assert set(doc["estimated_bytes"]["cpu"]) == {"none", "int8"}
    cuda = doc["estimated_bytes"]["cuda"]
    assert cuda["int4"] < cuda["int8"] < cuda["none"]
    orin_nx = next(t for t in doc["targets"] if t["name"] == "Jetson Orin NX 16 GB")
    assert orin_nx["usable_bytes"] == 14 * GB
    assert orin_nx["fits"] == {mode: cuda[mode] <= 14 * GB for mode in cuda}


def test_check_a_model_folder(tmp_path):
    from medvlm.models.registry import preset_config_dir

    folder = tmp_path / "my-model"
    folder.mkdir()
    for f in preset_config_dir("smolvlm-256m").iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    result = runner.invoke(app, ["models", "--check", str(folder), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["model"] == str(folder) and 0.25e9 < doc["parameters"] < 0.27e9


@pytest.mark.parametrize("target", ["demo", "/no/such/model-folder", "not-a-model"])
def test_check_refuses_with_one_line_and_exit_2(target):
    result = runner.invoke(app, ["models", "--check", target])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


def test_models_json_lists_every_preset():
    result = runner.invoke(app, ["models", "--json"])
    assert result.exit_code == 0
    rows = json.loads(result.output)
    assert [r["name"] for r in rows] == list(PRESETS)
    assert {"name", "source", "available", "local_dir", "description"} <= set(rows[0])


def test_piped_models_output_keeps_full_paths(tmp_path, demo_model_dir):
    """`medvlm models | cat`: no column is cut to the terminal width."""
    deep = tmp_path / ("a-rather-long-folder-name-for-weights-" * 3) / "smolvlm-256m-copy"
    deep.parent.mkdir(parents=True)
    deep.symlink_to(demo_model_dir, target_is_directory=True)
    env = {**os.environ, "MEDVLM_MODEL_SMOLVLM_256M": str(deep), "COLUMNS": "60"}
    proc = subprocess.run([sys.executable, "-m", "medvlm", "models"], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    line = next(line for line in proc.stdout.splitlines() if line.startswith("smolvlm-256m"))
    assert line.split("\t") == ["smolvlm-256m", "yes", str(deep), "HuggingFaceTB/SmolVLM-256M-Instruct"]
