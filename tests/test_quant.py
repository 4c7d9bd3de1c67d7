"""Quantization modes: per-device selection logic (CUDA paths without a GPU) and the CPU modes on the demo model."""

from __future__ import annotations

import pytest
import torch

from medvlm.models import ModelUnavailable, load_backend
from medvlm.models import hf


def _study(n_images: int = 1):
    from PIL import Image

    from medvlm.records import ImageInput, Study, StudyContext, StudyRef

    img = Image.new("RGB", (96, 80), (90, 90, 90))
    images = tuple(ImageInput(f"x{i}.png", "0" * 64, img, "raster", (80, 96)) for i in range(n_images))
    return Study(StudyRef("s-q", "x", ()), images, StudyContext(view="PA"))


def test_auto_picks_per_device(monkeypatch):
    monkeypatch.setattr(hf, "_bnb_available", lambda: True)
    assert hf._pick_quant("auto", "cuda") == "int4"
    assert hf._pick_quant("auto", "cuda:1") == "int4"
    assert hf._pick_quant("auto", "cpu") == "int8"
    monkeypatch.setattr(hf, "_bnb_available", lambda: False)
    assert hf._pick_quant("auto", "cuda") == "none"  # bf16/fp16 without bitsandbytes
    assert hf._pick_quant("int8", "cuda") == "int8"


def test_dtype_auto_per_device(monkeypatch):
    assert hf._pick_dtype("auto", "cpu") == torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert hf._pick_dtype("auto", "cuda") == torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert hf._pick_dtype("auto", "cuda") == torch.bfloat16
    assert hf._pick_dtype("bfloat16", "cpu") == torch.bfloat16


def test_bitsandbytes_configs():
    pytest.importorskip("transformers")
    eight = hf._bnb_config("int8", torch.bfloat16)
    four = hf._bnb_config("int4", torch.bfloat16)
    assert eight.load_in_8bit and not eight.load_in_4bit
    assert four.load_in_4bit and four.bnb_4bit_quant_type == "nf4" and four.bnb_4bit_compute_dtype == torch.bfloat16


def test_cuda_quant_without_bitsandbytes_names_the_install(monkeypatch, demo_model_dir):
    monkeypatch.setattr(hf, "_pick_device", lambda d: "cuda")
    monkeypatch.setattr(hf, "_pick_dtype", lambda d, dev, mode="none": torch.bfloat16)
    monkeypatch.setattr(hf, "_bnb_available", lambda: False)
    with pytest.raises(ModelUnavailable, match="bitsandbytes"):
        load_backend("demo", quant="int8", check_memory=False)


def test_int4_on_cpu_is_a_clear_error(demo_model_dir):
    with pytest.raises(ModelUnavailable) as info:
        load_backend("demo", device="cpu", quant="int4")
    assert "CUDA" in str(info.value) and "--quant int8" in str(info.value) and "\n" not in str(info.value)


def test_unknown_modes_are_rejected():
    with pytest.raises(ModelUnavailable, match="--quant"):
        load_backend("demo", quant="int3")
    with pytest.raises(ModelUnavailable, match="--dtype"):
        load_backend("demo", dtype="float8")


def test_int8_on_cpu_with_bf16_compute_is_refused(demo_model_dir):
    with pytest.raises(ModelUnavailable, match="float32"):
        load_backend("demo", device="cpu", quant="int8", dtype="bfloat16")


def test_int8_converts_language_model_linears_and_records_it(demo_backend):
    from torch.ao.nn.quantized.dynamic import Linear as QLinear

    model = demo_backend.model
    language = model.model.language_model
    assert any(isinstance(m, QLinear) for m in language.modules())
    assert not any(type(m) is torch.nn.Linear for m in language.modules())
    assert isinstance(model.lm_head, QLinear)
    vision = model.model.vision_tower
    assert not any(isinstance(m, (QLinear, hf.HybridInt8Linear)) for m in vision.modules())  # vision stays float
    assert all(p.dtype == torch.bfloat16 for p in vision.parameters())
    assert all(p.dtype == torch.float32 for p in language.parameters())
    assert demo_backend._pixel_dtype == torch.bfloat16
    info = demo_backend.info
    assert info.quantization.startswith("int8") and "layer by layer" in info.quantization
    assert info.details["quant_mode"] == "int8"


def test_hybrid_linear_matches_fp32_and_picks_kernels_by_rows():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48)
    ref_small, ref_large = torch.randn(2, 64), torch.randn(4, 40, 64)
    with torch.no_grad():
        want_small, want_large = linear(ref_small), linear(ref_large)
        hybrid = hf.HybridInt8Linear(linear)
        got_small, got_large = hybrid(ref_small), hybrid(ref_large)
    assert got_large.shape == (4, 40, 48)
    for got, want in ((got_small, want_small), (got_large, want_large)):
        assert (got - want).abs().max() < 0.05 * want.abs().max()


def test_unknown_int8_kernels_setting_is_refused(monkeypatch, demo_model_dir):
    monkeypatch.setenv(hf.INT8_KERNELS_ENV, "magic")
    with pytest.raises(ModelUnavailable, match="hybrid, fbgemm or onednn"):
        load_backend("demo", quant="int8")


@pytest.mark.parametrize("quant,dtype", [("none", "float32"), ("none", "bfloat16")])
def test_float_modes_generate(quant, dtype, demo_model_dir):
    from medvlm.prompts import load_template, render_prompt

    backend = load_backend("demo", quant=quant, dtype=dtype)
    assert backend.info.quantization == "none" and backend.info.dtype == dtype
    study = _study(1)
    (out,) = backend.generate([(study, render_prompt(study, load_template("chest_xray")))], max_new_tokens=4,
                              ignore_eos=True)
    assert out.new_tokens == 4


def test_preprocess_then_generate_prepared_times_prefill_and_decode(demo_backend):
    from medvlm.prompts import load_template, render_prompt

    template = load_template("chest_xray")
    batch = [(s, render_prompt(s, template)) for s in (_study(1), _study(2))]
    prepared = demo_backend.preprocess(batch)
    outputs = demo_backend.generate_prepared(prepared, max_new_tokens=5, ignore_eos=True)
    assert [o.new_tokens for o in outputs] == [5, 5]
    assert prepared.prefill_s > 0 and prepared.decode_s > 0 and prepared.preprocess_s > 0
    assert prepared.generated_tokens == 10
