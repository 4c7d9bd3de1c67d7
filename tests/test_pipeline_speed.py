"""The scheduling loop: prefetch overlaps generate, rendering runs behind, nothing is lost, studies are released."""

from __future__ import annotations

import gc
import threading
import time
import weakref
from pathlib import Path

import pytest
from PIL import Image

from medvlm import ingest, pipeline, stages
from medvlm.config import RunConfig
from medvlm.models.base import BackendBase, BatchTiming, ModelInfo
from medvlm.records import ImageInput, ModelOutput, Study, StudyContext, StudyError, StudyRef

N = 7


class FakeIngest:
    """PNG-free stand-in for the ingest stage, so these tests exercise only the scheduling."""

    def __init__(self, n: int = N, bad: tuple[int, ...] = ()):
        self.n, self.bad = n, bad
        self.studies: list[weakref.ref] = []

    def discover(self, root, key, modality, **kw):
        for i in range(self.n):
            yield StudyRef(f"s{i:02d}", f"study{i:02d}.png", ())

    def load_study(self, ref, modality, **kw):
        if int(ref.key[1:]) in self.bad:
            return StudyError(ref, "ingest", "cannot decode")
        img = Image.new("RGB", (32, 32), 100)
        study = Study(ref, (ImageInput(ref.source, "0" * 64, img, "raster", (32, 32)),), StudyContext())
        self.studies.append(weakref.ref(study))
        return study

    @staticmethod
    def resolve_modality(study, modality):
        return modality

    @staticmethod
    def load_or_create_key(out):
        return b"k" * 32


class Prepared:
    def __init__(self, keys):
        self.keys, self.size = keys, len(keys)
        self.preprocess_s, self.prefill_s, self.decode_s, self.generated_tokens = 0.01, 0.0, 0.0, 0


class FakeBackend(BackendBase):
    """Records when each batch was preprocessed and generated, and on which thread."""

    info = ModelInfo("fake", "fake", None, None, True, "float32", "none", "cpu")

    def __init__(self, generate_s: float = 0.05, fail_preprocess: str | None = None):
        self.events: list[tuple[str, str, float, str]] = []
        self.generate_s, self.fail_preprocess = generate_s, fail_preprocess

    def preprocess(self, batch):
        keys = [s.ref.key for s, _ in batch]
        self.events.append(("preprocess", keys[0], time.perf_counter(), threading.current_thread().name))
        if self.fail_preprocess in keys:
            raise ValueError("processor exploded")
        return Prepared(keys)

    def generate_prepared(self, prepared, *, max_new_tokens, ignore_eos=False):
        self.events.append(("generate-start", prepared.keys[0], time.perf_counter(), threading.current_thread().name))
        time.sleep(self.generate_s)
        prepared.prefill_s, prepared.decode_s = self.generate_s / 4, 3 * self.generate_s / 4
        prepared.generated_tokens = max_new_tokens * prepared.size
        self.events.append(("generate-end", prepared.keys[0], time.perf_counter(), threading.current_thread().name))
        return [ModelOutput("No acute findings.", "complete", 10, max_new_tokens) for _ in prepared.keys]

    def timing(self, prepared):
        return BatchTiming(prepared.preprocess_s, prepared.prefill_s, prepared.decode_s, prepared.generated_tokens)


@pytest.fixture
def fake_ingest(monkeypatch):
    fake = FakeIngest()
    for name in ("discover", "load_study", "resolve_modality", "load_or_create_key"):
        monkeypatch.setattr(ingest, name, getattr(fake, name), raising=False)
    return fake


@pytest.fixture
def slow_finish(monkeypatch):
    """finish() that takes a while (like a PDF) and fails for study s03; records the order it ran in."""
    order: list[str] = []

    def finish(work, output, model, config, resources):
        time.sleep(0.03)
        order.append(work.study.ref.key)
        if work.study.ref.key == "s03":
            raise RuntimeError("pdf renderer crashed")
        return stages.StudyResult(work.study.ref, {
            "study_key": work.study.ref.key, "source": work.study.ref.source, "modality": work.modality,
            "status": "ok", "risk_level": "normal", "present_findings": "", "answer_status": output.answer_status,
            "stage": "", "reason": "", "report": f"{work.study.ref.key}/report.json",
        })

    monkeypatch.setattr(stages, "finish", finish)
    monkeypatch.setattr(pipeline, "write_run_record", lambda *a, **k: None)
    monkeypatch.setattr(pipeline, "write_index", lambda *a, **k: None, raising=False)
    return order


