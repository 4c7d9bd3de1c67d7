"""Quantization modes: per-device selection logic (CUDA paths without a GPU) and the CPU modes on the demo model."""

from __future__ import annotations

import pytest
import torch

from medvlm.models import ModelUnavailable, load_backend
from medvlm.models.hf import int8 as hf_int8
from medvlm.models.hf import options as hf_options
from medvlm.models.hf import streamed_load


def _study(n_images: int = 1):
    from PIL import Image

    from medvlm.records import ImageInput, Study, StudyContext, StudyRef

    img = Image.new("RGB", (96, 80), (90, 90, 90))
    images = tuple(ImageInput(f"x{i}.png", "0" * 64, img, "raster", (80, 96)) for i in range(n_images))
    return Study(StudyRef("s-q", "x", ()), images, StudyContext(view="PA"))


def test_auto_picks_per_device(monkeypatch):
    monkeypatch.setattr(hf_options, "bnb_available", lambda: True)
    assert hf_options.pick_quant("auto", "cuda") == "int4"
    assert hf_options.pick_quant("auto", "cuda:1") == "int4"
    assert hf_options.pick_quant("auto", "cpu") == "int8"
    monkeypatch.setattr(hf_options, "bnb_available", lambda: False)
    assert hf_options.pick_quant("auto", "cuda") == "none"  # bf16/fp16 without bitsandbytes
    assert hf_options.pick_quant("int8", "cuda") == "int8"


def test_dtype_auto_per_device(monkeypatch):
    assert hf_options.pick_dtype("auto", "cpu") == torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert hf_options.pick_dtype("auto", "cuda") == torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert hf_options.pick_dtype("auto", "cuda") == torch.bfloat16
    assert hf_options.pick_dtype("bfloat16", "cpu") == torch.bfloat16


def test_bitsandbytes_configs():
    pytest.importorskip("transformers")
    eight = hf_options.bnb_config("int8", torch.bfloat16)
    four = hf_options.bnb_config("int4", torch.bfloat16)
    assert eight.load_in_8bit and not eight.load_in_4bit
    assert four.load_in_4bit and four.bnb_4bit_quant_type == "nf4" and four.bnb_4bit_compute_dtype == torch.bfloat16


def test_cuda_quant_without_bitsandbytes_names_the_install(monkeypatch, demo_model_dir):
    monkeypatch.setattr(hf_options, "pick_device", lambda d: "cuda")
    monkeypatch.setattr(hf_options, "pick_dtype", lambda d, dev, mode="none", model_type=None: torch.bfloat16)
    monkeypatch.setattr(hf_options, "bnb_available", lambda: False)
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
    assert not any(isinstance(m, (QLinear, hf_int8.HybridInt8Linear)) for m in vision.modules())  # vision stays float
    tower_dtype = getattr(torch, hf_options.cpu_vision_dtype())  # bf16 only where this CPU has bf16 instructions
    assert all(p.dtype == tower_dtype for p in vision.parameters())
    assert all(p.dtype == torch.float32 for p in language.parameters())
    assert demo_backend._pixel_dtype == tower_dtype
    info = demo_backend.info
    assert info.quantization.startswith("int8") and "decoder layer by decoder layer" in info.quantization
    assert info.details["quant_mode"] == "int8"


def test_hybrid_linear_matches_fp32_and_picks_kernels_by_rows():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48)
    ref_small, ref_large = torch.randn(2, 64), torch.randn(4, 40, 64)
    with torch.no_grad():
        want_small, want_large = linear(ref_small), linear(ref_large)
        hybrid = hf_int8.HybridInt8Linear(linear)
        got_small, got_large = hybrid(ref_small), hybrid(ref_large)
    assert got_large.shape == (4, 40, 48)
    for got, want in ((got_small, want_small), (got_large, want_large)):
        assert (got - want).abs().max() < 0.05 * want.abs().max()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("bias", [False, True])
