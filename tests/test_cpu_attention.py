"""The bf16 matmul attention used for a SigLIP vision tower on CPU: its numbers, its fallbacks, where it applies."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from medvlm.models import load_backend  # noqa: E402
from medvlm.models.hf import cpu_attention  # noqa: E402
from medvlm.models.hf.options import CPU_VISION_DTYPE_ENV  # noqa: E402


class _Module(torch.nn.Module):
    pass


def _qkv(dtype, seed=0, shape=(2, 3, 40, 16)):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=torch.float64).to(dtype) for _ in range(3)]


def _reference(q, k, v, scale):
    q, k, v = (t.double() for t in (q, k, v))
    probs = torch.softmax(q @ k.transpose(-1, -2) * scale, dim=-1)
    return (probs @ v).transpose(1, 2)


def test_matmul_attention_matches_exact_attention_to_bf16_precision():
    module = _Module().eval()
    q, k, v = _qkv(torch.bfloat16)
    out, weights = cpu_attention.matmul_attention(module, q, k, v, None, scaling=0.25)
    assert weights is None and out.dtype == torch.bfloat16
    assert out.shape == (2, 40, 3, 16)  # (batch, tokens, heads, dim), as transformers' SDPA wrapper returns
    err = (out.double() - _reference(q, k, v, 0.25)).abs().max().item()
    assert err < 0.03, err
    sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=0.25).transpose(1, 2)
    assert not torch.equal(out, sdpa)  # really another computation, not SDPA under another name


def test_masked_fp32_or_training_calls_go_to_sdpa_unchanged():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    module = _Module().eval()
    module.is_causal = False
    q, k, v = _qkv(torch.bfloat16)
    mask = torch.zeros(2, 1, 40, 40, dtype=torch.bfloat16)
    mask[..., -5:] = float("-inf")
    cases = [(q, k, v, mask)]
    cases.append(tuple(_qkv(torch.float32)) + (None,))
    for case in cases:
        got, _ = cpu_attention.matmul_attention(module, *case, scaling=0.25)
        want, _ = sdpa_attention_forward(module, *case, scaling=0.25)
        assert torch.equal(got, want)
    module.train()
    got, _ = cpu_attention.matmul_attention(module, q, k, v, None, scaling=0.25)
    want, _ = sdpa_attention_forward(module, q, k, v, None, scaling=0.25)
    assert torch.equal(got, want)


def test_int8_demo_model_routes_its_bf16_vision_tower_and_says_so(demo_model_dir, monkeypatch):
    monkeypatch.setenv(CPU_VISION_DTYPE_ENV, "bfloat16")  # the tower CPU int8 keeps in bf16 where the CPU has bf16
    backend = load_backend("demo", quant="int8")
    tower = backend.model.model.vision_tower
    assert tower.config._attn_implementation == cpu_attention.NAME
    assert backend.info.details["attention"] == "sdpa; vision attention as bf16 matmuls"
    assert "attention" not in backend.info.quantization
    assert backend.model.config.text_config._attn_implementation != cpu_attention.NAME  # text keeps its own
    pixels = torch.rand(2, 3, tower.config.image_size, tower.config.image_size, dtype=torch.bfloat16)
    with torch.inference_mode():
        fast = tower(pixel_values=pixels).last_hidden_state
    monkeypatch.setenv(cpu_attention.CPU_ATTENTION_ENV, "sdpa")
    plain = load_backend("demo", quant="int8")
    assert plain.model.model.vision_tower.config._attn_implementation == "sdpa"
    assert plain.info.details["attention"] == "sdpa"
    with torch.inference_mode():
        slow = plain.model.model.vision_tower(pixel_values=pixels).last_hidden_state
    assert not torch.equal(fast, slow)
    assert torch.allclose(fast.float(), slow.float(), atol=0.15, rtol=0.05)


def test_fp32_model_keeps_sdpa(demo_model_dir, monkeypatch):
    backend = load_backend("demo", quant="none", dtype="float32")
    assert backend.model.model.vision_tower.config._attn_implementation == "sdpa"
    assert backend.info.details["attention"] == "sdpa"
    monkeypatch.setenv(CPU_VISION_DTYPE_ENV, "float32")  # CPU int8 on a CPU without bf16 instructions
    backend = load_backend("demo", quant="int8")
    assert backend.model.model.vision_tower.config._attn_implementation == "sdpa"
    assert backend.info.details["attention"] == "sdpa"


@pytest.mark.parametrize("env,line", [
    ({cpu_attention.CPU_ATTENTION_ENV: "flash"}, "error: MEDVLM_CPU_ATTENTION must be matmul or sdpa (got 'flash')."),
    ({CPU_VISION_DTYPE_ENV: "fp16"}, "error: MEDVLM_CPU_VISION_DTYPE must be auto, bfloat16 or float32 (got 'fp16')."),
])
def test_an_unknown_cpu_setting_is_one_line_and_exit_2(demo_model_dir, tmp_path, env, line):
    from audit_support import png, run_medvlm

    studies = tmp_path / "studies"
    studies.mkdir()
    png(studies / "a.png")
    res = run_medvlm("batch", str(studies), "--modality", "chest_xray", "--model", "demo", "--out",
                     str(tmp_path / "out"), env=env)
    assert res.returncode == 2, res.stderr
    errors = [text for text in res.stderr.splitlines() if text.startswith("error:")]
    assert errors == [line]
    assert "Traceback" not in res.stderr + res.stdout
