"""load_study, pixel normalisation, routing, privacy and bad input (datasets built in code)."""

from __future__ import annotations

import importlib.util
import json
import os
import stat
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pydicom
from pydicom.dataset import Dataset

from medvlm.ingest import discover, load_or_create_key, load_study, resolve_modality
from medvlm.ingest import dicom as dicom_mod
from medvlm.ingest import read as read_mod
from medvlm.ingest.dicom import Slice, render_slices
from medvlm.ingest.headers import age_from_dates, parse_age
from medvlm.ingest.route import UnsupportedModality
from medvlm.records import Study, StudyContext, StudyError, to_jsonable

PROJECT = Path(__file__).resolve().parents[1]
SAMPLES = PROJECT / "sample_data" / "studies"
SECRET = b"0" * 64


def _bad_module():
    spec = importlib.util.spec_from_file_location("make_bad_files", PROJECT / "sample_data" / "make_bad_files.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


BAD = _bad_module()


def image_ds(name: str = "t", **kw) -> Dataset:
    return BAD.image_dataset(name, **kw)


def render(ds: Dataset, tmp_path: Path, name: str = "x.dcm"):
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=True)
    return dicom_mod.render_file(path)[0]


def load_all(root: Path, modality: str = "auto", **kw) -> dict[str, Study | StudyError]:
    out: dict[str, Study | StudyError] = {}
    for item in discover(root, SECRET):
        if isinstance(item, StudyError):
            out[item.ref.source] = item
        else:
            out[item.source] = load_study(item, modality, root=root, **kw)
    return out


# ---------------------------------------------------------------- pixels


def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    ds = image_ds()  # vertical ramp 0..4095, no window -> percentile
    top2 = np.asarray(render(ds, tmp_path, "m2.dcm").image)[0, 0, 0]
    ds.PhotometricInterpretation = "MONOCHROME1"
    out = render(ds, tmp_path, "m1.dcm")
    arr = np.asarray(out.image)
    assert top2 == 0 and arr[0, 0, 0] == 255 and arr[-1, 0, 0] == 0
    assert "inverted (MONOCHROME1)" in out.windowing


def test_rescale_then_header_window(tmp_path: Path) -> None:
    ds = image_ds()
    ds.PixelData = np.full((64, 64), 1000, np.uint16).tobytes()
    ds.RescaleSlope, ds.RescaleIntercept = 2, -1000  # modality value 1000
    ds.WindowCenter, ds.WindowWidth = 1000, 400  # centre of the window -> mid gray
    out = render(ds, tmp_path)
    assert abs(int(np.asarray(out.image)[0, 0, 0]) - 128) <= 1
    assert out.windowing.startswith("WC/WW 1000/400 from header")


def test_first_of_several_windows(tmp_path: Path) -> None:
    ds = image_ds()
    ds.PixelData = np.full((64, 64), 300, np.uint16).tobytes()
    ds.WindowCenter, ds.WindowWidth = [300, 0], [100, 10]
    out = render(ds, tmp_path)
    assert abs(int(np.asarray(out.image)[0, 0, 0]) - 128) <= 1
    assert "first of 2" in out.windowing


def test_voi_lut_sequence(tmp_path: Path) -> None:
    ds = image_ds()
    ds.PixelData = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) % 4).tobytes()
    item = Dataset()
    item.add_new(0x00283002, "US", [4, 0, 8])  # LUTDescriptor
    item.add_new(0x00283006, "US", [0, 10, 20, 255])  # LUTData
    item.LUTExplanation = "demo"
    ds.VOILUTSequence = [item]
    out = render(ds, tmp_path)
    arr = np.asarray(out.image)[0, :4, 0]
    assert list(arr) == [0, 10, 20, 255]
    assert "VOI LUT" in out.windowing


def test_padding_value_is_black_and_ignored_by_percentile(tmp_path: Path) -> None:
    ds = image_ds()
    px = np.full((64, 64), 2000, np.uint16)
    px[:, 32:] = 3000
    px[:8] = 0
    ds.PixelPaddingValue = 0
    ds.PixelData = px.tobytes()
    arr = np.asarray(render(ds, tmp_path).image)[..., 0]
    assert (arr[:8] == 0).all()
    assert arr[20, 0] == 0 and arr[20, 40] == 255  # window spans 2000..3000, not 0..3000


@pytest.mark.parametrize("bits", [10, 12, 16])
def test_bits_stored_scale_without_overflow(tmp_path: Path, bits: int) -> None:
    ds = image_ds()
    ds.BitsStored, ds.HighBit = bits, bits - 1
    top = 2**bits - 1
    px = np.linspace(0, top, 64 * 64).astype(np.uint16).reshape(64, 64)
    ds.PixelData = px.tobytes()
    arr = np.asarray(render(ds, tmp_path).image)[..., 0]
    assert arr[0, 0] == 0 and arr[-1, -1] == 255
    assert (np.diff(arr.ravel().astype(int)) >= 0).all()  # monotone: no wrap-around


