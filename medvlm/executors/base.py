"""The executor seam: who runs the per-study stages and the model, and where.

An executor receives the studies to do and a `BatchJob` (configuration, resources, how to load
the model) and hands every study's StudyResult to `sink.emit` on the calling thread; the driver
(pipeline.run_batch) stays the single writer of the ledger, summary.csv, index.html and run.json.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..config import RunConfig
from ..models import LoadRequest, get_kind
from ..models.base import Backend, BatchTiming, ModelInfo
from ..errors import one_line
from ..records import ModelOutput, StudyError, StudyRef
from ..resources import Resources
from .. import stages
from ..stages import StudyResult, StudyWork, error_result


class ResultSink(Protocol):
    def emit(self, result: StudyResult) -> None:
        """Record one finished study (called on the driver's thread only)."""

    def flush(self) -> None:
        """Bring summary.csv up to date (called between batches)."""


@dataclass
class BatchJob:
    """Everything an executor needs besides the list of studies."""

    config: RunConfig
    resources: Resources
    backend: Backend | None = None  # an already-loaded (or injected) backend; else loaded on first need
    stats: dict[str, float] = field(default_factory=dict)  # scheduling figures for `medvlm bench`

    def load_request(self) -> LoadRequest:
        c = self.config
        return LoadRequest(c.model, dict(c.backend_options), c.batch_size, c.max_new_tokens, c.max_images)

    def load_backend(self) -> Backend:
        """The job's backend, loading it once (ModelUnavailable propagates as a usage error)."""
        if self.backend is None:
            t0 = time.perf_counter()
            self.backend = get_kind(self.config.backend).load(self.load_request())
            self.stats["load_s"] = time.perf_counter() - t0
        return self.backend


class Executor(Protocol):
    name: str

    def identity(self, config: RunConfig) -> dict | None:
        """The backend identity resolved where this executor loads the model (another machine, another
        GPU); None when that is this process. The resume fingerprint keys on it; the executor itself never
        enters the fingerprint."""

    def run(self, job: BatchJob, refs: list[StudyRef], sink: ResultSink) -> ModelInfo | None:
        """Do every study in refs, emitting one result each; returns the loaded model's info (None if none loaded)."""


def add(stats: dict, **values: float) -> None:
    for key, value in values.items():
        stats[key] = stats.get(key, 0) + value


def note_model_time(stats: dict, works: list[StudyWork], timing: BatchTiming | None, outputs: list[ModelOutput],
                    seconds: float) -> None:
    """Split one generate call's time over its studies (prefill / decode when the backend measured them)."""
    n = len(works)
    prefill = timing.prefill_s if timing else None
    decode = timing.decode_s if timing else None
    for w in works:
        w.timings.add("model", seconds / n)
        if prefill is not None and decode is not None:
            w.timings.add("prefill", prefill / n)
            w.timings.add("decode_tokens", decode / n)
    generated = timing.generated_tokens if timing and timing.generated_tokens else sum(o.new_tokens for o in outputs)
    add(stats, model_s=seconds, prefill_s=prefill or 0.0, decode_tokens_s=decode if decode is not None else seconds,
        preprocess_s=timing.preprocess_s if timing else 0.0, new_tokens=sum(o.new_tokens for o in outputs),
        generated_tokens=generated, batches=1)


# Executor name -> "module:class"; imported only when chosen, so optional dependencies stay optional.
EXECUTORS: dict[str, str] = {
    "local": "medvlm.executors.local:LocalExecutor",
    "ray": "medvlm.executors.ray:RayExecutor",
}


def model_stage(job: BatchJob, works: list[StudyWork], prepared: Any) -> list[tuple[StudyWork, ModelOutput | Exception]]:
    """Generate for one preprocessed batch: (work, output) per study, or (work, exception) for a study that failed.

    `prepared` may be the exception preprocessing raised. When a batch of several studies fails as a
    whole (one study's huge prompt, an out-of-memory), each study is retried alone, so only the
    study that really fails becomes an error row. A backend may also return an exception in place
    of one study's ModelOutput (a remote request that kept failing).
    """
    backend, config = job.backend, job.config
    t0 = time.perf_counter()
    try:
        if isinstance(prepared, BaseException):
            raise prepared
        outputs = backend.generate_prepared(prepared, max_new_tokens=config.max_new_tokens, ignore_eos=config.ignore_eos)
        if len(outputs) != len(works):
            raise RuntimeError(f"the backend returned {len(outputs)} answers for {len(works)} studies")
    except Exception as exc:  # noqa: BLE001 - a model failure is recorded per study
        if len(works) == 1:
            return [(works[0], exc)]
        add(job.stats, batch_retries=1)
        results = []
        for w in works:
            try:
                alone = backend.preprocess([(w.study, w.prompt)])
            except Exception as alone_exc:  # noqa: BLE001
                alone = alone_exc
            results.extend(model_stage(job, [w], alone))
        return results
    answered = [o for o in outputs if isinstance(o, ModelOutput)]
    note_model_time(job.stats, works, backend.timing(prepared), answered, time.perf_counter() - t0)
    return list(zip(works, outputs))


def preprocess_works(backend: Backend, works: list[StudyWork]) -> Any:
    """The backend's preprocessed batch for `works` (each study's time share noted), or the exception it raised."""
    t0 = time.perf_counter()
    try:
        prepared = backend.preprocess([(w.study, w.prompt) for w in works])
    except Exception as exc:  # noqa: BLE001 - becomes a model error row for each study of the batch
        return exc
    share = (time.perf_counter() - t0) / len(works)
    for w in works:
        w.timings.add("preprocess", share)
    return prepared


def finish_or_error(work: StudyWork, output: ModelOutput, model: ModelInfo, config: RunConfig,
                    resources: Resources) -> StudyResult:
    """stages.finish(), with any failure turned into that study's `report` error row."""
    try:
        return stages.finish(work, output, model, config, resources)
    except Exception as exc:  # noqa: BLE001 - one study's report failure must not stop the batch
        return error_result(StudyError(work.study.ref, "report", one_line(exc)))


def get_executor(name: str, options: dict[str, Any] | None = None) -> Executor:
    """A registered executor by name (imported lazily); unknown -> UsageProblem with one line."""
    import importlib

    from ..errors import UsageProblem

    if name not in EXECUTORS:
        raise UsageProblem(f"unknown executor {name!r}; available: {', '.join(sorted(EXECUTORS))}")
    module_name, _, attr = EXECUTORS[name].partition(":")
    cls = getattr(importlib.import_module(module_name), attr)
    import inspect

    accepted = set(inspect.signature(cls).parameters)
    unknown = sorted(set(options or {}) - accepted)
    if unknown:
        raise UsageProblem(f"the {name} executor has no option {unknown[0]!r}")
    return cls(**(options or {}))
