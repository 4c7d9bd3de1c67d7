"""The transformers backend's options (device, dtype, quantization) and how `auto` resolves on this machine."""

from __future__ import annotations

import os
import platform
import re
from dataclasses import asdict, dataclass

from ...errors import ModelUnavailable

QUANT_MODES = ("none", "int8", "int4", "auto")
DTYPES = ("auto", "float32", "bfloat16", "float16")
# Architectures whose activations overflow float16 (Gemma 3 was trained in bfloat16; its residual stream
# exceeds fp16's range and generation turns into NaN/garbage): `auto` never picks fp16 for them.
NO_FLOAT16 = {"gemma3", "gemma3_text"}
_DEVICE = re.compile(r"auto|cpu|cuda(?::\d+)?")
# The vision tower's dtype under CPU int8: auto (bf16 where the CPU has bf16 matrix instructions, else fp32)
CPU_VISION_DTYPE_ENV = "MEDVLM_CPU_VISION_DTYPE"
CPU_VISION_DTYPES = ("auto", "bfloat16", "float32")


@dataclass(frozen=True)
class HFOptions:
    """What the user asked for; every field may be `auto`."""

    device: str = "auto"
    dtype: str = "auto"
    quant: str = "auto"

    @classmethod
    def from_mapping(cls, values: dict) -> "HFOptions":
        unknown = sorted(set(values) - {"device", "dtype", "quant"})
        if unknown:
            raise ModelUnavailable(f"the transformers backend has no option {unknown[0]!r}")
        options = cls(**values)
        options.check()
        return options

    def check(self) -> None:
        """Reject values no machine could honour (one line each)."""
        if not _DEVICE.fullmatch(self.device):
            hint = " (lower case)" if _DEVICE.fullmatch(self.device.lower()) else ""
            raise ModelUnavailable(f"unknown --device {self.device!r}; expected auto, cpu, cuda or cuda:N{hint}")
        if self.quant not in QUANT_MODES:
            raise ModelUnavailable(f"unknown --quant {self.quant!r}; expected one of {', '.join(QUANT_MODES)}")
        if self.dtype not in DTYPES:
            raise ModelUnavailable(f"unknown --dtype {self.dtype!r}; expected one of {', '.join(DTYPES)}")

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ResolvedOptions:
    """What `auto` became on this machine: the settings that decide the model's numerics."""

    device: str
    dtype: str  # torch dtype name of the compute dtype
    quant: str  # none, int8 or int4
    # Set only where the vision tower runs in another dtype than the mode implies: CPU int8 keeps it in
    # bf16, except on a CPU without bf16 matrix instructions, where it is float32. (Left out of the dict
    # when unset, so runs made with a bf16 tower keep the identity they always had.)
    vision_dtype: str | None = None

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


def resolve_options(options: HFOptions, model_type: str | None = None) -> ResolvedOptions:
    """Resolve `auto` for this machine and this architecture (imports torch; loads nothing)."""
    options.check()
    device = pick_device(options.device)
    mode = pick_quant(options.quant, device)
    dtype = pick_dtype(options.dtype, device, mode, model_type)
    check_combination(options, device, mode, str(dtype).replace("torch.", ""))
    vision = None
    if mode == "int8" and not device.startswith("cuda"):
        vision = cpu_vision_dtype()
        vision = None if vision == "bfloat16" else vision
    return ResolvedOptions(device, str(dtype).replace("torch.", ""), mode, vision)


def cpu_bf16_in_hardware() -> bool:
    """Whether this CPU multiplies bf16 matrices with its own instructions: AVX512-BF16 or AMX on x86,
    the BF16 extension on Arm (as oneDNN reports it).

    Without them torch falls back to a generic bf16 path that is far slower than fp32: on a 2-core AVX2
    EPYC a (1024 x 768) @ (768 x 3072) bf16 matmul ran at 0.64 GFLOP/s, against 85 GFLOP/s in fp32.
    """
    import torch

    cpu = torch.cpu
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        if getattr(cpu, probe, None) is not None and getattr(cpu, probe)():
            return True
    if platform.machine().lower() in ("aarch64", "arm64"):
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def cpu_vision_dtype() -> str:
    """The vision tower's dtype under CPU int8: MEDVLM_CPU_VISION_DTYPE, where `auto` asks the CPU."""
    choice = os.environ.get(CPU_VISION_DTYPE_ENV, "auto")
    if choice not in CPU_VISION_DTYPES:
        raise ModelUnavailable(f"{CPU_VISION_DTYPE_ENV} must be auto, bfloat16 or float32 (got {choice!r}).")
    if choice != "auto":
        return choice
    return "bfloat16" if cpu_bf16_in_hardware() else "float32"


def check_combination(options: HFOptions, device: str, mode: str, dtype: str) -> None:
    """Refuse quantization/dtype pairs this device cannot run, naming what the user actually asked for."""
    if device.startswith("cuda"):
        return
    if mode == "int4":
        raise ModelUnavailable("--quant int4 needs a CUDA GPU with bitsandbytes (nf4); on CPU use --quant int8 or --quant none.")
    if mode == "int8" and dtype != "float32":
        if options.quant == "auto":  # the user never asked for int8: say that it is the CPU default
            raise ModelUnavailable(
                f"--dtype {options.dtype} cannot be used with CPU int8, which --quant auto picks on CPU (it computes in "
                f"float32); use --dtype float32 or auto, or add --quant none to compute in {options.dtype}."
            )
        raise ModelUnavailable("--quant int8 on CPU computes in float32; use --dtype float32 or auto with it.")


def pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelUnavailable(f"--device {device} was requested but no CUDA device is visible to torch.")
    return device


def auto_dtype_name(device: str, bf16_supported: bool, model_type: str | None = None) -> str:
    """What `--dtype auto` means for a device and architecture (pure: the caller asks the device about bf16)."""
    if not device.startswith("cuda"):
        return "float32"  # CPU: fp32 compute (dynamic int8 dequantises into fp32)
    if bf16_supported:
        return "bfloat16"
    return "float32" if model_type in NO_FLOAT16 else "float16"


def pick_dtype(dtype: str, device: str, mode: str = "none", model_type: str | None = None):
    """The torch dtype for `--dtype` on `device`; float16 is refused for architectures that overflow in it."""
    import torch

    if dtype == "auto":
        bf16 = device.startswith("cuda") and torch.cuda.is_bf16_supported()
        return getattr(torch, auto_dtype_name(device, bf16, model_type))
    if dtype == "float16" and model_type in NO_FLOAT16:
        raise ModelUnavailable(
            f"--dtype float16 is not safe for {model_type} models (activations overflow float16); "
            "use --dtype bfloat16, float32 or auto."
        )
    return getattr(torch, dtype)


def pick_quant(quant: str, device: str) -> str:
    if quant == "auto":
        if device.startswith("cuda"):
            return "int4" if bnb_available() else "none"
        return "int8"
    return quant


def bnb_available() -> bool:
    try:
        import bitsandbytes  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken install is "not available"
        return False
    return True


def bnb_config(mode: str, compute_dtype):
    from transformers import BitsAndBytesConfig

    if mode == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype)
