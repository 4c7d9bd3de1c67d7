"""`medvlm agreement`: how the model and the reviewers agree, from the latest review per study, reviewer and read.

What a review says about a finding code (the reviewer's *call*): a present model finding agreed
with is present, disagreed with is absent; an absent model finding agreed with is absent,
disagreed with is present; an added finding is present; any other code of the vocabulary the
reviewer neither saw nor added is absent. Unsure, unmarked and verdicts on *uncertain* model
findings give no call (they are counted, not scored). A blind first read lists only what the
reader saw, so every code it does not list is absent.

Model vs reviewer, per code, over the reviews (each is about the report version it names, so a
review of a report regraded since still counts with the findings it saw):
- PPV of the model's present findings = confirmed / (confirmed + rejected), Wilson 95% interval;
- missed share = reviewer-positive findings the model did not report as present (added, or
  reported absent and disagreed with) / all reviewer-positive findings, Wilson 95% interval.
Risk level: linear-weighted Cohen's kappa over normal < low < moderate < high < critical
(indeterminate on either side is left out and counted). Reviewer vs reviewer: Cohen's kappa per
code over the studies both reviewed (final reads), pooled over codes, and the weighted kappa of
their risk levels. Kappa intervals are percentile bootstraps over studies (1000 resamples, seed 0).
Every figure comes with its counts, so a small sample shows as small.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from itertools import combinations
from pathlib import Path

import numpy as np

from ..audit.reviews import REVIEWS_NAME
from ..audit.session import LedgerSession
from ..clock import utc_now
from ..errors import RunBusy
from ..evaluate.metrics import wilson
from ..fileio import atomic_write_text, sha256_file
from .runview import ORDINAL_RISK, RunView

AGREEMENT_NAME = "agreement.json"
BOOTSTRAP = 1000
SEED = 0
NO_FINDING = "no_finding"


# -- statistics -------------------------------------------------------------------------------


def kappa_from_counts(c) -> float | None:
    """Cohen's kappa from [both present, only first, only second, both absent]; None when undefined."""
    n11, n10, n01, n00 = (float(x) for x in c)
    n = n11 + n10 + n01 + n00
    if n <= 0:
        return None
    p1, p2 = (n11 + n10) / n, (n11 + n01) / n
    pe = p1 * p2 + (1 - p1) * (1 - p2)
    return None if pe >= 1 - 1e-12 else ((n11 + n00) / n - pe) / (1 - pe)


def cohen_kappa(pairs: list[tuple[bool, bool]]) -> float | None:
    """Cohen's kappa of two binary raters; None when undefined (no pairs, or chance agreement is 1)."""
    return kappa_from_counts(_binary_counts(pairs))


def _binary_counts(pairs) -> list[int]:
    return [sum(1 for x, y in pairs if x and y), sum(1 for x, y in pairs if x and not y),
            sum(1 for x, y in pairs if y and not x), sum(1 for x, y in pairs if not x and not y)]


_K = len(ORDINAL_RISK)
_WEIGHTS = 1 - np.abs(np.subtract.outer(np.arange(_K), np.arange(_K))) / (_K - 1)


def weighted_kappa_from_counts(c) -> float | None:
    """Linear-weighted kappa from a flattened k x k table of counts; None when undefined."""
    m = np.asarray(c, dtype=np.float64).reshape(_K, _K)
    n = m.sum()
    if n <= 0:
        return None
    m = m / n
    po = float((_WEIGHTS * m).sum())
    pe = float((_WEIGHTS * np.outer(m.sum(1), m.sum(0))).sum())
    return None if pe >= 1 - 1e-12 else (po - pe) / (1 - pe)


def weighted_kappa(pairs: list[tuple[int, int]]) -> float | None:
    """Linear-weighted kappa of two ordinal ratings in 0..k-1; None when undefined."""
    return weighted_kappa_from_counts(_ordinal_counts(pairs))


def _ordinal_counts(pairs) -> np.ndarray:
    m = np.zeros(_K * _K)
    for i, j in pairs:
        m[i * _K + j] += 1
    return m


