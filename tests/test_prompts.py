"""Prompt templates are data: hashed, sandboxed, strict."""

from __future__ import annotations

import hashlib

import pytest
from PIL import Image

from medvlm.paths import prompts_dir
from medvlm.prompts import PromptError, load_template, render_prompt
from medvlm.records import ImageInput, Study, StudyContext, StudyRef


def _study(**context) -> Study:
    img = ImageInput("a.png", "0" * 64, Image.new("RGB", (8, 8)), "raster", (8, 8))
    return Study(StudyRef("s-1", "a", ()), (img,), StudyContext(**context))


@pytest.mark.parametrize("modality", ["chest_xray", "ct", "mri"])
def test_every_modality_template_loads_and_records_its_file_hash(modality):
    template = load_template(modality)
    raw = (prompts_dir() / f"{modality}.yaml").read_bytes()
    assert template.hash == hashlib.sha256(raw).hexdigest()
    prompt = render_prompt(_study(), template)
    assert prompt.template_hash == template.hash and prompt.text


def test_context_reaches_the_prompt():
    prompt = render_prompt(_study(age_years=63, sex="F", view="PA", indication="fever and cough"), load_template("chest_xray"))
    assert "63-year-old female" in prompt.text
    assert "PA view" in prompt.text
    assert "fever and cough" in prompt.text


def test_edited_template_changes_hash_and_text(tmp_path):
    path = tmp_path / "custom.yaml"
    path.write_text("id: custom-1\nmodality: chest_xray\nsystem: Be brief.\nuser: 'Age {{ age_years }}.'\n")
    first = load_template(path)
    assert render_prompt(_study(age_years=40), first).text == "Age 40."
    path.write_text("id: custom-1\nmodality: chest_xray\nsystem: Be brief.\nuser: 'Years {{ age_years }}.'\n")
    second = load_template(path)
    assert second.hash != first.hash
    assert render_prompt(_study(age_years=40), second).text == "Years 40."


def test_template_typo_is_a_one_line_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("id: b\nmodality: ct\nsystem: s\nuser: '{{ patient_name }}'\n")
    with pytest.raises(PromptError) as info:
        render_prompt(_study(), load_template(path))
    assert "patient_name" in str(info.value) and "\n" not in str(info.value)


def test_sandbox_blocks_attribute_escapes(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("id: e\nmodality: ct\nsystem: s\nuser: \"{{ ''.__class__.__mro__[1].__subclasses__() }}\"\n")
    with pytest.raises(PromptError):
        render_prompt(_study(), load_template(path))
