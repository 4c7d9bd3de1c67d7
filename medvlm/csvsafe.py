"""The one CSV writer (and its reader) for every CSV medvlm writes: spreadsheet-safe, reversible, one row per line.

Rule (docs/export.md, "CSV cells"): a text cell that starts with `=`, `+`, `-`, `@`, a tab, a carriage
return or an apostrophe is written with one apostrophe in front, so a spreadsheet shows it as text
instead of running it as a formula. Undo: drop the first character of every text cell that starts
with an apostrophe (`read_rows` and `read_csv` here do it; the pandas one-liner is in the docs).
Numbers are written as numbers. Any cell holding a CR or LF is quoted, so every reader sees one row
per record. Parquet and JSON lines keep the raw text.
"""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
MARK = "'"  # also marks itself, so the rule can always be undone


def neutralise(value: Any) -> Any:
    """The cell as written: text that a spreadsheet would run (or that starts with the mark) gets the mark."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS + (MARK,)):
        return MARK + value
    return value


def restore(value: Any) -> Any:
    """The original text of a cell written by `neutralise` (anything else is returned as is)."""
    if isinstance(value, str) and value.startswith(MARK):
        return value[1:]
    return value


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    try:  # pandas' missing values (NA, NaT, NaN) are empty cells, as pandas writes them
        if value != value or type(value).__name__ in ("NAType", "NaTType"):
            return ""
    except (TypeError, ValueError):
        pass
    return neutralise(value)


class _Lines:
    """A csv writer whose records end in LF while every CR or LF inside a cell is quoted.

    The csv module quotes a cell only for characters of its line terminator, so with "\\n" a bare CR
    stays unquoted and splits the record for pandas; writing with "\\r\\n" and trimming it does both.
    """

    def __init__(self) -> None:
        self._buf = io.StringIO()
        self._writer = csv.writer(self._buf, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)

    def line(self, cells: Sequence[Any]) -> str:
        self._buf.seek(0)
        self._buf.truncate()
        self._writer.writerow([_cell(c) for c in cells])
        return self._buf.getvalue()[:-2] + "\n"


def to_text(columns: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> str:
    """CSV text: a header, then one line per row (dict keyed by column; missing keys are empty)."""
    lines = _Lines()
    parts = [lines.line(columns)]
    parts.extend(lines.line([row.get(c) for c in columns]) for row in rows)
    return "".join(parts)


def frame_to_text(df) -> str:
    """A pandas DataFrame as CSV text by the same rule (missing values empty, numbers as numbers)."""
    columns = [str(c) for c in df.columns]
    return to_text(columns, (dict(zip(columns, values)) for values in df.itertuples(index=False, name=None)))


def allow_large_fields() -> None:
    """Let the csv module read cells of any size (one report's text can exceed its 128 KiB default)."""
    csv.field_size_limit(max(csv.field_size_limit(), min(sys.maxsize, 1 << 31)))


def read_rows(path: str | Path) -> list[dict[str, str]]:
    """The rows of a CSV medvlm wrote, as dicts of str with every cell restored to its original text."""
    allow_large_fields()
    with open(path, newline="", encoding="utf-8") as fh:
        return [{k: restore(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def read_csv(path: str | Path, **kwargs):
    """pandas.read_csv of a CSV medvlm wrote, with every text cell restored to its original text."""
    import pandas as pd

    df = pd.read_csv(path, **kwargs)
    return df.map(restore) if hasattr(df, "map") else df.applymap(restore)  # pandas < 2.1: applymap
