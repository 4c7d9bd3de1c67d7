"""The pipeline's contract with a backend, driven by a scripted model that replays canned answers.

The thing under test here is the pipeline (error isolation, grading of bad answers, summary rows);
the scripted model stands in for a VLM the way simonw/llm's test model does. The real demo model
is exercised end to end in test_cli.py.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image

from medvlm.config import RunConfig
from medvlm.models.base import BackendBase, ModelInfo
from medvlm.pipeline import run_batch
from medvlm.records import ModelOutput
from medvlm.report.validate import validate_report

INFO = ModelInfo(
    name="scripted", source="tests", local_dir=None, revision=None, random_weights=False,
    dtype="float32", quantization="none", device="cpu",
)


class ScriptedBackend(BackendBase):
    """Answers by study source: a canned text and how the answer ended, or an exception."""

    info = INFO

    def __init__(self, script: dict[str, tuple[str, str] | Exception]):
        self.script = script
        self.calls: list[int] = []

    def generate(self, batch, *, max_new_tokens, ignore_eos=False):
        self.calls.append(len(batch))
        outputs = []
        for study, _prompt in batch:
            answer = self.script[Path(study.ref.source).stem]
            if isinstance(answer, Exception):
                raise answer
            text, status = answer
            outputs.append(ModelOutput(text=text, answer_status=status, prompt_tokens=10, new_tokens=len(text.split())))
        return outputs


def _png_studies(root: Path, names: list[str]) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(root / f"{name}.png")
    return root


def _rows(out: Path) -> dict[str, dict]:
    with open(out / "summary.csv", newline="") as fh:
        return {Path(r["source"]).stem: r for r in csv.DictReader(fh)}


def test_bad_answers_are_never_normal_and_one_failure_does_not_stop_the_batch(tmp_path):
    studies = _png_studies(tmp_path / "in", ["normal", "empty", "truncated", "critical", "uncertain"])
    backend = ScriptedBackend(
        {
            "normal": ("FINDINGS: Lungs are clear. No pneumothorax or pleural effusion. "
                       "IMPRESSION: No acute cardiopulmonary abnormality.", "complete"),
            "empty": ("", "empty"),
            "truncated": ("FINDINGS: The lungs are clear. The heart", "truncated"),
            "critical": ("Large right pneumothorax with mediastinal shift.", "complete"),
            "uncertain": ("Possible small left pneumothorax cannot be excluded.", "complete"),
        }
    )
    out = tmp_path / "out"
    result = run_batch(RunConfig(studies=studies, out=out, model="demo", write_pdf=False), backend=backend)
    assert result.failed == 0
    rows = _rows(out)
    assert rows["normal"]["risk_level"] == "normal"
    assert rows["empty"]["risk_level"] == "indeterminate"
    assert rows["truncated"]["risk_level"] != "normal"
    assert rows["critical"]["risk_level"] == "critical"
    assert rows["uncertain"]["risk_level"] in ("high", "critical")
    for row in rows.values():
        doc = json.loads((out / row["report"]).read_text())
        validate_report(doc)
        assert doc["demo_notice"] is None  # not a random-weight model


def test_model_exception_becomes_error_rows_and_exit_status(tmp_path):
    studies = _png_studies(tmp_path / "in", ["a", "b", "c"])
    backend = ScriptedBackend({"a": ("Normal chest.", "complete"), "b": RuntimeError("CUDA out of memory\nmore"),
                               "c": ("Normal chest.", "complete")})
    out = tmp_path / "out"
    result = run_batch(RunConfig(studies=studies, out=out, model="demo", write_pdf=False, batch_size=1), backend=backend)
    rows = _rows(out)
    assert result.failed == 1
    assert rows["b"]["status"] == "error" and rows["b"]["stage"] == "model"
    assert rows["b"]["reason"] == "RuntimeError: CUDA out of memory"  # one line
    assert rows["a"]["status"] == rows["c"]["status"] == "ok"


def test_batches_group_studies(tmp_path):
    studies = _png_studies(tmp_path / "in", [f"s{i}" for i in range(5)])
    backend = ScriptedBackend({f"s{i}": ("Normal chest.", "complete") for i in range(5)})
    run_batch(RunConfig(studies=studies, out=tmp_path / "out", model="demo", write_pdf=False, batch_size=2), backend=backend)
    assert sorted(backend.calls, reverse=True) == [2, 2, 1]


def test_one_failing_study_in_a_batch_is_retried_alone_and_its_batch_mates_succeed(tmp_path):
    studies = _png_studies(tmp_path / "in", ["a", "b", "c"])
    backend = ScriptedBackend({"a": ("Normal chest.", "complete"), "b": RuntimeError("prompt too long"),
                               "c": ("Normal chest.", "complete")})
    out = tmp_path / "out"
    result = run_batch(RunConfig(studies=studies, out=out, model="demo", write_pdf=False, batch_size=3), backend=backend)
    rows = _rows(out)
    assert backend.calls == [3, 1, 1, 1]  # the batch, then each study alone
    assert result.failed == 1 and rows["b"]["reason"] == "RuntimeError: prompt too long"
    assert rows["a"]["status"] == rows["c"]["status"] == "ok"


def test_a_backend_may_fail_one_study_by_returning_its_exception(tmp_path):
    class PerStudy(ScriptedBackend):
        def generate(self, batch, *, max_new_tokens, ignore_eos=False):
            self.calls.append(len(batch))
            return [ConnectionError("endpoint: connection refused after 5 tries") if "b" in s.ref.source
                    else ModelOutput("Normal chest.", "complete", 10, 2) for s, _ in batch]

    studies = _png_studies(tmp_path / "in", ["a", "b"])
    backend = PerStudy({})
    run_batch(RunConfig(studies=studies, out=tmp_path / "out", model="demo", write_pdf=False, batch_size=2), backend=backend)
    rows = _rows(tmp_path / "out")
    assert backend.calls == [2]  # no retry: the backend already said which study failed
    assert rows["b"]["stage"] == "model" and rows["b"]["reason"] == "ConnectionError: endpoint: connection refused after 5 tries"
    assert rows["a"]["status"] == "ok"
