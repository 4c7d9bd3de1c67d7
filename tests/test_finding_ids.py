"""Stable finding ids: in report.json, the HTML report and the findings export; unchanged by regrade."""

from __future__ import annotations

import hashlib
import json
import re
import shutil

import pytest

from audit_support import make_png_studies, read_summary
from medvlm.audit.export import build_tables
from medvlm.audit.verify import verify_run
from medvlm.config import RunConfig
from medvlm.finding_ids import assign_ids, finding_id, ids_for_codes, text_sha256
from medvlm.findings import extract
from medvlm.models.base import BackendBase, ModelInfo
from medvlm.paths import PACKAGE_DIR
from medvlm.pipeline import run_batch
from medvlm.records import ModelOutput
from medvlm.regrade import regrade_run
from medvlm.report.html import render_report_html
from medvlm.report.validate import validate_report

TEXT = "Small left pleural effusion. No pneumothorax. Possible right lower lobe consolidation."
ID_RE = re.compile(r"^f-[0-9a-f]{16}$")


class FixedTextBackend(BackendBase):
    """Answers every study with the same report text, so the findings are known."""

    info = ModelInfo(
        name="fixed", source="tests", local_dir=None, revision=None, random_weights=False,
        dtype="float32", quantization="none", device="cpu",
    )

    def generate(self, batch, *, max_new_tokens, ignore_eos=False):
        return [ModelOutput(text=TEXT, answer_status="complete", prompt_tokens=10, new_tokens=12) for _ in batch]


def test_finding_id_is_the_documented_hash():
    material = "\n".join(("medvlm-finding-1", "study-1", text_sha256(TEXT), "pneumothorax", "0"))
    expected = "f-" + hashlib.sha256(material.encode()).hexdigest()[:16]
    assert finding_id("study-1", hashlib.sha256(TEXT.encode()).hexdigest(), "pneumothorax") == expected
    assert ID_RE.match(expected)


def test_ids_differ_by_study_text_code_and_occurrence():
    digest = text_sha256(TEXT)
    ids = {
        finding_id("study-1", digest, "pneumothorax"),
        finding_id("study-2", digest, "pneumothorax"),
        finding_id("study-1", text_sha256(TEXT + " "), "pneumothorax"),
        finding_id("study-1", digest, "pleural_effusion"),
        finding_id("study-1", digest, "pneumothorax", 1),
    }
    assert len(ids) == 5
    # A code repeated in one report gets one id per occurrence, in report order.
    first, second = ids_for_codes("study-1", TEXT, ["nodule", "nodule"])
    assert (first, second) == (finding_id("study-1", digest, "nodule", 0), finding_id("study-1", digest, "nodule", 1))


def test_assign_ids_sets_one_id_per_finding_and_changes_nothing_else():
    found = extract(TEXT, "chest_xray")
    assert found and all(f.id is None for f in found)
    with_ids = assign_ids(found, "study-1", TEXT)
    assert [f.id for f in with_ids] == ids_for_codes("study-1", TEXT, [f.code for f in found])
    assert len({f.id for f in with_ids}) == len(found)
    assert [f.__class__(**{**f.__dict__, "id": None}) for f in with_ids] == found


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("ids")
    studies = make_png_studies(root / "studies", 2)
    out = root / "out"
    run_batch(RunConfig(studies=studies, out=out, model="demo", max_new_tokens=8, write_pdf=False), backend=FixedTextBackend())
    return out


def _reports(out):
    return {r["study_key"]: json.loads((out / r["study_key"] / "report.json").read_text()) for r in read_summary(out)}


def test_reports_carry_ids_in_json_and_html(run_dir):
    docs = _reports(run_dir)
    assert len(docs) == 2
    for key, doc in docs.items():
        validate_report(doc)
        assert doc["schema_version"] == "1.1"
        ids = [f["id"] for f in doc["findings"]]
        assert len(ids) >= 3 and all(ID_RE.match(i) for i in ids)
        assert ids == ids_for_codes(key, doc["model_output"]["text"], [f["code"] for f in doc["findings"]])
        html = (run_dir / key / "report.html").read_text(encoding="utf-8")
        for i in ids:
            assert f'data-finding-id="{i}"' in html
    # Same text in two studies: the study key keeps their ids apart.
    a, b = docs.values()
    assert not {f["id"] for f in a["findings"]} & {f["id"] for f in b["findings"]}


