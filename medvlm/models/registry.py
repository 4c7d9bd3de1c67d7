"""Named model presets and how a model name or path resolves to a local directory."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelUnavailable, first_line

DEFAULT_MODEL = "medgemma-4b"


@dataclass(frozen=True)
class Preset:
    name: str
    hub_id: str | None  # None for models medvlm builds itself
    description: str
    random: str | None = None  # name of the RandomVLMSpec for built models
    packaged: str | None = None  # folder under medvlm/models/ holding weights shipped inside the package


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("medgemma-4b", "google/medgemma-4b-it", "MedGemma 4B instruction-tuned (Gemma3 + SigLIP), medical"),
        Preset("medgemma-1.5-4b", "google/medgemma-1.5-4b-it", "MedGemma 1.5 4B instruction-tuned (Gemma3 + SigLIP), medical"),
        Preset("smolvlm-256m", "HuggingFaceTB/SmolVLM-256M-Instruct", "SmolVLM 256M, general, small enough for CPU"),
        Preset("smolvlm-2b", "HuggingFaceTB/SmolVLM-Instruct", "SmolVLM 2B, general"),
        Preset("qwen2.5-vl-3b", "Qwen/Qwen2.5-VL-3B-Instruct", "Qwen2.5-VL 3B, general"),
        Preset("demo", None, "tiny Gemma3-shaped model with random weights (text is meaningless)", random="demo"),
        Preset("bench", None, "~0.6B Gemma3-shaped model with random weights, for benchmarks", random="bench"),
        Preset("phantom", None, "tiny Gemma3 trained only on synthetic phantom chest radiographs (shipped with medvlm)",
               packaged="phantom"),
    )
}


PRESET_CONFIGS = Path(__file__).resolve().parent / "preset_configs"
PACKAGED_MODELS = Path(__file__).resolve().parent


def packaged_model_dir(name: str) -> Path:
    """The folder of a model whose weights ship inside medvlm (the `phantom` preset)."""
    return PACKAGED_MODELS / PRESETS[name].packaged


def preset_config_dir(name: str) -> Path:
    """The published config, generation config and processor configs of a preset, shipped with medvlm (no weights)."""
    path = PRESET_CONFIGS / name
    if name not in PRESETS or PRESETS[name].random or PRESETS[name].packaged or not (path / "config.json").is_file():
        raise ModelUnavailable(f"no published configuration is shipped for {name!r}")
    return path


@dataclass(frozen=True)
class ResolvedModel:
    name: str
    source: str  # hub id or directory
    local_dir: Path | None  # None until a random model is built
    revision: str | None
    random: str | None


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # org/name; a path that does not exist is not one


def _hf_cache_snapshot(hub_id: str) -> tuple[Path, str | None] | None:
    """Local snapshot of a hub repo if the HF cache holds a complete one (no network)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - transformers depends on it
        return None
    try:
        path = Path(snapshot_download(hub_id, local_files_only=True))
    except Exception:  # noqa: BLE001 - any failure means "not cached"
        return None
    if not (path / "config.json").is_file():
        return None
    return path, path.name  # snapshot folder name is the commit hash


def _env_override(name: str) -> Path | None:
    key = "MEDVLM_MODEL_" + "".join(c if c.isalnum() else "_" for c in name).upper()
    value = os.environ.get(key)
    return Path(value) if value else None


