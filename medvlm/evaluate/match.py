"""Match label-table rows to a run's studies by study key, folder name, relative path or file name.

Each study is known by (most specific first) its study key; its source path (with and without the
file suffix); the folders its source lies in; and the trailing parts of its source and input file
paths (`IM0001.dcm`, `study1/view1.jpg`) with and without suffix. A table id is tried as given,
then by its own trailing parts; the first name that points to exactly one study wins, a name that
points to several is ambiguous. Nothing is dropped silently: unmatched and ambiguous rows, studies
without a row, and matched studies that failed are all listed.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from .runread import RunStudy


@dataclass
class Matching:
    pairs: dict[str, list[str]] = field(default_factory=dict)  # study key -> table ids (several = merged rows)
    unmatched_truth: list[str] = field(default_factory=list)
    ambiguous_truth: list[dict] = field(default_factory=list)  # {"id", "candidates": [sources]}
    unmatched_run: list[str] = field(default_factory=list)  # sources of studies no row matched
    not_evaluated: list[dict] = field(default_factory=list)  # matched but failed/skipped: {"id","source","status","reason"}


def _strip_suffix(path: str) -> str:
    p = PurePosixPath(path)
    return str(p.with_suffix("")) if p.suffix else path


def _tails(path: str) -> list[str]:
    parts = PurePosixPath(path).parts
    return ["/".join(parts[i:]) for i in range(1, len(parts))]


def _names(study: RunStudy) -> list[list[str]]:
    """Name tiers for one study, most specific first."""
    source = study.source.strip("/")
    tiers: list[list[str]] = [[study.key], [source, _strip_suffix(source)]]
    parts = PurePosixPath(source).parts
    tiers.append(["/".join(parts[:i]) for i in range(1, len(parts))])  # the folders it lies in
    tails: list[str] = []
    for path in [source, *study.files]:
        for tail in [path, *_tails(path)]:
            tails += [tail, _strip_suffix(tail)]
    tiers.append(tails)
    return tiers


def match(ids: list[str], studies: list[RunStudy]) -> Matching:
    """Pair table ids with studies (see the module docstring for the rules)."""
    index: list[dict[str, set[str]]] = [defaultdict(set) for _ in range(4)]
    by_key = {s.key: s for s in studies}
    for study in studies:
        for tier, names in enumerate(_names(study)):
            for name in names:
                if name:
                    index[tier][name].add(study.key)
    result = Matching()
    for row_id in ids:
        found, ambiguous = None, None
        candidates = [row_id, _strip_suffix(row_id)] + [t for tail in _tails(row_id) for t in (tail, _strip_suffix(tail))]
        for name in dict.fromkeys(candidates):
            for tier in index:
                keys = tier.get(name)
                if not keys:
                    continue
                if len(keys) == 1:
                    found = next(iter(keys))
                else:
                    ambiguous = sorted(by_key[k].source for k in keys)
                break
            if found or ambiguous:
                break
        if found:
            result.pairs.setdefault(found, []).append(row_id)
        elif ambiguous:
            result.ambiguous_truth.append({"id": row_id, "candidates": ambiguous})
        else:
            result.unmatched_truth.append(row_id)
    for study in studies:
        if study.key not in result.pairs:
            result.unmatched_run.append(study.source or study.key)
        elif study.status != "ok":
            for row_id in result.pairs[study.key]:
                result.not_evaluated.append({"id": row_id, "source": study.source, "status": study.status,
                                             "reason": study.reason})
    return result
