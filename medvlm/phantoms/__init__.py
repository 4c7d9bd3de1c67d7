"""Procedural chest-radiograph phantoms with known findings (truth), for training and measuring medvlm.

`generate(out, n, seed, size)` writes one folder per study (DICOM or PNG) and out/truth.csv;
`sample_study(seed, index)` gives the specification of one study without writing anything, and
`render_view(study, view, rows, cols)` its picture. The same seed always gives the same bytes.
"""

from .render import render_view
from .spec import FINDING_CODES, Finding, PhantomStudy, sample_study
from .write import TRUTH_NAME, generate, study_files, truth_row, write_study, write_truth

__all__ = [
    "FINDING_CODES",
    "Finding",
    "PhantomStudy",
    "TRUTH_NAME",
    "generate",
    "render_view",
    "sample_study",
    "study_files",
    "truth_row",
    "write_study",
    "write_truth",
]