def resolve(name_or_path: str) -> ResolvedModel:
    """Map a preset name, a directory or a hub id to something loadable, or raise ModelUnavailable."""
    as_path = Path(name_or_path).expanduser()
    if as_path.exists():
        if not (as_path / "config.json").is_file():
            raise ModelUnavailable(f"{as_path} is not a Hugging Face model directory (no config.json).")
        return ResolvedModel(str(name_or_path), str(as_path.resolve()), as_path.resolve(), None, None)
    preset = PRESETS.get(name_or_path)
    if preset and preset.random:
        return ResolvedModel(preset.name, f"medvlm random build ({preset.random})", None, None, preset.random)
    if preset and preset.packaged:
        folder = packaged_model_dir(preset.name)
        if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
            raise ModelUnavailable(
                f"the {preset.name} model's weights are missing from this medvlm install ({folder}); "
                "reinstall medvlm or run sample_data/train_phantom.py"
            )
        return ResolvedModel(preset.name, f"medvlm packaged model ({preset.name})", folder, None, None)
    override = _env_override(name_or_path) if preset else None
    if override:
        if not (override / "config.json").is_file():
            raise ModelUnavailable(f"{override} (from the environment) is not a Hugging Face model directory.")
        return ResolvedModel(preset.name, str(override), override, None, None)
    hub_id = preset.hub_id if preset else name_or_path
    if preset is None and not _HUB_ID.fullmatch(name_or_path):
        raise ModelUnavailable(
            f"unknown model {name_or_path!r}: not a preset ({', '.join(PRESETS)}), an existing model folder, "
            "or a Hugging Face hub id like org/name."
        )
    cached = _hf_cache_snapshot(hub_id)
    if cached is None:
        raise ModelUnavailable(
            f"model {name_or_path!r} ({hub_id}) is not on this machine: run "
            f"`huggingface-cli download {hub_id}` where there is network access, then copy the HF cache "
            "here, or pass --model /path/to/model-dir (use --model demo only to try the pipeline)."
        )
    path, revision = cached
    return ResolvedModel(preset.name if preset else name_or_path, hub_id, path, revision, None)


def model_type_of(name_or_path: str) -> str | None:
    """The `model_type` in the config of what `name_or_path` resolves to (None when it is not on this machine)."""
    import json

    try:
        resolved = resolve(name_or_path)
    except ModelUnavailable:
        return None
    if resolved.random:
        return "gemma3"  # demo and bench are Gemma3-shaped
    try:
        return json.loads((Path(resolved.local_dir) / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


def model_identity(name: str) -> dict:
    """Which weights `--model name` would load: source, revision, config and weights digests (nothing loaded)."""
    import hashlib

    from .checkpoint import weights_digest

    try:
        resolved = resolve(name)
    except ModelUnavailable as exc:
        # Loading will fail anyway; an identity that matches nothing forces a redo.
        return {"name": name, "unavailable": first_line(exc)}
    if resolved.random:
        from .demo import BENCH_SPEC, DEMO_SPEC

        spec = DEMO_SPEC if resolved.random == "demo" else BENCH_SPEC
        # Built deterministically from its spec (fixed seed), so the spec digest names the weights.
        return {"name": resolved.name, "source": resolved.source, "random_spec": f"{spec.name}-{spec.digest()}"}
    local = Path(resolved.local_dir)
    config = local / "config.json"
    return {
        "name": resolved.name,
        "source": resolved.source,
        "revision": resolved.revision,
        "config_sha256": hashlib.sha256(config.read_bytes()).hexdigest() if config.is_file() else None,
        "weights_digest": weights_digest(local),
    }


def availability() -> list[dict]:
    """One row per preset: name, hub id, available here, local directory."""
    rows = []
    for preset in PRESETS.values():
        if preset.random:
            from .demo import BENCH_SPEC, DEMO_SPEC, is_random_model_dir
            from ..paths import cache_dir

            spec = DEMO_SPEC if preset.random == "demo" else BENCH_SPEC
            local = cache_dir() / "models" / f"{spec.name}-{spec.digest()}"
            built = is_random_model_dir(local)
            rows.append(
                {
                    "name": preset.name,
                    "source": "built locally (random weights)",
                    "available": True,
                    "local_dir": str(local) if built else "(built on first use)",
                    "description": preset.description,
                }
            )
            continue
        try:
            resolved = resolve(preset.name)
            rows.append(
                {
                    "name": preset.name,
                    "source": preset.hub_id or "shipped with medvlm",
                    "available": True,
                    "local_dir": str(resolved.local_dir),
                    "description": preset.description,
                }
            )
        except ModelUnavailable:
            rows.append(
                {
                    "name": preset.name,
                    "source": preset.hub_id or "shipped with medvlm",
                    "available": False,
                    "local_dir": "",
                    "description": preset.description,
                }
            )
    return rows
