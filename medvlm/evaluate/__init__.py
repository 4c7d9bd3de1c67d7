"""`medvlm evaluate`: compare a run's findings with a label table and write evaluation.json/.html/.png.

Library entry point: `evaluate_run(run_dir, truth, ...)`. The comparison (compare.py) reads the run
and the table (truth.py), matches rows to studies (match.py) and computes the statistics
(metrics.py); render.py draws the chart and the page. When the output folder is the run folder (the
default) or inside it, the files are written under the run lock, recorded in the run's ledger, and
the run's index.html links to the page.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..audit.session import LedgerSession
from ..clock import utc_now
from ..fileio import atomic_write_bytes, atomic_write_text, sha256_file
from .compare import UNCERTAIN_POLICIES, compare
from .render import chart_png, console_rows, evaluation_html, summary_lines
from .truth import TruthTableError

FILES = ("evaluation.json", "evaluation.html", "evaluation.png")

__all__ = ["EvaluationResult", "TruthTableError", "UNCERTAIN_POLICIES", "console_rows", "evaluate_run",
           "summary_lines"]


@dataclass
class EvaluationResult:
    evaluation: dict
    out: Path
    files: dict[str, Path]
    linked_from_index: bool


class EvaluationAudit(LedgerSession):
    """The run lock and one `evaluation` ledger record naming the truth table and the files written."""

    purpose = "evaluate"

    def start_fields(self) -> dict:
        return {"components": None}

    def record(self, ev: dict, files: dict[str, Path]) -> None:
        self.append({
            "kind": "evaluation", "run_id": self.run_id, "purpose": self.purpose, "time": utc_now(),
            "truth": {"path": ev["truth"]["path"], "sha256": ev["truth"]["sha256"]},
            "uncertain_as": ev["policy"]["uncertain_as"],
            "micro_f1": (ev.get("micro_f1") or {}).get("value"),
            "files": {str(p.relative_to(self.out)): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
                      for p in files.values()},
        })


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def _write(ev: dict, out: Path, run_dir: Path, truth: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    chart = chart_png(ev)
    paths = {name: out / name for name in FILES}
    atomic_write_text(paths["evaluation.json"], json.dumps(ev, indent=2, ensure_ascii=False) + "\n")
    atomic_write_bytes(paths["evaluation.png"], chart)
    html = evaluation_html(ev, run_name=run_dir.resolve().name, truth_name=truth.name, chart=chart,
                           notice=ev.get("model_notice"))
    atomic_write_text(paths["evaluation.html"], html)
    return paths


def _summary_rows(run_dir: Path) -> list[dict]:
    from ..csvsafe import read_rows

    return read_rows(run_dir / "summary.csv")


def evaluate_run(run_dir: Path, truth: Path, *, out: Path | None = None, uncertain_as: str = "negative",
                 mapping: Path | None = None, id_column: str | None = None) -> EvaluationResult:
    """Compare, write the three files to `out` (default: the run folder) and link them from the run's index."""
    from ..report.index import write_index

    from ..errors import NotARun
    from ..findings import load_vocabulary
    from .truth import read_truth

    run_dir, truth = Path(run_dir), Path(truth)
    if not (run_dir / "summary.csv").is_file():
        raise NotARun(f"{run_dir} is not a medvlm run folder (no summary.csv)")
    if uncertain_as not in UNCERTAIN_POLICIES:
        raise TruthTableError(f"--uncertain-as must be one of {', '.join(UNCERTAIN_POLICIES)} (got {uncertain_as!r})")
    vocabulary = {code: e.label for code, e in load_vocabulary("chest_xray").entries.items()}
    read_truth(truth, vocabulary, mapping_path=mapping, id_column=id_column)  # a bad table stops before any write
    out = Path(out) if out is not None else run_dir
    inside = run_dir.is_dir() and _inside(out, run_dir)
    if not inside:
        ev = compare(run_dir, truth, uncertain_as=uncertain_as, mapping=mapping, id_column=id_column)
        return EvaluationResult(ev, out, _write(ev, out, run_dir, truth), False)
    with EvaluationAudit(run_dir) as audit:
        ev = compare(run_dir, truth, uncertain_as=uncertain_as, mapping=mapping, id_column=id_column)
        files = _write(ev, out, run_dir, truth)
        audit.record(ev, files)
        write_index(run_dir, _summary_rows(run_dir))
    return EvaluationResult(ev, out, files, True)