def test_ct_head_windows_packed_in_rgb(tmp_path: Path) -> None:
    ds = image_ds(modality="CT", body="HEAD", sop="1.2.840.10008.5.1.4.1.1.2")
    ds.PixelRepresentation = 1
    ds.BitsStored, ds.HighBit = 16, 15
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    px = np.full((64, 64), 1024 + 40, np.int16)  # 40 HU: brain window centre
    px[:, 32:] = 1024 + 1000  # bone
    ds.PixelData = px.tobytes()
    out = render(ds, tmp_path)
    arr = np.asarray(out.image).astype(int)
    assert "CT head" in out.windowing and "B=brain" in out.windowing
    assert abs(arr[0, 0, 2] - 128) <= 2  # brain channel mid-gray at 40 HU
    assert arr[0, 40, 2] == 255 and arr[0, 40, 0] > arr[0, 0, 0]  # bone bright in every channel, R resolves it


def test_mr_series_montage_records_frames(tmp_path: Path) -> None:
    slices = []
    for i in range(20):
        ds = image_ds(f"mr{i}", modality="MR", body="BRAIN", sop="1.2.840.10008.5.1.4.1.1.4")
        ds.PixelData = np.full((64, 64), i * 100, np.uint16).tobytes()
        ds.InstanceNumber = 20 - i  # reversed: sorting must follow InstanceNumber
        path = tmp_path / f"s{i:02d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        slices.append(Slice(path, pydicom.dcmread(path, stop_before_pixels=True), 0))
    out = render_slices(dicom_mod.sort_slices(slices))
    assert out.frames.startswith("montage of 9 of 20 slices")
    assert out.image.size == (192, 192)
    tiles = np.asarray(out.image)[::64, ::64, 0]
    assert tiles[0, 0] > tiles[2, 2]  # first tile = highest InstanceNumber order = brightest


# ---------------------------------------------------------------- studies, routing, privacy


def test_sample_studies_load_with_context() -> None:
    got = load_all(SAMPLES)
    assert len(got) == 6 and all(isinstance(s, Study) for s in got.values())
    pa = got["study_001_pa/IM0001.dcm"]
    assert (pa.context.age_years, pa.context.sex, pa.context.view) == (63, "M", "PA")
    assert pa.context.indication == "Chronic cough, rule out mass"
    two = got["study_002_pa_lateral"]
    assert [i.view for i in two.images] == ["PA", "LAT"]
    assert got["study_004_rescale/IM0001.dcm"].context.age_years == 53  # from birth + study date
    png = got["png_study_001/chest.png"]
    assert (png.context.age_years, png.context.sex, png.context.indication) == (52, "F", "Chest pain after fall")
    mono1 = np.asarray(got["study_003_mono1/IM0001.dcm"].images[0].image)
    assert mono1[:10, :10].mean() < 30  # air dark after inversion


def test_max_images_one_keeps_the_frontal() -> None:
    ref = next(r for r in discover(SAMPLES, SECRET) if r.source == "study_002_pa_lateral")
    study = load_study(ref, "chest_xray", max_images=1, root=SAMPLES)
    assert isinstance(study, Study) and [i.view for i in study.images] == ["PA"]


def test_no_phi_in_outputs_unless_asked() -> None:
    got = load_all(SAMPLES)
    text = json.dumps(to_jsonable(list(got.values())))
    for ds_path in SAMPLES.rglob("*.dcm"):
        ds = pydicom.dcmread(ds_path, stop_before_pixels=True)
        for kw in ("PatientName", "PatientID", "AccessionNumber", "InstitutionName", "ReferringPhysicianName",
                   "SOPInstanceUID", "SeriesInstanceUID", "PatientBirthDate"):
            if kw in ds:
                assert str(ds.data_element(kw).value) not in text, kw
    # the StudyRef may carry the UID for --include-phi, but Study JSON must not contain it unless asked
    assert all(s.phi == {} for s in got.values())
    ref = next(r for r in discover(SAMPLES, SECRET) if r.source == "study_001_pa/IM0001.dcm")
    study = load_study(ref, "auto", include_phi=True, root=SAMPLES)
    assert study.phi["PatientName"] == "DEMO^ALPHA" and "StudyInstanceUID" in study.phi


def test_routing_auto_and_mismatch(tmp_path: Path) -> None:
    ct = image_ds("cthead", modality="CT", body="HEAD", sop="1.2.840.10008.5.1.4.1.1.2")
    ct.save_as(tmp_path / "ct.dcm", enforce_file_format=True)
    ref = next(iter(discover(tmp_path, SECRET)))
    study = load_study(ref, "auto", root=tmp_path)
    assert isinstance(study, Study) and resolve_modality(study, "auto") == "ct"
    rejected = load_study(ref, "chest_xray", root=tmp_path)
    assert isinstance(rejected, StudyError) and rejected.status == "skipped"
    assert "mismatch" in rejected.reason and "CT" in rejected.reason
    forced = load_study(ref, "chest_xray", force_modality=True, root=tmp_path)
    assert isinstance(forced, Study) and any("forced" in n for n in forced.notes)
    assert resolve_modality(StudyContext(dicom_modality="MR"), "auto") == "mri"
    assert resolve_modality(StudyContext(dicom_modality="DX", body_part="CHEST"), "auto") == "chest_xray"
    with pytest.raises(UnsupportedModality):
        resolve_modality(StudyContext(dicom_modality="US"), "auto")


