"""A backend plugin whose process dies (SIGKILL, as the OOM killer or a segfaulting kernel would) on any
study whose source names 'poison', and answers every other study like the echo backend.

Installed through a `medvlm.backends` entry point (see test_ray_executor.py), so Ray worker processes
find it the way they would find any third-party backend.
"""

from __future__ import annotations

import os
import signal
from typing import Any, Mapping

from medvlm.models.base import LoadRequest, ModelInfo

from .echo_backend import EchoBackend, EchoKind


class CrashBackend(EchoBackend):
    def __init__(self, model: str, options: dict):
        super().__init__(model, options)
        self.info = ModelInfo(**{**self.info.__dict__, "backend": "crash", "identity": KIND.identity(model, options)})

    def generate(self, batch, *, max_new_tokens, ignore_eos=False):
        if any("poison" in study.ref.source for study, _prompt in batch):
            os.kill(os.getpid(), signal.SIGKILL)
        return super().generate(batch, max_new_tokens=max_new_tokens, ignore_eos=ignore_eos)


class CrashKind(EchoKind):
    name = "crash"

    def identity(self, model: str, options: Mapping[str, Any]) -> dict:
        return {**super().identity(model, options), "backend": "crash"}

    def load(self, request: LoadRequest) -> CrashBackend:
        return CrashBackend(request.model, self.check_options(request.options))


KIND = CrashKind()
