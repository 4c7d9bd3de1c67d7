"""`medvlm bench` end to end on the demo model (figures are printed, never asserted on)."""

from __future__ import annotations

import json

from PIL import Image
from typer.testing import CliRunner

from medvlm.cli import app


def test_bench_writes_json_chart_and_table(tmp_path, demo_model_dir):
    studies = tmp_path / "studies"
    studies.mkdir()
    for i in range(3):
        Image.new("L", (96, 96), 40 * i).save(studies / f"cxr{i}.png")
    out = tmp_path / "bench"
    result = CliRunner().invoke(app, ["bench", str(studies), "--model", "demo", "--out", str(out), "--batch-size", "2",
                                      "--max-new-tokens", "3", "--no-pdf"])
    assert result.exit_code == 0, result.output
    assert "tokens/s" in result.output and "speedup_tokens_per_s" in result.output
    doc = json.loads((out / "bench.json").read_text())
    optimised, baseline = doc["runs"]
    assert optimised["studies_ok"] == baseline["studies_ok"] == 3
    assert optimised["generated_tokens"] == baseline["generated_tokens"] == 9  # --ignore-eos: exactly 3 each
    assert baseline["batch_size"] == 1 and baseline["quantization"] == "none" and baseline["dtype"] == "float32"
    assert set(optimised["stages"]) == {"discover", "decode", "preprocess", "prefill", "decode_tokens", "extract",
                                        "grade", "render"}
    assert optimised["peak_rss"] > 0
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the machine's bounds at the model's shapes, measured in the same run, and each run's share of them
    machine = doc["bounds"]["machine"]
    assert machine["read_bandwidth_gbs"] > 0
    rates = {row["kind"]: row["gops"] for row in machine["matmul"].values() if row["gops"]}
    assert {"fp32", "bf16", "int8_dynamic"} <= set(rates) and all(v > 0 for v in rates.values())
    for label in ("optimised", "seed-style baseline"):
        share = doc["bounds"]["runs"][label]
        assert 0 < share["prefill_share"] and 0 < share["decode_share"]
        assert share["prefill_ops"] > 0 and share["decode_step_s"] > 0
    assert "of the matmul bound" in result.output and "of the bound" in result.output
    assert doc["targets"]["speedup_incl_load"] > 0 and doc["load_average"]["end"]
