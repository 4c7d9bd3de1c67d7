"""Cue files: the negation/uncertainty/attribute patterns are data, hashed, validated with path:line errors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medvlm.cli import app
from medvlm.findings import CuesError, VocabularyError, extract, load_cues, load_vocabulary
from medvlm.findings.cueset import cues_path
from medvlm.paths import PACKAGE_DIR

EN = PACKAGE_DIR / "findings" / "cues" / "en.yaml"
CHEST_VOCAB = PACKAGE_DIR / "findings" / "vocab" / "chest_xray.yaml"
runner = CliRunner()


def statuses(text: str, vocab) -> dict[str, str]:
    return {f.code: f.status for f in extract(text, vocab=vocab)}


def vocab_with_cues(folder: Path, cue_text: str, ref: str = "cues.yaml") -> Path:
    """A copy of the chest vocabulary that reads its cues from `folder/ref`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ref).write_text(cue_text, encoding="utf-8")
    vocab = folder / "vocab.yaml"
    vocab.write_text(CHEST_VOCAB.read_text(encoding="utf-8") + f"\ncues: {ref}\n", encoding="utf-8")
    return vocab


def edited(old: str, new: str) -> tuple[str, int]:
    """en.yaml with the first line containing `old` replaced by `new`; returns (text, that line's number)."""
    lines = EN.read_text(encoding="utf-8").splitlines()
    number = next(i for i, line in enumerate(lines) if old in line)
    lines[number] = lines[number].replace(old, new)
    return "\n".join(lines) + "\n", number + 1


def test_packaged_cues_load_with_the_hash_of_their_bytes():
    cues = load_cues()
    assert cues.id == "en"
    assert cues.path == cues_path("en") and cues.path.name == "en.yaml"
    assert cues.hash == hashlib.sha256(cues.path.read_bytes()).hexdigest()
    assert cues.provenance() == {"id": "en", "sha256": cues.hash, "path": str(cues.path)}


@pytest.mark.parametrize("modality", ["chest_xray", "ct", "mri"])
def test_every_packaged_vocabulary_reads_with_the_english_cues(modality):
    vocab = load_vocabulary(modality)
    assert vocab.cues is load_cues("en")
    assert vocab.cues_hash == load_cues().hash


def test_cue_file_named_by_a_vocabulary_changes_decisions_and_hash(tmp_path):
    text = "Patient denies pneumothorax. Small effusion."
    base = load_vocabulary("chest_xray")
    assert statuses(text, base)["pneumothorax"] == "present"  # "denies" is no cue in en.yaml
    cue_text, _ = edited("    - 'negative for'", "    - 'denies'")
    vocab = load_vocabulary(vocab_with_cues(tmp_path, cue_text))
    assert vocab.cues.path == tmp_path / "cues.yaml"
    assert vocab.cues_hash == hashlib.sha256(cue_text.encode()).hexdigest() != base.cues_hash
    got = statuses(text, vocab)
    assert got["pneumothorax"] == "absent"
    assert got["pleural_effusion"] == "present"
    # "negative for" was the line replaced: it no longer negates with these cues.
    assert statuses("Negative for pneumothorax.", vocab)["pneumothorax"] == "present"
    assert statuses("Negative for pneumothorax.", base)["pneumothorax"] == "absent"


def test_an_edited_cue_file_is_read_again(tmp_path):
    vocab_file = vocab_with_cues(tmp_path, EN.read_text(encoding="utf-8"))
    first = load_vocabulary(vocab_file)
    assert statuses("Patient denies pneumothorax.", first)["pneumothorax"] == "present"
    cue_text, _ = edited("    - 'negative for'", "    - 'denies'")
    (tmp_path / "cues.yaml").write_text(cue_text, encoding="utf-8")
    second = load_vocabulary(vocab_file)
    assert second.cues_hash != first.cues_hash
    assert statuses("Patient denies pneumothorax.", second)["pneumothorax"] == "absent"


def test_cues_directory_can_be_overridden_by_environment(tmp_path, monkeypatch):
    cue_text, _ = edited("    - 'negative for'", "    - 'denies'")
    (tmp_path / "en.yaml").write_text(cue_text, encoding="utf-8")
    monkeypatch.setenv("MEDVLM_FINDINGS_CUES_DIR", str(tmp_path))
    cues = load_cues("en")
    assert cues.path == tmp_path / "en.yaml"
    assert load_vocabulary("chest_xray").cues is cues


