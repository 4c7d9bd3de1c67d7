"""In-place MLP activations on CPU: same numbers as the plain forward, and only where that was checked."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from medvlm.errors import ModelUnavailable  # noqa: E402
from medvlm.models import load_backend  # noqa: E402
from medvlm.models.hf import cpu_mlp  # noqa: E402


def _patched(model):
    return [m for m in model.modules() if "forward" in vars(m)]


def _inputs(width, dtype, seed=1, shape=(3, 17)):
    return torch.randn(*shape, width, generator=torch.Generator().manual_seed(seed)).to(dtype)


@pytest.mark.parametrize("quant", ["int8", "none"])
def test_demo_model_mlps_run_in_place_with_the_plain_forwards_numbers(demo_model_dir, quant):
    backend = load_backend("demo", quant=quant)
    model = backend.model
    patched = _patched(model)
    names = {type(m).__name__ for m in patched}
    assert names == {"Gemma3MLP", "SiglipMLP"}, names
    text_layers = len(model.model.language_model.layers)
    vision_layers = model.config.vision_config.num_hidden_layers
    assert backend.info.details["mlp"] == (
        f"in-place MLP activations ({text_layers} gated, {vision_layers} fc1/fc2)"
    )
    for module in patched:
        first = getattr(module, "gate_proj", None) or module.fc1
        dtype = next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)
        x = _inputs(first.in_features, dtype)
        with torch.inference_mode():
            fast, plain = module(x), type(module).forward(module, x)
        assert fast.shape == plain.shape and torch.equal(fast, plain)
        assert not torch.equal(fast, torch.zeros_like(fast))


def test_whole_model_logits_are_identical_with_and_without(demo_model_dir, monkeypatch):
    fast = load_backend("demo", quant="int8")
    monkeypatch.setenv(cpu_mlp.CPU_MLP_ENV, "plain")
    plain = load_backend("demo", quant="int8")
    assert plain.info.details["mlp"] is None and not _patched(plain.model)
    config = fast.model.config
    ids = torch.randint(3, config.text_config.vocab_size, (2, 30), generator=torch.Generator().manual_seed(3))
    size = config.vision_config.image_size
    pixels = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(4), dtype=torch.float32)
    with torch.inference_mode():
        a = fast.model(input_ids=ids).logits
        b = plain.model(input_ids=ids).logits
        va = fast.model.model.vision_tower(pixel_values=pixels.to(fast._pixel_dtype)).last_hidden_state
        vb = plain.model.model.vision_tower(pixel_values=pixels.to(plain._pixel_dtype)).last_hidden_state
    assert torch.equal(a, b) and torch.equal(va, vb)


def test_training_and_autograd_use_the_plain_forward(demo_model_dir):
    model = load_backend("demo", quant="none").model
    mlp = next(m for m in _patched(model) if type(m).__name__ == "Gemma3MLP")
    x = _inputs(mlp.gate_proj.in_features, torch.float32).requires_grad_()
    out = mlp(x)  # grad enabled: an in-place activation would break backward
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert torch.equal(out.detach(), type(mlp).forward(mlp, x).detach())


def test_other_activations_and_other_forwards_keep_their_own(demo_model_dir):
    from transformers.models.gemma3.modeling_gemma3 import Gemma3MLP

    model = load_backend("demo", quant="none").model
    config = model.config.text_config
    relu = Gemma3MLP(config).eval()
    relu.act_fn = torch.nn.ReLU()
    assert cpu_mlp.inplace_activation(relu.act_fn) is None

    class Doubled(Gemma3MLP):  # the same class name, another computation
        def forward(self, x):
            return 2 * super().forward(x)

    Doubled.__name__ = "Gemma3MLP"
    doubled = Doubled(config).eval()
    holder = torch.nn.Sequential(relu, doubled)
    assert cpu_mlp.use_inplace(holder) is None
    assert not _patched(holder)


def test_an_unknown_mlp_choice_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(cpu_mlp.CPU_MLP_ENV, "fused")
    with pytest.raises(ModelUnavailable, match=r"MEDVLM_CPU_MLP must be inplace or plain \(got 'fused'\)"):
        cpu_mlp.use_inplace(torch.nn.Linear(2, 2))
