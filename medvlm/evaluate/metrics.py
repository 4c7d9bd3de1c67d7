"""Confusion counts and agreement statistics with 95% intervals.

Sensitivity, specificity and PPV are proportions: their intervals are Wilson score intervals.
F1 (per finding, micro and macro) is not a proportion of independent trials: its interval is a
percentile bootstrap over studies (BOOTSTRAP resamples, fixed seed, so reruns give the same
numbers).
"""

from __future__ import annotations

import math
import warnings

import numpy as np

Z95 = 1.959963984540054
BOOTSTRAP = 2000
BOOTSTRAP_SEED = 0
INTERVAL_METHODS = {
    "sensitivity": "Wilson score interval, 95%",
    "specificity": "Wilson score interval, 95%",
    "ppv": "Wilson score interval, 95%",
    "f1": f"percentile bootstrap over studies, 95%, {BOOTSTRAP} resamples, seed {BOOTSTRAP_SEED}",
}


def wilson(k: int, n: int, z: float = Z95) -> dict | None:
    """{value, low, high} for k successes in n trials, or None when n is 0."""
    if n <= 0:
        return None
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return {"value": p, "low": max(0.0, centre - half), "high": min(1.0, centre + half)}


def f1_from(tp, fp, fn):
    """F1 = 2TP / (2TP + FP + FN), elementwise; NaN where nothing was positive in truth or prediction."""
    tp, fp, fn = (np.asarray(a, dtype=np.float64) for a in (tp, fp, fn))
    denom = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1), np.nan)


def _interval(point: float, samples: np.ndarray) -> dict | None:
    if math.isnan(point):
        return None
    samples = samples[~np.isnan(samples)]
    if samples.size == 0:
        return {"value": point, "low": None, "high": None}
    low, high = np.percentile(samples, [2.5, 97.5])
    return {"value": point, "low": float(low), "high": float(high)}


def summarise(outcomes: np.ndarray, codes: list[str]) -> dict:
    """Per-code and overall statistics from outcomes[study, code] in {TP=1, FP=2, FN=3, TN=4, ignored=0}."""
    n_studies = outcomes.shape[0]
    counts = {name: (outcomes == value).sum(axis=0) for name, value in (("tp", 1), ("fp", 2), ("fn", 3), ("tn", 4),
                                                                          ("ignored", 0))}
    tp, fp, fn = counts["tp"], counts["fp"], counts["fn"]
    f1 = f1_from(tp, fp, fn)
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    if n_studies:
        onehot = np.stack([(outcomes == v) for v in (1, 2, 3)], axis=-1).astype(np.float64)  # study, code, kind
        per_study = onehot.reshape(n_studies, -1)
        # a resample = how often each study is drawn; its counts = those weights times the outcomes
        chunks = []
        for start in range(0, BOOTSTRAP, 250):
            weights = rng.multinomial(n_studies, np.full(n_studies, 1.0 / n_studies), size=min(250, BOOTSTRAP - start))
            chunks.append(weights @ per_study)
        sums = np.concatenate(chunks).reshape(BOOTSTRAP, len(codes), 3)
        b_tp, b_fp, b_fn = sums[..., 0], sums[..., 1], sums[..., 2]
        b_f1 = f1_from(b_tp, b_fp, b_fn)
        b_micro = f1_from(b_tp.sum(1), b_fp.sum(1), b_fn.sum(1))
        defined = ~np.isnan(f1)
        with warnings.catch_warnings():  # a resample with no positive at all has no macro-F1 (NaN, dropped)
            warnings.simplefilter("ignore", RuntimeWarning)
            b_macro = np.nanmean(np.where(defined[None, :], b_f1, np.nan), axis=1)
    else:
        b_f1 = np.full((1, len(codes)), np.nan)
        b_micro = b_macro = np.full(1, np.nan)
    findings = []
    for j, code in enumerate(codes):
        t, p_, n_, tn = int(tp[j]), int(fp[j]), int(fn[j]), int(counts["tn"][j])
        findings.append({
            "code": code,
            "tp": t, "fp": p_, "fn": n_, "tn": tn, "ignored": int(counts["ignored"][j]),
            "positives": t + n_,
            "sensitivity": wilson(t, t + n_),
            "specificity": wilson(tn, tn + p_),
            "ppv": wilson(t, t + p_),
            "f1": _interval(float(f1[j]), b_f1[:, j]),
        })
    micro = float(f1_from(tp.sum(), fp.sum(), fn.sum()))
    defined = ~np.isnan(f1)
    macro = float(np.mean(f1[defined])) if defined.any() else float("nan")
    return {
        "findings": findings,
        "micro_f1": _interval(micro, b_micro),
        "macro_f1": _interval(macro, b_macro),
        "macro_over": [c for c, d in zip(codes, defined) if d],
    }


def outcome(truth: int | None, predicted: bool | None) -> int:
    """1 TP, 2 FP, 3 FN, 4 TN, 0 ignored (either side None)."""
    if truth is None or predicted is None:
        return 0
    if truth:
        return 1 if predicted else 3
    return 2 if predicted else 4