def test_dynamic_int8_linear_packs_what_from_float_packs(dtype, bias):
    import warnings

    from torch.ao.nn.quantized.dynamic import Linear as QLinear
    from torch.ao.quantization import per_channel_dynamic_qconfig

    torch.manual_seed(1)
    linear = torch.nn.Linear(96, 200, bias=bias).to(dtype)
    with torch.no_grad():
        linear.weight[5] = 0  # an all-zero row: the observer's eps floor sets its scale
        linear.weight[7] *= 40  # a row with outliers
    reference = torch.nn.Linear(96, 200, bias=bias)
    reference.load_state_dict({k: v.float() for k, v in linear.state_dict().items()})
    reference.qconfig = per_channel_dynamic_qconfig
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast, slow = hf_int8.dynamic_int8_linear(linear), QLinear.from_float(reference)
    assert type(fast) is QLinear and (fast.in_features, fast.out_features) == (96, 200)
    (wa, ba), (wb, bb) = fast._packed_params._weight_bias(), slow._packed_params._weight_bias()
    assert torch.equal(wa.int_repr(), wb.int_repr())
    assert torch.equal(wa.q_per_channel_scales(), wb.q_per_channel_scales())
    assert torch.equal(wa.q_per_channel_zero_points(), wb.q_per_channel_zero_points())
    assert (ba is None and bb is None) or torch.equal(ba, bb)
    assert wa.int_repr().abs().max() == 127 and wa.int_repr()[5].abs().max() == 0
    x = torch.randn(4, 96)
    assert torch.equal(fast(x), slow(x))


def test_int8_vision_tower_runs_in_the_dtype_chosen_for_this_cpu_and_says_so(monkeypatch, demo_model_dir):
    from medvlm.prompts import load_template, render_prompt

    study = _study(1)
    prompt = render_prompt(study, load_template("chest_xray"))
    features = {}
    for forced, short in (("float32", "fp32"), ("bfloat16", "bf16")):
        monkeypatch.setenv(hf_options.CPU_VISION_DTYPE_ENV, forced)
        backend = load_backend("demo", quant="int8")
        tower = backend.model.model.vision_tower
        assert {p.dtype for p in tower.parameters()} == {getattr(torch, forced)}
        assert {p.dtype for p in backend.model.model.multi_modal_projector.parameters()} == {getattr(torch, forced)}
        assert backend._pixel_dtype == getattr(torch, forced)
        assert f"; vision tower {short};" in backend.info.quantization
        # a bf16 tower is what CPU int8 always meant (resume identities made with it stay valid); fp32 is named
        assert backend.info.identity.get("vision_dtype") == (None if forced == "bfloat16" else "float32")
        (out,) = backend.generate([(study, prompt)], max_new_tokens=4, ignore_eos=True)
        assert out.new_tokens == 4
        pixels = torch.rand(2, 3, tower.config.image_size, tower.config.image_size, generator=torch.Generator().manual_seed(3))
        with torch.inference_mode():
            features[forced] = tower(pixel_values=pixels.to(backend._pixel_dtype)).last_hidden_state.float()
    # the same weights: the fp32 tower reads what the bf16 one reads, within bf16's rounding
    assert torch.allclose(features["float32"], features["bfloat16"], atol=0.15, rtol=0.05)
    assert not torch.equal(features["float32"], features["bfloat16"])


