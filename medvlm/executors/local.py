"""The local executor: this process, three threads (prefetch, model on the calling thread, render).

One helper thread decodes and preprocesses batch i+1 while batch i generates; another renders and
writes reports (the PDF is slow) behind the model, with backpressure so that at most two batches
wait for their reports. Results are handed to the sink on the calling thread in the order studies
finish; everything is drained before returning.
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

from .. import stages
from ..errors import one_line
from ..models.base import Backend, ModelInfo
from ..records import ModelOutput, StudyError, StudyRef
from ..report.write import write_study_files
from .base import BatchJob, ResultSink, add, finish_or_error, model_stage, preprocess_works

STAGE_STATS = ("decode", "prompt", "extract", "grade", "report", "render")


def chunks(items: list, size: int) -> Iterator[list]:
    """Batches of `size`, except that the last full batch is split so the final one holds about a quarter.

    Reports of the final batch are written after the model has stopped, so they are the one part of
    rendering that cannot overlap generation; a small final batch keeps that tail short.
    """
    sizes = [size] * (len(items) // size) + ([len(items) % size] if len(items) % size else [])
    if size >= 4 and sizes and sizes[-1] > size // 4:
        last = sizes.pop()
        sizes += [last - size // 4, size // 4]
    start = 0
    for n in sizes:
        yield items[start : start + n]
        start += n


def prepare_chunk(chunk: list[StudyRef], job: BatchJob):
    """Prefetch worker: decode + prompt every study of a batch, load the model on first need, preprocess.

    Returns (errors, ready, prepared) where prepared is the backend's preprocessed batch, or the
    exception the preprocessing raised (recorded per study later).
    """
    errors: list[StudyError] = []
    ready: list[stages.StudyWork] = []
    for ref in chunk:
        prepared = stages.prepare(ref, job.config, job.resources)
        if isinstance(prepared, StudyError):
            errors.append(prepared)
        else:
            ready.append(prepared)
    if not ready:
        return errors, ready, None
    return errors, ready, preprocess_works(job.load_backend(), ready)


def finish_and_write(out: Path, work: stages.StudyWork, output: ModelOutput, model: ModelInfo, job: BatchJob) -> stages.StudyResult:
    """Render worker: finish() then write the study's files; any failure becomes that study's error row."""
    result = finish_or_error(work, output, model, job.config, job.resources)
    if result.files:
        try:
            result.written = write_study_files(out / result.ref.key, result.files)
        except Exception as exc:  # noqa: BLE001 - one study's report failure must not stop the batch
            return stages.error_result(StudyError(work.study.ref, "report", one_line(exc)))
        result.files = {}
    return result


class LocalExecutor:
    name = "local"

    def identity(self, config) -> None:
        return None  # the model loads in this process: the pipeline resolves its identity here

    def run(self, job: BatchJob, refs: list[StudyRef], sink: ResultSink) -> ModelInfo | None:
        config, stats = job.config, job.stats
        out = Path(config.out)
        batch_size = max(1, config.batch_size)
        with ThreadPoolExecutor(1, thread_name_prefix="medvlm-prefetch") as prefetch, ThreadPoolExecutor(
            1, thread_name_prefix="medvlm-render"
        ) as render:
            pending: deque = deque()  # (StudyWork, Future[StudyResult]) in submission (= completion) order

            def drain(block: bool, keep: int = 0) -> None:
                """Emit finished reports; with block, wait until at most `keep` are still pending."""
                while pending and (pending[0][1].done() or (block and len(pending) > keep)):
                    w, fut = pending[0]
                    t_wait = time.perf_counter()
                    result = fut.result()  # finish_and_write never raises
                    pending.popleft()  # only now: a Ctrl-C while waiting leaves it to the handler below
                    add(stats, render_wait_s=time.perf_counter() - t_wait)
                    add(stats, **{f"{s}_s": w.timings.stages.get(s, 0.0) for s in STAGE_STATS})
                    sink.emit(result)

            try:
                batches = chunks(refs, batch_size)
                next_chunk = next(batches, None)
                future = prefetch.submit(prepare_chunk, next_chunk, job) if next_chunk else None
                while future is not None:
                    t_wait = time.perf_counter()
                    errors, ready, prepared = future.result()  # ModelUnavailable from a lazy load propagates
                    add(stats, prefetch_wait_s=time.perf_counter() - t_wait)
                    next_chunk = next(batches, None)
                    future = prefetch.submit(prepare_chunk, next_chunk, job) if next_chunk else None
                    for err in errors:
                        sink.emit(stages.error_result(err))
                    if not ready:
                        drain(False)
                        sink.flush()
                        continue
                    backend: Backend = job.backend
                    answered = model_stage(job, ready, prepared)
                    for w, output in answered:
                        if isinstance(output, BaseException):
                            drain(True)  # keep rows in completion order
                            sink.emit(stages.error_result(StudyError(w.study.ref, "model", one_line(output))))
                        else:
                            pending.append((w, render.submit(finish_and_write, out, w, output, backend.info, job)))
                    del ready, prepared, answered  # images and pixel tensors live only as long as their reports
                    # Backpressure: if reports fall behind the model, wait rather than hold more images in memory.
                    drain(True, keep=2 * batch_size)
                    sink.flush()
                drain(True)
            except KeyboardInterrupt:
                # Ctrl-C: reports not yet started are dropped (no files, no record: the rerun does them);
                # the one being written finishes, and every finished report is recorded, so that no
                # report.json is left without its ledger record.
                prefetch.shutdown(wait=False, cancel_futures=True)
                render.shutdown(wait=True, cancel_futures=True)
                for _, fut in pending:
                    if not fut.cancelled():
                        sink.emit(fut.result())
                sink.flush()
                raise
        return job.backend.info if job.backend is not None else None
