"""Stable finding ids: the same study, model text and finding code give the same id in every regrade.

id = "f-" + the first 16 hex digits of SHA-256 over the lines
    medvlm-finding-1 / study key / SHA-256 of the model text (UTF-8) / code / occurrence
where occurrence counts earlier findings with the same code in the report (always 0 today: the
extractor reports one finding per code). Evidence offsets are left out on purpose, so that a
regrade with an edited vocabulary or cue file that picks another mention of the same finding in
the same text keeps the id a review refers to; a new model text is a new reading and gets new ids.
A leaf module (records only), so report writers, export and reviews can all use it.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Iterable

from .records import Finding

ID_SCHEME = "medvlm-finding-1"
ID_HEX_DIGITS = 16


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def finding_id(study_key: str, model_text_sha256: str, code: str, occurrence: int = 0) -> str:
    """The id of the `occurrence`-th finding with `code` read from a model text (by its SHA-256)."""
    material = "\n".join((ID_SCHEME, study_key, model_text_sha256, code, str(occurrence)))
    return "f-" + hashlib.sha256(material.encode("utf-8")).hexdigest()[:ID_HEX_DIGITS]


def ids_for_codes(study_key: str, text: str, codes: Iterable[str]) -> list[str]:
    """Ids for findings with these codes, in report order (reads older reports that carry none)."""
    digest = text_sha256(text)
    seen: dict[str, int] = {}
    out = []
    for code in codes:
        n = seen.get(code, 0)
        seen[code] = n + 1
        out.append(finding_id(study_key, digest, code, n))
    return out


def assign_ids(findings: Iterable[Finding], study_key: str, text: str) -> list[Finding]:
    """The findings extracted from `text` for one study, each with its stable id set."""
    findings = list(findings)
    ids = ids_for_codes(study_key, text, (f.code for f in findings))
    return [replace(f, id=i) for f, i in zip(findings, ids)]