def test_regrade_keeps_ids_even_when_the_vocabulary_moves_the_evidence(run_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    before = _reports(copy)
    assert not regrade_run(copy, pdf=False).errors
    same = _reports(copy)
    for key in before:
        assert [(f["id"], f["code"]) for f in same[key]["findings"]] == [(f["id"], f["code"]) for f in before[key]["findings"]]

    # An edited vocabulary whose longer synonym moves the effusion's evidence: same finding, same id.
    vocab_text = (PACKAGE_DIR / "findings" / "vocab" / "chest_xray.yaml").read_text(encoding="utf-8")
    edited = vocab_text.replace('synonyms: [effusion*, "pleural fluid",', 'synonyms: ["left pleural effusion", effusion*, "pleural fluid",')
    assert edited != vocab_text
    vocab_file = tmp_path / "vocab.yaml"
    vocab_file.write_text(edited, encoding="utf-8")
    assert not regrade_run(copy, vocab_file=vocab_file, pdf=False).errors
    after = _reports(copy)
    for key in before:
        old = {f["code"]: f for f in before[key]["findings"]}
        new = {f["code"]: f for f in after[key]["findings"]}
        assert old.keys() == new.keys()
        assert new["pleural_effusion"]["evidence"]["start"] < old["pleural_effusion"]["evidence"]["start"]
        assert new["pleural_effusion"]["evidence"]["text"] == "left pleural effusion"
        assert {c: f["id"] for c, f in new.items()} == {c: f["id"] for c, f in old.items()}
    assert not verify_run(copy).problems


def test_export_has_the_report_ids_and_derives_them_for_older_reports(run_dir, tmp_path):
    _, findings = build_tables(run_dir)
    docs = _reports(run_dir)
    by_report = {f["id"] for doc in docs.values() for f in doc["findings"]}
    assert len(findings) == len(by_report)
    for row in findings.itertuples(index=False):
        finding = docs[row.study_key]["findings"][row.finding_index]
        assert (row.finding_id, row.code) == (finding["id"], finding["code"])

    # A report written before finding ids (schema 1.0: no ids, no cues entry) still validates, and
    # export gives its findings the ids a regrade would write.
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    for key, doc in _reports(copy).items():
        doc["schema_version"] = "1.0"
        del doc["provenance"]["cues"]
        for f in doc["findings"]:
            del f["id"]
        validate_report(doc)
        html = render_report_html(doc, {})  # an older report still renders, without id attributes
        assert "data-finding-id" not in html and doc["findings"][0]["label"] in html
        (copy / key / "report.json").write_text(json.dumps(doc), encoding="utf-8")
    _, old_findings = build_tables(copy)
    assert list(old_findings["finding_id"]) == list(findings["finding_id"])
    assert regrade_run(copy, pdf=False).errors  # reports rewritten by hand: refused until adopted
    assert not regrade_run(copy, pdf=False, adopt_edits=True).errors
    assert {f["id"] for doc in _reports(copy).values() for f in doc["findings"]} == by_report


def test_a_current_report_without_ids_or_cues_does_not_validate(run_dir):
    from medvlm.report.validate import ReportInvalid

    doc = next(iter(_reports(run_dir).values()))
    no_id = json.loads(json.dumps(doc))
    del no_id["findings"][0]["id"]
    with pytest.raises(ReportInvalid, match="findings/0: 'id' is a required property"):
        validate_report(no_id)
    no_cues = json.loads(json.dumps(doc))
    del no_cues["provenance"]["cues"]
    with pytest.raises(ReportInvalid, match="provenance: 'cues' is a required property"):
        validate_report(no_cues)