BROKEN = [
    # (text in en.yaml, replacement, message fragment)
    ("    - 'negative for'", "    - 'negative (for'", "bad pattern 'negative (for' in before.negated"),
    ("    - 'negative for'", "    - 'negative (?P<x>for)'", "named groups and back-references are reserved"),
    ("    - 'negative for'", "    - '(for) \\1'", "named groups and back-references are reserved"),
    ("    - 'negative for'", "    - '(?:negative for)?'", "pattern '(?:negative for)?' matches empty text"),
    ("    - 'negative for'", "    - ''", "every pattern must be a non-empty string"),
    ("  negated:\n", "  negatd:\n", "unknown cue kind 'negatd' in 'before'"),
    ("    resolved:\n", "    cleared:\n", "unknown cue kind 'cleared' in 'after.kinds'"),
    ("      alone:\n        - '\\?'", "      sole:\n        - '\\?'", "unknown key 'sole' in 'after.kinds.uncertain'"),
    ("  range_ends: [small,", "  range_ends: [tiny, huge, small,", "range end 'huge' is not one of severity.words"),
    ("    trace: minimal", "    trace level: minimal", "severity word 'trace level' must be one lower-case word"),
    ("  left: ['left', 'lt']", "  west: ['left', 'lt']", "unknown side 'west' in 'laterality'"),
    ("  new: ['new(?:ly)?',", "  fresh: ['new(?:ly)?',", "unknown change 'fresh' in 'change'"),
    ("reassert:\n", "reassert: 7\n", "reassert must be a list of regular expressions"),
    ("versus_after:", "versus_later:", "unknown top-level key 'versus_later'"),
    ("id: en", "id: [en]", "'id' must be a non-empty string"),
    ("clause_breaks:\n  - ';'", "clause_breaks:\n  - ';'\n  - 'x\\'", "bad pattern"),
    ("id: en", "id: en: x", "invalid YAML"),
]


@pytest.mark.parametrize("old,new,message", BROKEN, ids=[b[2][:40] for b in BROKEN])
def test_invalid_cue_files_fail_with_path_line_and_what(tmp_path, old, new, message):
    text = EN.read_text(encoding="utf-8")
    assert old in text, f"test out of date with en.yaml: {old!r}"
    broken = text.replace(old, new, 1)
    line = text[: text.index(old)].count("\n") + 1
    path = tmp_path / "cues.yaml"
    path.write_text(broken, encoding="utf-8")
    with pytest.raises(CuesError) as info:
        load_cues(path)
    msg = str(info.value)
    assert "\n" not in msg and "Traceback" not in msg
    assert message in msg
    where, _, _ = msg.partition(": ")
    assert where.startswith(f"{path}:")
    reported = int(where.rsplit(":", 1)[1])
    # The error points at the edited line (or, for a broken list item, the item on the line after it).
    assert line <= reported <= line + new.count("\n") + 1, (msg, line)


def test_missing_section_empty_file_and_non_utf8(tmp_path):
    path = tmp_path / "cues.yaml"
    path.write_text(EN.read_text(encoding="utf-8").replace("versus_after:", "# versus_after:"), encoding="utf-8")
    with pytest.raises(CuesError, match=r"cues\.yaml:1: missing top-level key 'versus_after'"):
        load_cues(path)
    path.write_text("# nothing here\n", encoding="utf-8")
    with pytest.raises(CuesError, match=r"cues\.yaml:1: file is empty"):
        load_cues(path)
    path.write_bytes(b"id: \xff\n")
    with pytest.raises(CuesError, match=r"cues\.yaml:0: not UTF-8 text"):
        load_cues(path)
    with pytest.raises(CuesError, match=r"nowhere\.yaml:0: cue file not found"):
        load_cues(tmp_path / "nowhere.yaml")


def test_vocabulary_naming_a_missing_or_broken_cue_file_fails_at_its_line(tmp_path):
    vocab_file = vocab_with_cues(tmp_path, EN.read_text(encoding="utf-8"))
    (tmp_path / "cues.yaml").unlink()
    cue_line = vocab_file.read_text(encoding="utf-8").splitlines().index("cues: cues.yaml") + 1
    with pytest.raises(VocabularyError, match=rf"vocab\.yaml:{cue_line}: cue file not found: .*cues\.yaml"):
        load_vocabulary(vocab_file)
    broken, line = edited("    - 'negative for'", "    - 'negative (for'")
    (tmp_path / "cues.yaml").write_text(broken, encoding="utf-8")
    with pytest.raises(CuesError, match=rf"cues\.yaml:{line}: bad pattern"):
        load_vocabulary(vocab_file)


