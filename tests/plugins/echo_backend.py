"""A second backend written as a plugin would be: one module with a KIND, no edits to medvlm's stages.

It answers every study with a fixed radiology sentence that names how many images it received, so
tests can see that the pipeline handed it the right batch.
"""

from __future__ import annotations

from typing import Any, Mapping

from medvlm.errors import ModelUnavailable
from medvlm.models.base import BackendBase, LoadRequest, ModelInfo
from medvlm.records import ModelOutput


class EchoBackend(BackendBase):
    def __init__(self, model: str, options: dict):
        self.options = options
        self.batches: list[int] = []
        self.info = ModelInfo(
            name=model, source="tests/plugins/echo_backend.py", local_dir=None, revision=None, random_weights=False,
            dtype="none", quantization="none", device="none", backend="echo",
            identity=EchoKind().identity(model, options),
        )

    def generate(self, batch, *, max_new_tokens, ignore_eos=False):
        self.batches.append(len(batch))
        return [
            ModelOutput(f"{self.options['sentence']} ({len(study.images)} image(s)).", "complete", 5, 7)
            for study, _prompt in batch
        ]


class EchoKind:
    name = "echo"
    requires = ()

    def is_available(self) -> str | None:
        return None

    def check_options(self, options: Mapping[str, Any]) -> dict:
        unknown = set(options) - {"sentence"}
        if unknown:
            raise ModelUnavailable(f"the echo backend has no option {sorted(unknown)[0]!r}")
        return {"sentence": options.get("sentence", "No acute cardiopulmonary abnormality")}

    def identity(self, model: str, options: Mapping[str, Any]) -> dict:
        return {"backend": "echo", "model": model, "sentence": self.check_options(options)["sentence"]}

    def load(self, request: LoadRequest) -> EchoBackend:
        return EchoBackend(request.model, self.check_options(request.options))


KIND = EchoKind()
