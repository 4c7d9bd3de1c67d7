"""Findings extraction: the ways radiologists write, with sentences written for these tests."""

from __future__ import annotations

import pytest

from medvlm.findings import VocabularyError, extract, load_vocabulary, split_sentences
from medvlm.findings.extract_csv import extract_csv


def by_code(text: str, modality: str = "chest_xray") -> dict:
    findings = extract(text, modality)
    codes = [f.code for f in findings]
    assert len(codes) == len(set(codes)), "one finding per code"
    return {f.code: f for f in findings}


def status(text: str, code: str, modality: str = "chest_xray") -> str | None:
    f = by_code(text, modality).get(code)
    return f.status if f else None


# ---------------------------------------------------------------- vocabularies


@pytest.mark.parametrize("modality", ["chest_xray", "ct", "mri"])
def test_packaged_vocabularies_load_with_hash(modality):
    vocab = load_vocabulary(modality)
    assert vocab.id == modality
    assert len(vocab.hash) == 64
    assert "no_finding" in vocab.entries
    assert vocab.path.name == f"{modality}.yaml"


def test_chest_vocabulary_has_required_codes():
    required = {
        "atelectasis", "cardiomegaly", "pleural_effusion", "infiltration", "mass", "nodule", "pneumonia",
        "pneumothorax", "consolidation", "edema", "emphysema", "fibrosis", "pleural_thickening", "hernia",
        "enlarged_cardiomediastinum", "lung_opacity", "lung_lesion", "fracture", "support_devices",
        "pleural_other", "no_finding",
    }  # fmt: skip
    vocab = load_vocabulary("chest_xray")
    assert required <= set(vocab.entries)
    assert vocab.entries["pneumothorax"].critical
    assert not vocab.entries["atelectasis"].critical


@pytest.mark.parametrize(
    "modality, codes",
    [
        ("ct", {"intracranial_hemorrhage", "midline_shift", "mass_effect", "pulmonary_embolism", "aortic_dissection",
                "pneumoperitoneum", "acute_fracture", "infarct", "hydrocephalus", "cord_compression"}),
        ("mri", {"intracranial_hemorrhage", "infarct", "midline_shift", "hydrocephalus", "cord_compression", "mass"}),
    ],
)  # fmt: skip
def test_cross_sectional_vocabularies_cover_critical_findings(modality, codes):
    vocab = load_vocabulary(modality)
    assert codes <= set(vocab.entries)
    assert vocab.entries["intracranial_hemorrhage"].critical


def test_vocabulary_from_explicit_path_and_errors_name_file_and_line(tmp_path):
    good = tmp_path / "v.yaml"
    good.write_text("id: tiny\nfindings:\n  pneumothorax:\n    label: PTX\n    critical: true\n    synonyms: [pneumothorax]\n")
    vocab = load_vocabulary(good)
    assert vocab.id == "tiny" and vocab.entries["pneumothorax"].critical
    assert by_code_with(vocab, "Large left pneumothorax.")["pneumothorax"].status == "present"

    bad = tmp_path / "bad.yaml"
    bad.write_text("id: tiny\nfindings:\n  pneumothorax:\n    label: PTX\n    critical: maybe\n    synonyms: [x]\n")
    with pytest.raises(VocabularyError, match=rf"^{bad}:5: .*critical"):
        load_vocabulary(bad)
    bad.write_text("id: tiny\nfindings:\n  pneumothorax:\n    label: PTX\n    synonyms: [x]\n    colour: red\n")
    with pytest.raises(VocabularyError, match=rf"^{bad}:6: unknown key 'colour'"):
        load_vocabulary(bad)
    bad.write_text("id: tiny\nfindings:\n  pneumothorax:\n    label: PTX\n    synonyms: ['re:(unclosed']\n")
    with pytest.raises(VocabularyError, match=rf"^{bad}:5: bad pattern"):
        load_vocabulary(bad)
    bad.write_text("id: tiny\nfindings: [\n")
    with pytest.raises(VocabularyError, match=rf"^{bad}:\d+: invalid YAML"):
        load_vocabulary(bad)
    with pytest.raises(VocabularyError, match="not found"):
        load_vocabulary(tmp_path / "missing.yaml")
    assert "\n" not in str(pytest.raises(VocabularyError, load_vocabulary, bad).value)


def by_code_with(vocab, text):
    return {f.code: f for f in extract(text, vocab=vocab)}


# ---------------------------------------------------------------- sentences and evidence


