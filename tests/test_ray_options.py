"""`--executor ray` usage errors that need no Ray: missing Ray, Ray-only options, unknown executors.

Run as a user would (a subprocess on `python -m medvlm`); the missing-Ray case hides an installed
Ray from that process the way an absent package looks to Python (`sys.modules['ray'] = None`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parent.parent
SAMPLE_STUDIES = PROJECT / "sample_data" / "studies"


def _medvlm(*args: str, hide_ray: bool = False) -> subprocess.CompletedProcess:
    code = "import sys\n"
    if hide_ray:
        code += "sys.modules['ray'] = None  # `import ray` now fails as if Ray were not installed\n"
    code += f"sys.argv = ['medvlm', *{list(args)!r}]\nfrom medvlm.cli import main\nmain()\n"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(PROJECT), os.environ.get("PYTHONPATH")) if p))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def _one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    return " ".join(lines[0].split())


def test_executor_ray_without_ray_says_how_to_install_it(tmp_path):
    out = tmp_path / "out"
    proc = _medvlm("batch", str(SAMPLE_STUDIES), "--model", "demo", "--out", str(out), "--executor", "ray",
                   hide_ray=True)
    line = _one_line_error(proc)
    assert line == "error: --executor ray needs Ray, which is not installed: pip install 'medvlm[ray]'"
    assert not out.exists()  # nothing written before the run could start


def test_the_local_executor_does_not_need_ray(tmp_path):
    from medvlm.executors import get_executor

    assert get_executor("local").identity(None) is None
    import importlib

    script = "import sys; sys.modules['ray'] = None; import medvlm.executors.ray, medvlm.pipeline, medvlm.cli"
    assert subprocess.run([sys.executable, "-c", script], env=dict(os.environ, PYTHONPATH=str(PROJECT)),
                          timeout=60).returncode == 0  # importing the plugin never imports Ray
    assert importlib.util.find_spec("medvlm.executors.ray") is not None


@pytest.mark.parametrize("option", [["--workers", "2"], ["--ray-address", "auto"], ["--gpus-per-worker", "1"]])
def test_ray_options_need_executor_ray(tmp_path, option):
    line = _one_line_error(_medvlm("batch", str(SAMPLE_STUDIES), "--model", "demo", "--out", str(tmp_path / "o"),
                                   *option))
    assert line == "error: --ray-address, --workers, --gpus-per-worker and --cpus-per-worker need --executor ray"


def test_unknown_executor_is_a_usage_error(tmp_path):
    line = _one_line_error(_medvlm("batch", str(SAMPLE_STUDIES), "--model", "demo", "--out", str(tmp_path / "o"),
                                   "--executor", "dask"))
    assert line == "error: unknown executor 'dask'; available: local, ray"


def test_the_hf_backend_names_its_settings_variables_as_its_modules_spell_them():
    """What a Ray driver forwards to its workers is exactly the switches the HF backend reads."""
    from medvlm.models.hf import KIND, cpu_attention, cpu_mlp, int8, kv_cache, options, streamed_load

    assert set(KIND.settings_env) == {options.CPU_VISION_DTYPE_ENV, cpu_attention.CPU_ATTENTION_ENV,
                                      cpu_mlp.CPU_MLP_ENV, kv_cache.KV_CACHE_ENV, int8.MALLOC_REUSE_ENV,
                                      streamed_load.STREAMED_LOAD_ENV}


def test_forwarded_settings_are_the_set_ones_and_never_a_secret(monkeypatch):
    from medvlm.executors.ray.driver import forwarded_settings

    monkeypatch.setenv("MEDVLM_CPU_VISION_DTYPE", "float32")
    monkeypatch.delenv("MEDVLM_CPU_MLP", raising=False)
    monkeypatch.setenv("MEDVLM_API_KEY", "sk-not-forwarded")
    assert forwarded_settings("hf") == {"MEDVLM_CPU_VISION_DTYPE": "float32"}
    assert forwarded_settings("endpoint") == {}  # a backend without settings variables forwards nothing


def test_a_node_that_resolves_the_model_differently_is_told_what_differs_and_how_to_align_it():
    from medvlm.executors.ray.worker import identity_mismatch

    run = {"backend": "hf", "device": "cpu", "dtype": "float32", "quant": "int8"}
    line = identity_mismatch("node-b", dict(run, vision_dtype="float32"), run, "hf")
    assert "\n" not in line
    assert line.startswith("worker node-b resolves the model differently from the run (vision_dtype float32 where "
                           "the run has (unset));")
    assert "MEDVLM_CPU_VISION_DTYPE" in line and "forwards them to every worker" in line
