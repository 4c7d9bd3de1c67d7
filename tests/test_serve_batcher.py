"""The dynamic batcher on its own: who shares a generate() call, with a backend that takes a known time."""

from __future__ import annotations

import threading
import time

from medvlm.records import ModelOutput, Study, StudyContext, StudyRef
from medvlm.serve.batcher import Batcher
from medvlm.serve.requests import ChatRequest


class SlowBackend:
    """Answers every study after `seconds`, remembering the size of each batch."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.sizes: list[int] = []
        self.lock = threading.Lock()

    def generate(self, batch, *, max_new_tokens, ignore_eos=False):
        with self.lock:
            self.sizes.append(len(batch))
        time.sleep(self.seconds)
        return [ModelOutput("No acute abnormality.", "complete", 3, 4) for _ in batch]


def _request(i: int) -> ChatRequest:
    return ChatRequest(study=Study(StudyRef(f"s{i}", f"s{i}", ()), (), StudyContext()), prompt=None, max_tokens=8)


def test_requests_sent_right_after_a_batch_ends_join_the_one_that_waited_during_it():
    """Steady state of a busy server: one request arrived while a batch ran; the clients of that batch
    send their next requests a moment after their answers. They must share one batch, not run as a
    batch of one followed by a batch of the rest."""
    backend = SlowBackend(0.6)
    batcher = Batcher(backend, batch_size=4, max_wait_s=0.3)
    try:
        first = batcher.submit(_request(0))
        time.sleep(0.45)  # past the first request's wait: its batch of one is running
        waiting = batcher.submit(_request(1))  # arrives while the first batch runs
        first.result(timeout=10)
        time.sleep(0.05)  # the client reads its answer, then sends three more
        later = [batcher.submit(_request(i)) for i in (2, 3, 4)]
        for future in [waiting, *later]:
            future.result(timeout=10)
    finally:
        batcher.close()
    assert backend.sizes == [1, 4]
    assert batcher.stats.sizes == {1: 1, 4: 1}


def test_a_lone_request_is_not_held_longer_than_the_wait():
    backend = SlowBackend(0.0)
    batcher = Batcher(backend, batch_size=8, max_wait_s=0.2)
    try:
        time.sleep(0.3)  # idle server: the grace after the previous batch has long passed
        started = time.monotonic()
        batcher.submit(_request(0)).result(timeout=10)
        waited = time.monotonic() - started
    finally:
        batcher.close()
    assert backend.sizes == [1]
    assert waited < 0.2 + 0.5  # at most the wait, plus scheduling slack on a loaded machine


def test_a_batch_waits_for_requests_still_being_read_beyond_the_short_wait():
    """Eight clients send at once; decoding their images takes longer than max_wait. The batch must
    not leave with the first one alone while the others are still being read."""
    backend = SlowBackend(0.0)
    batcher = Batcher(backend, batch_size=4, max_wait_s=0.05, max_arrival_s=5.0)
    futures = []

    def slow_client(i: int):
        with batcher.arriving():
            time.sleep(0.4)  # reading and decoding the request
            futures.append(batcher.submit(_request(i)))

    try:
        time.sleep(0.1)
        threads = [threading.Thread(target=slow_client, args=(i,)) for i in (1, 2, 3)]
        for t in threads:
            t.start()
        futures.append(batcher.submit(_request(0)))  # read quickly
        for t in threads:
            t.join(5)
        for future in list(futures):
            future.result(timeout=10)
    finally:
        batcher.close()
    assert backend.sizes == [4]


def test_a_request_that_never_finishes_arriving_holds_a_batch_at_most_max_arrival():
    backend = SlowBackend(0.0)
    batcher = Batcher(backend, batch_size=4, max_wait_s=0.05, max_arrival_s=0.5)
    release = threading.Event()

    def stuck_client():
        with batcher.arriving():
            release.wait(10)

    stuck = threading.Thread(target=stuck_client)
    try:
        time.sleep(0.1)
        stuck.start()
        started = time.monotonic()
        batcher.submit(_request(0)).result(timeout=10)
        waited = time.monotonic() - started
    finally:
        release.set()
        stuck.join(5)
        batcher.close()
    assert backend.sizes == [1]
    assert 0.3 < waited < 0.5 + 1.0