def test_sentence_split_copes_with_titles_decimals_and_numbered_lists():
    text = "1. A 1.5 cm nodule in the right upper lobe. 2. Discussed with Dr. Jones at 3 p.m. today.\nNo effusion."
    sentences = [text[a:b] for a, b in split_sentences(text)]
    assert sentences[0] == "A 1.5 cm nodule in the right upper lobe."
    assert sentences[1].startswith("Discussed with Dr. Jones")
    assert sentences[-1] == "No effusion."


def test_evidence_offsets_point_into_the_source_text():
    text = "FINDINGS: Heart size is normal.\n\nIMPRESSION:\n1. Small left pleural effusion.\n2. No pneumothorax."
    findings = extract(text)
    assert findings
    for f in findings:
        ev = f.evidence
        assert text[ev.start : ev.end] == ev.text
        assert text[ev.sentence_start : ev.sentence_end] == ev.sentence
        assert ev.sentence_start <= ev.start < ev.end <= ev.sentence_end
    effusion = by_code(text)["pleural_effusion"]
    assert effusion.evidence.sentence == "Small left pleural effusion."


def test_empty_text_has_no_findings():
    assert extract("") == []
    assert extract("   \n") == []


# ---------------------------------------------------------------- negation


def test_naive_keyword_match_is_not_enough():
    assert status("No pneumothorax.", "pneumothorax") == "absent"
    assert status("There is a small apical pneumothorax.", "pneumothorax") == "present"


def test_one_negation_trigger_covers_a_list():
    f = by_code("No pneumothorax, effusion or focal consolidation.")
    assert f["pneumothorax"].status == "absent"
    assert f["pleural_effusion"].status == "absent"
    assert f["consolidation"].status == "absent"
    assert f["pleural_effusion"].cue.lower() == "no"


@pytest.mark.parametrize(
    "text",
    [
        "Without pleural effusion.",
        "Negative for pleural effusion.",
        "There is no evidence of pleural effusion.",
        "The lungs are clear of consolidation, pneumothorax or pleural effusion.",
        "Pleural effusion is not seen.",
        "Pneumothorax and pleural effusion are not identified on this examination.",
        "Free of pleural effusion.",
    ],
)
def test_negation_forms(text):
    assert status(text, "pleural_effusion") == "absent"


def test_negation_scope_ends_at_but_and_semicolon():
    f = by_code("No pneumothorax but there is a moderate right pleural effusion.")
    assert f["pneumothorax"].status == "absent"
    assert f["pleural_effusion"].status == "present"
    f = by_code("No consolidation; patchy left basilar atelectasis.")
    assert f["consolidation"].status == "absent"
    assert f["atelectasis"].status == "present"
    f = by_code("No focal consolidation, however mild cardiomegaly is again seen.")
    assert f["cardiomegaly"].status == "present"


@pytest.mark.parametrize(
    "text, code",
    [
        ("No change in the small left pleural effusion.", "pleural_effusion"),
        ("No significant interval change in moderate cardiomegaly.", "cardiomegaly"),
        ("No increase in the size of the right pneumothorax.", "pneumothorax"),
        ("Not only is there an effusion on the left, it has enlarged.", "pleural_effusion"),
    ],
)
def test_pseudo_negations_do_not_negate(text, code):
    assert status(text, code) == "present"


def test_normal_statement_does_not_negate_what_follows():
    f = by_code("No acute cardiopulmonary process, stable mild cardiomegaly.")
    assert f["no_finding"].status == "present"
    assert f["cardiomegaly"].status == "present"


def test_redaction_tokens_do_not_break_negation():
    assert status("There are no XXXX of a pleural effusion.", "pleural_effusion") == "absent"
    assert status("XXXX left basilar atelectasis.", "atelectasis") == "present"


# ---------------------------------------------------------------- uncertainty


@pytest.mark.parametrize(
    "text",
    [
        "Possible right lower lobe pneumonia.",
        "Right basilar opacity may represent pneumonia.",
        "Pneumonia cannot be excluded.",
        "Cannot exclude early pneumonia.",
        "Questionable retrocardiac pneumonia.",
        "Findings are suggestive of pneumonia.",
        "Atelectasis versus pneumonia at the left base.",
        "Pneumonia is not entirely excluded.",
        "Clinical correlation for pneumonia is recommended to rule out pneumonia.",
        "Pneumonia?",
    ],
)
def test_uncertainty_forms(text):
    assert status(text, "pneumonia") == "uncertain"


def test_versus_makes_both_alternatives_uncertain():
    f = by_code("Left basilar atelectasis versus consolidation.")
    assert f["atelectasis"].status == "uncertain"
    assert f["consolidation"].status == "uncertain"


