"""Model registry and the real demo model (random-weight Gemma3 built locally)."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from medvlm.models import DEFAULT_MODEL, PRESETS, ModelUnavailable, resolve
from medvlm.models.demo import is_random_model_dir
from medvlm.prompts import load_template, render_prompt
from medvlm.records import ImageInput, Study, StudyContext, StudyRef


def test_default_model_is_a_real_preset_not_the_demo():
    assert DEFAULT_MODEL in PRESETS
    assert PRESETS[DEFAULT_MODEL].hub_id is not None
    assert PRESETS[DEFAULT_MODEL].random is None


def test_absent_real_preset_fails_with_one_actionable_sentence(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelUnavailable) as info:
        resolve("medgemma-4b")
    message = str(info.value)
    assert "\n" not in message
    assert "google/medgemma-4b-it" in message and "--model" in message


def test_directory_without_config_is_rejected(tmp_path):
    with pytest.raises(ModelUnavailable, match="no config.json"):
        resolve(str(tmp_path))


def test_preset_resolves_from_environment_override(tmp_path, monkeypatch, demo_model_dir):
    monkeypatch.setenv("MEDVLM_MODEL_SMOLVLM_256M", str(demo_model_dir))
    resolved = resolve("smolvlm-256m")
    assert resolved.local_dir == demo_model_dir


def test_demo_model_is_an_ordinary_hf_directory(demo_model_dir):
    names = {p.name for p in demo_model_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "processor_config.json"} <= names
    config = json.loads((demo_model_dir / "config.json").read_text())
    assert config["architectures"] == ["Gemma3ForConditionalGeneration"]
    assert is_random_model_dir(demo_model_dir)


def _study(n_images: int = 1, size=(320, 256)) -> Study:
    img = Image.new("RGB", size, (90, 90, 90))
    images = tuple(
        ImageInput(source=f"x{i}.png", sha256="0" * 64, image=img, kind="raster", original_shape=size[::-1])
        for i in range(n_images)
    )
    return Study(ref=StudyRef("s-test", "x", ()), images=images, context=StudyContext(age_years=61, sex="F", view="PA"))


def test_demo_model_generates_a_batch_with_left_padding(demo_backend):
    template = load_template("chest_xray")
    short = _study(1)
    long = Study(
        ref=StudyRef("s-long", "y", ()),
        images=short.images,
        context=StudyContext(age_years=5, sex="M", indication="cough " * 30),
    )
    batch = [(short, render_prompt(short, template)), (long, render_prompt(long, template))]
    outputs = demo_backend.generate(batch, max_new_tokens=12)
    assert len(outputs) == 2
    assert outputs[0].prompt_tokens < outputs[1].prompt_tokens  # different lengths in one padded call
    for out in outputs:
        assert 0 <= out.new_tokens <= 12
        assert out.answer_status in ("complete", "truncated", "empty")
    assert demo_backend.info.random_weights is True
    assert demo_backend.info.quantization.startswith("int8")


def test_ignore_eos_forces_exact_token_count(demo_backend):
    study = _study(2)
    prompt = render_prompt(study, load_template("chest_xray"))
    (out,) = demo_backend.generate([(study, prompt)], max_new_tokens=9, ignore_eos=True)
    assert out.new_tokens == 9
    assert out.answer_status != "complete"  # a forced-length answer is never treated as a finished one
