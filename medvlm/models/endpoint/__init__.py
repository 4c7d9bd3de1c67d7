"""The OpenAI-compatible endpoint backend, registered as `endpoint` (httpx loads lazily).

`medvlm batch --endpoint URL [--model NAME]`: the model runs in a server (Ollama, llama.cpp's
llama-server, vLLM, `medvlm serve`); medvlm sends each study as one chat-completions request.
"""

from __future__ import annotations

from typing import Any, Mapping

from ...errors import ModelUnavailable
from ..base import Backend, LoadRequest
from .options import EndpointOptions


class EndpointKind:
    """Backend plugin for a model behind an OpenAI-compatible HTTP API."""

    name = "endpoint"
    requires = ("httpx",)

    def is_available(self) -> str | None:
        try:
            import httpx  # noqa: F401
        except ImportError:
            return "the endpoint backend needs httpx: pip install 'medvlm[endpoint]'"
        return None

    def check_options(self, options: Mapping[str, Any]) -> dict:
        values = dict(options)
        ignore_eos = values.pop("ignore_eos", False)
        if not isinstance(ignore_eos, bool):
            raise ModelUnavailable("endpoint option ignore_eos must be true or false")
        return {**EndpointOptions.from_mapping(values).as_dict(), "ignore_eos": ignore_eos}

    def _served(self, model: str, options: Mapping[str, Any]):
        from .backend import IGNORE_EOS_SERVERS
        from .client import discover

        values = self.check_options(options)
        ignore_eos = values.pop("ignore_eos")
        opts = EndpointOptions.from_mapping(values)
        served = discover(opts, model)
        if ignore_eos and served.owned_by not in IGNORE_EOS_SERVERS:
            known = ", ".join(IGNORE_EOS_SERVERS.values())
            server = f"a server whose models are owned_by {served.owned_by!r}" if served.owned_by else "this server"
            raise ModelUnavailable(
                f"--ignore-eos cannot be honoured by {server} at {opts.public_url} (known to support it: {known})."
            )
        return opts, served

    def identity(self, model: str, options: Mapping[str, Any]) -> dict:
        """Asks the server (GET /v1/models) which model it serves: unreachable or unknown -> ModelUnavailable."""
        from .backend import endpoint_identity

        opts, served = self._served(model, options)
        return endpoint_identity(opts, served)

    def load(self, request: LoadRequest) -> Backend:
        from .backend import EndpointBackend

        opts, served = self._served(request.model, request.options)
        return EndpointBackend(opts, served)


KIND = EndpointKind()
