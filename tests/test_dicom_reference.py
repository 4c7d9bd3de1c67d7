"""Reference table in the pydicom style: one record per real test file, with shape, photometric
handling and a pixel check on the 8-bit RGB output of medvlm.ingest.dicom.render_file."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from pydicom.data import get_testdata_file

from medvlm.ingest.dicom import render_file

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "images"


def shared(name: str) -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared/data/images not present")
    return SHARED / name


def bundled(name: str) -> Path:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"pydicom test file {name} not bundled")
    return Path(path)


def gray(a: np.ndarray) -> np.ndarray:
    return a[..., 0].astype(float)


def chest_check(a: np.ndarray) -> None:
    """Frontal chest film: mediastinum/spine strip brighter than both lung fields."""
    g = gray(a)
    h, w = g.shape
    center = g[int(0.3 * h):int(0.6 * h), int(0.46 * w):int(0.54 * w)].mean()
    lungs = (g[int(0.3 * h):int(0.55 * h), int(0.22 * w):int(0.32 * w)].mean()
             + g[int(0.3 * h):int(0.55 * h), int(0.68 * w):int(0.78 * w)].mean()) / 2
    assert center > lungs + 40, (center, lungs)


def air_dark(a: np.ndarray) -> None:
    """Air outside the body (top-left corner strip) renders dark."""
    g = gray(a)
    assert g[: g.shape[0] // 20, : g.shape[1] // 20].mean() < 60


def mean_between(lo: float, hi: float) -> Callable[[np.ndarray], None]:
    def check(a: np.ndarray) -> None:
        assert lo <= a.mean() <= hi, a.mean()

    return check


def is_gray(a: np.ndarray) -> None:
    assert np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 1], a[..., 2])


SC_RGB_BANDS = [  # pydicom's SC_rgb reference: (row, expected RGB) at column 50
    (5, (255, 0, 0)), (15, (255, 128, 128)), (25, (0, 255, 0)), (35, (128, 255, 128)),
    (45, (0, 0, 255)), (55, (128, 128, 255)), (65, (0, 0, 0)), (75, (64, 64, 64)),
    (85, (192, 192, 192)), (95, (255, 255, 255)),
]


def rgb_bands(tol: int) -> Callable[[np.ndarray], None]:
    def check(a: np.ndarray) -> None:
        tile = a[:100, :100]
        for row, rgb in SC_RGB_BANDS:
            assert np.abs(tile[row, 50].astype(int) - rgb).max() <= tol, (row, tile[row, 50], rgb)

    return check


def has_colour(a: np.ndarray) -> None:
    assert np.abs(a[..., 0].astype(int) - a[..., 2]).max() > 50
    assert a.mean() > 5


@dataclass
class Ref:
    name: str
    where: Callable[[str], Path]
    shape: tuple[int, ...]  # original_shape
    photometric: str
    windowing: str  # substring of Rendered.windowing
    frames: str  # substring of Rendered.frames
    checks: tuple[Callable[[np.ndarray], None], ...] = ()
    size: tuple[int, int] | None = None  # output (width, height)


REFERENCE = [
    # ../shared/data/images
    Ref("RG1_J2KI.dcm", shared, (1955, 1841), "MONOCHROME1", "inverted (MONOCHROME1)", "frame 1 of 1",
        (chest_check,), (1841, 1955)),
    Ref("siim_cr_chest.dcm", shared, (1024, 1024), "MONOCHROME2", "percentile", "frame 1 of 1",
        (chest_check, air_dark, is_gray), (1024, 1024)),
    Ref("fake_monochrome1.dcm", shared, (1024, 1024), "MONOCHROME1", "inverted (MONOCHROME1)", "frame 1 of 1",
        (mean_between(70, 100),), (1024, 1024)),
    Ref("MR2_J2KI.dcm", shared, (1024, 1024), "MONOCHROME2", "percentile", "frame 1 of 1",
        (mean_between(20, 80), is_gray)),
    Ref("emri_small_RLE.dcm", shared, (10, 64, 64), "MONOCHROME2", "percentile", "montage of 9 of 10 frames",
        (mean_between(50, 110),), (192, 192)),
    Ref("emri_small_jpeg_ls_lossless.dcm", shared, (10, 64, 64), "MONOCHROME2", "percentile", "montage of 9 of 10",
        (mean_between(50, 110),), (192, 192)),
    Ref("emri_small_jpeg_2k_lossless.dcm", shared, (10, 64, 64), "MONOCHROME2", "percentile", "montage of 9 of 10",
        (mean_between(50, 110),), (192, 192)),
    Ref("emri_small_big_endian.dcm", shared, (10, 64, 64), "MONOCHROME2", "percentile", "montage of 9 of 10",
        (mean_between(50, 110),), (192, 192)),
    # pydicom bundled files
    Ref("CT_small.dcm", bundled, (128, 128), "MONOCHROME2", "CT other", "frame 1 of 1", (mean_between(60, 140),)),
    Ref("693_J2KI.dcm", bundled, (512, 512), "MONOCHROME2", "CT ", "frame 1 of 1", (mean_between(20, 90),)),
    Ref("MR_small.dcm", bundled, (64, 64), "MONOCHROME2", "percentile", "frame 1 of 1", (mean_between(40, 80),)),
    Ref("MR_small_RLE.dcm", bundled, (64, 64), "MONOCHROME2", "percentile", "frame 1 of 1", (mean_between(40, 80),)),
    Ref("MR_small_bigendian.dcm", bundled, (64, 64), "MONOCHROME2", "percentile", "frame 1 of 1", (mean_between(40, 80),)),
    Ref("MR_small_jpeg_ls_lossless.dcm", bundled, (64, 64), "MONOCHROME2", "percentile", "frame 1 of 1",
        (mean_between(40, 80),)),
    Ref("MR_small_jp2klossless.dcm", bundled, (64, 64), "MONOCHROME2", "percentile", "frame 1 of 1",
        (mean_between(40, 80),)),
    Ref("MR_small_padded.dcm", bundled, (64, 64), "MONOCHROME2", "percentile", "frame 1 of 1", (mean_between(40, 80),)),
    Ref("SC_rgb_jpeg_gdcm.dcm", bundled, (100, 100, 3), "RGB", "colour", "frame 1 of 1", (rgb_bands(2),)),
    Ref("SC_rgb_rle.dcm", bundled, (100, 100, 3), "RGB", "colour", "frame 1 of 1", (rgb_bands(0),)),
    Ref("SC_rgb_rle_16bit.dcm", bundled, (100, 100, 3), "RGB", "colour", "frame 1 of 1", (rgb_bands(1),)),
    Ref("SC_rgb_rle_2frame.dcm", bundled, (2, 100, 100), "RGB", "colour", "montage of 2 of 2 frames", (rgb_bands(0),)),
    Ref("SC_rgb_jpeg_dcmtk.dcm", bundled, (100, 100, 3), "YBR_FULL", "YBR_FULL -> RGB", "frame 1 of 1", (rgb_bands(8),)),
    Ref("SC_ybr_full_422_uncompressed.dcm", bundled, (100, 100, 3), "YBR_FULL_422", "-> RGB", "frame 1 of 1",
        (rgb_bands(8),)),
    Ref("SC_rgb_gdcm_KY.dcm", bundled, (100, 100, 3), "RGB", "colour", "frame 1 of 1", (rgb_bands(0),)),
    Ref("examples_palette.dcm", bundled, (350, 800, 3), "PALETTE COLOR", "PALETTE COLOR -> RGB", "frame 1 of 1",
        (has_colour,)),
    Ref("examples_ybr_color.dcm", bundled, (30, 240, 320), "YBR_FULL_422", "-> RGB", "montage of 9 of 30 frames",
        (mean_between(3, 60),)),
    Ref("ExplVR_BigEnd.dcm", bundled, (60, 80, 3), "RGB", "colour", "frame 1 of 1", (mean_between(100, 230),)),
    Ref("JPGExtended.dcm", bundled, (1024, 256), "MONOCHROME2", "percentile", "frame 1 of 1", (mean_between(10, 80),)),
    Ref("JPEG2000.dcm", bundled, (1024, 256), "MONOCHROME2", "percentile", "frame 1 of 1", (mean_between(20, 90),)),
    Ref("JPEGLSNearLossless_16.dcm", bundled, (50, 10), "MONOCHROME2", "percentile", "frame 1 of 1", ()),
    Ref("image_dfl.dcm", bundled, (512, 512), "MONOCHROME2", "percentile", "frame 1 of 1", (mean_between(100, 160),)),
]


@pytest.mark.parametrize("ref", REFERENCE, ids=[r.name for r in REFERENCE])
def test_reference_file(ref: Ref) -> None:
    path = ref.where(ref.name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing may leak to the console
        rendered, _ = render_file(path)
    img = rendered.image
    assert img.mode == "RGB"
    assert rendered.original_shape == ref.shape
    assert rendered.photometric == ref.photometric
    assert ref.windowing in rendered.windowing
    assert ref.frames in rendered.frames
    if ref.size:
        assert img.size == ref.size
    arr = np.asarray(img)
    for check in ref.checks:
        check(arr)


def test_fake_monochrome1_is_exact_inverse_of_its_monochrome2_twin() -> None:
    """Same stored pixels, only the tag differs: the MONOCHROME1 rendering is the negative."""
    mono2, _ = render_file(shared("siim_cr_chest.dcm"))
    mono1, _ = render_file(shared("fake_monochrome1.dcm"))
    a = np.asarray(mono2.image).astype(int)
    b = np.asarray(mono1.image).astype(int)
    assert np.abs((255 - a) - b).max() <= 1


def test_lossless_syntaxes_decode_identically() -> None:
    outs = [np.asarray(render_file(shared(n))[0].image) for n in
            ("emri_small_RLE.dcm", "emri_small_big_endian.dcm", "emri_small_jpeg_2k_lossless.dcm",
             "emri_small_jpeg_ls_lossless.dcm")]
    for other in outs[1:]:
        assert np.array_equal(outs[0], other)
    small = [np.asarray(render_file(bundled(n))[0].image) for n in
             ("MR_small.dcm", "MR_small_RLE.dcm", "MR_small_bigendian.dcm", "MR_small_jpeg_ls_lossless.dcm",
              "MR_small_jp2klossless.dcm", "MR_small_implicit.dcm")]
    for other in small[1:]:
        assert np.array_equal(small[0], other)


def test_padded_pixel_data_is_noted_not_printed() -> None:
    rendered, _ = render_file(bundled("MR_small_padded.dcm"))
    assert any("padding" in n for n in rendered.notes)


@pytest.mark.parametrize("name", ["test-SR.dcm", "rtplan.dcm", "liver_1frame.dcm", "waveform_ecg.dcm", "rtstruct.dcm"])
def test_bundled_non_images_are_reported(name: str) -> None:
    from medvlm.ingest.dicom import IngestError

    with pytest.raises(IngestError, match="no image"):
        render_file(bundled(name))
