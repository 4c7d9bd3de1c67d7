"""Packaging: the wheel carries the top-level prompts/ and schemas/ (copied at build time) and every data file."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

import medvlm
from medvlm.cli import app

PROJECT = Path(__file__).resolve().parent.parent


def test_version_flag_prints_the_package_version():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"medvlm {medvlm.__version__}"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Built from a copy of the source tree, so the build's own files never land in the checkout."""
    import shutil

    source = tmp_path_factory.mktemp("src") / "medvlm-src"
    shutil.copytree(PROJECT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "runs", "*.egg-info", "__pycache__", ".pytest_cache", "_data", "tests",
        "sample_data"))
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--wheel-dir", str(out),
         str(source)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = out.glob("medvlm-*.whl")
    return path


def test_wheel_ships_prompts_and_schemas_from_the_one_top_level_source(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        for kind, pattern in (("prompts", "*.yaml"), ("schemas", "*.json")):
            sources = sorted((PROJECT / kind).glob(pattern))
            assert sources
            for source in sources:
                assert zf.read(f"medvlm/_data/{kind}/{source.name}") == source.read_bytes()
    for folder, pattern in (("medvlm/models/preset_configs", "*/*.json"), ("medvlm/models/phantom", "*"),
                            ("medvlm/findings/vocab", "*.yaml"),
                            ("medvlm/findings/cues", "*.yaml"), ("medvlm/risk/rules", "*.yaml"),
                            ("medvlm/report/templates", "*"), ("medvlm/review/templates", "*"),
                            ("medvlm/review/static", "*")):
        for source in (PROJECT / folder).glob(pattern):
            assert source.relative_to(PROJECT).as_posix() in names
    # The phantom model's weights and tokenizer ship inside the wheel: `--model phantom` needs no training.
    assert {"medvlm/models/phantom/model.safetensors", "medvlm/models/phantom/config.json",
            "medvlm/models/phantom/tokenizer.json"} <= names
    assert not any(n.startswith(("tests/", "sample_data/", "prompts/", "schemas/")) for n in names)
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    with zipfile.ZipFile(wheel) as zf:
        assert f"Version: {medvlm.__version__}" in zf.read(metadata).decode()


def test_the_packaged_copy_is_not_in_git():
    proc = subprocess.run(["git", "-C", str(PROJECT), "ls-files", "medvlm/_data"], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip("not a git checkout")
    assert proc.stdout.strip() == ""
