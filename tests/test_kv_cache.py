"""The in-place KV cache on CPU: the same keys, values, mask sizes and tokens as transformers' DynamicCache."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from medvlm.errors import ModelUnavailable  # noqa: E402
from medvlm.models import load_backend  # noqa: E402
from medvlm.models.hf import kv_cache  # noqa: E402

SAMPLE_STUDIES = Path(__file__).resolve().parent.parent / "sample_data" / "studies"


def _chunks(seed: int, sizes, batch=3, heads=2, dim=5):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, heads, n, dim, generator=gen), torch.randn(batch, heads, n, dim, generator=gen))
            for n in sizes]


@pytest.mark.parametrize("capacity", [1, 9, 64])
def test_layers_return_what_transformers_layers_return_at_every_step(capacity):
    """A prompt of 7, then single tokens across a sliding window of 12; capacity 1 forces the buffers to grow."""
    plain, sliding, inplace, inplace_sliding = kv_cache._layer_classes()
    pairs = [(plain(), inplace(capacity)), (sliding(sliding_window=12), inplace_sliding(capacity, 12))]
    for seed, (theirs, ours) in enumerate(pairs):
        for step, (k, v) in enumerate(_chunks(seed, [7] + [1] * 10)):
            tk, tv = theirs.update(k, v)
            ok, ov = ours.update(k.clone(), v.clone())
            assert torch.equal(tk, ok) and torch.equal(tv, ov), (type(ours).__name__, step)
            assert ours.get_seq_length() == theirs.get_seq_length()
            assert ours.get_mask_sizes(1) == theirs.get_mask_sizes(1)
            assert torch.equal(ours.keys, theirs.keys) and torch.equal(ours.values, theirs.values)
    assert pairs[1][1]._spilled  # 17 positions went past the window of 12: transformers' own update took over


def test_inplace_layer_writes_into_one_buffer_while_it_has_room():
    _, _, inplace, _ = kv_cache._layer_classes()
    layer = inplace(16)
    chunks = _chunks(1, [7, 1, 1])
    layer.update(*chunks[0])
    buffer = layer._buffers[0]
    for k, v in chunks[1:]:
        keys, _ = layer.update(k, v)
        assert keys.data_ptr() == buffer.data_ptr() and keys.shape[2] == layer._filled
    assert layer._buffers[0] is buffer and buffer.shape[2] == 16


def test_an_unknown_kv_cache_choice_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(kv_cache.KV_CACHE_ENV, "paged")
    with pytest.raises(ModelUnavailable, match=r"MEDVLM_CPU_KV_CACHE must be inplace or dynamic \(got 'paged'\)"):
        kv_cache.choice()


def _texts(backend, pairs, tokens, ignore_eos=False):
    prepared = backend.preprocess(pairs)
    return [(o.text, o.new_tokens, o.answer_status)
            for o in backend.generate_prepared(prepared, max_new_tokens=tokens, ignore_eos=ignore_eos)]


def _phantom_pairs(tmp_path):
    """The sample studies and their prompts as `medvlm batch` prepares them (stages.prepare)."""
    from medvlm.config import RunConfig
    from medvlm.ingest import discover
    from medvlm.resources import Resources
    from medvlm.stages import StudyWork, prepare

    config = RunConfig(studies=SAMPLE_STUDIES, out=tmp_path, model="phantom")
    resources = Resources.for_config(config)
    works = [prepare(ref, config, resources) for ref in discover(SAMPLE_STUDIES, b"0" * 32, config.modality)
             if not hasattr(ref, "stage")]
    return [(w.study, w.prompt) for w in works if isinstance(w, StudyWork)]


def test_phantom_reports_are_identical_with_the_dynamic_cache(monkeypatch, tmp_path):
    """The phantom model writes real report text: every sample study, one batch (left padding), both caches."""
    pairs = _phantom_pairs(tmp_path)
    assert len(pairs) >= 5
    fast = load_backend("phantom", quant="int8", batch_size=len(pairs))
    monkeypatch.setenv(kv_cache.KV_CACHE_ENV, "dynamic")
    plain = load_backend("phantom", quant="int8", batch_size=len(pairs))
    assert fast.info.details["kv_cache"] == kv_cache.DESCRIPTION and plain.info.details["kv_cache"] is None
    ours, theirs = _texts(fast, pairs, 200), _texts(plain, pairs, 200)
    assert ours == theirs
    assert all(status == "complete" for _, _, status in ours)
    assert any("effusion" in text.lower() for text, _, _ in ours)


def test_a_sliding_window_shorter_than_the_answer_gives_the_same_tokens(demo_model_dir, monkeypatch):
    """The demo model with its sliding window cut to 10 positions past the prompt, so its sliding layers cross it."""
    from PIL import Image

    from medvlm.prompts import load_template, render_prompt
    from medvlm.records import ImageInput, Study, StudyContext, StudyRef

    def study(key, shade):
        image = Image.new("RGB", (64, 64), (shade, 90, 90))
        return Study(StudyRef(key, key, ()), (ImageInput("a.png", "0" * 64, image, "raster", (64, 64)),),
                     StudyContext(age_years=50, sex="F", view="PA"))

    template = load_template("chest_xray")
    pairs = [(s, render_prompt(s, template)) for s in (study("s1", 40), study("s2", 200))]
    fast = load_backend("demo", quant="none", batch_size=2)
    monkeypatch.setenv(kv_cache.KV_CACHE_ENV, "dynamic")
    plain = load_backend("demo", quant="none", batch_size=2)
    prompt = fast.preprocess(pairs).inputs["input_ids"].shape[1]
    window = prompt + 10
    for backend in (fast, plain):
        backend.model.config.text_config.sliding_window = window
    assert "sliding_attention" in fast.model.config.text_config.layer_types
    made, real = [], kv_cache.new_cache
    monkeypatch.setattr(kv_cache, "new_cache", lambda model, capacity: made.append(real(model, capacity)) or made[-1])
    ours, theirs = _texts(fast, pairs, 48, ignore_eos=True), _texts(plain, pairs, 48, ignore_eos=True)
    assert ours == theirs and all(n == 48 for _, n, _ in ours)
    # the demo's two decoder layers are both sliding-window ones (full-attention layers: tests/test_replicas.py)
    assert [type(layer).__name__ for layer in made[-1].layers] == ["InPlaceSlidingLayer"] * 2
    assert all(layer._spilled and layer.get_seq_length() == prompt + 47 for layer in made[-1].layers)


def test_switched_off_or_for_a_model_without_dynamic_layers_nothing_is_replaced(demo_model_dir, monkeypatch):
    monkeypatch.setenv(kv_cache.KV_CACHE_ENV, "dynamic")
    assert load_backend("demo", quant="none")._kv_cache_arg is None

    class Unknown:
        config = None

    assert kv_cache.new_cache(Unknown(), 8) is None
