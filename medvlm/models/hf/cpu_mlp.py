"""MLP blocks on CPU without their largest temporaries: the activation and the gating product in place.

A gated MLP computes down(act(gate(x)) * up(x)). Written plainly, act() and the product each allocate a
new tensor the size of the intermediate layer: at the bench model's prefill (batch 8, 415 tokens, 6,912
wide) that is 92 MB each, and four such buffers are live at once in every decoder layer. glibc keeps at
most 256 MB of freed heap (int8.reuse_freed_memory), so those buffers came back as fresh pages in every
layer and the kernel zeroed them: measured alone, a GELU into a fresh buffer took 36 ms and a product
25 ms, the same ops into reused memory 14 ms and 2-3 ms. Here act() overwrites gate(x) and the product
overwrites that, so only gate(x) and up(x) are allocated. The kernels are the same ones, so the numbers
are bit for bit those of the plain forward: that is checked on each class when it is patched, and a
class whose forward gives anything else keeps its own. A vision MLP (fc1 -> act -> fc2) gets the
activation in place too.

Only in inference (no autograd, eval mode), only the MLP classes and activations named here, only on
CPU where it was measured. MEDVLM_CPU_MLP=plain turns it off.
"""

from __future__ import annotations

import functools
import os
import types

from ...errors import ModelUnavailable

CPU_MLP_ENV = "MEDVLM_CPU_MLP"  # "inplace" (default) or "plain"
# transformers classes whose forward is exactly down(act(gate(x)) * up(x)), or fc2(act(fc1(x))).
GATED_CLASSES = ("Gemma3MLP", "LlamaMLP", "Qwen2MLP", "Qwen2_5_VLMLP")
FC_CLASSES = ("SiglipMLP", "Idefics3VisionMLP")


def inplace_activation(act):
    """An in-place version of a transformers activation module, or None where it is not one known here."""
    import torch
    from transformers import activations

    kind = type(act)
    if kind is activations.GELUTanh:
        fn = getattr(act, "act", None)
        if (isinstance(fn, functools.partial) and fn.func is torch.nn.functional.gelu and not fn.args
                and fn.keywords == {"approximate": "tanh"}):
            return functools.partial(torch.ops.aten.gelu_, approximate="tanh")
        return None
    if kind is activations.GELUActivation and getattr(act, "act", None) is torch.nn.functional.gelu:
        return torch.ops.aten.gelu_
    if kind in (activations.SiLUActivation, torch.nn.SiLU):
        return functools.partial(torch.nn.functional.silu, inplace=True)
    return None


def _gated_forward(self, x):
    import torch

    if self.training or torch.is_grad_enabled():
        return type(self).forward(self, x)
    hidden = self._medvlm_act_(self.gate_proj(x))
    hidden.mul_(self.up_proj(x))
    return self.down_proj(hidden)


def _fc_forward(self, x):
    import torch

    if self.training or torch.is_grad_enabled():
        return type(self).forward(self, x)
    return self.fc2(self._medvlm_act_(self.fc1(x)))


def _same_numbers(module, forward) -> bool:
    """Whether the in-place forward gives exactly the plain forward's output on a small random input."""
    import torch

    first = module.gate_proj if forward is _gated_forward else module.fc1
    width = getattr(first, "in_features", None)
    if not isinstance(width, int):
        return False
    dtype = next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)
    x = torch.randn(2, 3, width, generator=torch.Generator().manual_seed(0)).to(dtype)
    with torch.inference_mode():
        try:
            return torch.equal(forward(module, x), type(module).forward(module, x))
        except RuntimeError:
            return False


def use_inplace(model) -> str | None:
    """Give the gated and vision MLPs of a CPU model in-place activations; returns what was done, or None."""
    choice = os.environ.get(CPU_MLP_ENV, "inplace")
    if choice not in ("inplace", "plain"):
        raise ModelUnavailable(f"{CPU_MLP_ENV} must be inplace or plain (got {choice!r}).")
    if choice == "plain" or any(p.device.type != "cpu" for p in model.parameters()):
        return None
    checked: dict[type, bool] = {}
    counts = {"gated": 0, "fc1/fc2": 0}
    for module in model.modules():
        name = type(module).__name__
        if name in GATED_CLASSES:
            forward, act, kind = _gated_forward, getattr(module, "act_fn", None), "gated"
        elif name in FC_CLASSES:
            forward, act, kind = _fc_forward, getattr(module, "activation_fn", None), "fc1/fc2"
        else:
            continue
        act_ = inplace_activation(act)
        if act_ is None:
            continue
        module._medvlm_act_ = act_
        if type(module) not in checked:
            checked[type(module)] = _same_numbers(module, forward)
        if not checked[type(module)]:
            del module._medvlm_act_
            continue
        module.forward = types.MethodType(forward, module)
        counts[kind] += 1
    done = [f"{n} {kind}" for kind, n in counts.items() if n]
    return f"in-place MLP activations ({', '.join(done)})" if done else None
