"""Validate report documents against schemas/ before anything is written."""

from __future__ import annotations

import json
from functools import lru_cache

from jsonschema import Draft202012Validator, FormatChecker

from ..paths import schemas_dir


class ReportInvalid(ValueError):
    """A report that does not match its schema (one line: where and what)."""


@lru_cache(maxsize=4)
def validator(name: str = "report.schema.json") -> Draft202012Validator:
    schema = json.loads((schemas_dir() / name).read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=FormatChecker())


def validate_report(doc: dict, schema: str = "report.schema.json") -> None:
    """Raise ReportInvalid naming the first problem (by JSON path) when `doc` is not valid."""
    errors = sorted(validator(schema).iter_errors(doc), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        where = "/".join(str(p) for p in err.absolute_path) or "(root)"
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ReportInvalid(f"report does not match {schema} at {where}: {err.message[:200]}{more}")


def read_report(path) -> dict:
    """A report.json read back and validated: ReportInvalid (one line naming the file) when it is not JSON or not a report."""
    from pathlib import Path

    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ReportInvalid(f"{path}: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise ReportInvalid(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    try:
        validate_report(doc)
    except ReportInvalid as exc:
        raise ReportInvalid(f"{path}: {exc}") from None
    return doc
