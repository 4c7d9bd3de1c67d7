"""Compare a run's findings with a label table: the evaluation record (a plain dict, written as evaluation.json)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from .. import __version__
from ..clock import utc_now
from ..errors import UsageProblem
from .match import match
from .metrics import INTERVAL_METHODS, outcome, summarise, wilson
from .runread import RunStudy, read_run
from .truth import TruthTable, describe, read_truth

SCHEMA = "medvlm-evaluation/1"
UNCERTAIN_POLICIES = ("positive", "negative", "ignore")
NO_FINDING = "no_finding"


def _policy(value: int | bool | None, uncertain: bool, policy: str) -> bool | None:
    """Apply --uncertain-as to one side: uncertain -> True/False/None (ignored)."""
    if not uncertain:
        return bool(value)
    return {"positive": True, "negative": False, "ignore": None}[policy]


def _predicted(study: RunStudy, code: str, policy: str) -> bool | None:
    if code == NO_FINDING:
        # "no finding" = nothing asserted in a complete answer (an empty or cut answer is never normal)
        asserted = {c for c, s in study.findings.items() if s == "present" and c != NO_FINDING}
        return not asserted and study.answer_status == "complete"
    status = study.findings.get(code)
    return _policy(status == "present", status == "uncertain", policy)


def _truth(table: TruthTable, ids: list[str], code: str, policy: str) -> int | None:
    """Merged label of the table rows matched to one study: positive wins, then uncertain, then negative."""
    values = [table.value(i, code) for i in ids]
    if NO_FINDING == code and code not in table.columns.values():
        values = [int(not any(v == 1 for v in table.labels[i].values())) for i in ids]
    if any(v == 1 for v in values):
        return 1
    if any(v == -1 for v in values):
        verdict = _policy(True, True, policy)
        return None if verdict is None else int(verdict)
    return 0


def compare(run_dir: Path, truth_path: Path, *, uncertain_as: str = "negative", mapping: Path | None = None,
            id_column: str | None = None, vocabulary: dict[str, str] | None = None) -> dict:
    """The evaluation record for `run_dir` against the table at `truth_path` (raises UsageProblem on bad input)."""
    if uncertain_as not in UNCERTAIN_POLICIES:
        raise UsageProblem(f"--uncertain-as must be one of {', '.join(UNCERTAIN_POLICIES)} (got {uncertain_as!r})")
    if vocabulary is None:
        from ..findings import load_vocabulary

        vocabulary = {code: e.label for code, e in load_vocabulary("chest_xray").entries.items()}
    studies, summary_sha = read_run(run_dir)
    table = read_truth(truth_path, vocabulary, mapping_path=mapping, id_column=id_column)
    m = match(list(table.labels), studies)
    by_key = {s.key: s for s in studies}
    evaluated = [(by_key[k], ids) for k, ids in m.pairs.items() if by_key[k].status == "ok"]
    evaluated.sort(key=lambda item: item[0].source)
    codes = list(table.codes)
    outcomes = np.zeros((len(evaluated), len(codes)), dtype=np.int8)
    rows = []
    outside: Counter = Counter()
    exact = 0
    abnormal_truth, abnormal_pred = [], []
    for i, (study, ids) in enumerate(evaluated):
        truth_pos, pred_pos = [], []
        for j, code in enumerate(codes):
            t = _truth(table, ids, code, uncertain_as)
            p = _predicted(study, code, uncertain_as)
            outcomes[i, j] = outcome(t, p)
            if t == 1 and code != NO_FINDING:
                truth_pos.append(code)
            if p and code != NO_FINDING:
                pred_pos.append(code)
        outside.update(c for c in study.present() if c not in codes and c != NO_FINDING)
        exact += truth_pos == pred_pos
        abnormal_truth.append(bool(truth_pos))
        abnormal_pred.append(bool(pred_pos))
        rows.append({"id": ids[0] if len(ids) == 1 else ids, "source": study.source, "study_key": study.key,
                     "truth": truth_pos, "predicted": pred_pos, "risk": study.risk, "answer_status": study.answer_status})
    stats = summarise(outcomes, codes)
    for f in stats["findings"]:
        f["label"] = vocabulary.get(f["code"], f["code"])
    n = len(evaluated)
    at, ap = np.array(abnormal_truth, bool), np.array(abnormal_pred, bool)
    risk_by_truth = {"normal": Counter(), "abnormal": Counter()}
    for (study, _), is_abnormal in zip(evaluated, abnormal_truth):
        risk_by_truth["abnormal" if is_abnormal else "normal"][study.risk or "none"] += 1
    return {
        "schema": SCHEMA,
        "created_at": utc_now(),
        "medvlm_version": __version__,
        "run": str(Path(run_dir)),
        "run_summary_sha256": summary_sha,
        "truth": describe(table),
        "policy": {
            "uncertain_as": uncertain_as,
            "blank": "negative (not mentioned)",
            "uncertain_applies_to": "table labels -1 and findings the model reported as uncertain",
            "no_finding": "predicted when the answer is complete and asserts no finding",
            "merged_rows": "several rows matching one study: positive if any row is positive",
        },
        "interval_methods": INTERVAL_METHODS,
        "counts": {
            "truth_rows": len(table.labels),
            "run_studies": len(studies),
            "matched_studies": len(m.pairs),
            "evaluated_studies": n,
            "unmatched_truth_rows": len(m.unmatched_truth),
            "ambiguous_truth_rows": len(m.ambiguous_truth),
            "unmatched_run_studies": len(m.unmatched_run),
            "not_evaluated": len(m.not_evaluated),
        },
        "matching": {
            "unmatched_truth": m.unmatched_truth,
            "ambiguous_truth": m.ambiguous_truth,
            "unmatched_run": m.unmatched_run,
            "not_evaluated": m.not_evaluated,
            "merged": {by_key[k].source: ids for k, ids in m.pairs.items() if len(ids) > 1},
        },
        "findings": stats["findings"],
        "micro_f1": stats["micro_f1"],
        "macro_f1": stats["macro_f1"],
        "macro_over": stats["macro_over"],
        "study_level": {
            "exact_match": wilson(exact, n),
            "abnormal_sensitivity": wilson(int((at & ap).sum()), int(at.sum())),
            "abnormal_specificity": wilson(int((~at & ~ap).sum()), int((~at).sum())),
        },
        "risk": {
            "overall": dict(Counter(s.risk or "none" for s, _ in evaluated)),
            "by_truth": {k: dict(v) for k, v in risk_by_truth.items()},
        },
        "outside_labels": dict(sorted(outside.items())),
        "model_notice": next((s.notice for s, _ in evaluated if s.notice), None),
        "studies": rows,
    }
