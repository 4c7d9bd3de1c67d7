"""Batch extraction: a CSV of reports in, one row per (id, code) out (spreadsheet-safe, see csvsafe.py)."""

from __future__ import annotations

import codecs
import csv
import os
from pathlib import Path
from typing import Iterator

from medvlm import csvsafe
from medvlm.errors import UsageProblem
from medvlm.fileio import atomic_write_text, writable_file_problem
from medvlm.findings.extract import extract
from medvlm.findings.vocabulary import Vocabulary, load_vocabulary
from medvlm.records import MODALITIES

OUTPUT_COLUMNS = ["id", "code", "label", "status", "severity", "laterality", "change", "cue", "evidence", "start", "end"]
DEFAULT_ENCODING = "utf-8-sig"  # UTF-8, with or without the byte-order mark spreadsheets write


class ExtractProblem(UsageProblem):
    """The input, options or output of `medvlm extract` cannot be used (one line, exit 2)."""


def text_columns(text_column: str) -> list[str]:
    """The column names in a --text-column value ("findings,impression"); none is a usage error."""
    columns = [c.strip() for c in text_column.split(",") if c.strip()]
    if not columns:
        raise ExtractProblem(f"--text-column {text_column!r} names no column (give one or more names, comma-separated)")
    return columns


def check_extract_args(input_csv: Path, out_csv: Path, modality: str, encoding: str) -> None:
    """Everything that can be checked before reading the input or writing the output."""
    if modality not in MODALITIES:
        raise ExtractProblem(f"--modality must be one of {', '.join(MODALITIES)} (got {modality!r})")
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise ExtractProblem(f"--encoding {encoding!r} is not an encoding Python knows (e.g. utf-8, latin-1, cp1252)") from None
    if not Path(input_csv).is_file():
        raise ExtractProblem(f"input CSV not found: {input_csv}")
    if Path(out_csv).exists() and os.path.samefile(input_csv, out_csv):
        raise ExtractProblem(f"--out {out_csv} is the input file; choose another file name")
    problem = writable_file_problem(Path(out_csv))
    if problem:
        raise ExtractProblem(problem)


def _records(input_csv: Path, encoding: str) -> Iterator[tuple[int, list[str]]]:
    """(line number, cells) for each record, with decode and CSV syntax errors as one line naming the file."""
    csvsafe.allow_large_fields()  # one report may be far longer than the csv module's 128 KiB default
    try:
        with open(input_csv, newline="", encoding=encoding) as fh:
            reader = csv.reader(fh)
            for cells in reader:
                yield reader.line_num, cells
    except UnicodeDecodeError as exc:
        raise ExtractProblem(
            f"{input_csv}: byte 0x{exc.object[exc.start]:02x} at offset {exc.start} is not valid {encoding}; "
            f"pass --encoding with the file's encoding (e.g. --encoding latin-1)"
        ) from None
    except csv.Error as exc:
        raise ExtractProblem(f"{input_csv}: not a readable CSV ({exc})") from None


def _column_index(header: list[str], name: str, input_csv: Path) -> int:
    found = [i for i, h in enumerate(header) if h.strip() == name]
    if not found:
        raise ExtractProblem(f"{input_csv}: missing column {name!r} (have: {', '.join(header)})")
    if len(found) > 1:
        raise ExtractProblem(f"{input_csv}: column {name!r} appears {len(found)} times in the header; rename the copies")
    return found[0]


def extract_csv(
    input_csv: str | Path,
    id_column: str,
    text_column: str,
    modality: str,
    out_csv: str | Path,
    vocab: Vocabulary | str | Path | None = None,
    encoding: str = DEFAULT_ENCODING,
) -> int:
    """Extract findings for every row of `input_csv`; write `out_csv` atomically; return rows written.

    `text_column` may name several columns separated by commas ("findings,impression"). Every
    problem with the options, the input or the output is an ExtractProblem raised before `out_csv`
    is written.
    """
    input_csv, out_csv = Path(input_csv), Path(out_csv)
    columns = text_columns(text_column)
    check_extract_args(input_csv, out_csv, modality, encoding)
    vocabulary = vocab if isinstance(vocab, Vocabulary) else load_vocabulary(vocab or modality)
    records = _records(input_csv, encoding)
    first = next(records, None)
    if first is None:
        raise ExtractProblem(f"{input_csv}: empty file (no header row)")
    header = first[1]
    id_at = _column_index(header, id_column, input_csv)
    text_at = [_column_index(header, c, input_csv) for c in columns]
    rows = []
    for _, cells in records:
        if not any(cells):
            continue  # blank line
        cell = lambda i: cells[i] if i < len(cells) else ""  # noqa: E731 - short rows: missing cells are empty
        text = "\n\n".join(t for t in (cell(i).strip() for i in text_at) if t)
        for f in extract(text, modality, vocab=vocabulary):
            rows.append({
                "id": cell(id_at), "code": f.code, "label": f.label, "status": f.status,
                "severity": f.severity or "", "laterality": f.laterality or "", "change": f.change or "",
                "cue": f.cue or "", "evidence": f.evidence.sentence, "start": f.evidence.start, "end": f.evidence.end,
            })
    try:
        atomic_write_text(out_csv, csvsafe.to_text(OUTPUT_COLUMNS, rows))
    except OSError as exc:
        raise ExtractProblem(f"cannot write --out {out_csv}: {exc.strerror or exc}") from None
    return len(rows)
