"""The in-process transformers backend, registered as `hf` (torch and transformers load lazily)."""

from __future__ import annotations

from typing import Any, Mapping

from ..base import Backend, LoadRequest
from .options import HFOptions, resolve_options


class HFKind:
    """Backend plugin for any Hugging Face VLM directory, hub id or preset."""

    name = "hf"
    requires = ("torch", "transformers")
    # The switches of options.py, cpu_attention.py, cpu_mlp.py, kv_cache.py, int8.py and streamed_load.py
    # (spelled out here so that reading them imports no torch; a test checks they match those modules' constants).
    settings_env = ("MEDVLM_CPU_VISION_DTYPE", "MEDVLM_CPU_ATTENTION", "MEDVLM_CPU_MLP", "MEDVLM_CPU_KV_CACHE",
                    "MEDVLM_MALLOC_REUSE", "MEDVLM_STREAMED_LOAD")

    def is_available(self) -> str | None:
        try:
            import torch  # noqa: F401
            import transformers  # noqa: F401
        except ImportError as exc:
            return f"the transformers backend needs torch and transformers ({exc.name} is missing): pip install medvlm"
        return None

    def check_options(self, options: Mapping[str, Any]) -> dict:
        return HFOptions.from_mapping(dict(options)).as_dict()

    def identity(self, model: str, options: Mapping[str, Any]) -> dict:
        from ..registry import model_type_of
        from .identity import hf_identity

        model_type = model_type_of(model)
        return hf_identity(model, resolve_options(HFOptions.from_mapping(dict(options)), model_type), model_type)

    def auto_batch_size(self, model: str, options: Mapping[str, Any], *, max_new_tokens: int,
                        images_per_study: int, studies: int):
        """`--batch-size auto`: from the memory estimate (config + safetensors headers) and the resolved device."""
        from ..memory import auto_batch_size
        from ..registry import model_type_of, resolve

        resolved = resolve(model)
        local_dir = resolved.local_dir
        if resolved.random:
            from ..demo import BENCH_SPEC, DEMO_SPEC, ensure_random_model

            local_dir = ensure_random_model(DEMO_SPEC if resolved.random == "demo" else BENCH_SPEC)
        opts = resolve_options(HFOptions.from_mapping(dict(options)), model_type_of(model))
        return auto_batch_size(local_dir, dtype=opts.dtype, quant=opts.quant, device=opts.device,
                               max_new_tokens=max_new_tokens, images_per_study=images_per_study, studies=studies)

    def load(self, request: LoadRequest) -> Backend:
        from .backend import HFBackend

        opts = HFOptions.from_mapping(dict(request.options))
        return HFBackend(
            request.model, device=opts.device, dtype=opts.dtype, quant=opts.quant, batch_size=request.batch_size,
            max_new_tokens=request.max_new_tokens, images_per_study=request.images_per_study,
            check_memory=request.check_memory,
        )


KIND = HFKind()