@pytest.mark.parametrize(
    "text",
    ["Right lower lobe opacity likely pneumonia.", "Airspace disease consistent with pneumonia."],
)
def test_likely_and_consistent_with_count_as_present(text):
    # Measured against the Open-i gold: radiologists use these to assert, not to hedge.
    assert status(text, "pneumonia") == "present"


def test_nearest_cue_decides_in_mixed_lists():
    f = by_code("Possible small left pneumothorax, no pleural effusion.")
    assert f["pneumothorax"].status == "uncertain"
    assert f["pleural_effusion"].status == "absent"


# ---------------------------------------------------------------- resolution and history


@pytest.mark.parametrize(
    "text",
    [
        "The left pneumothorax has resolved.",
        "Interval resolution of the left pneumothorax.",
        "Previously seen left pneumothorax is no longer seen.",
    ],
)
def test_resolved_findings_are_absent(text):
    f = by_code(text)["pneumothorax"]
    assert f.status == "absent"
    assert f.change == "resolved"


def test_history_is_absent_unless_reasserted():
    assert status("History of pneumonia.", "pneumonia") == "absent"
    assert status("Previously seen right upper lobe nodule.", "nodule") == "absent"
    f = by_code("Previously seen right upper lobe nodule is again seen, unchanged.")["nodule"]
    assert f.status == "present"
    assert f.change == "stable"


def test_old_fracture_is_still_a_fracture():
    # Decision: a healed fracture is visible on the film, so it is present (risk rules grade it).
    assert status("Old healed left rib fracture.", "fracture") == "present"
    assert status("No acute fracture.", "fracture") == "absent"


# ---------------------------------------------------------------- heart size


@pytest.mark.parametrize(
    "text",
    [
        "Heart size is normal.",
        "The heart is normal in size.",
        "Normal heart size.",
        "The cardiomediastinal silhouette is within normal limits.",
        "The heart is not enlarged.",
    ],
)
def test_normal_heart_size_is_cardiomegaly_absent(text):
    assert status(text, "cardiomegaly") == "absent"


@pytest.mark.parametrize(
    "text",
    [
        "The heart is enlarged.",
        "Moderate cardiomegaly.",
        "The cardiac silhouette is mildly enlarged.",
        "Enlarged cardiac silhouette.",
    ],
)
def test_enlarged_heart_is_cardiomegaly_present(text):
    assert status(text, "cardiomegaly") == "present"


# ---------------------------------------------------------------- attributes


@pytest.mark.parametrize(
    "text, severity",
    [
        ("Small left pleural effusion.", "small"),
        ("Large right pleural effusion.", "large"),
        ("Trace bilateral pleural effusions.", "minimal"),
        ("Mild to moderate pleural effusion on the right.", "mild-moderate"),
    ],
)
def test_severity(text, severity):
    assert by_code(text)["pleural_effusion"].severity == severity


def test_tension_pneumothorax_severity():
    f = by_code("Large right tension pneumothorax with mediastinal shift.")["pneumothorax"]
    assert f.severity in {"tension", "large"}
    assert f.laterality == "right"


@pytest.mark.parametrize(
    "text, side",
    [
        ("Left basilar atelectasis.", "left"),
        ("Atelectasis in the right lower lobe.", "right"),
        ("Bibasilar atelectasis.", "bilateral"),
        ("Bilateral lower lobe atelectasis.", "bilateral"),
    ],
)
def test_laterality(text, side):
    assert by_code(text)["atelectasis"].laterality == side


def test_laterality_stays_with_its_own_noun_phrase():
    f = by_code("Small left pleural effusion and right basilar atelectasis.")
    assert f["pleural_effusion"].laterality == "left"
    assert f["atelectasis"].laterality == "right"


@pytest.mark.parametrize(
    "text, change",
    [
        ("New small right pleural effusion.", "new"),
        ("Worsening left pleural effusion.", "worsening"),
        ("Stable small left pleural effusion.", "stable"),
        ("Improving right pleural effusion.", "improving"),
    ],
)
def test_change(text, change):
    assert by_code(text)["pleural_effusion"].change == change


def test_exclusions_keep_lookalike_phrases_out():
    f = by_code("Small pericardial effusion. No pleural effusion.")
    assert f["pleural_effusion"].status == "absent"
    assert status("Cystic fibrosis with bronchiectasis.", "fibrosis") is None


def test_strongest_status_wins_across_sentences():
    text = "No pneumothorax on the left. Small right apical pneumothorax."
    f = by_code(text)["pneumothorax"]
    assert f.status == "present"
    assert f.laterality == "right"
    assert f.evidence.sentence == "Small right apical pneumothorax."