def test_cli_extract_reports_a_broken_cue_file_in_one_line_exit_2(tmp_path):
    broken, line = edited("    - 'negative for'", "    - 'negative (for'")
    vocab_file = vocab_with_cues(tmp_path / "v", broken)
    reports = tmp_path / "reports.csv"
    reports.write_text("id,text\n1,No pneumothorax.\n", encoding="utf-8")
    result = runner.invoke(
        app, ["extract", str(reports), "--id-column", "id", "--text-column", "text", "--vocab", str(vocab_file),
              "--out", str(tmp_path / "out.csv")],
    )
    assert result.exit_code == 2, result.output
    assert f"cues.yaml:{line}: bad pattern" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out.csv").exists()


def test_cli_batch_reports_a_broken_cue_file_before_any_work(tmp_path):
    from audit_support import make_png_studies

    broken, line = edited("  negated:", "  negatd:")
    vocab_file = vocab_with_cues(tmp_path / "v", broken)
    studies = make_png_studies(tmp_path / "studies", 1)
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["batch", str(studies), "--modality", "chest_xray", "--model", "demo", "--vocab", str(vocab_file),
              "--out", str(out), "--no-pdf"],
    )
    assert result.exit_code == 2, result.output
    assert f"cues.yaml:{line}: unknown cue kind 'negatd'" in " ".join(result.output.split())
    assert not out.exists()


def test_report_provenance_names_the_cue_file(tmp_path):
    """A batch records the cue file's id, path and hash; a regrade with other cues records those."""
    from medvlm.config import RunConfig
    from medvlm.pipeline import run_batch
    from medvlm.regrade import regrade_run
    from medvlm.report.validate import validate_report

    from audit_support import make_png_studies
    from test_finding_ids import FixedTextBackend

    studies = make_png_studies(tmp_path / "studies", 1)
    out = tmp_path / "out"
    run_batch(RunConfig(studies=studies, out=out, model="demo", max_new_tokens=8, write_pdf=False), backend=FixedTextBackend())
    (report,) = out.glob("*/report.json")
    doc = json.loads(report.read_text(encoding="utf-8"))
    validate_report(doc)
    assert doc["provenance"]["cues"] == load_cues().provenance()
    assert "negation cues" in (report.parent / "report.html").read_text(encoding="utf-8")

    cue_text, _ = edited("    - 'negative for'", "    - 'denies'")
    vocab_file = vocab_with_cues(tmp_path / "v", cue_text)
    result = regrade_run(out, vocab_file=vocab_file, pdf=False)
    assert result.rewritten == 1 and not result.errors
    doc = json.loads(report.read_text(encoding="utf-8"))
    validate_report(doc)
    assert doc["provenance"]["cues"] == {
        "id": "en", "sha256": hashlib.sha256(cue_text.encode()).hexdigest(), "path": str(tmp_path / "v" / "cues.yaml"),
    }


def test_resume_keys_on_the_cue_file_and_regrade_records_it(tmp_path, caplog):
    """An edited cue file redoes the studies; after a regrade with new cues, the same batch resumes."""
    from medvlm.config import RunConfig
    from medvlm.pipeline import run_batch
    from medvlm.regrade import regrade_run

    from audit_support import attempts, make_png_studies
    from test_finding_ids import FixedTextBackend

    studies = make_png_studies(tmp_path / "studies", 2)
    vocab_file = vocab_with_cues(tmp_path / "v", EN.read_text(encoding="utf-8"))
    config = RunConfig(studies=studies, out=tmp_path / "out", model="demo", max_new_tokens=8, write_pdf=False,
                       modality="chest_xray", vocab_file=vocab_file)
    backend = FixedTextBackend()
    assert run_batch(config, backend=backend).count("ok") == 2
    assert run_batch(config, backend=backend).count("ok") == 2
    assert len(attempts(config.out)) == 2  # the second batch reused both studies

    cue_text, _ = edited("    - 'negative for'", "    - 'denies'")
    (tmp_path / "v" / "cues.yaml").write_text(cue_text, encoding="utf-8")
    with caplog.at_level("WARNING", logger="medvlm.audit"):
        assert run_batch(config, backend=backend).count("ok") == 2
    assert len(attempts(config.out)) == 4
    assert "resources.chest_xray.cues changed" in caplog.text

    other, _ = edited("    - 'free of'", "    - 'excludes'")
    other_vocab = vocab_with_cues(tmp_path / "w", other)
    assert not regrade_run(config.out, vocab_file=other_vocab, pdf=False).errors
    assert len(attempts(config.out)) == 6
    regraded = RunConfig(**{**config.__dict__, "vocab_file": other_vocab})
    assert run_batch(regraded, backend=backend).count("ok") == 2
    assert len(attempts(config.out)) == 6  # the regrade's cue hash is the one a batch with these files expects
