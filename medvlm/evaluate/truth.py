"""Read a label table (long, wide CheXpert-style, or NIH ChestX-ray14) into per-study labels over medvlm codes.

Formats, detected from the header:
- NIH: `Image Index` and `Finding Labels` (labels joined by `|`, `No Finding` for none);
- long: an id column and a `findings` (or `labels`) column of codes/labels joined by `;` (also `|`
  or `,`), empty for a normal study; the labels assessed are every label the table names;
- wide: an id column and one column per label holding 1 / 0 / -1 (uncertain) / blank (not
  mentioned, read as 0), as in CheXpert and MIMIC-CXR-JPG; columns holding anything else (age, sex,
  view) are not labels.
Label names become medvlm codes through the mapping file when given, else by matching a code, a
vocabulary label or a common alias (NIH `Effusion`, CheXpert `Pleural Effusion`...). An unknown
label, a missing column, a duplicate id or a file that is not UTF-8 is a TruthTableError (one line).
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..errors import UsageProblem

ID_COLUMNS = ("study", "study_id", "studyid", "study key", "study_key", "path", "image index", "image", "file",
              "filename", "file_name", "dicom_id", "id")
LONG_COLUMNS = ("findings", "labels", "finding labels")
NIH_ID, NIH_LABELS = "image index", "finding labels"
IGNORE = "ignore"
# Label names used by public chest X-ray label sets that are not a medvlm code or label verbatim.
ALIASES = {
    "effusion": "pleural_effusion",
    "pleural effusion": "pleural_effusion",
    "pleural_thickening": "pleural_thickening",
    "enlarged cardiomediastinum": "enlarged_cardiomediastinum",
    "lung opacity": "lung_opacity",
    "airspace opacity": "lung_opacity",
    "lung lesion": "lung_lesion",
    "support devices": "support_devices",
    "pleural other": "pleural_other",
    "no finding": "no_finding",
    "normal": "no_finding",
    "pulmonary edema": "edema",
    "pulmonary nodule": "nodule",
}
WIDE_VALUES = {"1": 1, "1.0": 1, "0": 0, "0.0": 0, "-1": -1, "-1.0": -1, "": None}


class TruthTableError(UsageProblem):
    """A label table or mapping file that cannot be used (one line, names the file)."""


@dataclass
class TruthTable:
    """Labels per table id: code -> 1 (present), 0 (absent) or -1 (uncertain); codes assessed in `codes`."""

    path: Path
    sha256: str
    format: str  # long, wide, nih
    id_column: str
    codes: list[str]
    labels: dict[str, dict[str, int]]  # id -> code -> value (codes missing from a row are 0)
    columns: dict[str, str] = field(default_factory=dict)  # table label name -> code
    ignored_columns: list[str] = field(default_factory=list)
    mapping: dict | None = None  # {"path", "sha256"} of the mapping file

    def value(self, row_id: str, code: str) -> int:
        return self.labels[row_id].get(code, 0)


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", name.strip().lower())


def load_mapping(path: Path) -> dict[str, str]:
    """A mapping file: YAML/JSON {label: code} or a CSV with columns label,code; code `ignore` drops a label."""
    try:
        raw = Path(path).read_bytes()
        text = raw.decode("utf-8-sig")
    except OSError as exc:
        raise TruthTableError(f"mapping file {path}: cannot read ({exc.strerror or type(exc).__name__})") from None
    except UnicodeDecodeError:
        raise TruthTableError(f"mapping file {path}: not UTF-8 text") from None
    if Path(path).suffix.lower() == ".csv":
        rows = list(csv.DictReader(io.StringIO(text)))
        if not rows or not {"label", "code"} <= set(rows[0]):
            raise TruthTableError(f"mapping file {path}: a CSV mapping needs columns label,code")
        data = {r["label"]: r["code"] for r in rows}
    else:
        try:
            data = yaml.safe_load(text) if text.strip() else {}
        except yaml.YAMLError:
            raise TruthTableError(f"mapping file {path}: not valid YAML or JSON") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise TruthTableError(f"mapping file {path}: expected label: code pairs (text to text)")
    return {_norm(k): v.strip() for k, v in data.items()}


class LabelResolver:
    """Table label name -> medvlm code (or IGNORE), from the mapping, the vocabulary, then aliases."""

    def __init__(self, vocabulary_codes: dict[str, str], mapping: dict[str, str] | None, source: Path):
        self.codes = vocabulary_codes  # code -> label
        self.mapping = mapping or {}
        self.source = source
        self._by_name = {_norm(code): code for code in vocabulary_codes}
        self._by_name.update({_norm(label): code for code, label in vocabulary_codes.items()})
        for code in self.mapping.values():
            if code != IGNORE and code not in vocabulary_codes:
                raise TruthTableError(f"mapping file: {code!r} is not a code of the chest_xray vocabulary")

    def __call__(self, name: str, where: str) -> str:
        key = _norm(name)
        if key in self.mapping:
            return self.mapping[key]
        if key in self._by_name:
            return self._by_name[key]
        if key in ALIASES:
            return ALIASES[key]
        raise TruthTableError(
            f"{self.source}: unknown label {name!r} ({where}); map it to a medvlm code (or 'ignore') with --map FILE"
        )


def _read_rows(path: Path) -> tuple[list[str], list[dict[str, str]], str]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise TruthTableError(f"truth table {path}: cannot read ({exc.strerror or type(exc).__name__})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise TruthTableError(f"truth table {path}: not UTF-8 text (byte {exc.start}); re-save it as UTF-8") from None
    if not text.strip():
        raise TruthTableError(f"truth table {path}: empty file")
    dialect = "excel-tab" if path.suffix.lower() == ".tsv" or ("\t" in text.splitlines()[0] and "," not in text.splitlines()[0]) else "excel"
    try:
        reader = csv.DictReader(io.StringIO(text), dialect=dialect)
        header = [h.strip() for h in (reader.fieldnames or [])]
        reader.fieldnames = header
        rows = []
        for row in reader:
            if None in row:
                raise TruthTableError(f"truth table {path} line {reader.line_num}: more fields than the header")
            rows.append({k: (v or "").strip() for k, v in row.items()})
    except csv.Error as exc:
        raise TruthTableError(f"truth table {path}: not a readable CSV ({exc})") from None
    if len(set(map(_norm, header))) != len(header):
        raise TruthTableError(f"truth table {path}: repeated column names in the header")
    return header, rows, hashlib.sha256(raw).hexdigest()


def _pick_id_column(header: list[str], wanted: str | None, path: Path) -> str:
    by_norm = {_norm(h): h for h in header}
    if wanted:
        if _norm(wanted) not in by_norm:
            raise TruthTableError(f"truth table {path}: no column {wanted!r} (columns: {', '.join(header)})")
        return by_norm[_norm(wanted)]
    for name in ID_COLUMNS:
        if name in by_norm:
            return by_norm[name]
    raise TruthTableError(
        f"truth table {path}: no id column (one of: study, study_id, Path, Image Index, file, id; or pass --id-column)"
    )


def _split_labels(text: str) -> list[str]:
    return [p.strip() for p in re.split(r"[;|,]", text) if p.strip()]


def read_truth(path: Path, vocabulary_codes: dict[str, str], *, mapping_path: Path | None = None,
               id_column: str | None = None, extra_codes: list[str] | None = None) -> TruthTable:
    """Parse the table; raises TruthTableError with one line naming the file (and line) on any problem."""
    path = Path(path)
    header, rows, digest = _read_rows(path)
    mapping = load_mapping(mapping_path) if mapping_path else None
    resolve = LabelResolver(vocabulary_codes, mapping, path)
    norm_header = {_norm(h): h for h in header}
    if not rows:
        raise TruthTableError(f"truth table {path}: no rows below the header")
    if NIH_ID in norm_header and NIH_LABELS in norm_header and not id_column:
        fmt, id_col, label_col = "nih", norm_header[NIH_ID], norm_header[NIH_LABELS]
    else:
        id_col = _pick_id_column(header, id_column, path)
        label_col = next((norm_header[c] for c in LONG_COLUMNS if c in norm_header and norm_header[c] != id_col), None)
        fmt = "long" if label_col else "wide"
    labels: dict[str, dict[str, int]] = {}
    columns: dict[str, str] = {}
    ignored: list[str] = []
    codes: set[str] = set(extra_codes or ())
    line_of: dict[str, int] = {}
    if fmt in ("long", "nih"):
        for line, row in enumerate(rows, start=2):
            row_id = _row_id(row, id_col, path, line, line_of)
            values: dict[str, int] = {}
            for name in _split_labels(row[label_col]):
                if fmt == "nih" and _norm(name) == "no finding":
                    continue
                code = columns.get(name) or resolve(name, f"line {line}")
                columns[name] = code
                if code != IGNORE and code != "no_finding":
                    values[code] = 1
                    codes.add(code)
            labels[row_id] = values
        if fmt == "nih":
            codes.update(resolve(n, "NIH label set") for n in NIH_LABELS_14 if resolve(n, "NIH label set") != IGNORE)
    else:
        for name in header:
            if name == id_col:
                continue
            cells = [row[name] for row in rows]
            if not all(c in WIDE_VALUES for c in cells):
                if mapping and _norm(name) in mapping and mapping[_norm(name)] != IGNORE:
                    bad = next(i for i, c in enumerate(cells, start=2) if c not in WIDE_VALUES)
                    raise TruthTableError(
                        f"truth table {path} line {bad}: column {name!r} must hold 1, 0, -1 or blank (got {cells[bad - 2]!r})"
                    )
                ignored.append(name)
                continue
            code = resolve(name, f"column {name!r}")
            if code == IGNORE:
                ignored.append(name)
                continue
            if code in columns.values():
                raise TruthTableError(f"truth table {path}: columns {name!r} and another both map to {code!r}")
            columns[name] = code
            codes.add(code)
        if not columns:
            raise TruthTableError(
                f"truth table {path}: no label columns (wide tables hold 1/0/-1/blank per finding; a long table needs "
                "a 'findings' column)"
            )
        for line, row in enumerate(rows, start=2):
            row_id = _row_id(row, id_col, path, line, line_of)
            values = {}
            for name, code in columns.items():
                v = WIDE_VALUES[row[name]]
                if v:  # blank (not mentioned) and 0 are both negative
                    values[code] = v
            labels[row_id] = values
    for code in codes:
        if code not in vocabulary_codes:
            raise TruthTableError(f"truth table {path}: {code!r} is not a code of the chest_xray vocabulary")
    order = list(vocabulary_codes)
    return TruthTable(
        path=path, sha256=digest, format=fmt, id_column=id_col, codes=sorted(codes, key=order.index), labels=labels,
        columns={k: v for k, v in columns.items()}, ignored_columns=ignored,
        mapping={"path": str(mapping_path), "sha256": hashlib.sha256(Path(mapping_path).read_bytes()).hexdigest()}
        if mapping_path else None,
    )


def _row_id(row: dict[str, str], id_col: str, path: Path, line: int, line_of: dict[str, int]) -> str:
    row_id = row[id_col].replace("\\", "/").strip()
    if row_id.startswith("./"):
        row_id = row_id[2:]
    if not row_id:
        raise TruthTableError(f"truth table {path} line {line}: empty {id_col!r}")
    if row_id in line_of:
        raise TruthTableError(f"truth table {path} line {line}: duplicate id {row_id!r} (first on line {line_of[row_id]})")
    line_of[row_id] = line
    return row_id


NIH_LABELS_14 = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
                 "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia")


def describe(table: TruthTable) -> dict:
    """The table's provenance for evaluation.json."""
    return {
        "path": str(table.path),
        "sha256": table.sha256,
        "format": table.format,
        "id_column": table.id_column,
        "rows": len(table.labels),
        "codes": list(table.codes),
        "columns": dict(table.columns),
        "ignored_columns": list(table.ignored_columns),
        "mapping": table.mapping,
    }