def _boot(units: np.ndarray, stat) -> dict | None:
    """{value, low, high}: `stat` of the summed count rows, and a percentile bootstrap over resampled rows.

    units: one row of counts per study (so a study's findings are resampled together)."""
    units = np.asarray(units, dtype=np.float64)
    if units.ndim != 2 or not len(units):
        return None
    value = stat(units.sum(0))
    if value is None:
        return None
    rng = np.random.default_rng(SEED)
    weights = rng.multinomial(len(units), np.full(len(units), 1.0 / len(units)), size=BOOTSTRAP)
    samples = [v for v in (stat(row) for row in weights @ units) if v is not None]
    if len(samples) < BOOTSTRAP // 2:
        return {"value": value, "low": None, "high": None}
    low, high = np.percentile(samples, [2.5, 97.5])
    return {"value": value, "low": float(low), "high": float(high)}


# -- calls ------------------------------------------------------------------------------------


def reader_calls(review: dict) -> dict[str, bool | None]:
    """code -> present (True), absent (False) or no call (None) for the codes a review mentions."""
    calls: dict[str, bool | None] = {}
    for v in review.get("verdicts", []):
        verdict, status = v.get("verdict"), v.get("model_status")
        if verdict in ("agree", "disagree") and status == "present":
            calls[v["code"]] = verdict == "agree"
        elif verdict in ("agree", "disagree") and status == "absent":
            calls[v["code"]] = verdict == "disagree"
        else:
            calls.setdefault(v["code"], None)
    for a in review.get("added", []):
        calls[a["code"]] = True
    return calls


def model_statuses(review: dict) -> dict[str, str]:
    """code -> the model's status in the report reviewed (present wins over uncertain over absent)."""
    rank = {"present": 0, "uncertain": 1, "absent": 2}
    out: dict[str, str] = {}
    for v in review.get("verdicts", []):
        s = v.get("model_status")
        if v["code"] not in out or rank.get(s, 9) < rank.get(out[v["code"]], 9):
            out[v["code"]] = s
    return out


def _finding_table(reviews: list[dict], labels: dict[str, str], *, first_read: bool) -> dict:
    per: dict[str, Counter] = defaultdict(Counter)
    for r in reviews:
        calls = reader_calls(r)
        statuses = model_statuses(r) if not first_read else r.get("_model_statuses", {})
        for code in set(calls) | set(statuses):
            call = calls.get(code, False)
            status = statuses.get(code, "not_reported")
            c = per[code]
            if status == "present":
                c["model_present"] += 1
                c["confirmed" if call is True else "rejected" if call is False else "unsure"] += 1
            elif status == "uncertain":
                verdict = next((v.get("verdict") for v in r.get("verdicts", []) if v["code"] == code), None)
                c[f"uncertain_{verdict or 'unmarked'}"] += 1
                if first_read and call is True:
                    c["uncertain_seen"] += 1
            else:
                if status == "absent":
                    c["model_absent"] += 1
                if call is True:
                    c["missed"] += 1
                    c["added" if status == "not_reported" else "absent_disagreed"] += 1
                elif status == "absent" and call is False:
                    c["absent_agreed"] += 1
    rows = []
    total = Counter()
    for code in sorted(per, key=lambda c: (c == NO_FINDING, labels.get(c, c).lower())):
        c = per[code]
        row = _row(code, labels.get(code, code), c)
        rows.append(row)
        if code != NO_FINDING:
            total.update(c)
    return {"findings": rows, "total": _row("all findings", f"all findings except {NO_FINDING}", total)}


def _row(code: str, label: str, c: Counter) -> dict:
    positive = c["confirmed"] + c["missed"]
    return {
        "code": code, "label": label,
        "model_present": c["model_present"], "confirmed": c["confirmed"], "rejected": c["rejected"],
        "unsure_or_unmarked": c["unsure"], "ppv": wilson(c["confirmed"], c["confirmed"] + c["rejected"]),
        "reviewer_positive": positive, "missed": c["missed"], "missed_added": c["added"],
        "missed_reported_absent": c["absent_disagreed"], "missed_share": wilson(c["missed"], positive),
        "model_absent": c["model_absent"], "absent_agreed": c["absent_agreed"],
        "uncertain": {k[len("uncertain_"):]: v for k, v in sorted(c.items()) if k.startswith("uncertain_")},
    }


