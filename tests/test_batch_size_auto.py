"""`--batch-size auto` (the default): chosen from the memory estimate and the device, capped by the studies to do,
recorded in run.json and every report; explicit values win; batch size never makes resume redo a study."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from medvlm.config import RunConfig, batch_size_value, from_env
from medvlm.errors import UsageProblem
from medvlm.models.memory import AUTO_BATCH_CEILING, GB, auto_batch_size, choose_batch_size


def test_choose_takes_the_largest_batch_that_fits_the_memory_share():
    peak = lambda b: (2 + b) * GB  # noqa: E731 - weights 2 GB + 1 GB per study
    # 80% of 10 GB = 8 GB -> batch 6 is the largest with 2 + b <= 8
    size, reason = choose_batch_size(peak, 10 * GB, ceiling=8, studies=100)
    assert size == 6
    assert "batch 6" in reason and "100 studies" in reason
    assert choose_batch_size(peak, 100 * GB, ceiling=8, studies=100)[0] == 8  # the device ceiling
    assert choose_batch_size(peak, 100 * GB, ceiling=8, studies=3)[0] == 3  # never more than the studies
    assert choose_batch_size(peak, 1 * GB, ceiling=8, studies=100)[0] == 1  # nothing fits: 1 (load check refuses)
    assert choose_batch_size(peak, None, ceiling=16, studies=40)[0] == 16  # no memory figure: the ceiling


def test_auto_on_the_demo_model_follows_the_memory_limit(demo_model_dir, monkeypatch):
    kw = dict(dtype="float32", quant="int8", device="cpu", max_new_tokens=64, images_per_study=2)
    monkeypatch.setenv("MEDVLM_MEMORY_LIMIT_BYTES", str(64 * GB))
    roomy = auto_batch_size(demo_model_dir, studies=50, **kw)
    assert roomy.size == AUTO_BATCH_CEILING["cpu"] and roomy.requested == "auto"
    assert auto_batch_size(demo_model_dir, studies=3, **kw).size == 3
    # a limit just above the batch-2 estimate: auto must come down to 2 (or 1), never above what fits
    from medvlm.models.memory import estimate, model_shape, param_counts

    counts, shape = param_counts(demo_model_dir), model_shape(demo_model_dir)
    peak2 = estimate(counts, shape, batch_size=2, **kw).peak
    peak3 = estimate(counts, shape, batch_size=3, **kw).peak
    assert peak3 > peak2
    monkeypatch.setenv("MEDVLM_MEMORY_LIMIT_BYTES", str(int((peak2 + peak3) / 2 / 0.8)))
    tight = auto_batch_size(demo_model_dir, studies=50, **kw)
    assert tight.size == 2, tight.reason


def test_batch_size_values_and_environment(monkeypatch, tmp_path):
    assert batch_size_value("auto") == "auto" and batch_size_value("AUTO") == "auto"
    assert batch_size_value("8") == 8
    for bad in ("0", "257", "eight", "", "2.5"):
        with pytest.raises(UsageProblem, match="--batch-size must be auto or an integer"):
            batch_size_value(bad)
    base = RunConfig(studies=tmp_path, out=tmp_path / "o")
    assert base.batch_size == "auto"
    monkeypatch.setenv("MEDVLM_BATCH_SIZE", "4")
    assert from_env(base, set()).batch_size == 4
    assert from_env(base, {"batch_size"}).batch_size == "auto"  # the command line wins
    monkeypatch.setenv("MEDVLM_BATCH_SIZE", "lots")
    with pytest.raises(UsageProblem, match="MEDVLM_BATCH_SIZE"):
        from_env(base, set())


def _studies(root: Path, n: int) -> Path:
    root.mkdir()
    for i in range(n):
        Image.new("L", (64, 64), 30 + 20 * i).save(root / f"cxr{i}.png")
    return root


def _batch(args: list[str], cache) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MEDVLM_BATCH_SIZE"}
    env["MEDVLM_CACHE_DIR"] = str(cache)
    return subprocess.run([sys.executable, "-m", "medvlm", "batch", *args], capture_output=True, text=True, env=env,
                          timeout=600)


def test_default_command_resolves_auto_records_it_and_resume_ignores_batch_size(tmp_path, _isolated_cache,
                                                                                demo_model_dir):
    studies = _studies(tmp_path / "studies", 3)
    out = tmp_path / "run"
    common = [str(studies), "--modality", "chest_xray", "--model", "demo", "--out", str(out), "--max-new-tokens", "4",
              "--no-pdf"]
    proc = _batch(common, _isolated_cache)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["batch_size"] == 3  # auto, capped by the 3 studies
    choice = run["config"]["batch_size_choice"]
    assert choice["requested"] == "auto" and choice["resolved"] == 3 and "3 studies" in choice["reason"]
    reports = sorted(out.glob("*/report.json"))
    assert len(reports) == 3
    for path in reports:
        generation = json.loads(path.read_text())["provenance"]["generation"]
        assert generation["batch_size"] == 3 and generation["batch_size_requested"] == "auto"
    # the resume fingerprint holds no batch size (and never the word auto): an explicit size reuses every study
    ledger = [json.loads(line) for line in (out / "ledger.jsonl").read_text().splitlines()]
    components = [r["components"] for r in ledger if r.get("components")]
    assert components and all("batch_size" not in json.dumps(c) and '"auto"' not in json.dumps(c["model"])
                              for c in components)
    before = {p: p.read_bytes() for p in reports}
    again = _batch([*common, "--batch-size", "2"], _isolated_cache)
    assert again.returncode == 0, again.stderr[-2000:]
    assert {p: p.read_bytes() for p in reports} == before  # resumed, not redone
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["batch_size"] == 2 and run["config"]["batch_size_choice"]["requested"] == 2


@pytest.mark.parametrize("value", ["0", "many"])
def test_bad_batch_size_is_one_line_exit_2_and_writes_nothing(tmp_path, _isolated_cache, value):
    studies = _studies(tmp_path / "studies", 1)
    out = tmp_path / "run"
    proc = _batch([str(studies), "--model", "demo", "--out", str(out), "--batch-size", value], _isolated_cache)
    assert proc.returncode == 2
    assert "--batch-size must be auto or an integer" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()
