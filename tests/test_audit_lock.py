"""Two batches on one output folder: the second one says so in one line and exits 2."""

from __future__ import annotations

import subprocess
import sys
import time

from audit_support import batch_args, make_png_studies, run_medvlm

HOLDER = """
import sys, time
from pathlib import Path
from medvlm.audit.run import open_run
from medvlm.config import RunConfig
config = RunConfig(studies=Path(sys.argv[1]), out=Path(sys.argv[2]), model="demo", max_new_tokens=8, write_pdf=False)
with open_run(Path(sys.argv[2]), config):
    print("holding", flush=True)
    time.sleep(120)
"""


def test_second_batch_on_the_same_folder_is_refused(tmp_path, demo_model_dir):
    studies = make_png_studies(tmp_path / "studies", 2)
    out = tmp_path / "out"
    out.mkdir()
    # Process 1 opens the run exactly as `medvlm batch` does and keeps it open.
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(studies), str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        t0 = time.monotonic()
        second = run_medvlm(*batch_args(studies, out))
        assert second.returncode == 2, second.stderr
        lines = [ln for ln in second.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and "another medvlm batch is writing to" in lines[0], second.stderr
        assert f"pid {holder.pid}" in lines[0]
        assert time.monotonic() - t0 < 60  # refused before the model is loaded
        assert not any(out.glob("*/report.json"))
    finally:
        holder.kill()
        holder.wait()
    # The lock dies with its process (flock): the folder is usable again at once.
    again = run_medvlm(*batch_args(studies, out))
    assert again.returncode == 0, again.stderr[-2000:]