def _risk(pairs: list[tuple[str | None, str | None]]) -> dict:
    """Weighted kappa and counts for (model or reviewer A, reviewer B) risk levels; None levels are skipped."""
    given = [(a, b) for a, b in pairs if a and b]
    ordinal = [(ORDINAL_RISK.index(a), ORDINAL_RISK.index(b)) for a, b in given if a in ORDINAL_RISK and b in ORDINAL_RISK]
    matrix = [[0] * _K for _ in range(_K)]
    for i, j in ordinal:
        matrix[i][j] += 1
    return {
        "n": len(ordinal), "not_given": len(pairs) - len(given), "indeterminate": len(given) - len(ordinal),
        "exact": sum(1 for i, j in ordinal if i == j), "second_higher": sum(1 for i, j in ordinal if j > i),
        "second_lower": sum(1 for i, j in ordinal if j < i),
        "kappa_w": _boot([_ordinal_counts([p]) for p in ordinal], weighted_kappa_from_counts),
        "levels": list(ORDINAL_RISK), "matrix": matrix,
    }


# -- the whole run -----------------------------------------------------------------------------


def agreement(run_dir: Path) -> dict:
    """Every figure described in the module docstring, as one JSON-able dict."""
    view = RunView(run_dir)
    snap = view.snapshot()
    labels: dict[str, str] = {}
    finals: list[dict] = []
    firsts: list[dict] = []
    by_reviewer_final: dict[str, list[dict]] = defaultdict(list)
    for (key, reviewer, read) in sorted(snap.reviews):
        r = snap.reviews[(key, reviewer, read)]
        for item in [*r.get("verdicts", []), *r.get("added", [])]:
            labels.setdefault(item["code"], item.get("label") or item["code"])
        if read == "first":
            firsts.append(r)
        elif snap.final_review(key, reviewer) is r:
            finals.append(r)
            by_reviewer_final[reviewer].append(r)
    # A first read is compared with the model's findings as the matching second read (or the study's report) lists them.
    for r in firsts:
        later = snap.final_review(r["study_key"], r["reviewer"])
        if later is not None and later["report"]["sha256"] == r["report"]["sha256"]:
            r["_model_statuses"] = model_statuses(later)
        else:
            doc, _ = view.report(r["study_key"], r["report"]["sha256"])
            found = (doc or {}).get("findings", [])
            r["_model_statuses"] = model_statuses({"verdicts": [{"code": f.get("code"), "model_status": f.get("status")}
                                                               for f in found]})
            for f in found:
                labels.setdefault(f.get("code"), f.get("label") or f.get("code"))
    reviewable = sum(1 for e in snap.entries if e.reviewable)
    counts = {
        "studies_with_report": reviewable,
        "reviewed_studies": len({r["study_key"] for r in finals}),
        "final_reviews": len(finals), "first_reads": len(firsts),
        "reviewers": {name: len(rs) for name, rs in sorted(by_reviewer_final.items())},
        "stale": sum(1 for r in finals if snap.stale(r)), "queued": snap.queued,
        "imported": sum(1 for r in finals if r.get("source") == "import"),
    }
    result = {
        "run": view.run_dir.resolve().name, "created_at": utc_now(), "counts": counts,
        "definitions": __doc__.split("\n\n", 1)[1].strip(),
        "model_vs_reviewer": _finding_table(finals, labels, first_read=False),
        "model_vs_first_read": _finding_table(firsts, labels, first_read=True) if firsts else None,
        "risk": {
            "model_vs_reviewer": _risk([(r.get("model_risk_level"), r.get("risk_level")) for r in finals]),
            "by_reviewer": {name: _risk([(r.get("model_risk_level"), r.get("risk_level")) for r in rs])
                            for name, rs in sorted(by_reviewer_final.items())},
            "model_vs_first_read": _risk([(r.get("model_risk_level"), r.get("risk_level")) for r in firsts]) if firsts else None,
        },
        "reviewer_pairs": _pairs(by_reviewer_final, labels),
    }
    reviews = view.run_dir / REVIEWS_NAME
    result["reviews_sha256"] = sha256_file(reviews) if reviews.is_file() else None
    for r in firsts:
        r.pop("_model_statuses", None)
    return result


