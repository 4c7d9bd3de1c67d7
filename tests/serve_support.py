"""Real `medvlm serve` processes for tests: loopback, a free port, bounded start-up, always stopped."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

READY = re.compile(r"ready at (http://127\.0\.0\.1:(\d+)/v1)")
START_TIMEOUT_S = 240  # torch import + model load on a busy 2-core machine


class ServeProcess:
    """A running `medvlm serve`, its URL, and everything it printed so far."""

    def __init__(self, args: list[str], env: dict | None = None):
        self.args = args
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "medvlm", "serve", *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env or dict(os.environ),
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.url = self._wait_ready()
        self.port = int(self.url.rsplit(":", 1)[1].split("/")[0])

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def _wait_ready(self) -> str:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            for line in list(self.lines):
                match = READY.search(line)
                if match:
                    return match.group(1)
            if self.proc.poll() is not None:
                time.sleep(0.2)
                raise RuntimeError(f"medvlm serve exited {self.proc.returncode}: {self.output()[-2000:]}")
            time.sleep(0.2)
        self.kill()
        raise RuntimeError(f"medvlm serve not ready within {START_TIMEOUT_S} s: {self.output()[-2000:]}")

    def output(self) -> str:
        return "\n".join(self.lines)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 120) -> int:
        """Signal the server and wait for it (SIGKILL if it will not stop)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        self._reader.join(10)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


@contextmanager
def serving(*args: str, env: dict | None = None):
    server = ServeProcess(list(args), env)
    try:
        yield server
    finally:
        server.kill()


def server_env(api_key: str | None = None) -> dict:
    env = dict(os.environ)
    env.pop("OPENAI_API_KEY", None)
    env.pop("MEDVLM_API_KEY", None)
    if api_key:
        env["MEDVLM_API_KEY"] = api_key
    return env


def files_containing(root: Path, needle: str) -> list[str]:
    """Every file under root whose bytes contain needle (reports, ledger, PDFs, summaries, run.json, keys...)."""
    hits = []
    data = needle.encode()
    for path in sorted(Path(root).rglob("*")):
        if path.is_file() and data in path.read_bytes():
            hits.append(str(path.relative_to(root)))
    return hits
