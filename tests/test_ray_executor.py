"""`--executor ray` against real Ray on this machine: a local instance, a cluster started with
`ray start --head`, worker processes killed with SIGKILL, Ctrl-C on the driver.

Every Ray started here listens on the loopback address only (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
makes Ray use 127.0.0.1 as the node address) and is stopped by the test that started it: a local
instance by the executor's ray.shutdown(), the `ray start` cluster by killing the processes of its
own temp folder (never `ray stop`, which would stop every Ray on the machine).

Marked `ray` (CI installs the `ray` extra and runs `pytest -m ray`); the ones that start Ray are
also `slow`, so `make test` leaves them out.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # before Ray is imported: loopback only
ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'medvlm[ray]')")
psutil = pytest.importorskip("psutil")

from audit_support import attempts, make_png_studies, read_summary, sigint_as_in_a_terminal  # noqa: E402
from conftest import PROJECT, SAMPLE_STUDIES  # noqa: E402

from medvlm.audit.verify import verify_run  # noqa: E402
from medvlm.config import RunConfig  # noqa: E402
from medvlm.errors import UsageProblem  # noqa: E402
from medvlm.executors import get_executor  # noqa: E402
from medvlm.pipeline import run_batch  # noqa: E402

pytestmark = pytest.mark.ray
TESTS = Path(__file__).resolve().parent
ACTOR_BUSY = "ray::MapWorker(MapBatches(ModelActor)).submit"  # the title Ray gives an actor process running a batch


def _config(studies: Path, out: Path, executor: str = "local", **options) -> RunConfig:
    return RunConfig(studies=studies, out=out, modality="chest_xray", model="demo", max_new_tokens=12, batch_size=1,
                     write_pdf=False, executor=executor, executor_options=options)


def _readings(out: Path) -> dict[str, dict]:
    """Per study source: the model text, answer status, findings and risk grade of its report."""
    readings = {}
    for path in out.glob("*/report.json"):
        doc = json.loads(path.read_text())
        readings[doc["study"]["source"]] = {
            "text": doc["model_output"]["text"], "answer_status": doc["model_output"]["answer_status"],
            "findings": doc["findings"], "risk": doc["risk"],
        }
    return readings


def _once_each(out: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for record in attempts(out):
        counts[record["study_key"]] = counts.get(record["study_key"], 0) + 1
    return counts


def _run_end(out: Path) -> dict:
    return [json.loads(line) for line in (out / "ledger.jsonl").read_text().splitlines()][-1]


# -- options (Ray installed, nothing started) -------------------------------------------------------

def test_bad_worker_options_are_one_line_usage_errors():
    with pytest.raises(UsageProblem, match="--workers must be at least 1"):
        get_executor("ray", {"workers": 0})
    with pytest.raises(UsageProblem, match="--gpus-per-worker must be 0 or more"):
        get_executor("ray", {"gpus_per_worker": -1})
    with pytest.raises(UsageProblem, match="the ray executor has no option 'gpus'"):
        get_executor("ray", {"gpus": 1})
    assert not ray.is_initialized()


# -- a local instance ------------------------------------------------------------------------------

@pytest.mark.slow
def test_two_ray_workers_read_like_the_local_executor_and_runs_resume_across_executors(tmp_path, demo_model_dir):
    # --batch-size 1: which studies share a padded batch is Ray's choice (arrival order), and padding
    # may move greedy decoding of a random model; one study per generate() makes the texts comparable.
    local = run_batch(_config(SAMPLE_STUDIES, tmp_path / "local"))
    on_ray = run_batch(_config(SAMPLE_STUDIES, tmp_path / "ray", "ray", workers=2))
    assert not ray.is_initialized()  # the executor stopped the local instance it started
    assert local.count("ok") == on_ray.count("ok") == 6
    assert _readings(tmp_path / "ray") == _readings(tmp_path / "local")
    assert on_ray.stats["batches"] == 6 and on_ray.stats["model_loads"] <= 2  # one model per actor, not per batch
    for out in ("local", "ray"):
        result = verify_run(tmp_path / out)
        assert result.ok, result.problems
    # The executor is not part of the resume fingerprint: each run resumes with the other executor.
    assert _run_end(tmp_path / "local")["counts"] == _run_end(tmp_path / "ray")["counts"] == {"ok": 6}
    run_batch(_config(SAMPLE_STUDIES, tmp_path / "ray"))
    assert _run_end(tmp_path / "ray")["counts"] == {"resumed": 6}
    run_batch(_config(SAMPLE_STUDIES, tmp_path / "local", "ray", workers=1))
    assert _run_end(tmp_path / "local")["counts"] == {"resumed": 6}
    assert not ray.is_initialized()


@pytest.mark.slow
def test_a_worker_killed_mid_batch_loses_nothing_and_records_nothing_twice(tmp_path, demo_model_dir):
    studies = make_png_studies(tmp_path / "studies", 10)
    config = RunConfig(studies=studies, out=tmp_path / "out", model="demo", max_new_tokens=48, ignore_eos=True,
                       batch_size=2, write_pdf=False, executor="ray", executor_options={"workers": 2})
    killed: list[int] = []
    actors_before: set[int] = set()
    actors_after: set[int] = set()
    finished = threading.Event()

    def kill_a_busy_actor() -> None:
        """SIGKILL the first model actor of this process's own Ray seen running a batch; note the actors seen."""
        while not finished.wait(0.02):
            for proc in psutil.Process().children(recursive=True):
                try:
                    title = " ".join(proc.cmdline())
                except psutil.Error:
                    continue
                if not title.startswith(ACTOR_BUSY.rsplit(".", 1)[0]):
                    continue
                (actors_after if killed else actors_before).add(proc.pid)
                if not killed and title.startswith(ACTOR_BUSY):
                    os.kill(proc.pid, signal.SIGKILL)
                    killed.append(proc.pid)

    killer = threading.Thread(target=kill_a_busy_actor, daemon=True)
    killer.start()
    try:
        result = run_batch(config)
    finally:
        finished.set()
        killer.join()
    assert killed, "no model actor was seen running a batch"
    assert actors_after - actors_before, "Ray did not restart the killed actor"
    assert result.count("ok") == 10
    assert sorted(_once_each(tmp_path / "out").values()) == [1] * 10  # every study recorded exactly once
    assert len(read_summary(tmp_path / "out")) == 10
    check = verify_run(tmp_path / "out")
    assert check.ok, check.problems


