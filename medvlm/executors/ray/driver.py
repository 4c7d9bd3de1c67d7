"""The Ray executor's driver side: connect, build the Ray Data pipeline, stream results to the single writer.

Pipeline (one Ray Data dataset per pass):
  from_items(StudyRefs) -> map_batches(decode_batch)  tasks: decode + prompt (stages.prepare)
                        -> map_batches(ModelActor)    actor pool, one model each: preprocess + generate
                                                      (`--batch-size` studies per generate(), model_stage())
                        -> map_batches(finish_batch)  tasks: findings, grade, report rendered to bytes
                        -> iter_rows() on the driver  sink.emit(): files, ledger, summary (RunWriter)

Faults: a model actor whose process dies is restarted by Ray (max_restarts=-1) and its batch is
retried on it, at most TRIES_IN_BATCH times; a batch that still fails is dropped by Ray Data
(max_errored_blocks=-1) instead of failing the run. The driver knows which studies came back, so
the lost ones are run again one study per batch (TRIES_ALONE tries): the innocent ones finish, and
a study that kills its worker every time becomes an error row naming the cause. A key already
recorded is never recorded again.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

from ... import __version__, stages
from ...config import RunConfig
from ...errors import UsageProblem, first_line, one_line
from ...models.base import ModelInfo
from ...records import StudyError, StudyRef
from ..base import BatchJob, ResultSink, add
from ..local import STAGE_STATS
from .worker import ModelActor, WorkerSpec, decode_batch, finish_batch, pack, resolve_identity

INSTALL_HINT = "--executor ray needs Ray, which is not installed: pip install 'medvlm[ray]'"
TRIES_IN_BATCH = 3  # a batch whose worker died is retried on a restarted actor, up to this many tries in all
TRIES_ALONE = 2  # then every study it held is tried in a batch of its own this many times
MAX_INPUT_BLOCKS = 2000  # studies are spread over at most this many Ray Data blocks (one per study below it)
FLUSH_EVERY_S = 5.0  # summary.csv is rewritten at most this often while results stream in
LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": a local Ray instance uses the loopback address

log = logging.getLogger("medvlm.executors.ray")


def forwarded_settings(backend: str) -> dict[str, str]:
    """The backend's settings variables (`settings_env`) that are set here, for the workers' environment."""
    from ...models.backends import settings_env

    return {name: os.environ[name] for name in settings_env(backend) if name in os.environ}


def import_ray():
    """The `ray` module with Ray Data, or a UsageProblem saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise UsageProblem(INSTALL_HINT) from None
    return ray


def local_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def absolute(config: RunConfig) -> RunConfig:
    """The config with every path absolute: Ray workers do not share the driver's working directory."""
    def fix(path):
        return None if path is None else Path(path).resolve()

    return replace(config, studies=fix(config.studies), out=fix(config.out), prompt_file=fix(config.prompt_file),
                   vocab_file=fix(config.vocab_file), rules_file=fix(config.rules_file))


class LostBlocks(logging.Handler):
    """Collects the errors Ray Data logs when it drops a batch whose retries ran out."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.causes: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None:
            text = re.sub(r"\b[0-9a-f]{16,}\b", "…", one_line(exc))  # Ray's long actor/worker ids say nothing here
            self.causes.append(text[:300])


@contextmanager
def ray_data_session() -> Iterator[LostBlocks]:
    """Ray Data set up for medvlm while a run lasts: no progress bars or console logs of its own (the CLI
    has its progress bar), dropped batches tolerated and their causes collected."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    saved = {"enable_progress_bars": ctx.enable_progress_bars, "max_errored_blocks": ctx.max_errored_blocks}
    ctx.enable_progress_bars = False
    ctx.max_errored_blocks = -1
    logger = logging.getLogger("ray.data")
    consoles = [h for h in logger.handlers if not isinstance(h, logging.FileHandler)]
    levels = [h.level for h in consoles]
    for handler in consoles:
        handler.setLevel(logging.CRITICAL + 1)  # Ray Data's own log file keeps everything
    lost = LostBlocks()
    logger.addHandler(lost)
    try:
        yield lost
    finally:
        logger.removeHandler(lost)
        for handler, level in zip(consoles, levels):
            handler.setLevel(level)
        for name, value in saved.items():
            setattr(ctx, name, value)


