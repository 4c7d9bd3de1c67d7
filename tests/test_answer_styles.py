"""Findings from answers written the way instruction-tuned VLMs write them, not the way radiologists do.

Markdown (bold labels, bullets, numbered lists, headings, tables), "Label: value" lines, a restated
question, disclaimers, and reasoning blocks before the answer. What is not graded stays in the
stored text; every evidence offset points into the stored text.
"""

from __future__ import annotations

import json

import pytest

from medvlm.findings import answer_status, extract, graded_view, load_cues
from medvlm.resources import Resources
from medvlm.stages import assess

CUES = load_cues()

MEDGEMMA_STYLE = """**Findings:**

*   **Lungs:** The lungs are clear bilaterally. There is no evidence of focal consolidation, pneumothorax, or pleural effusion.
*   **Heart:** The cardiac silhouette is mildly enlarged, consistent with mild cardiomegaly.
*   **Bones:** No acute fracture is identified.

**Impression:**

1.  Mild cardiomegaly.
2.  No acute cardiopulmonary process.

**Disclaimer:** This is an AI-generated interpretation and is not a substitute for review by a radiologist. Please consult a qualified healthcare professional; pneumonia cannot be excluded without one."""

KEY_VALUE_STYLE = """You asked whether this chest X-ray shows a pneumothorax or a pleural effusion.

Looking at the PA and lateral views:
- Pneumothorax: None
- Pleural effusion: Small, left-sided
- Cardiomegaly: No
- Consolidation: Possible, right lower lobe

Is there anything else you would like me to look at?"""

TABLE_STYLE = """Here is a structured summary.

| Finding | Present? | Notes |
|---|---|---|
| Pneumothorax | No | |
| Pleural effusion | Yes | small, right |
| Cardiomegaly | No | heart size normal |

I am an AI model and cannot provide a medical diagnosis; pneumothorax must be ruled out by a physician."""

MEDGEMMA_15_THOUGHT = """<unused94>thought
The user wants a chest X-ray report. At first glance there may be a right apical pneumothorax. Looking again, \
lung markings reach the apex, so there is no pneumothorax. The heart looks enlarged? No, it is normal in size.<unused95>\
**Findings:** No pneumothorax. No pleural effusion. Heart size is normal.

**Impression:** No acute cardiopulmonary abnormality."""


def _by_code(text: str) -> dict:
    findings = extract(text, "chest_xray")
    for f in findings:  # evidence points into the stored text, whatever was blanked around it
        assert text[f.evidence.start : f.evidence.end] == f.evidence.text
        assert text[f.evidence.sentence_start : f.evidence.sentence_end] == f.evidence.sentence
    return {f.code: f for f in findings}


def test_markdown_answer_with_bold_labels_bullets_numbers_and_a_disclaimer():
    found = _by_code(MEDGEMMA_STYLE)
    assert found["cardiomegaly"].status == "present" and found["cardiomegaly"].severity == "mild"
    for code in ("consolidation", "pneumothorax", "pleural_effusion", "fracture"):
        assert found[code].status == "absent", code
    assert "pneumonia" not in found  # named only inside the disclaimer
    view = graded_view(MEDGEMMA_STYLE, CUES)
    assert "**" not in view.text and len(view.text) == len(MEDGEMMA_STYLE)
    assert [why for _, _, why in view.hidden] == ["disclaimer", "disclaimer"]
    assert "pneumonia" not in view.text and "pneumonia" in MEDGEMMA_STYLE


def test_label_value_lines_and_a_restated_question():
    found = _by_code(KEY_VALUE_STYLE)
    assert found["pneumothorax"].status == "absent" and found["pneumothorax"].cue == "None"
    effusion = found["pleural_effusion"]
    assert effusion.status == "present" and effusion.severity == "small" and effusion.laterality == "left"
    assert found["cardiomegaly"].status == "absent"
    assert found["consolidation"].status == "uncertain" and found["consolidation"].laterality == "right"
    # The restated question names pneumothorax and effusion; it asserts nothing.
    first = KEY_VALUE_STYLE.index("You asked")
    assert all(f.evidence.start > KEY_VALUE_STYLE.index("\n", first) for f in found.values())
    assert ("restatement" in {why for _, _, why in graded_view(KEY_VALUE_STYLE, CUES).hidden})