@pytest.mark.slow
def test_a_model_the_workers_cannot_load_stops_the_run_with_one_line(tmp_path, demo_model_dir, monkeypatch):
    monkeypatch.setenv("MEDVLM_MEMORY_LIMIT_BYTES", "1000")  # the workers inherit it: every load is refused
    with pytest.raises(UsageProblem, match=r"^model 'demo' needs about .* GB.*\(MEDVLM_MEMORY_LIMIT_BYTES\)"):
        run_batch(_config(SAMPLE_STUDIES, tmp_path / "out", "ray", workers=1))
    assert not ray.is_initialized()
    assert attempts(tmp_path / "out") == []  # nothing recorded: the same command runs again once memory allows
    assert _run_end(tmp_path / "out")["completed"] is False


@pytest.fixture
def crash_plugin(tmp_path, monkeypatch):
    """The crash backend installed as a third-party plugin: an entry point every Ray worker can see too."""
    site = tmp_path / "site"
    dist = site / "medvlm_test_plugins-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: medvlm-test-plugins\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[medvlm.backends]\ncrash = plugins.crash_backend:KIND\n")
    path = os.pathsep.join([str(site), str(TESTS), str(PROJECT), os.environ.get("PYTHONPATH", "")])
    monkeypatch.setenv("PYTHONPATH", path.rstrip(os.pathsep))  # Ray's workers inherit it
    monkeypatch.syspath_prepend(str(site))
    return "crash"


@pytest.mark.slow
def test_a_study_that_kills_its_worker_every_time_becomes_one_error_row(tmp_path, crash_plugin):
    studies = make_png_studies(tmp_path / "studies", 5)
    (studies / "cxr-02.png").rename(studies / "poison-02.png")
    config = RunConfig(studies=studies, out=tmp_path / "out", model="crash-1", backend=crash_plugin, batch_size=2,
                       write_pdf=False, executor="ray", executor_options={"workers": 2})
    result = run_batch(config)
    rows = {Path(r["source"]).stem: r for r in read_summary(tmp_path / "out")}
    assert {k: r["status"] for k, r in rows.items()} == {
        "cxr-00": "ok", "cxr-01": "ok", "poison-02": "error", "cxr-03": "ok", "cxr-04": "ok"}
    poison = rows["poison-02"]
    assert poison["stage"] == "worker"
    assert poison["reason"].startswith("its Ray worker process died on each of 5 tries (last error from Ray: ")
    assert "\n" not in poison["reason"]
    assert result.stats["lost_studies_retried"] >= 1  # the lost batch was tried again one study at a time
    assert sorted(_once_each(tmp_path / "out").values()) == [1] * 5
    check = verify_run(tmp_path / "out")
    assert check.ok, check.problems


# -- the command line: a real cluster, Ctrl-C ----------------------------------------------------

def _cli_env(**extra: str) -> dict:
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT), os.environ.get("PYTHONPATH", "")) if p)
    return env