class RayExecutor:
    """`--executor ray`: decode and render as Ray tasks, the model in an actor pool, the driver writes."""

    name = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None, gpus_per_worker: float = 0.0,
                 cpus_per_worker: float = 1.0):
        if workers is not None and workers < 1:
            raise UsageProblem(f"--workers must be at least 1 (got {workers})")
        if gpus_per_worker < 0:
            raise UsageProblem(f"--gpus-per-worker must be 0 or more (got {gpus_per_worker})")
        if cpus_per_worker <= 0:
            raise UsageProblem(f"--cpus-per-worker must be more than 0 (got {cpus_per_worker})")
        self.address = address or None
        self.workers = workers
        self.gpus = float(gpus_per_worker)
        self.cpus = float(cpus_per_worker)
        if self.address is None and "ray" not in sys.modules:
            # A local instance serves this process only, so it listens on the loopback address.
            os.environ.setdefault(LOCAL_ONLY_ENV, "0")
        self.ray = import_ray()
        self._owns_ray = False
        self._identity: dict | None = None
        self.stats: dict[str, float] = {}

    # -- cluster ----------------------------------------------------------------------------------

    def _connect(self, backend: str):
        ray = self.ray
        if ray.is_initialized():
            return ray
        t0 = time.perf_counter()
        quiet = {"log_to_driver": False, "logging_level": logging.ERROR, "include_dashboard": False}
        forwarded = forwarded_settings(backend)
        if forwarded:  # the job's workers on every node load the model as this driver's settings say
            quiet["runtime_env"] = {"env_vars": forwarded}
        try:
            if self.address is None:
                need = (self.workers or 1) * self.cpus + 1  # + 1 CPU for the decode and render tasks
                ray.init(address="local", num_cpus=max(local_cpus(), int(need + 0.999)), **quiet)
            else:
                ray.init(address=self.address, **quiet)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = self.address or "a local Ray instance"
            hint = ""
            if self.address is not None and not os.environ.get("RAY_AUTH_MODE"):
                hint = (" (a cluster with token authentication needs RAY_AUTH_MODE=token and its token in "
                        "~/.ray/auth_token, RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH)")
            raise UsageProblem(f"cannot connect to {where}: {first_line(exc)}{hint}") from None
        self._owns_ray = True
        self.stats["ray_connect_s"] = time.perf_counter() - t0
        return ray

    def _shutdown(self) -> None:
        if self._owns_ray and self.ray.is_initialized():
            self.ray.shutdown()
        self._owns_ray = False

    def _pool_size(self) -> int:
        """Model actors to start: --workers, else one per `--gpus-per-worker` GPUs of the cluster (1 on CPUs)."""
        resources = self.ray.cluster_resources()
        gpus, cpus = resources.get("GPU", 0.0), resources.get("CPU", 0.0)
        where = self.address or "the local Ray instance"
        if self.gpus > 0 and gpus < self.gpus:
            raise UsageProblem(f"--gpus-per-worker {self.gpus:g} but {where} has {gpus:g} GPUs")
        if self.gpus == 0 and gpus > 0:
            log.warning("the Ray cluster has %g GPUs but --gpus-per-worker is 0: the model runs on CPUs", gpus)
        workers = self.workers or (int(gpus // self.gpus) if self.gpus > 0 else 1)
        if workers * self.cpus > cpus:
            raise UsageProblem(f"{workers} workers x {self.cpus:g} CPUs do not fit in {where} ({cpus:g} CPUs); "
                               "use fewer --workers or a smaller --cpus-per-worker")
        if self.gpus > 0 and workers * self.gpus > gpus:
            raise UsageProblem(f"{workers} workers x {self.gpus:g} GPUs do not fit in {where} ({gpus:g} GPUs)")
        return workers

    def identity(self, config: RunConfig) -> dict:
        """The model identity as a worker with the model actors' resources resolves it (its GPU, not ours)."""
        ray = self._connect(config.backend)
        self._pool_size()  # a pool that can never start fails here, before the run is opened
        t0 = time.perf_counter()
        task = ray.remote(resolve_identity).options(num_cpus=min(self.cpus, 1.0), num_gpus=self.gpus or None,
                                                    max_retries=TRIES_IN_BATCH - 1)
        try:
            self._identity = ray.get(task.remote(config.backend, config.model, dict(config.backend_options)))
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause if getattr(exc, "cause", None) is not None else exc
            text = first_line(cause) if isinstance(cause, UsageProblem) else one_line(cause)
            raise UsageProblem(f"on a Ray worker: {text}") from None
        except ray.exceptions.RayError as exc:
            raise UsageProblem(f"a Ray worker could not resolve the model: {one_line(exc)[:300]}") from None
        self.stats["ray_identity_s"] = time.perf_counter() - t0
        return self._identity

    # -- the run ----------------------------------------------------------------------------------

    def run(self, job: BatchJob, refs: list[StudyRef], sink: ResultSink) -> ModelInfo | None:
        if job.backend is not None:
            raise UsageProblem("the ray executor loads the model in its own workers; a backend loaded in this "
                               "process can only be used with the local executor")
        try:
            if not refs:
                return None
            self._connect(job.config.backend)
            workers = self._pool_size()
            config = absolute(job.config)
            spec = WorkerSpec(config, self._identity, __version__, job.resources.hashes(config.modality))
            return self._run_passes(job, refs, sink, spec, workers)
        finally:
            add(job.stats, **self.stats)
            self._shutdown()  # also on Ctrl-C: the workers stop, what was recorded stays (resumable)

    def _run_passes(self, job: BatchJob, refs: list[StudyRef], sink: ResultSink, spec: WorkerSpec,
                    workers: int) -> ModelInfo | None:
        pending: dict[str, StudyRef] = {ref.key: ref for ref in refs}
        tries: dict[str, int] = {}
        info: ModelInfo | None = None
        last_flush = time.monotonic()
        t0 = time.perf_counter()
        with ray_data_session() as lost:
            for batch_size, attempts in ((max(1, job.config.batch_size), TRIES_IN_BATCH), (1, TRIES_ALONE)):
                todo = [ref for ref in refs if ref.key in pending]
                if not todo:
                    break
                if tries:
                    add(job.stats, lost_studies_retried=len(todo))
                pool = min(workers, -(-len(todo) // batch_size))  # no actor that could never get a batch
                for row in self._dataset(todo, spec, pool, batch_size, attempts).iter_rows():
                    model = self._take(row, pending, sink, job.stats)
                    info = model or info
                    job.stats.setdefault("first_result_s", time.perf_counter() - t0)
                    if time.monotonic() - last_flush >= FLUSH_EVERY_S:
                        sink.flush()
                        last_flush = time.monotonic()
                for key in pending:
                    tries[key] = tries.get(key, 0) + attempts
            cause = lost.causes[-1] if lost.causes else "Ray reported no cause"
            for ref in [r for r in refs if r.key in pending]:
                reason = f"its Ray worker process died on each of {tries[ref.key]} tries (last error from Ray: {cause})"
                sink.emit(stages.error_result(StudyError(ref, "worker", reason)))
                del pending[ref.key]
        sink.flush()
        return info

    def _take(self, row: dict, pending: dict[str, StudyRef], sink: ResultSink, stats: dict) -> ModelInfo | None:
        """Hand one streamed result to the single writer (once per study); a `fatal` row ends the run."""
        key, kind, payload = str(row["key"]), str(row["kind"]), pickle.loads(bytes(row["blob"]))
        if kind == "fatal":
            raise UsageProblem(payload)
        if kind != "result":
            raise RuntimeError(f"the Ray pipeline returned a {kind!r} row for {key}")
        result, info, batch_stats = payload
        if key not in pending:
            add(stats, duplicate_results=1)  # Ray delivered a retried batch's result twice: keep the first
            return info
        del pending[key]
        add(stats, **batch_stats)
        add(stats, **{f"{s}_s": result.timings.get(s, 0.0) for s in STAGE_STATS})
        t0 = time.perf_counter()
        sink.emit(result)
        add(stats, writer_s=time.perf_counter() - t0)  # the single writer's cost per study (files, ledger)
        return info

    def _dataset(self, refs: list[StudyRef], spec: WorkerSpec, workers: int, batch_size: int, attempts: int):
        """decode tasks -> model actor pool -> finish tasks, over `refs` (built lazily; runs when iterated)."""
        ray = self.ray
        from ray.data import ActorPoolStrategy

        pool = ActorPoolStrategy(size=workers, max_tasks_in_flight_per_actor=2, **_overlap_options(ActorPoolStrategy))
        with warnings.catch_warnings():
            # max_restarts/max_task_retries have no named parameter in map_batches (Ray 2.60 warns on them).
            warnings.simplefilter("ignore", DeprecationWarning)
            ds = ray.data.from_items([pack(r.key, "ref", r) for r in refs],
                                     override_num_blocks=min(len(refs), MAX_INPUT_BLOCKS))
            ds = ds.map_batches(decode_batch, fn_kwargs={"spec": spec}, batch_size=1, max_retries=attempts - 1)
            ds = ds.map_batches(ModelActor, fn_constructor_kwargs={"spec": spec}, batch_size=batch_size, compute=pool,
                                num_cpus=self.cpus, num_gpus=self.gpus or None, max_restarts=-1,
                                max_task_retries=attempts - 1)
            ds = ds.map_batches(finish_batch, fn_kwargs={"spec": spec}, batch_size=1, max_retries=attempts - 1)
        return ds


def _overlap_options(strategy_cls) -> dict[str, Any]:
    """Two calls per actor with the UDF itself concurrent (preprocess overlaps generate), where Ray has it."""
    import inspect

    params = inspect.signature(strategy_cls).parameters
    if "enable_true_multi_threading" in params and "max_concurrent_calls_per_actor" in params:
        return {"max_concurrent_calls_per_actor": 2, "enable_true_multi_threading": True}
    return {}