def test_auto_keeps_the_vision_tower_in_bf16_only_where_the_cpu_has_bf16_instructions(monkeypatch):
    monkeypatch.delenv(hf_options.CPU_VISION_DTYPE_ENV, raising=False)
    flags = {"_is_avx512_bf16_supported": False, "_is_amx_tile_supported": False}
    for name in flags:
        monkeypatch.setattr(torch.cpu, name, lambda name=name: flags[name])
    monkeypatch.setattr(hf_options.platform, "machine", lambda: "x86_64")
    assert hf_options.cpu_vision_dtype() == "float32"  # AVX2 / AVX-512 without BF16: the generic bf16 path is slow
    resolved = hf_options.resolve_options(hf_options.HFOptions(device="cpu"))
    assert resolved.vision_dtype == "float32" and resolved.as_dict()["vision_dtype"] == "float32"
    for name in flags:
        flags.update(dict.fromkeys(flags, False), **{name: True})
        assert hf_options.cpu_vision_dtype() == "bfloat16"
        resolved = hf_options.resolve_options(hf_options.HFOptions(device="cpu"))
        assert resolved.vision_dtype is None and "vision_dtype" not in resolved.as_dict()
    # a float model has no vision dtype of its own to record
    assert hf_options.resolve_options(hf_options.HFOptions(device="cpu", quant="none")).as_dict() == {
        "device": "cpu", "dtype": "float32", "quant": "none"}
    monkeypatch.setenv(hf_options.CPU_VISION_DTYPE_ENV, "float32")
    assert hf_options.cpu_vision_dtype() == "float32"  # an explicit setting wins over the CPU's flags


def test_asking_for_bf16_on_a_cpu_without_bf16_instructions_warns(monkeypatch, caplog, demo_model_dir):
    for has_bf16 in (False, True):
        monkeypatch.setattr(hf_options, "cpu_bf16_in_hardware", lambda: has_bf16)
        caplog.clear()
        with caplog.at_level("WARNING", logger="medvlm"):
            load_backend("demo", quant="none", dtype="bfloat16")
        warned = [r.getMessage() for r in caplog.records if "no bf16 matrix instructions" in r.getMessage()]
        assert len(warned) == (0 if has_bf16 else 1), warned


def test_auto_vision_dtype_is_not_the_slow_one_on_this_cpu(monkeypatch):
    """On the real CPU: the dtype auto picks for the tower multiplies matrices at least about as fast as the other.

    (On a 2-core AVX2 EPYC bf16 ran ~100x slower than fp32; on AVX512-BF16 machines it runs faster.)"""
    import time

    monkeypatch.delenv(hf_options.CPU_VISION_DTYPE_ENV, raising=False)
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(256, 768, generator=gen), torch.randn(768, 768, generator=gen)

    def best(dtype) -> float:
        x, y = a.to(dtype), b.to(dtype)
        torch.matmul(x, y)
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            torch.matmul(x, y)
            times.append(time.perf_counter() - t0)
        return min(times)

    chosen, other = ("bfloat16", "float32") if hf_options.cpu_vision_dtype() == "bfloat16" else ("float32", "bfloat16")
    t_chosen, t_other = best(getattr(torch, chosen)), best(getattr(torch, other))
    assert t_chosen < 2.0 * t_other, f"auto chose {chosen} ({t_chosen * 1e3:.1f} ms) over {other} ({t_other * 1e3:.1f} ms)"


def test_unknown_int8_kernels_setting_is_refused(monkeypatch, demo_model_dir):
    monkeypatch.setenv(hf_int8.INT8_KERNELS_ENV, "magic")
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