def test_two_column_table_rows_read_like_label_value_lines():
    found = _by_code(TABLE_STYLE)
    assert found["pneumothorax"].status == "absent"
    assert found["pleural_effusion"].status == "present"
    assert found["pleural_effusion"].severity == "small" and found["pleural_effusion"].laterality == "right"
    assert found["cardiomegaly"].status == "absent"
    # The disclaimer sentence mentions pneumothorax too; only the table row counts.
    assert found["pneumothorax"].evidence.start < TABLE_STYLE.index("I am an AI")


def test_reasoning_block_is_kept_in_the_text_but_not_graded():
    found = _by_code(MEDGEMMA_15_THOUGHT)
    answer_start = MEDGEMMA_15_THOUGHT.index("<unused95>") + len("<unused95>")
    assert found["pneumothorax"].status == "absent"
    assert all(f.evidence.start >= answer_start for f in found.values())  # nothing from the reasoning
    assert "cardiomegaly" not in found or found["cardiomegaly"].status == "absent"
    res = Resources().for_modality("chest_xray")
    result = assess(MEDGEMMA_15_THOUGHT, "complete", "chest_xray", res)
    assert result.answer_status == "complete" and result.grade.level == "normal"


@pytest.mark.parametrize(
    "text",
    [
        "<think>The lungs look clear, no pneumothorax, no effusion. I should write a normal report.</think>",
        "<unused94>thought\nNo acute cardiopulmonary abnormality. No pneumothorax.",  # the block never closed
        "<think>Normal study.</think>\n\n**Disclaimer:** I am an AI language model and cannot provide a medical diagnosis.",
        "You asked: is there a pneumothorax?\n\nPlease consult a radiologist for a definitive interpretation.",
    ],
)
def test_an_answer_with_nothing_to_grade_is_empty_and_never_normal(text):
    assert answer_status(text, "complete", CUES) == "empty"
    assert answer_status(text, "truncated", CUES) == "truncated"
    assert extract(text, "chest_xray") == []
    result = assess(text, "complete", "chest_xray", Resources().for_modality("chest_xray"))
    assert result.answer_status == "empty"
    assert result.grade.level == "indeterminate"
    assert any(r.rule_id == "answer_empty" for r in result.grade.rules_fired)


def test_emphasis_around_a_negation_keeps_its_scope():
    found = _by_code("There is **no** pneumothorax and *no* pleural effusion.\n\n### Impression\n1. Large right pneumothorax.")
    assert found["pneumothorax"].status == "present"  # strongest status wins: the impression asserts one
    assert found["pneumothorax"].severity == "large" and found["pneumothorax"].laterality == "right"
    assert found["pleural_effusion"].status == "absent"


def test_a_disclaimer_after_a_finding_in_the_same_sentence_leaves_the_finding():
    found = _by_code("There is a small left pneumothorax, please consult a physician immediately.")
    assert found["pneumothorax"].status == "present" and found["pneumothorax"].laterality == "left"


def test_radiologist_report_style_is_unchanged():
    """Plain reports: a colon after a section name, "Question of", "?" after a finding keep their meaning."""
    found = _by_code("FINDINGS: Heart size normal. IMPRESSION: Question of left lower lobe pneumonia. Effusion?")
    assert found["pneumonia"].status == "uncertain"
    assert found["pleural_effusion"].status == "uncertain"


def test_batch_report_keeps_the_reasoning_and_records_an_empty_answer(tmp_path, monkeypatch):
    """Through the whole pipeline (a backend that answers with an unfinished reasoning block)."""
    from audit_support import make_png_studies

    from medvlm.config import RunConfig
    from medvlm.models import backends
    from medvlm.pipeline import run_batch
    from medvlm.report.validate import validate_report

    monkeypatch.setitem(backends.BUILTIN, "echo", "plugins.echo_backend:KIND")
    make_png_studies(tmp_path / "studies", 1)
    sentence = "<think>The lungs are clear and there is no pneumothorax, so this is a normal study"
    config = RunConfig(studies=tmp_path / "studies", out=tmp_path / "out", model="echo-1", backend="echo",
                       backend_options={"sentence": sentence}, write_pdf=False)
    assert run_batch(config).count("ok") == 1
    doc = json.loads(next((tmp_path / "out").glob("*/report.json")).read_text())
    validate_report(doc)
    assert doc["model_output"]["text"].startswith(sentence)  # stored as the model wrote it
    assert doc["model_output"]["answer_status"] == "empty"
    assert doc["findings"] == [] and doc["risk"]["level"] == "indeterminate"
    summary = (tmp_path / "out" / "summary.csv").read_text()
    assert ",empty," in summary
