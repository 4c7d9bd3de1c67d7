"""The phantom generator: byte-identical output per seed, truth that matches what is drawn, files medvlm reads,
and report text from which the extractor reads the truth back."""

from __future__ import annotations

import csv
import subprocess
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from medvlm.findings import extract
from medvlm.ingest.discover import discover
from medvlm.ingest.load import load_study
from medvlm.phantoms import FINDING_CODES, Finding, generate, render_view, sample_study
from medvlm.phantoms.language import report_text
from medvlm.phantoms.spec import CTR_BY_SEVERITY, CTR_NORMAL, study_rng
from medvlm.records import Study

PROJECT = Path(__file__).resolve().parent.parent
SECRET = b"0" * 32


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_and_study_i_independent_of_n(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate(a, 8, seed=11, size=96)
    generate(b, 8, seed=11, size=96)
    generate(c, 3, seed=11, size=96)
    fa = _files(a)
    assert fa == _files(b)
    assert len(fa) >= 9 and "truth.csv" in fa
    for name, data in _files(c).items():
        if name != "truth.csv":
            assert fa[name] == data, name
    other = tmp_path / "d"
    generate(other, 8, seed=12, size=96)
    assert _files(other) != fa


def test_cli_writes_studies_and_truth_and_refuses_a_non_empty_folder(tmp_path):
    out = tmp_path / "ph"
    cmd = [sys.executable, str(PROJECT / "sample_data" / "make_phantoms.py"), str(out), "--n", "4", "--seed", "3",
           "--size", "80"]
    env = {"PYTHONPATH": str(PROJECT)}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "wrote 4 studies" in res.stdout
    rows = list(csv.DictReader(open(out / "truth.csv", encoding="utf-8")))
    assert [r["study"] for r in rows] == [f"phantom_{i:05d}" for i in range(4)]
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert again.returncode == 2 and "not empty" in again.stderr and "Traceback" not in again.stderr
    bad = subprocess.run(cmd[:3] + ["--n", "0", "--seed", "1"], capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    redo = subprocess.run(cmd + ["--overwrite"], capture_output=True, text=True, env=env, timeout=120)
    assert redo.returncode == 0, redo.stderr


def test_truth_csv_is_the_drawn_specification(tmp_path):
    studies = generate(tmp_path, 12, seed=4, size=72)
    rows = {r["study"]: r for r in csv.DictReader(open(tmp_path / "truth.csv", encoding="utf-8"))}
    assert set(rows) == {s.name for s in studies}
    for s in studies:
        assert rows[s.name]["findings"] == ";".join(s.codes)
        assert sample_study(4, s.index) == s  # the spec is a pure function of (seed, index)
        assert all(code in FINDING_CODES for code in s.codes)


def test_the_mix_of_findings_views_and_storage():
    specs = [sample_study(21, i) for i in range(600)]
    normal = sum(1 for s in specs if not s.findings) / len(specs)
    assert 0.27 < normal < 0.40
    counts = Counter(c for s in specs for c in s.codes)
    assert set(counts) == set(FINDING_CODES) and min(counts.values()) >= 25, counts
    assert sum(1 for s in specs if len(s.findings) >= 2) >= 60  # combinations
    sides = Counter(f.side for s in specs for f in s.findings if f.code == "pleural_effusion")
    assert {"left", "right", "bilateral"} <= set(sides)
    st = [s.storage for s in specs]
    assert {x.format for x in st} == {"dicom", "png"}
    dicom = [x for x in st if x.format == "dicom"]
    assert {x.modality for x in dicom} == {"CR", "DX"}
    assert {x.photometric for x in dicom} == {"MONOCHROME1", "MONOCHROME2"}
    assert {x.compression for x in dicom} == {None, "rle", "j2k"}
    assert any(x.rescale for x in dicom) and any(x.padding for x in dicom)
    assert {s.views for s in specs} >= {("PA",), ("AP",), ("PA", "LL")}
    for s in specs:  # cardiomegaly is decided by the drawn cardiothoracic ratio, never on the border
        f = s.finding("cardiomegaly")
        lo, hi = CTR_BY_SEVERITY[f.severity] if f else CTR_NORMAL
        assert lo <= s.anatomy.ctr <= hi


def _upright(study):
    """The same patient without rotation, shift or film markers, so pixel regions can be compared."""
    a = replace(study.anatomy, rotation_deg=0.0, shift=(0.0, 0.0), scale=1.0, aspect=1.0, marker=None, collimation=0.0,
                noise=0.0)
    return replace(study, anatomy=a)


def _diff(study, finding: Finding, size: int = 128) -> np.ndarray:
    base = _upright(replace(study, findings=()))
    with_f = replace(base, findings=(finding,))
    return render_view(with_f, "PA", size, size) - render_view(base, "PA", size, size)


def _normal_patient(index: int):
    s = next(sample_study(31, i) for i in range(index, index + 200) if not sample_study(31, i).findings)
    return s


@pytest.mark.parametrize("finding, sign", [
    (Finding("pleural_effusion", side="right", severity="moderate"), 1),
    (Finding("pneumothorax", side="left", severity="moderate"), -1),
    (Finding("consolidation", side="right", zone="lower", kind="lobar"), 1),
    (Finding("nodule", side="left", zone="upper", size_cm=2.2, pos=(0.5, 0.5)), 1),
    (Finding("mass", side="right", zone="middle", size_cm=5.0, pos=(0.5, 0.5)), 1),
    (Finding("atelectasis", side="left", zone="lower", kind="lobar"), 1),
])
def test_each_finding_changes_its_own_side_of_the_chest(finding, sign):
    """A unilateral finding changes the picture on the stated side (the patient's right is the image left); the
    other lung's lateral part stays as it was (its medial border may move with a mediastinal shift)."""
    d = _diff(_normal_patient(0), finding) * sign
    width = d.shape[1]
    half, lateral = width // 2, int(width * 0.35)
    right_of_patient, left_of_patient = d[:, :half], d[:, half:]
    stated = right_of_patient if finding.side == "right" else left_of_patient
    other_lateral = d[:, width - lateral:] if finding.side == "right" else d[:, :lateral]
    assert stated.clip(min=0).sum() > 5 * abs(other_lateral).sum() + 1.0, (stated.clip(min=0).sum(), abs(other_lateral).sum())


def test_zone_and_size_follow_the_truth():
    s = _normal_patient(0)
    centers = {}
    for zone in ("upper", "lower"):
        d = _diff(s, Finding("nodule", side="right", zone=zone, size_cm=2.0, pos=(0.5, 0.5))).clip(min=0)
        rows = np.arange(d.shape[0])[:, None]
        centers[zone] = float((d * rows).sum() / d.sum())
    assert centers["upper"] < centers["lower"] - 10
    areas = [(_diff(s, Finding("pleural_effusion", side="left", severity=sev)) > 0.05).sum()
             for sev in ("small", "moderate", "large")]
    assert areas[0] < areas[1] < areas[2], areas
    small_nodule = (_diff(s, Finding("nodule", side="left", zone="middle", size_cm=1.4, pos=(0.5, 0.5))) > 0.05).sum()
    mass = (_diff(s, Finding("mass", side="left", zone="middle", size_cm=6.0, pos=(0.5, 0.5))) > 0.05).sum()
    assert mass > 5 * small_nodule > 0


def test_edema_is_bilateral_and_cardiomegaly_widens_the_heart():
    s = _normal_patient(0)
    d = _diff(s, Finding("edema", side="bilateral", severity="moderate")).clip(min=0)
    half = d.shape[1] // 2
    assert d[:, :half].sum() > 0.4 * d[:, half:].sum() > 1.0
    small = _upright(replace(s, anatomy=replace(s.anatomy, ctr=0.42)))
    large = _upright(replace(s, anatomy=replace(s.anatomy, ctr=0.64)))
    widths = []
    for st in (small, large):
        img = render_view(st, "PA", 160, 160)
        a = st.anatomy
        row = int((a.dome_right_y - 0.05) * 160)
        dense = img[row - 2: row + 3].mean(axis=0) > 0.55
        centre = 80
        left = centre
        while left > 0 and dense[left - 1]:
            left -= 1
        right = centre
        while right < 159 and dense[right + 1]:
            right += 1
        widths.append((right - left) / 160 / (2 * a.thorax_half_width))
    assert widths[0] < 0.5 < 0.55 < widths[1], widths


def test_every_phantom_file_reads_through_medvlm_ingest(tmp_path):
    studies = {s.name: s for s in generate(tmp_path, 24, seed=8, size=96)}
    seen = Counter()
    refs = list(discover(tmp_path, SECRET))
    assert len(refs) == 24
    for ref in refs:
        study = load_study(ref, "chest_xray", max_images=2, root=tmp_path)
        assert isinstance(study, Study), getattr(study, "reason", study)
        spec = studies[ref.source.split("/")[0]]
        views = ["LAT" if v == "LL" else v for v in spec.views]
        assert [i.view for i in study.images] == views
        assert study.context.age_years == spec.age and study.context.sex == spec.sex
        assert study.context.indication == spec.indication
        for img in study.images:
            seen[(img.kind, img.photometric, img.transfer_syntax)] += 1
            px = np.asarray(img.image.convert("L"), dtype=np.float32)
            assert px.std() > 20  # real contrast, whatever the storage
    kinds = {k[0] for k in seen}
    assert kinds == {"dicom", "raster"} or kinds == {"dicom"}
    assert any(k[1] == "MONOCHROME1" for k in seen)


def test_report_text_reads_back_as_the_truth():
    """The phantom model's training text says exactly the truth to medvlm's extractor: present findings
    are present, nothing else of the phantom set is asserted or left uncertain."""
    mismatches = []
    for i in range(1500):
        spec = sample_study(5, i)
        text = report_text(spec, study_rng(5, i, "text"))
        found = extract(text, "chest_xray")
        present = {f.code for f in found if f.status == "present"} & set(FINDING_CODES)
        uncertain = {f.code for f in found if f.status == "uncertain"}
        if present != set(spec.codes) or uncertain:
            mismatches.append((spec.codes, sorted(present), text))
        if spec.findings:
            assert "IMPRESSION:" in text and "No acute cardiopulmonary" not in text
            assert not any(f.code == "no_finding" and f.status == "present" for f in found), text
    assert not mismatches, mismatches[:3]