# ---------------------------------------------------------------- normal statements


@pytest.mark.parametrize(
    "text",
    ["No acute cardiopulmonary abnormality.", "The lungs are clear.", "Normal chest.", "No active disease."],
)
def test_explicit_normal_statement(text):
    f = by_code(text)["no_finding"]
    assert f.status == "present"


def test_clear_of_list_is_not_a_normal_statement_but_negates():
    f = by_code("The lungs are clear of consolidation or effusion.")
    assert "no_finding" not in f
    assert f["consolidation"].status == "absent"


# ---------------------------------------------------------------- CT and MRI


def test_ct_critical_findings():
    f = by_code("Acute right subdural hematoma with 6 mm leftward midline shift. No hydrocephalus.", "ct")
    assert f["intracranial_hemorrhage"].status == "present"
    assert f["intracranial_hemorrhage"].critical
    assert f["midline_shift"].status == "present"
    assert f["hydrocephalus"].status == "absent"
    assert by_code("Free intraperitoneal air under the diaphragm.", "ct")["pneumoperitoneum"].status == "present"
    assert by_code("No pulmonary embolism or aortic dissection.", "ct")["aortic_dissection"].status == "absent"


def test_mri_findings():
    f = by_code("Restricted diffusion in the left MCA territory consistent with acute infarct. No hemorrhage.", "mri")
    assert f["infarct"].status == "present"
    assert f["intracranial_hemorrhage"].status == "absent"


# ---------------------------------------------------------------- batch


def test_extract_csv_joins_text_columns_and_writes_rows(tmp_path):
    import pandas as pd

    src = tmp_path / "in.csv"
    pd.DataFrame(
        {
            "study": ["a", "b", "c"],
            "findings": ["Small left pleural effusion.", "", "Heart size is normal."],
            "impression": ["No pneumothorax.", "Lungs are clear.", ""],
        }
    ).to_csv(src, index=False)
    out = tmp_path / "out.csv"
    n = extract_csv(src, "study", "findings,impression", "chest_xray", out)
    rows = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert n == len(rows) == 4
    assert {"id", "code", "label", "status", "severity", "laterality", "evidence"} <= set(rows.columns)
    a = rows[rows["id"] == "a"].set_index("code")
    assert a.loc["pleural_effusion", "status"] == "present"
    assert a.loc["pleural_effusion", "laterality"] == "left"
    assert a.loc["pneumothorax", "status"] == "absent"
    assert rows[rows["id"] == "b"]["code"].tolist() == ["no_finding"]
    with pytest.raises(ValueError, match="missing column"):
        extract_csv(src, "study", "report", "chest_xray", out)


def test_strong_suggestion_reads_as_likely():
    # "most/highly suggestive of" is as strong as "likely"; plain "suggestive of" hedges.
    assert status("Right lower lobe opacity, highly suggestive of pneumonia.", "pneumonia") == "present"
    assert status("Right lower lobe opacity, suggestive of pneumonia.", "pneumonia") == "uncertain"


def test_hypothetical_mentions_are_not_findings():
    assert status("Overlapping ribs could obscure a small nodule.", "nodule") == "uncertain"
    assert status("Follow-up radiograph is advised to exclude an underlying mass.", "mass") == "uncertain"


def test_chronic_incidental_findings_are_coded():
    f = by_code("Calcified granuloma in the left upper lobe. Mild degenerative changes of the thoracic spine.")
    assert f["granuloma"].status == "present"
    assert f["degenerative_spine"].status == "present"


def test_vascular_congestion_is_not_edema():
    f = by_code("Mild pulmonary vascular congestion without overt edema.")
    assert f["vascular_congestion"].status == "present"
    assert f["edema"].status == "absent"


def test_words_inside_a_mention_are_not_its_severity():
    f = by_code("Dilated loops with a transition point, consistent with small bowel obstruction.", "ct")
    assert f["bowel_obstruction"].status == "present"
    assert f["bowel_obstruction"].severity is None


def test_old_infarct_and_healed_fracture_are_not_acute_ct_findings():
    f = by_code("Old lacunar infarct in the left basal ganglia. Healed left rib fractures. No acute fracture.", "ct")
    assert "infarct" not in f
    assert f["chronic_infarct"].status == "present"
    assert f["fracture"].status == "present"
    assert f["acute_fracture"].status == "absent"


@pytest.mark.parametrize("text", ["Masslike opacity at the left apex.", "A mass-like density in the right hilum."])
def test_masslike_wording_is_a_mass(text):
    assert status(text, "mass") == "present"
