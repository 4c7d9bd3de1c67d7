"""The evaluation as a chart (PNG, matplotlib), an HTML page (the report template family) and console rows."""

from __future__ import annotations

import io

RISK_LEVELS = ("critical", "high", "moderate", "low", "normal", "indeterminate")


def _fmt(stat: dict | None, ci: bool = True) -> str:
    if not stat:
        return "–"
    if ci and stat.get("low") is not None:
        return f"{stat['value']:.3f} [{stat['low']:.2f}-{stat['high']:.2f}]"
    return f"{stat['value']:.3f}"


def chart_png(ev: dict) -> bytes:
    """Per-finding F1 (bootstrap 95% CI) next to sensitivity and specificity (Wilson 95% CI)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    findings = [f for f in ev["findings"]]
    labels = [f["label"] for f in findings][::-1]
    fig = Figure(figsize=(9.5, 0.42 * max(len(findings), 3) + 1.6), dpi=110)
    axes = fig.subplots(1, 2, sharey=True)
    ys = list(range(len(labels)))

    def bars(ax, key, offset, color, name):
        vals, lo, hi = [], [], []
        for f in findings[::-1]:
            s = f.get(key)
            v = s["value"] if s else 0.0
            vals.append(v)
            # A percentile-bootstrap interval need not contain the point estimate; error bars cannot be negative.
            lo.append(max(0.0, v - s["low"]) if s and s.get("low") is not None else 0.0)
            hi.append(max(0.0, s["high"] - v) if s and s.get("high") is not None else 0.0)
        ax.barh([y + offset for y in ys], vals, height=0.36 if offset else 0.6, color=color, label=name,
                xerr=[lo, hi], error_kw={"elinewidth": 1, "capsize": 2, "ecolor": "#333"})

    bars(axes[0], "f1", 0.0, "#4b6fa8", "F1")
    micro = ev.get("micro_f1")
    if micro:
        axes[0].axvline(micro["value"], color="#a3001b", linestyle="--", linewidth=1, label=f"micro-F1 {micro['value']:.3f}")
    axes[0].set_title("F1 per finding (bootstrap 95% CI)", fontsize=10)
    bars(axes[1], "sensitivity", -0.19, "#1a7f37", "sensitivity")
    bars(axes[1], "specificity", 0.19, "#9a5b00", "specificity")
    axes[1].set_title("Sensitivity / specificity (Wilson 95% CI)", fontsize=10)
    for ax in axes:
        ax.set_xlim(0, 1.02)
        ax.grid(axis="x", alpha=0.3)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.09), ncol=2, fontsize=8, frameon=False)
    axes[0].set_yticks(ys, labels, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def evaluation_html(ev: dict, *, run_name: str, truth_name: str, chart: bytes | None, notice: str | None) -> str:
    from ..report.html import data_uri, environment

    template = environment().get_template("evaluation.html.j2")
    return template.render(ev=ev, run_name=run_name, truth_name=truth_name, for_pdf=False, notice=notice,
                           chart_uri=data_uri(chart) if chart else None, risk_levels=RISK_LEVELS)


def console_rows(ev: dict) -> list[tuple[str, ...]]:
    """Rows for a console table: finding, positives, TP, FP, FN, TN, sensitivity, specificity, PPV, F1 with its CI
    (the intervals of the other columns are in evaluation.json and the HTML page)."""
    rows = []
    for f in ev["findings"]:
        rows.append((f["code"], str(f["positives"]), str(f["tp"]), str(f["fp"]), str(f["fn"]), str(f["tn"]),
                     _fmt(f["sensitivity"], False), _fmt(f["specificity"], False), _fmt(f["ppv"], False), _fmt(f["f1"])))
    return rows


def summary_lines(ev: dict) -> list[str]:
    """The lines printed under the table: overall F1, matching counts, risk distribution."""
    c = ev["counts"]
    lines = [
        f"micro-F1 {_fmt(ev['micro_f1'])}, macro-F1 {_fmt(ev['macro_f1'])} over {c['evaluated_studies']} studies "
        f"(F1 intervals: bootstrap; sensitivity/specificity/PPV: Wilson)",
        f"matched {c['matched_studies']} of {c['run_studies']} studies to {c['truth_rows']} table rows; "
        f"{c['unmatched_truth_rows']} rows unmatched, {c['ambiguous_truth_rows']} ambiguous, "
        f"{c['unmatched_run_studies']} studies without a row, {c['not_evaluated']} matched but failed/skipped",
    ]
    risk = ev["risk"]["by_truth"]
    for group in ("normal", "abnormal"):
        if risk[group]:
            dist = ", ".join(f"{lvl} {n}" for lvl, n in sorted(risk[group].items(), key=lambda kv: -kv[1]))
            lines.append(f"risk levels of truly {group} studies: {dist}")
    if ev["outside_labels"]:
        lines.append("asserted but not in the table (not scored): "
                     + ", ".join(f"{k} x{n}" for k, n in ev["outside_labels"].items()))
    return lines