def _pairs(by_reviewer: dict[str, list[dict]], labels: dict[str, str]) -> list[dict]:
    out = []
    for a, b in combinations(sorted(by_reviewer), 2):
        ra = {r["study_key"]: r for r in by_reviewer[a]}
        rb = {r["study_key"]: r for r in by_reviewer[b]}
        common = sorted(set(ra) & set(rb))
        if not common:
            continue
        calls = {k: (reader_calls(ra[k]), reader_calls(rb[k])) for k in common}
        codes = sorted({c for ca, cb in calls.values() for c in (*ca, *cb)} - {NO_FINDING},
                       key=lambda c: labels.get(c, c).lower())
        findings = []
        per_study = {k: np.zeros(4) for k in common}  # pooled over codes, resampled by study
        for code in codes:
            pairs, skipped = [], 0
            for k in common:
                x, y = calls[k][0].get(code, False), calls[k][1].get(code, False)
                if x is None or y is None:
                    skipped += 1
                    continue
                pairs.append((x, y))
                per_study[k] += _binary_counts([(x, y)])
            counts = _binary_counts(pairs)
            findings.append({
                "code": code, "label": labels.get(code, code), "n": len(pairs), "no_call": skipped,
                "both_present": counts[0], "only_a": counts[1], "only_b": counts[2], "both_absent": counts[3],
                "kappa": _boot([_binary_counts([p]) for p in pairs], kappa_from_counts),
            })
        units = [v for v in per_study.values() if v.sum()]
        pooled = _boot(units, kappa_from_counts)
        out.append({
            "a": a, "b": b, "studies": len(common), "findings": findings,
            "pooled": {"n": int(sum(u.sum() for u in units)), "kappa": pooled},
            "risk": _risk([(ra[k].get("risk_level"), rb[k].get("risk_level")) for k in common]),
        })
    return out


# -- output -----------------------------------------------------------------------------------


def _f(stat: dict | None, digits: int = 2) -> str:
    if not stat:
        return "—"
    if stat.get("low") is None:
        return f"{stat['value']:.{digits}f}"
    return f"{stat['value']:.{digits}f} [{stat['low']:.2f}, {stat['high']:.2f}]"


def _risk_line(name: str, r: dict, first: str = "model") -> str:
    unit = "reviews" if first == "model" else "studies"
    if not r["n"]:
        return f"  {name}: no {unit[:-1]} with both risk levels on the normal..critical scale"
    extra = []
    if r["indeterminate"]:
        extra.append(f"{r['indeterminate']} with indeterminate left out")
    if r["not_given"]:
        extra.append(f"{r['not_given']} without a level")
    second = "reviewer" if first == "model" else name.split(" vs ")[-1]
    return (f"  {name}: weighted kappa {_f(r['kappa_w'])} over {r['n']} {unit}; same level {r['exact']}/{r['n']}, "
            f"{second} higher {r['second_higher']}, lower {r['second_lower']}" + (f" ({'; '.join(extra)})" if extra else ""))


def agreement_lines(result: dict) -> list[str]:
    """The console report: every figure with its counts."""
    c = result["counts"]
    lines = [
        f"Agreement in run {result['run']}: {c['reviewed_studies']} of {c['studies_with_report']} studies with a report "
        f"reviewed; {c['final_reviews']} reviews"
        + (f" by {', '.join(f'{k} ({v})' for k, v in c['reviewers'].items())}" if c["reviewers"] else "")
        + (f", {c['first_reads']} blind first reads" if c["first_reads"] else "")
        + (f"; {c['imported']} imported" if c["imported"] else ""),
    ]
    if c["stale"]:
        lines.append(f"{c['stale']} reviews are of a report regraded or redone since; they count with the findings they saw")
    if c["queued"]:
        lines.append(f"{c['queued']} saved reviews are still waiting for the ledger (a batch holds the run) and are counted")
    if not c["final_reviews"] and not c["first_reads"]:
        lines.append("No reviews yet: `medvlm review RUN` to review, `medvlm review RUN --import FILE` to import.")
        return lines
    lines = _tables(result, lines)
    return [line.rstrip() for line in lines]


