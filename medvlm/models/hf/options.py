"""The transformers backend's options (device, dtype, quantization) and how `auto` resolves on this machine."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from ...errors import ModelUnavailable

QUANT_MODES = ("none", "int8", "int4", "auto")
DTYPES = ("auto", "float32", "bfloat16", "float16")
# Architectures whose activations overflow float16 (Gemma 3 was trained in bfloat16; its residual stream
# exceeds fp16's range and generation turns into NaN/garbage): `auto` never picks fp16 for them.
NO_FLOAT16 = {"gemma3", "gemma3_text"}
_DEVICE = re.compile(r"auto|cpu|cuda(?::\d+)?")


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

    def as_dict(self) -> dict:
        return asdict(self)


def resolve_options(options: HFOptions, model_type: str | None = None) -> ResolvedOptions:
    """Resolve `auto` for this machine and this architecture (imports torch; loads nothing)."""
    options.check()
    device = pick_device(options.device)
    mode = pick_quant(options.quant, device)
    dtype = pick_dtype(options.dtype, device, mode, model_type)
    check_combination(options, device, mode, str(dtype).replace("torch.", ""))
    return ResolvedOptions(device, str(dtype).replace("torch.", ""), mode)


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
