"""Batch extraction: a CSV of reports in, one row per (id, code) out."""

from __future__ import annotations

from pathlib import Path

from medvlm.findings.extract import extract
from medvlm.findings.vocabulary import Vocabulary, load_vocabulary

OUTPUT_COLUMNS = ["id", "code", "label", "status", "severity", "laterality", "change", "cue", "evidence", "start", "end"]


def join_text_columns(row, columns: list[str]) -> str:
    """The non-empty text columns of one row joined by a blank line."""
    parts = []
    for col in columns:
        value = row[col]
        if value is None or (isinstance(value, float) and value != value):  # NaN from pandas
            continue
        text = str(value).strip()
        if text:
            parts.append(text)
    return "\n\n".join(parts)


def extract_csv(
    input_csv: str | Path,
    id_column: str,
    text_column: str,
    modality: str,
    out_csv: str | Path,
    vocab: Vocabulary | str | Path | None = None,
) -> int:
    """Extract findings for every row of `input_csv`; write `out_csv`; return rows written.

    `text_column` may name several columns separated by commas ("findings,impression").
    """
    import pandas as pd

    vocabulary = vocab if isinstance(vocab, Vocabulary) else load_vocabulary(vocab or modality)
    columns = [c.strip() for c in text_column.split(",") if c.strip()]
    frame = pd.read_csv(input_csv, dtype=str, keep_default_na=False)
    missing = [c for c in [id_column, *columns] if c not in frame.columns]
    if missing:
        raise ValueError(f"{input_csv}: missing column(s) {', '.join(missing)} (have: {', '.join(frame.columns)})")
    rows = []
    for _, row in frame.iterrows():
        text = join_text_columns(row, columns)
        for f in extract(text, modality, vocab=vocabulary):
            rows.append(
                {
                    "id": row[id_column],
                    "code": f.code,
                    "label": f.label,
                    "status": f.status,
                    "severity": f.severity or "",
                    "laterality": f.laterality or "",
                    "change": f.change or "",
                    "cue": f.cue or "",
                    "evidence": f.evidence.sentence,
                    "start": f.evidence.start,
                    "end": f.evidence.end,
                }
            )
    pd.DataFrame(rows, columns=OUTPUT_COLUMNS).to_csv(out_csv, index=False)
    return len(rows)
