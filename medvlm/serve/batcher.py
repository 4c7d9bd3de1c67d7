"""Dynamic batching: concurrent requests share one generate() call.

One worker thread owns the model. It takes the oldest waiting request, waits at most `max_wait_s`
for more with the same generation settings, up to `batch_size`, and runs them as one batch. The wait
counts from that request's arrival or from the end of the previous batch, whichever is later: clients
whose answers have just come back need a moment to send their next request, and without that grace
a busy server alternates between a full batch and a batch of one (the one request that arrived
while the full batch ran). Requests the server is still reading or decoding (`arriving()`) are
waited for too, up to `max_arrival_s`: eight clients that send at once must not be cut into a batch
of one and a batch of seven because decoding their images took longer than `max_wait_s`. A batch that fails as a whole is retried one request at a time, so one bad
request cannot fail its neighbours. On shutdown the running batch finishes; waiting requests fail
with ShuttingDown (HTTP 503).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from contextlib import contextmanager
from concurrent.futures import Future
from dataclasses import dataclass, field

from ..models.base import Backend
from ..records import ModelOutput
from .requests import ChatRequest


class ShuttingDown(RuntimeError):
    """The server stopped before this request's turn came."""


@dataclass
class _Job:
    request: ChatRequest
    future: Future
    arrived: float = field(default_factory=time.monotonic)


@dataclass
class BatchStats:
    batches: int = 0
    requests: int = 0
    largest: int = 0
    sizes: dict[int, int] = field(default_factory=dict)

    def note(self, size: int) -> None:
        self.batches += 1
        self.requests += size
        self.largest = max(self.largest, size)
        self.sizes[size] = self.sizes.get(size, 0) + 1


class Batcher:
    """Queues requests and runs them in batches on one worker thread."""

    def __init__(self, backend: Backend, *, batch_size: int, max_wait_s: float, max_arrival_s: float = 2.0):
        self.backend = backend
        self.batch_size = max(1, batch_size)
        self.max_wait_s = max(0.0, max_wait_s)
        self.max_arrival_s = max(self.max_wait_s, max_arrival_s)
        self._arriving = 0  # requests being read or decoded, not yet submitted
        self.stats = BatchStats()
        self._queue: deque[_Job] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._busy = False
        self._idle_since = time.monotonic()  # end of the previous batch (or the start)
        self._thread = threading.Thread(target=self._loop, name="medvlm-serve-batcher", daemon=True)
        self._thread.start()

    @property
    def closing(self) -> bool:
        return self._closing

    @contextmanager
    def arriving(self):
        """Around reading and decoding one request: a batch being formed waits for it (up to max_arrival_s)."""
        with self._cond:
            self._arriving += 1
        try:
            yield
        finally:
            with self._cond:
                self._arriving -= 1
                self._cond.notify_all()

    def submit(self, request: ChatRequest) -> Future:
        """A future for the request's ModelOutput (ShuttingDown when the server stops first)."""
        future: Future = Future()
        with self._cond:
            if self._closing:
                future.set_exception(ShuttingDown("the server is shutting down"))
                return future
            self._queue.append(_Job(request, future))
            self._cond.notify_all()
        return future

    def close(self, wait: bool = True, timeout: float | None = None) -> None:
        """Stop taking requests; fail those still waiting; let the running batch finish."""
        with self._cond:
            self._closing = True
            waiting = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        for job in waiting:
            if not job.future.done():
                job.future.set_exception(ShuttingDown("the server is shutting down"))
        if wait:
            self._thread.join(timeout)

    def _take(self) -> list[_Job] | None:
        """The next batch (oldest request first, same settings), or None when closing."""
        with self._cond:
            while not self._queue and not self._closing:
                self._cond.wait()
            if self._closing:
                return None
            first = self._queue[0]
            key = first.request.batch_key
            start = max(first.arrived, self._idle_since)
            deadline, hard = start + self.max_wait_s, start + self.max_arrival_s
            while not self._closing:
                matching = sum(1 for j in self._queue if j.request.batch_key == key)
                now = time.monotonic()
                if matching >= self.batch_size or now >= hard or (now >= deadline and not self._arriving):
                    break
                self._cond.wait((deadline if now < deadline else hard) - now)
            if self._closing:
                return None
            batch: list[_Job] = []
            kept: deque[_Job] = deque()
            for job in self._queue:
                if job.request.batch_key == key and len(batch) < self.batch_size:
                    batch.append(job)
                else:
                    kept.append(job)
            self._queue = kept
            self._busy = True
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            try:
                self._run(batch)
            finally:
                with self._cond:
                    self._busy = False
                    self._idle_since = time.monotonic()

    def _run(self, jobs: list[_Job]) -> None:
        jobs = [j for j in jobs if j.future.set_running_or_notify_cancel()]
        if not jobs:
            return
        request = jobs[0].request
        try:
            outputs = self.backend.generate(
                [(j.request.study, j.request.prompt) for j in jobs],
                max_new_tokens=request.max_tokens, ignore_eos=request.ignore_eos,
            )
            if len(outputs) != len(jobs):
                raise RuntimeError(f"the backend returned {len(outputs)} answers for {len(jobs)} requests")
        except Exception as exc:  # noqa: BLE001 - a failed batch is retried one request at a time
            if len(jobs) == 1:
                jobs[0].future.set_exception(exc)
                return
            for job in jobs:
                self._run_alone(job)
            return
        self.stats.note(len(jobs))
        for job, output in zip(jobs, outputs):
            if isinstance(output, ModelOutput):
                job.future.set_result(output)
            else:
                job.future.set_exception(output if isinstance(output, BaseException) else RuntimeError(str(output)))

    def _run_alone(self, job: _Job) -> None:
        request = job.request
        try:
            output = self.backend.generate([(request.study, request.prompt)], max_new_tokens=request.max_tokens,
                                           ignore_eos=request.ignore_eos)[0]
        except Exception as exc:  # noqa: BLE001 - this request's error, reported to its client
            job.future.set_exception(exc)
            return
        self.stats.note(1)
        job.future.set_result(output)
