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


def test_bound_shares_arithmetic():
    """Prefill bound = vision ops / bf16 rate + LM ops / int8 rate; decode bound = max(weights / bandwidth, compute)."""
    from medvlm.bench_bounds import bound_lines, shares

    g = 1e9
    machine = {"read_bandwidth_gbs": 10.0, "matmul": {
        "bf16 matmul, vision tower MLP": {"kind": "bf16", "shape": [1, 1, 1], "gops": 100.0},
        "int8 dynamic Linear (fbgemm), prefill (LM MLP)": {"kind": "int8_dynamic", "shape": [1, 1, 1], "gops": 50.0},
        "int8 dynamic Linear (fbgemm), decode (LM MLP)": {"kind": "int8_dynamic", "shape": [1, 1, 1], "gops": 5.0},
    }}
    s = shares(machine, lm_linear_params=int(0.5 * g), lm_weight_bytes=int(0.4 * g), vision_params=int(0.1 * g),
               prompt_tokens=1000, images=4, patches_per_image=1000, prefill_s=100.0, decode_steps=10, decode_s=4.0,
               batch_size=8, vision_kind="bf16", lm_kind="int8", kv_bytes_per_step=int(0.1 * g))
    # vision: 2 * 0.1e9 * 1000 * 4 = 800 GOP at 100 GOP/s = 8 s; LM: 2 * 0.5e9 * 1000 = 1000 GOP at 50 = 20 s
    assert abs(s["prefill_bound_s"] - 28.0) < 1e-9 and abs(s["prefill_share"] - 0.28) < 1e-9
    # decode step 0.4 s; memory bound (0.4 GB weights + 0.1 GB KV) / 10 GB/s = 0.05 s; compute at the best int8 rate (50 GOP/s, not
    # the slow decode-shape kernel's 5): 2 * 0.5e9 * 8 / 50e9 = 0.16 s -> compute-bound, share 0.16 / 0.4
    assert abs(s["decode_memory_bound_s"] - 0.05) < 1e-9 and abs(s["decode_compute_bound_s"] - 0.16) < 1e-9
    assert abs(s["decode_share"] - 0.4) < 1e-9 and abs(s["decode_kv_bound_s"] - 0.01) < 1e-9
    text = "\n".join(bound_lines(machine, s))
    assert "28% of the matmul bound" in text and "40% of the bound" in text
    assert "weights and KV cache/bandwidth 50 ms, of which KV 10 ms" in text


def test_kv_bytes_a_decode_step_reads():
    """2 tensors x kv heads x head dim x bytes x rows per position; a sliding layer reads at most its window."""
    from medvlm.bench_bounds import kv_bytes_per_step

    per_position = 2 * 1 * 256 * 4 * 8
    assert kv_bytes_per_step(layers=20, kv_heads=1, head_dim=256, width=4, rows=8, context=447) == per_position * 20 * 447
    assert kv_bytes_per_step(layers=20, kv_heads=1, head_dim=256, width=4, rows=8, context=600,
                             sliding_layers=17, window=512) == per_position * (3 * 600 + 17 * 512)


def test_sliding_layers_are_read_from_the_models_config(demo_model_dir, tmp_path):
    import json

    from medvlm.models.memory import sliding_layers

    text = json.loads((demo_model_dir / "config.json").read_text())["text_config"]
    assert sliding_layers(demo_model_dir) == {"sliding_layers": text["layer_types"].count("sliding_attention"),
                                              "window": text["sliding_window"]}
    (tmp_path / "config.json").write_text(json.dumps({"text_config": {"num_hidden_layers": 4}}))
    assert sliding_layers(tmp_path) == {"sliding_layers": 0, "window": None}