def test_keys_are_keyed_hashes_and_key_file_is_private(tmp_path: Path) -> None:
    key = load_or_create_key(tmp_path / "out")
    assert load_or_create_key(tmp_path / "out") == key
    mode = stat.S_IMODE((tmp_path / "out" / ".medvlm" / "study_key").stat().st_mode)
    assert mode == 0o600
    a = [r.key for r in discover(SAMPLES, key)]
    b = [r.key for r in discover(SAMPLES, key)]
    c = [r.key for r in discover(SAMPLES, b"another secret")]
    assert a == b and a != c
    assert all(k.startswith(("s-", "r-")) and len(k) == 18 for k in a)


def test_ages() -> None:
    assert parse_age("063Y") == 63 and parse_age("006M") == 0 and parse_age("52") == 52
    assert parse_age("abc") is None and parse_age("200Y") is None
    assert age_from_dates("19700301", "20240115") == 53 and age_from_dates("2024", "2023") is None


# ---------------------------------------------------------------- bad input


def test_every_bad_file_gets_a_reason_and_nothing_escapes(tmp_path: Path, capfd) -> None:
    expect = BAD.make_bad_files(tmp_path / "bad")
    root = tmp_path / "bad"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = load_all(root)
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    for rel, why in expect.items():
        result = got.get(rel)
        assert result is not None, f"{rel} not reported"
        if why == "OK":
            assert isinstance(result, Study), (rel, result)
        else:
            assert isinstance(result, StudyError), (rel, result)
            assert why in result.reason, (rel, result.reason)
            assert "\n" not in result.reason and "Traceback" not in result.reason
    assert any("force=True" in n for n in got["no_preamble.dcm"].notes)
    os.chmod(root / "no_permission.dcm", 0o600)


def test_missing_decoder_names_what_to_install(tmp_path: Path, monkeypatch) -> None:
    class Unavailable:
        is_available = False

    monkeypatch.setattr(read_mod, "get_decoder", lambda uid: Unavailable())
    ds = image_ds()
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.90"
    with pytest.raises(read_mod.IngestError, match="install pylibjpeg pylibjpeg-openjpeg"):
        read_mod.check_decodable(ds)


def test_permission_denied_is_a_reason(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "locked.dcm"
    image_ds().save_as(path, enforce_file_format=True)

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(read_mod.pydicom, "dcmread", denied)
    with pytest.raises(read_mod.IngestError, match="permission denied"):
        read_mod.read_dataset(path, header_only=True)


def test_warnings_become_scrubbed_notes(tmp_path: Path) -> None:
    ds = image_ds()
    ds.PatientAge = "063Y"
    ds.PixelData = ds.PixelData + b"\x00" * 128  # excess padding -> pydicom warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = render(ds, tmp_path)
    assert any("excess padding" in n for n in out.notes)


# ---------------------------------------------------------------- rasters


def test_raster_modes_and_csv_sidecar(tmp_path: Path) -> None:
    Image.fromarray(np.linspace(0, 65535, 64 * 64).astype(np.uint16).reshape(64, 64)).save(tmp_path / "a16.png")
    Image.new("RGBA", (32, 32), (255, 0, 0, 0)).save(tmp_path / "b_rgba.png")
    Image.new("RGB", (40, 30), (10, 200, 30)).save(tmp_path / "c.jpg", quality=95)
    (tmp_path / "labels.csv").write_text("filename,age,sex,indication\nc.jpg,70,female,dyspnoea\n")
    got = load_all(tmp_path)
    a16 = got["a16.png"]
    arr = np.asarray(a16.images[0].image)
    assert arr[0, 0, 0] == 0 and arr[-1, -1, 0] == 255 and "percentile" in a16.images[0].windowing
    assert np.asarray(got["b_rgba.png"].images[0].image).max() == 0  # transparent over black
    c = got["c.jpg"]
    assert (c.context.age_years, c.context.sex, c.context.indication) == (70, "F", "dyspnoea")
    assert resolve_modality(c, "auto") == "chest_xray"


def test_truncated_rasters_stay_errors_when_lenient_loading_is_on(tmp_path: Path, monkeypatch) -> None:
    import weasyprint  # noqa: F401 - rendering a PDF imports it, and its import turns lenient loading on
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # as WeasyPrint leaves it, for the whole process
    ramp = Image.fromarray(np.tile(np.arange(256, dtype=np.uint8), (256, 1)), "L")
    for name, fmt in (("whole.png", "PNG"), ("whole.jpg", "JPEG")):
        ramp.save(tmp_path / name, format=fmt)
        data = (tmp_path / name).read_bytes()
        (tmp_path / name.replace("whole", "cut")).write_bytes(data[: len(data) // 2])
    got = load_all(tmp_path)
    assert isinstance(got["whole.png"], Study) and isinstance(got["whole.jpg"], Study)
    for name in ("cut.png", "cut.jpg"):
        assert isinstance(got[name], StudyError) and "truncated" in got[name].reason, got[name]