def _stop_processes_of(marker: str) -> None:
    """Kill every process whose command line names `marker` (the cluster's own temp folder), and their children."""
    procs = set()
    for proc in psutil.process_iter(["cmdline"]):
        if any(marker in arg for arg in proc.info["cmdline"] or []):
            procs.add(proc)
            try:
                procs.update(proc.children(recursive=True))
            except psutil.Error:
                pass
    for proc in procs:
        try:
            proc.send_signal(signal.SIGTERM)
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(list(procs), timeout=10)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass


@pytest.fixture
def ray_cluster():
    """`ray start --head` on 127.0.0.1 with its own temp folder and auth token; yields (address, the
    environment a driver needs: RAY_AUTH_MODE=token and the token's path); stopped afterwards."""
    temp = Path(tempfile.mkdtemp(prefix="medvlm-ray-", dir="/tmp"))  # short: Ray's socket paths must fit
    ray_cli = Path(sys.executable).with_name("ray")
    token = temp / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env = _cli_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    env.pop("MEDVLM_CPU_VISION_DTYPE", None)  # the cluster's own processes never have it (see the test below)
    try:
        start = subprocess.run(
            [str(ray_cli), "start", "--head", "--node-ip-address=127.0.0.1", "--port=0", "--num-cpus=3",
             "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}"],
            env=env, capture_output=True, text=True, timeout=120,
        )
        assert start.returncode == 0, start.stdout + start.stderr
        address = (temp / "ray_current_cluster").read_text().strip()
        assert address.startswith("127.0.0.1:")
        yield address, env
    finally:
        _stop_processes_of(str(temp))
        subprocess.run(["rm", "-rf", str(temp)], check=False)


@pytest.mark.slow
def test_batch_connects_to_a_ray_start_cluster_with_ray_address(tmp_path, demo_model_dir, ray_cluster):
    """Also: a backend setting set on the driver only (the vision tower's dtype, the opposite of what this
    CPU's `auto` gives) reaches the workers of a cluster started without it, and the run records it."""
    from medvlm.models.hf.options import cpu_bf16_in_hardware

    address, env = ray_cluster
    forced = "float32" if cpu_bf16_in_hardware() else "bfloat16"
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "medvlm", "batch", str(SAMPLE_STUDIES), "--model", "demo", "--out", str(out),
           "--max-new-tokens", "12", "--no-pdf", "--batch-size", "2",
           "--executor", "ray", "--ray-address", address, "--workers", "2"]
    done = subprocess.run(cmd, env=dict(env, MEDVLM_CPU_VISION_DTYPE=forced), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "6 ok, 0 failed, 0 skipped ->" in done.stdout
    assert "6/6" in done.stderr  # the progress bar counted every study
    assert "Traceback" not in done.stderr
    check = verify_run(out)
    assert check.ok, check.problems
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["executor"] == "ray" and run["config"]["executor_options"]["address"] == address
    assert run["model"]["model"]["name"] == "demo"  # the loaded model, reported back from a worker
    tower = {"float32": "vision tower fp32", "bfloat16": "vision tower bf16"}[forced]
    assert tower in run["model"]["quantization"]
    assert run["model"]["model"]["identity"].get("vision_dtype") == (forced if forced == "float32" else None)
    for report in out.glob("*/report.json"):
        assert tower in json.loads(report.read_text())["provenance"]["quantization"]


@pytest.mark.slow
def test_ctrl_c_stops_the_ray_batch_and_the_run_resumes(tmp_path, demo_model_dir):
    studies = make_png_studies(tmp_path / "studies", 12)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "medvlm", "batch", str(studies), "--model", "demo", "--out", str(out),
           "--max-new-tokens", "48", "--ignore-eos", "--no-pdf", "--batch-size", "2", "--executor", "ray",
           "--workers", "2"]
    proc = subprocess.Popen(cmd, env=_cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True,  # its own process group, like a terminal's job
                            preexec_fn=sigint_as_in_a_terminal)
    try:
        deadline = time.monotonic() + 180
        while len(attempts(out)) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert proc.poll() is None, "the batch ended before it could be interrupted"
        ray_procs = psutil.Process(proc.pid).children(recursive=True)  # its local Ray: gcs, raylet, workers
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal signals the whole foreground group
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, stderr
    done_before = len(attempts(out))
    assert 2 <= done_before < 12
    assert _run_end(out)["completed"] is False
    _, alive = psutil.wait_procs(ray_procs, timeout=20)
    assert not alive, f"Ray processes left running after Ctrl-C: {alive}"
    # The local executor picks the run up where Ray left it.
    result = run_batch(RunConfig(studies=studies, out=out, model="demo", max_new_tokens=48, ignore_eos=True,
                                 batch_size=2, write_pdf=False))
    assert result.count("ok") == 12
    assert _run_end(out)["counts"] == {"ok": 12 - done_before, "resumed": done_before}
    assert sorted(_once_each(out).values()) == [1] * 12
    check = verify_run(out)
    assert check.ok, check.problems