def _tables(result: dict, lines: list[str]) -> list[str]:
    c = result["counts"]
    for title, table in (("Model vs reviewer, per finding (latest review per study and reviewer)", result["model_vs_reviewer"]),
                         ("Model vs blind first read, per finding", result["model_vs_first_read"])):
        if not table or not table["findings"]:
            continue
        lines += ["", title,
                  f"  {'finding':<24} {'model+':>6} {'conf':>5} {'rej':>4} {'?':>3}  {'PPV [95% CI]':<19} "
                  f"{'rev+':>5} {'missed':>6}  {'missed share [95% CI]':<21}"]
        for row in [*table["findings"], table["total"]]:
            name = row["code"] if row["code"] != "all findings" else "ALL (excl. no_finding)"
            lines.append(f"  {name[:24]:<24} {row['model_present']:>6} {row['confirmed']:>5} {row['rejected']:>4} "
                         f"{row['unsure_or_unmarked']:>3}  {_f(row['ppv']):<19} {row['reviewer_positive']:>5} "
                         f"{row['missed']:>6}  {_f(row['missed_share']):<21}")
        lines.append("  model+ = reported present; conf/rej = reviewer agreed/disagreed; ? = unsure or unmarked; "
                     "rev+ = present per reviewer; missed = rev+ not reported present")
    risk = result["risk"]
    lines += ["", "Risk level, model vs reviewer (linear-weighted kappa, normal < low < moderate < high < critical)"]
    lines.append(_risk_line("all reviewers", risk["model_vs_reviewer"]))
    if len(risk["by_reviewer"]) > 1:
        for name, r in risk["by_reviewer"].items():
            lines.append(_risk_line(name, r))
    if risk["model_vs_first_read"]:
        lines.append(_risk_line("blind first reads", risk["model_vs_first_read"]))
    pairs = result["reviewer_pairs"]
    if pairs:
        for p in pairs:
            lines += ["", f"Reviewer vs reviewer: {p['a']} vs {p['b']} on {p['studies']} studies both reviewed "
                          f"(Cohen's kappa, 95% bootstrap CI)",
                      f"  {'finding':<24} {'n':>4} {'both+':>6} {'both-':>6} {'only ' + p['a'][:10]:>16} "
                      f"{'only ' + p['b'][:10]:>16}  kappa"]
            for f in p["findings"]:
                lines.append(f"  {f['code'][:24]:<24} {f['n']:>4} {f['both_present']:>6} {f['both_absent']:>6} "
                             f"{f['only_a']:>16} {f['only_b']:>16}  {_f(f['kappa'])}"
                             + (f" ({f['no_call']} without a call left out)" if f["no_call"] else ""))
            lines.append(f"  {'pooled over findings':<24} {p['pooled']['n']:>4}  kappa {_f(p['pooled']['kappa'])}")
            lines.append(_risk_line(f"risk level {p['a']} vs {p['b']}", p["risk"], first=p["a"]))
    elif len(c["reviewers"]) > 1:
        lines += ["", "Reviewer vs reviewer: no study was reviewed by two reviewers"]
    return lines


class AgreementAudit(LedgerSession):
    """The run lock and one `agreement` ledger record naming agreement.json and its hash."""

    purpose = "agreement"

    def start_fields(self) -> dict:
        return {"components": None}


def write_agreement(run_dir: Path) -> tuple[dict, Path | None]:
    """Compute; write agreement.json and refresh index.html under the run lock (with a ledger record).

    Returns (result, path written) — path None when another command holds the run (figures still computed).
    """
    from ..audit.reviews import flush_pending
    from ..report.index import write_index

    run_dir = Path(run_dir)
    RunView(run_dir)  # NotARun before anything else
    try:
        flush_pending(run_dir)
    except RunBusy:
        pass
    try:
        with AgreementAudit(run_dir) as audit:
            result = agreement(run_dir)
            path = run_dir / AGREEMENT_NAME
            atomic_write_text(path, json.dumps(result, indent=2, ensure_ascii=False) + "\n")
            audit.append({"kind": "agreement", "run_id": audit.run_id, "purpose": "agreement", "time": utc_now(),
                          "reviews_sha256": result["reviews_sha256"],
                          "files": {AGREEMENT_NAME: {"sha256": sha256_file(path), "bytes": path.stat().st_size}}})
            summary = run_dir / "summary.csv"
            if summary.is_file():
                from ..csvsafe import read_rows

                write_index(run_dir, read_rows(summary))
            return result, path
    except RunBusy:
        return agreement(run_dir), None
