"""`medvlm models --check`: size a model from its config alone and say where it fits (no weights are read)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelUnavailable
from .memory import GB, estimate, model_shape, param_counts_from_config
from .registry import PRESETS, preset_config_dir, resolve

# Sizing assumptions, printed with the result.
ASSUMED = {"batch_size": 1, "max_new_tokens": 256, "images_per_study": 2}
# Quantization modes per device kind and the compute dtype `auto` picks there (models/hf/options.py).
MODES = {"cpu": (("none", "float32"), ("int8", "float32")),
         "cuda": (("none", "bfloat16"), ("int8", "bfloat16"), ("int4", "bfloat16"))}


@dataclass(frozen=True)
class Target:
    """A machine to size for: its device kind and the memory a model may use there."""

    name: str
    device: str
    usable_bytes: int
    note: str


# Jetson boards share one memory between CPU and GPU; about 2 GiB stay with JetPack's OS and services.
JETSON_TARGETS = (
    Target("Jetson Orin NX 16 GB", "cuda", 14 * GB, "16 GiB shared CPU/GPU memory, 2 GiB left to the OS"),
    Target("Jetson AGX Orin 64 GB", "cuda", 62 * GB, "64 GiB shared CPU/GPU memory, 2 GiB left to the OS"),
)


def config_dir_for(name_or_path: str) -> tuple[str, Path]:
    """(label, folder with config.json) for a preset name, a model folder or a cached hub id."""
    path = Path(name_or_path).expanduser()
    if path.is_file() and path.name == "config.json":
        return str(path.parent), path.parent
    preset = PRESETS.get(name_or_path)
    if preset is not None and preset.random:
        raise ModelUnavailable(
            f"{name_or_path!r} is built by medvlm itself (random weights); --check sizes real presets and model folders."
        )
    if preset is not None and preset.packaged and not path.exists():
        folder = resolve(preset.name).local_dir
        return f"{preset.name} (weights shipped with medvlm)", Path(folder)
    if preset is not None and not path.exists():
        return f"{preset.name} ({preset.hub_id}, published config shipped with medvlm)", preset_config_dir(preset.name)
    resolved = resolve(name_or_path)
    return str(resolved.local_dir), Path(resolved.local_dir)


def this_machine() -> Target:
    """This machine as a target: CUDA when torch sees a GPU, else CPU with the RAM available now."""
    import torch

    from .memory import available_bytes

    device = "cuda" if torch.cuda.is_available() else "cpu"
    available, where = available_bytes(device)
    return Target("this machine", device, available, where)


def check(name_or_path: str, targets: tuple[Target, ...] | None = None) -> dict:
    """Architecture, parameter count, estimated peak bytes per quantization mode, and fit per target."""
    import json

    label, folder = config_dir_for(name_or_path)
    config = json.loads((folder / "config.json").read_text())
    counts = param_counts_from_config(folder)
    shape = model_shape(folder)
    estimates: dict[str, dict[str, dict]] = {}
    for device, modes in MODES.items():
        for mode, dtype in modes:
            est = estimate(counts, shape, dtype=dtype, quant=mode, device=device, **ASSUMED)
            estimates.setdefault(device, {})[mode] = {
                "dtype": dtype, "peak_bytes": est.peak, "weights_bytes": est.weights,
                "load_peak_bytes": est.load_peak, "activation_bytes": est.activations,
            }
    rows = []
    for target in (this_machine(), *JETSON_TARGETS) if targets is None else targets:
        rows.append({
            "name": target.name, "device": target.device, "usable_bytes": target.usable_bytes, "note": target.note,
            "fits": {mode: estimates[target.device][mode]["peak_bytes"] <= target.usable_bytes
                     for mode in estimates[target.device]},
        })
    return {
        "model": label,
        "architecture": (config.get("architectures") or [config.get("model_type")])[0],
        "model_type": config.get("model_type"),
        "parameters": counts.total,
        "language_linear_parameters": counts.quantizable,
        "image_tokens_per_image": shape.image_tokens,
        "assumptions": dict(ASSUMED),
        "estimated_bytes": {device: {m: e["peak_bytes"] for m, e in modes.items()} for device, modes in estimates.items()},
        "estimates": estimates,
        "targets": rows,
    }


def check_lines(result: dict) -> list[str]:
    """The check as plain lines for a terminal."""
    gb = lambda n: f"{n / GB:.1f} GB"  # noqa: E731
    lines = [
        f"model         {result['model']}",
        f"architecture  {result['architecture']} ({result['model_type']})",
        f"parameters    {result['parameters']:,} ({result['parameters'] / 1e9:.2f} B)",
        f"image tokens  {result['image_tokens_per_image']} per image",
        "estimated peak memory (batch {batch_size}, {images_per_study} images per study, {max_new_tokens} new tokens):"
        .format(**result["assumptions"]),
    ]
    for device, modes in result["estimates"].items():
        for mode, est in modes.items():
            lines.append(f"  {device:<5} --quant {mode:<5} {est['dtype']:<9} {gb(est['peak_bytes']):>8}"
                         f"  (weights {gb(est['weights_bytes'])})")
    lines.append("fits:")
    for target in result["targets"]:
        verdicts = ", ".join(f"{mode} {'yes' if ok else 'no'}" for mode, ok in target["fits"].items())
        lines.append(f"  {target['name']} ({target['device']}, {gb(target['usable_bytes'])} usable): {verdicts}")
    lines.append("CUDA int8/int4 need bitsandbytes (pip install 'medvlm[cuda]').")
    return lines