def _config(tmp_path: Path, batch_size: int = 2) -> RunConfig:
    studies = tmp_path / "studies"
    studies.mkdir(exist_ok=True)
    # run_batch refuses an empty studies folder before anything is written; the fake ingest supplies the studies
    (studies / "README.txt").write_text("studies come from FakeIngest\n")
    return RunConfig(studies=studies, out=tmp_path / "out", model="demo", batch_size=batch_size, max_new_tokens=3,
                     write_pdf=False)


def test_every_study_gets_one_row_in_completion_order(tmp_path, fake_ingest, slow_finish):
    backend = FakeBackend()
    result = pipeline.run_batch(_config(tmp_path), backend=backend)
    keys = [r["study_key"] for r in result.rows]
    assert sorted(keys) == [f"s{i:02d}" for i in range(N)]  # nothing lost after the last batch
    assert keys == slow_finish  # recorded in the order the render worker finished them
    failed = [r for r in result.rows if r["status"] == "error"]
    assert [(r["study_key"], r["stage"]) for r in failed] == [("s03", "report")]
    assert "pdf renderer crashed" in failed[0]["reason"]
    summary = (tmp_path / "out" / "summary.csv").read_text().splitlines()
    assert len(summary) == N + 1
    assert result.stats["generated_tokens"] == 3 * N and result.stats["batches"] == 4


def test_next_batch_is_preprocessed_while_the_model_generates(tmp_path, fake_ingest, slow_finish):
    backend = FakeBackend(generate_s=0.3)
    pipeline.run_batch(_config(tmp_path), backend=backend)
    at = {(kind, key): t for kind, key, t, _ in backend.events}
    threads = {kind: name for kind, _, _, name in backend.events}
    assert threads["preprocess"].startswith("medvlm-prefetch")
    assert not threads["generate-start"].startswith("medvlm-")  # the model runs on the calling thread
    # Batch 2 (s02, s03) is ready before batch 1 (s00, s01) finishes generating.
    assert at[("preprocess", "s02")] < at[("generate-end", "s00")]
    assert at[("generate-start", "s02")] >= at[("generate-end", "s00")]


def test_studies_are_released_once_written(tmp_path, fake_ingest, slow_finish):
    result = pipeline.run_batch(_config(tmp_path, batch_size=3), backend=FakeBackend())
    gc.collect()
    assert len(fake_ingest.studies) == N
    assert all(ref() is None for ref in fake_ingest.studies)  # no image outlives its report
    assert len(result.rows) == N


def test_ingest_and_preprocess_failures_become_rows(tmp_path, monkeypatch, slow_finish):
    fake = FakeIngest(bad=(1,))
    for name in ("discover", "load_study", "resolve_modality", "load_or_create_key"):
        monkeypatch.setattr(ingest, name, getattr(fake, name), raising=False)
    result = pipeline.run_batch(_config(tmp_path), backend=FakeBackend(fail_preprocess="s04"))
    by_key = {r["study_key"]: r for r in result.rows}
    assert len(by_key) == N
    assert by_key["s01"]["stage"] == "ingest"
    # The failed processor call is retried one study at a time: only the study that fails alone is an error.
    assert by_key["s04"]["stage"] == "model" and by_key["s05"]["status"] == "ok"
    assert "processor exploded" in by_key["s04"]["reason"]
    assert by_key["s00"]["status"] == "ok"


def test_slow_reports_hold_back_the_model_instead_of_piling_up(tmp_path, fake_ingest, monkeypatch):
    """With rendering slower than generation, at most 2 batches of studies wait for their reports."""
    monkeypatch.setattr(pipeline, "write_run_record", lambda *a, **k: None)
    live: list[int] = []
    alive = set()

    def finish(work, output, model, config, resources):
        time.sleep(0.05)
        alive.discard(work.study.ref.key)
        return stages.StudyResult(work.study.ref, {
            "study_key": work.study.ref.key, "source": work.study.ref.source, "modality": work.modality,
            "status": "ok", "risk_level": "", "present_findings": "", "answer_status": "", "stage": "",
            "reason": "", "report": ""})

    class Tracking(FakeBackend):
        def generate_prepared(self, prepared, **kw):
            alive.update(prepared.keys)
            live.append(len(alive))
            return super().generate_prepared(prepared, **kw)

    monkeypatch.setattr(stages, "finish", finish)
    fake_ingest.n = 20
    result = pipeline.run_batch(_config(tmp_path, batch_size=2), backend=Tracking(generate_s=0.0))
    assert len(result.rows) == 20
    assert max(live) <= 2 * 2 + 2 + 1  # pending limit + the batch being generated (+1 in flight)
