"""Risk grading by rules: the examples from the issue, answer status, and rule-file validation."""

from __future__ import annotations

import pytest

from medvlm.findings import extract, load_vocabulary
from medvlm.records import RISK_LEVELS
from medvlm.risk import RulesError, grade, load_rules


def level(text: str, modality: str = "chest_xray", answer_status: str = "complete") -> str:
    return grade(extract(text, modality), load_rules(modality), answer_status).level


@pytest.mark.parametrize("modality", ["chest_xray", "ct", "mri"])
def test_packaged_rules_load_with_id_and_hash(modality):
    rules = load_rules(modality)
    assert rules.id == modality
    assert len(rules.hash) == 64
    assert rules.rules
    assert {r.level for r in rules.rules} <= set(RISK_LEVELS)


@pytest.mark.parametrize(
    "text, modality",
    [
        ("Large right pneumothorax with mediastinal shift.", "chest_xray"),
        ("Free intraperitoneal air beneath the right hemidiaphragm.", "ct"),
        ("Acute left subdural hematoma.", "ct"),
        ("Large acute intraparenchymal hemorrhage in the right basal ganglia.", "mri"),
        ("Segmental filling defects consistent with pulmonary embolism.", "ct"),
    ],
)
def test_present_critical_finding_is_critical(text, modality):
    assert level(text, modality) == "critical"


@pytest.mark.parametrize(
    "text, modality",
    [
        ("Small apical pneumothorax cannot be excluded.", "chest_xray"),
        ("Possible subtle subarachnoid hemorrhage in the left sylvian fissure.", "ct"),
    ],
)
def test_uncertain_critical_finding_is_at_least_high(text, modality):
    assert level(text, modality) in {"high", "critical"}


def test_absent_findings_with_normal_statement_is_normal():
    text = "Heart size is normal. No pneumothorax or pleural effusion. No acute cardiopulmonary abnormality."
    g = grade(extract(text), load_rules("chest_xray"))
    assert g.level == "normal"
    assert "explicit_normal" in {r.rule_id for r in g.rules_fired}


@pytest.mark.parametrize("text", ["", "   ", "The patient was positioned for the examination.", "%%%% ###"])
def test_no_findings_and_no_normal_statement_is_indeterminate(text):
    g = grade(extract(text), load_rules("chest_xray"))
    assert g.level == "indeterminate"


def test_negated_critical_finding_does_not_raise_level():
    assert level("No pneumothorax. The lungs are clear.") == "normal"


@pytest.mark.parametrize("status", ["truncated", "empty", "error"])
def test_incomplete_answer_without_findings_is_indeterminate_never_normal(status):
    g = grade(extract("The lungs are clear. No pneumothorax."), load_rules("chest_xray"), status)
    assert g.level == "indeterminate"
    assert f"answer_{status}" in {r.rule_id for r in g.rules_fired}


def test_truncated_answer_with_critical_finding_may_be_critical():
    findings = extract("Large left tension pneumothorax with rightward mediastinal shift. The")
    assert level("Large left tension pneumothorax with rightward mediastinal shift. The", answer_status="truncated") == "critical"
    assert grade(findings, load_rules("chest_xray"), "truncated").level == "critical"


def test_truncated_answer_with_minor_finding_keeps_its_level_but_not_normal():
    g = grade(extract("Mild left basilar atelectasis. The lungs are"), load_rules("chest_xray"), "truncated")
    assert g.level == "low"


def test_unknown_answer_status_is_a_usage_error():
    with pytest.raises(ValueError, match="answer_status"):
        grade([], load_rules("chest_xray"), "partial")


def test_fired_rules_carry_finding_and_evidence():
    text = "No pleural effusion. Small right apical pneumothorax."
    g = grade(extract(text), load_rules("chest_xray"))
    fired = [r for r in g.rules_fired if r.rule_id == "critical_present"]
    assert len(fired) == 1
    rule = fired[0]
    assert rule.level == "critical"
    assert rule.finding_code == "pneumothorax"
    assert rule.finding_status == "present"
    assert "Small right apical pneumothorax." in rule.evidence
    assert g.rules_id == "chest_xray" and len(g.rules_hash) == 64