def _greedy_ids(backend, n: int = 8):
    from medvlm.prompts import load_template, render_prompt

    study = _study(1)
    prepared = backend.preprocess([(study, render_prompt(study, load_template("chest_xray")))])
    with torch.inference_mode():
        out = backend.model.generate(**prepared.inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return out[0, prepared.inputs["input_ids"].shape[1]:].tolist()


def test_streamed_int8_load_matches_from_pretrained_then_quantize(monkeypatch, demo_model_dir):
    streamed = []
    engine_before = torch.backends.quantized.engine
    real = streamed_load.load_cpu_int8_streamed
    monkeypatch.setattr(streamed_load, "load_cpu_int8_streamed", lambda *a: streamed.append(1) or real(*a))
    new = load_backend("demo", quant="int8")
    assert streamed == [1]
    monkeypatch.setenv(streamed_load.STREAMED_LOAD_ENV, "0")
    old = load_backend("demo", quant="int8")
    assert streamed == [1]  # the old path did not stream
    # Same conversion; provenance says how the checkpoint was read.
    assert new.info.quantization.split("; checkpoint")[0] == old.info.quantization.split("; checkpoint")[0]
    assert "checkpoint streamed" in new.info.quantization
    assert f"loaded with from_pretrained in bf16 ({streamed_load.STREAMED_LOAD_ENV}=0)" in old.info.quantization
    assert _greedy_ids(new) == _greedy_ids(old)
    new_state, old_state = new.model.state_dict(), old.model.state_dict()
    assert new_state.keys() == old_state.keys()
    packed = 0
    for key, value in old_state.items():
        if isinstance(value, torch.Tensor):  # norms, embeddings, vision tower, non-persistent-free buffers
            assert torch.equal(value, new_state[key]) and value.dtype == new_state[key].dtype, key
        elif isinstance(value, tuple) and value and getattr(value[0], "is_quantized", False):
            # an int8 Linear's (weight, bias): layers are converted two at a time in the streamed load
            (wa, ba), (wb, bb) = value, new_state[key]
            assert torch.equal(wa.int_repr(), wb.int_repr()), key
            assert torch.equal(wa.q_per_channel_scales(), wb.q_per_channel_scales()), key
            assert torch.equal(wa.q_per_channel_zero_points(), wb.q_per_channel_zero_points()), key
            assert (ba is None and bb is None) or torch.equal(ba, bb), key
            packed += 1
    assert packed == sum(1 for _ in new.model.modules() if type(_).__name__ == "Linear" and hasattr(_, "_packed_params"))
    assert packed > 2
    assert torch.backends.quantized.engine == engine_before  # the load's engine switch is undone
    for (name, a), (_, b) in zip(old.model.named_buffers(), new.model.named_buffers()):  # rotary inv_freq etc.
        assert torch.equal(a, b), name


def test_streamed_int8_load_falls_back_when_checkpoint_keys_do_not_match(tmp_path, demo_model_dir):
    import shutil

    from safetensors.torch import load_file, save_file

    copy = tmp_path / "renamed"
    shutil.copytree(demo_model_dir, copy)
    tensors = load_file(copy / "model.safetensors")
    key = next(k for k in tensors if "layers.0." in k)
    tensors[key.replace("layers.0.", "layers.0.legacy_")] = tensors.pop(key)
    save_file(tensors, copy / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(streamed_load.StreamFallback, match="does not match"):
        streamed_load.load_cpu_int8_streamed(copy, "fbgemm")
    backend = load_backend(str(copy), quant="int8")  # falls back to from_pretrained (which renames or warns)
    assert "int8" in backend.info.quantization
    tensors[key] = tensors[key.replace("layers.0.", "layers.0.legacy_")]
    del tensors[key.replace("layers.0.", "layers.0.legacy_")]
    tensors.pop(next(k for k in tensors if "vision_tower" in k))
    save_file(tensors, copy / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(streamed_load.StreamFallback, match="not in the checkpoint"):
        streamed_load.load_cpu_int8_streamed(copy, "fbgemm")


def test_malloc_reuse_is_set_on_glibc_and_can_be_turned_off(monkeypatch):
    import platform

    from medvlm.models.hf import int8

    monkeypatch.setenv(int8.MALLOC_REUSE_ENV, "0")
    assert int8.reuse_freed_memory() is False
    monkeypatch.delenv(int8.MALLOC_REUSE_ENV)
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert int8.reuse_freed_memory() is True


def test_hybrid_kernels_load_through_the_streamed_path_and_generate(monkeypatch, demo_model_dir):
    from medvlm.prompts import load_template, render_prompt

    engine_before = torch.backends.quantized.engine
    monkeypatch.setenv("MEDVLM_INT8_KERNELS", "hybrid")
    backend = load_backend("demo", quant="int8")
    assert "hybrid" in backend.info.quantization and "checkpoint streamed" in backend.info.quantization
    assert any(type(m).__name__ == "HybridInt8Linear" for m in backend.model.modules())
    assert torch.backends.quantized.engine == engine_before
    study = _study(1)
    (out,) = backend.generate([(study, render_prompt(study, load_template("chest_xray")))], max_new_tokens=3,
                              ignore_eos=True)
    assert out.new_tokens == 3