def test_every_matching_finding_is_listed_and_levels_take_the_maximum():
    text = "Moderate right pleural effusion. Mild cardiomegaly. Possible left lower lobe pneumonia."
    g = grade(extract(text), load_rules("chest_xray"))
    assert g.level == "moderate"
    codes = {r.finding_code for r in g.rules_fired}
    assert {"pleural_effusion", "cardiomegaly", "pneumonia"} <= codes


def test_catch_all_rules_only_fire_for_otherwise_unmatched_findings():
    g = grade(extract("Small right pneumothorax. Mild cardiomegaly."), load_rules("chest_xray"))
    by_code = {}
    for r in g.rules_fired:
        by_code.setdefault(r.finding_code, []).append(r.rule_id)
    assert "other_present" not in by_code["pneumothorax"]
    assert by_code["cardiomegaly"] == ["other_present"]


def test_explicit_rules_and_vocabulary_paths(tmp_path):
    vocab_file = tmp_path / "vocab.yaml"
    vocab_file.write_text(
        "id: mini\nfindings:\n  no_finding:\n    label: Normal\n    synonyms: ['normal chest']\n"
        "  pneumothorax:\n    label: PTX\n    critical: false\n    synonyms: [pneumothorax]\n"
    )
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(
        "id: mini-rules\nrules:\n"
        "  - id: ptx\n    level: moderate\n    when: {code: pneumothorax}\n"
        "  - id: ok\n    level: normal\n    when: {code: no_finding}\n"
    )
    vocab = load_vocabulary(vocab_file)
    rules = load_rules(rules_file, vocab=vocab)
    assert rules.id == "mini-rules"
    assert grade(extract("Tiny pneumothorax.", vocab=vocab), rules).level == "moderate"
    assert grade(extract("Normal chest.", vocab=vocab), rules).level == "normal"


@pytest.mark.parametrize(
    "body, line, message",
    [
        ("id: r\nrules:\n  - id: a\n    level: urgent\n    when: {status: present}\n", 4, "unknown level 'urgent'"),
        ("id: r\nrules:\n  - id: a\n    level: low\n    when:\n      code: [atelectasis, pneumothorx]\n", 6, "unknown code 'pneumothorx'"),
        ("id: r\nrules:\n  - id: a\n    level: low\n    when: {status: maybe}\n", 5, "unknown status 'maybe'"),
        ("id: r\nrules:\n  - id: a\n    level: low\n    when: {colour: red}\n", 5, "unknown condition 'colour'"),
        ("id: r\nrules:\n  - id: a\n    level: low\n    when: {}\n  - id: a\n    level: low\n    when: {}\n", 6, "duplicate rule id"),
        ("id: r\nrules: []\n", 2, "non-empty list"),
        ("id: r\nrules:\n  - id: a\n    level: low\n    min_count: 0\n    when: {}\n", 5, "min_count"),
    ],
)
def test_invalid_rules_name_file_and_line(tmp_path, body, line, message):
    path = tmp_path / "rules.yaml"
    path.write_text(body)
    with pytest.raises(RulesError) as err:
        load_rules(path, vocab=load_vocabulary("chest_xray"))
    text = str(err.value)
    assert text.startswith(f"{path}:{line}: ")
    assert message in text
    assert "\n" not in text
    assert isinstance(err.value, ValueError)


def test_missing_rules_file_is_an_error(tmp_path):
    with pytest.raises(RulesError, match="not found"):
        load_rules(tmp_path / "nope.yaml")


def test_incidental_chronic_finding_keeps_report_off_normal():
    assert level("Calcified granuloma in the right lung base. No acute cardiopulmonary abnormality.") == "low"


def test_only_unmatched_must_be_boolean(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text("id: r\nrules:\n  - id: a\n    level: low\n    only_unmatched: sometimes\n    when: {}\n")
    with pytest.raises(RulesError, match=rf"^{path}:5: only_unmatched"):
        load_rules(path, vocab=load_vocabulary("chest_xray"))


def test_chronic_ct_findings_do_not_grade_critical():
    text = "Old lacunar infarct in the left basal ganglia. No acute intracranial abnormality."
    assert level(text, "ct") == "low"
    assert level("Bowel obstruction cannot be excluded.", "ct") == "high"
