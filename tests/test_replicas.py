"""Every preset through medvlm as a random-weight replica: chat format, image placeholders, stop tokens, leaks, int8.

The replicas (tests/replica_support.py) are built once per session from the published configs shipped
in medvlm/models/preset_configs; where ../shared/data/models holds a preset's real files, the shipped
configs and the replica's chat format are checked against them.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from medvlm.models import ModelUnavailable, load_backend
from medvlm.models.hf import options as hf_options
from medvlm.models.hf import streamed_load
from medvlm.models.hf.backend import HFBackend
from medvlm.models.memory import estimate, image_tokens, model_shape, param_counts, param_counts_from_config
from medvlm.models.registry import PRESETS, preset_config_dir
from medvlm.prompts import load_template, render_prompt
from medvlm.records import ImageInput, Study, StudyContext, StudyRef

from conftest import SAMPLE_STUDIES, SHARED
from replica_support import REPLICAS, build_replica

REAL_PRESETS = [name for name, p in PRESETS.items() if p.hub_id]  # published models (not demo/bench/phantom)
# About how many parameters each published model has (model cards, and the MedGemma weight index: 8.6 GB bf16).
PUBLISHED_PARAMETERS = {"medgemma-4b": 4.3e9, "medgemma-1.5-4b": 4.3e9, "qwen2.5-vl-3b": 3.75e9,
                        "smolvlm-256m": 0.256e9, "smolvlm-2b": 2.25e9}
# Markup a replica may be forced to emit; none of it may reach the report text.
MARKUP = {
    "gemma3": ["<start_of_image>", "<end_of_image>", "<image_soft_token>", "<start_of_turn>", "<mask>", "[multimodal]"],
    "qwen2_5_vl": ["<|vision_start|>", "<|image_pad|>", "<|im_start|>", "<tool_call>", "<|fim_prefix|>"],
    "idefics3": ["<image>", "<fake_token_around_image>", "<|im_start|>"],
}
MARKUP_SMOL_256M = ["<global-img>", "<row_1_col_1>", "<|reserved_special_token_3|>"]


def test_every_real_preset_has_a_replica_and_shipped_configs():
    assert sorted(REPLICAS) == sorted(REAL_PRESETS)
    for name in REAL_PRESETS:
        folder = preset_config_dir(name)
        assert {"config.json", "generation_config.json", "preprocessor_config.json"} <= {p.name for p in folder.iterdir()}
    assert PRESETS["medgemma-1.5-4b"].hub_id == "google/medgemma-1.5-4b-it"


@pytest.fixture(scope="session")
def replicas(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("replicas")
    return {name: build_replica(name, root / name) for name in REPLICAS}


@pytest.fixture(scope="session")
def backends(replicas) -> dict[str, HFBackend]:
    """Each replica loaded once, float32 (the in-process checks force tokens through the generation config)."""
    return {name: load_backend(str(path), quant="none") for name, path in replicas.items()}


def _shared_model_dir(preset: str) -> Path:
    folder = REPLICAS[preset].shared_dir
    path = SHARED / "data" / "models" / folder if folder else None
    if path is None or not path.is_dir():
        pytest.skip(f"no real files of {preset} in ../shared/data/models (read in place when present)")
    return path


def _study(n_images: int, size=(320, 320), key="s-replica") -> Study:
    images = tuple(
        ImageInput(f"view{i}.png", "0" * 64, Image.new("RGB", size, (60 + 40 * i, 90, 90)), "raster", size[::-1])
        for i in range(n_images)
    )
    return Study(StudyRef(key, key, ()), images, StudyContext(age_years=64, sex="M", view="PA"))


def _prompt(study: Study):
    return render_prompt(study, load_template("chest_xray"))


# --- the shipped facts are the published ones -------------------------------------------------------------------

def _subset_mismatches(ours, published, path="") -> list[str]:
    """Keys of `ours` whose values differ from the published file (a shipped config is a subset of it)."""
    if isinstance(ours, dict) and isinstance(published, dict):
        return [m for k, v in ours.items() for m in _subset_mismatches(v, published.get(k, "<absent>"), f"{path}.{k}")]
    return [] if ours == published else [f"{path}: {ours!r} != {published!r}"]


def _architecture_of(folder: Path) -> dict:
    """The numbers that decide the architecture and token layout, from a built config."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder)
    text, vision = config.get_text_config(), config.vision_config
    keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "head_dim", "vocab_size", "rms_norm_eps", "max_position_embeddings", "sliding_window", "layer_types",
            "rope_parameters", "tie_word_embeddings", "hidden_act", "hidden_activation")
    vkeys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size",
             "patch_size", "depth", "num_heads", "out_hidden_size", "spatial_merge_size", "window_size",
             "fullatt_block_indexes", "temporal_patch_size")
    top = ("image_token_id", "image_token_index", "boi_token_index", "eoi_token_index", "mm_tokens_per_image",
           "scale_factor", "vision_start_token_id", "vision_end_token_id", "video_token_id")
    return {
        "text": {k: getattr(text, k, None) for k in keys},
        "vision": {k: getattr(vision, k, None) for k in vkeys},
        "top": {k: getattr(config, k, None) for k in top},
    }


@pytest.mark.parametrize("preset", ["medgemma-4b", "smolvlm-256m", "qwen2.5-vl-3b"])
def test_shipped_configs_are_the_published_ones(preset):
    real = _shared_model_dir(preset)
    shipped = preset_config_dir(preset)
    assert _architecture_of(shipped) == _architecture_of(real)
    ours = json.loads((shipped / "config.json").read_text())
    assert _subset_mismatches(ours, json.loads((real / "config.json").read_text())) == []
    for name in ("generation_config.json", "preprocessor_config.json", "processor_config.json"):
        if not (real / name).is_file():
            continue
        published = json.loads((real / name).read_text())
        ours = json.loads((shipped / name).read_text())
        published.pop("transformers_version", None)
        published.pop("_from_model_config", None)
        assert ours == published, name


@pytest.mark.parametrize("preset", ["medgemma-4b", "smolvlm-256m", "qwen2.5-vl-3b"])
def test_replica_token_layout_matches_the_real_tokenizer(preset):
    real = _shared_model_dir(preset)
    layout = REPLICAS[preset].layout
    config = json.loads((real / "tokenizer_config.json").read_text())
    published = {int(k): (v["content"], v["special"]) for k, v in config.get("added_tokens_decoder", {}).items()}
    if (real / "tokenizer.json").is_file():  # SmolVLM: the complete real tokenizer, read in place
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(real / "tokenizer.json"))
        assert tok.get_vocab_size(with_added_tokens=True) == layout.size
    elif (real / "vocab.json").is_file():  # Qwen: base vocabulary plus the added tokens
        assert len(json.loads((real / "vocab.json").read_text())) + len(published) == layout.size
    else:  # Gemma: the tokenizer ends at the image soft token
        assert max(published) + 1 == layout.size
    for token_id, (content, special) in layout.tokens.items():
        if content in ("\n", "\n\n") and token_id not in published:
            continue
        assert published[token_id] == (content, special), token_id
    stop = json.loads((real / "generation_config.json").read_text())["eos_token_id"]
    assert tuple(stop if isinstance(stop, list) else [stop]) == REPLICAS[preset].stop_ids


# --- the chat format and the image placeholders ---------------------------------------------------------------------

def _rendered(backend: HFBackend, study: Study) -> str:
    return backend.processor.apply_chat_template(
        backend._messages(study, _prompt(study)), add_generation_prompt=True, tokenize=False
    )


@pytest.mark.parametrize("preset", sorted(REPLICAS))
def test_prompt_is_rendered_in_the_models_own_chat_format(backends, preset):
    backend = backends[preset]
    study = _study(2)
    prompt = _prompt(study)
    text = _rendered(backend, study)
    family = REPLICAS[preset].family
    if family == "gemma3":  # no system role: the system text opens the first user turn
        assert text.startswith("<bos><start_of_turn>user\n" + prompt.system.strip() + "\n\n<start_of_image><start_of_image>")
        assert "system" not in text.split("<start_of_turn>")[1][:10]
        assert text.endswith(prompt.text.strip() + "<end_of_turn>\n<start_of_turn>model\n")
    elif family == "qwen2_5_vl":  # ChatML with a system turn
        image = "<|vision_start|><|image_pad|><|vision_end|>"
        assert text == (f"<|im_start|>system\n{prompt.system}<|im_end|>\n<|im_start|>user\n{image}{image}"
                        f"{prompt.text}<|im_end|>\n<|im_start|>assistant\n")
    else:  # Idefics3: System:/User:/Assistant: turns ended by <end_of_utterance>
        assert text == (f"<|im_start|>System: {prompt.system}<end_of_utterance>\nUser:<image><image>"
                        f"{prompt.text}<end_of_utterance>\nAssistant:")


@pytest.mark.parametrize("preset", ["medgemma-4b", "smolvlm-256m", "qwen2.5-vl-3b"])
def test_replica_chat_format_renders_like_the_real_chat_template(backends, preset):
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    real = _shared_model_dir(preset)
    if (real / "chat_template.jinja").is_file():
        template = (real / "chat_template.jinja").read_text()
    else:
        template = json.loads((real / "chat_template.json").read_text())["chat_template"]
    backend = backends[preset]
    for n_images in (1, 2):
        study = _study(n_images)
        messages = backend._messages(study, _prompt(study))
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        expected = env.from_string(template).render(messages=messages, add_generation_prompt=True, bos_token="<bos>")
        assert _rendered(backend, study) == expected


@pytest.mark.parametrize("preset", sorted(REPLICAS))
def test_image_placeholders_match_what_the_model_consumes(backends, preset):
    backend = backends[preset]
    config = backend.model.config
    image_id = getattr(config, "image_token_id", None) or getattr(config, "image_token_index")
    one, two = _study(1, key="s-one"), _study(2, size=(2048, 1700), key="s-two")
    prepared = backend.preprocess([(one, _prompt(one)), (two, _prompt(two))])
    counts = (prepared.inputs["input_ids"] == image_id).sum(dim=1).tolist()
    family = REPLICAS[preset].family
    if family == "gemma3":
        assert counts == [256, 512]  # mm_tokens_per_image per image
    elif family == "qwen2_5_vl":
        grid = prepared.inputs["image_grid_thw"]
        per_image = (grid.prod(dim=1) // 4).tolist()
        assert counts == [per_image[0], per_image[1] + per_image[2]]
        assert max(per_image) <= 1280  # medvlm's pixel budget, not the published 12.8 MP
    else:
        seq = backend.processor.image_seq_len
        assert all(c % seq == 0 for c in counts) and counts[1] > counts[0]
    # The model accepts exactly these placeholders (a mismatch raises inside the forward pass).
    outputs = backend.generate_prepared(prepared, max_new_tokens=2)
    assert len(outputs) == 2
    # The memory estimate's tokens per image bound what the processor made of a 2048-px radiograph.
    estimated, _ = image_tokens(json.loads((preset_config_dir(preset) / "config.json").read_text()),
                                _settings(preset))
    assert max(counts[1] // 2, counts[0]) <= estimated


def _settings(preset: str) -> dict:
    settings = {}
    for name in ("preprocessor_config.json", "processor_config.json"):
        path = preset_config_dir(preset) / name
        if path.is_file():
            settings.update(json.loads(path.read_text()))
    return settings


# --- stop tokens end an answer; markup never reaches the text -----------------------------------------------------

def _word_id(backend: HFBackend) -> int:
    ids = backend.tokenizer.encode("lungs", add_special_tokens=False)
    assert ids and all(i not in backend.markup_ids for i in ids)
    return ids[0]


def _forced(backend: HFBackend, bias: dict, max_new_tokens: int = 6):
    gen = backend.model.generation_config
    saved = getattr(gen, "sequence_bias", None)
    gen.sequence_bias = {tuple(k): float(v) for k, v in bias.items()}
    try:
        study = _study(1)
        (out,) = backend.generate([(study, _prompt(study))], max_new_tokens=max_new_tokens)
    finally:
        gen.sequence_bias = saved
    return out


@pytest.mark.parametrize("preset", sorted(REPLICAS))
def test_generation_config_stop_tokens_end_the_answer_as_complete(backends, preset):
    backend = backends[preset]
    word = _word_id(backend)
    stops = REPLICAS[preset].stop_ids
    published = backend.model.generation_config.eos_token_id
    assert tuple(published if isinstance(published, list) else [published]) == stops
    for stop in stops:
        out = _forced(backend, {(word,): 40.0, (word, stop): 100.0})
        assert out.answer_status == "complete", (stop, out)
        assert out.text == backend.tokenizer.decode([word]).strip() and out.new_tokens == 1
    truncated = _forced(backend, {(word,): 40.0}, max_new_tokens=4)
    assert truncated.answer_status == "truncated" and truncated.new_tokens == 4


@pytest.mark.parametrize("preset", sorted(REPLICAS))
def test_special_and_image_tokens_never_leak_into_the_answer(backends, preset):
    backend = backends[preset]
    word = _word_id(backend)
    stop = REPLICAS[preset].stop_ids[0]
    markup = MARKUP[REPLICAS[preset].family] + (MARKUP_SMOL_256M if preset == "smolvlm-256m" else [])
    for token in markup:
        token_id = backend.tokenizer.convert_tokens_to_ids(token)
        assert token_id in backend.markup_ids, token
        out = _forced(backend, {(token_id,): 40.0, (token_id, word): 100.0, (word, stop): 200.0})
        assert out.answer_status == "complete", (token, out)
        assert out.text == backend.tokenizer.decode([word]).strip(), (token, out.text)
        assert token not in out.text


def test_gemma_newline_and_reasoning_tokens_stay_in_the_text(backends):
    """Gemma's added tokens include real text (newline runs) and MedGemma 1.5's reasoning delimiters."""
    backend = backends["medgemma-1.5-4b"]
    word, stop = _word_id(backend), 106
    think, end_think, newline = 100, 101, 108  # <unused94>, <unused95>, "\n\n" in the published tokenizer
    out = _forced(backend, {(think,): 40.0, (think, word): 100.0, (word, end_think): 100.0,
                            (end_think, newline): 200.0, (newline, word): 200.0, (word, word): -500.0,
                            (word, newline): -500.0}, max_new_tokens=6)
    piece = backend.tokenizer.decode([word])
    assert out.text.startswith(f"<unused94>{piece}<unused95>\n\n{piece}"), out.text


# --- dtype selection: Gemma 3 never runs in float16 ----------------------------------------------------------------

def test_auto_dtype_never_picks_float16_for_gemma3(monkeypatch, replicas):
    for bf16 in (True, False):
        for model_type in ("gemma3", "gemma3_text"):
            assert hf_options.auto_dtype_name("cuda", bf16, model_type) != "float16"
    assert hf_options.auto_dtype_name("cuda", False, "gemma3") == "float32"
    assert hf_options.auto_dtype_name("cuda", True, "gemma3") == "bfloat16"
    assert hf_options.auto_dtype_name("cuda", False, "qwen2_5_vl") == "float16"  # other models may
    assert hf_options.auto_dtype_name("cpu", False, "gemma3") == "float32"
    # The same rule through pick_dtype, on a GPU without bf16 (e.g. a Turing card).
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    from medvlm.models.hf.backend import _model_type

    for preset, path in replicas.items():
        model_type = _model_type(path)
        picked = hf_options.pick_dtype("auto", "cuda", "none", model_type)
        assert (picked == torch.float32) if REPLICAS[preset].family == "gemma3" else (picked == torch.float16)
    with pytest.raises(ModelUnavailable, match="float16"):
        hf_options.pick_dtype("float16", "cuda", "none", "gemma3")


def test_identity_resolves_dtype_for_the_models_architecture(monkeypatch, replicas):
    from medvlm.models import get_kind

    monkeypatch.setenv("MEDVLM_MODEL_MEDGEMMA_4B", str(replicas["medgemma-4b"]))
    monkeypatch.setattr(hf_options, "pick_device", lambda device: "cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    identity = get_kind("hf").identity("medgemma-4b", {"device": "cuda", "dtype": "auto", "quant": "none"})
    assert identity["dtype"] == "float32"
    identity = get_kind("hf").identity(str(replicas["qwen2.5-vl-3b"]), {"device": "cuda", "dtype": "auto", "quant": "none"})
    assert identity["dtype"] == "float16" and identity["max_pixels"] == 1280 * 28 * 28


# --- memory estimate of the full-size models ------------------------------------------------------------------------

def _meta_parameters(folder: Path) -> int:
    from transformers import AutoConfig, AutoModelForImageTextToText

    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(folder))
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("preset", REAL_PRESETS)
def test_memory_estimate_of_the_full_size_model_is_within_15_percent(preset):
    folder = preset_config_dir(preset)
    true_parameters = _meta_parameters(folder)
    counts = param_counts_from_config(folder)
    est = estimate(counts, model_shape(folder), dtype="bfloat16", quant="none", device="cuda", batch_size=1,
                   max_new_tokens=256, images_per_study=2)
    assert abs(est.weights / 2 - true_parameters) <= 0.15 * true_parameters
    assert abs(true_parameters - PUBLISHED_PARAMETERS[preset]) <= 0.15 * PUBLISHED_PARAMETERS[preset]
    # int8 converts the language model's Linear layers: most of the parameters of every architecture.
    assert 0.45 * counts.total < counts.quantizable < counts.total
    int8 = estimate(counts, model_shape(folder), dtype="float32", quant="int8", device="cpu", batch_size=1,
                    max_new_tokens=256, images_per_study=2)
    assert int8.weights < 0.7 * 4 * counts.total


def test_medgemma_estimate_matches_the_published_weight_index():
    real = _shared_model_dir("medgemma-4b")
    total_size = json.loads((real / "model.safetensors.index.json").read_text())["metadata"]["total_size"]
    counts = param_counts_from_config(preset_config_dir("medgemma-4b"))
    assert abs(counts.checkpoint_bytes - total_size) <= 0.01 * total_size  # bf16 checkpoint, 2 bytes a parameter


@pytest.mark.parametrize("preset", sorted(REPLICAS))
def test_checkpoint_header_counts_agree_with_the_architecture(replicas, preset):
    """The safetensors-header classification (every naming scheme) gives what the built architecture has."""
    from_headers = param_counts(replicas[preset])
    from_config = param_counts_from_config(replicas[preset])
    assert from_headers.total == from_config.total
    assert from_headers.quantizable == from_config.quantizable
    assert from_headers.tied_lm_head == from_config.tied_lm_head


def test_largest_image_side_is_the_ingest_limit():
    from medvlm.ingest.types import MAX_SIDE
    from medvlm.models.memory import LARGEST_IMAGE_SIDE

    assert LARGEST_IMAGE_SIDE == MAX_SIDE


# --- int8: the streamed loader works per architecture, or falls back with the reason in provenance -----------------

def _greedy(backend: HFBackend, n: int = 5) -> list[int]:
    study = _study(1)
    prepared = backend.preprocess([(study, _prompt(study))])
    with torch.inference_mode():
        out = backend.model.generate(**prepared.inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return out[0, prepared.inputs["input_ids"].shape[1]:].tolist()


@pytest.mark.parametrize("preset", ["medgemma-4b", "smolvlm-256m", "qwen2.5-vl-3b"])
def test_streamed_int8_load_works_for_each_architecture(monkeypatch, replicas, preset):
    streamed = load_backend(str(replicas[preset]), quant="int8")
    assert "checkpoint streamed and converted decoder layer by decoder layer" in streamed.info.quantization
    monkeypatch.setenv(streamed_load.STREAMED_LOAD_ENV, "0")
    plain = load_backend(str(replicas[preset]), quant="int8")
    assert "loaded with from_pretrained" in plain.info.quantization
    assert _greedy(streamed) == _greedy(plain)
    old, new = plain.model.state_dict(), streamed.model.state_dict()
    assert old.keys() == new.keys()
    for key, value in old.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, new[key]) and value.dtype == new[key].dtype, key


IN_PLACE_MLPS = {
    "medgemma-4b": {"Gemma3MLP", "SiglipMLP"},
    "medgemma-1.5-4b": {"Gemma3MLP", "SiglipMLP"},
    "smolvlm-256m": {"LlamaMLP", "Idefics3VisionMLP"},
    "smolvlm-2b": {"LlamaMLP", "Idefics3VisionMLP"},
    "qwen2.5-vl-3b": {"Qwen2MLP", "Qwen2_5_VLMLP"},
}


@pytest.mark.parametrize("preset", sorted(REPLICAS))
def test_each_architectures_mlps_run_in_place_with_identical_logits(replicas, preset):
    backend = load_backend(str(replicas[preset]), quant="int8")
    patched = [m for m in backend.model.modules() if "forward" in vars(m)]
    assert {type(m).__name__ for m in patched} == IN_PLACE_MLPS[preset]
    assert backend.info.details["mlp"].startswith("in-place MLP activations (")
    study = _study(1)
    prepared = backend.preprocess([(study, _prompt(study))])
    with torch.inference_mode():
        fast = backend.model(**prepared.inputs).logits
        for m in patched:
            del m.forward  # back to the class's own forward
        plain = backend.model(**prepared.inputs).logits
    assert torch.equal(fast, plain)


@pytest.mark.parametrize("preset", sorted(REPLICAS))
def test_each_architecture_writes_the_same_tokens_with_the_in_place_kv_cache(replicas, preset):
    """Two studies of different lengths in one batch (left padding), greedy, in-place cache vs transformers' own."""
    from medvlm.models.hf import kv_cache

    backend = load_backend(str(replicas[preset]), quant="int8", batch_size=2)
    assert backend.info.details["kv_cache"] == kv_cache.DESCRIPTION
    pairs = [(s, _prompt(s)) for s in (_study(1, key="s-one"), _study(2, size=(256, 320), key="s-two"))]
    inputs = backend.preprocess(pairs).inputs
    prompt = inputs["input_ids"].shape[1]
    cache = kv_cache.new_cache(backend.model, prompt + 12)
    assert "InPlaceLayer" in {type(layer).__name__ for layer in cache.layers}
    with torch.inference_mode():
        ours = backend.model.generate(**inputs, max_new_tokens=12, min_new_tokens=12, do_sample=False,
                                      **{kv_cache.cache_argument(): cache})
        theirs = backend.model.generate(**inputs, max_new_tokens=12, min_new_tokens=12, do_sample=False)
    assert ours.shape == (2, prompt + 12) and torch.equal(ours, theirs)
    assert all(layer._filled == prompt + 11 for layer in cache.layers if type(layer).__name__ == "InPlaceLayer")


def test_streamed_int8_fallback_reason_is_recorded_in_provenance(tmp_path, replicas):
    from safetensors.torch import load_file, save_file

    copy = tmp_path / "renamed"
    shutil.copytree(replicas["smolvlm-256m"], copy)
    tensors = load_file(copy / "model.safetensors")
    key = next(k for k in tensors if "layers.0." in k and k.endswith("q_proj.weight"))
    tensors[key.replace("q_proj", "legacy_q_proj")] = tensors.pop(key)
    save_file(tensors, copy / "model.safetensors", metadata={"format": "pt"})
    backend = load_backend(str(copy), quant="int8")
    assert "streamed load not possible: checkpoint key" in backend.info.quantization
    assert "legacy_q_proj" in backend.info.quantization


# --- the processor loads without torchvision ---------------------------------------------------------------------

def test_qwen_processor_loads_image_only_without_torchvision(replicas):
    import importlib.util

    from transformers import AutoProcessor

    from medvlm.models.hf.processor import load_processor

    processor = load_processor(replicas["qwen2.5-vl-3b"])
    assert type(processor).__name__ == "Qwen2_5_VLProcessor" and processor.image_processor is not None
    if importlib.util.find_spec("torchvision") is None:
        with pytest.raises((ImportError, OSError)):  # what medvlm works around
            AutoProcessor.from_pretrained(replicas["qwen2.5-vl-3b"])


# --- end to end: `medvlm batch` through every preset -----------------------------------------------------------------

@pytest.fixture(scope="module")
def mixed_studies(tmp_path_factory) -> Path:
    """One PA study, one PA + lateral study and one PNG study: a batch of three mixes one- and two-image studies."""
    root = tmp_path_factory.mktemp("studies")
    for name in ("study_001_pa", "study_002_pa_lateral", "png_study_001"):
        shutil.copytree(SAMPLE_STUDIES / name, root / name)
    return root


LEAK_MARKERS = ("<start_of_", "<end_of_", "<image", "<|", "<row_", "<global-img>", "<fake_token", "<bos>", "<eos>",
                "<pad>", "<mask>", "[multimodal]")


@pytest.mark.parametrize("preset", sorted(REPLICAS))
def test_batch_end_to_end_with_int8(replicas, mixed_studies, tmp_path, preset, monkeypatch):
    """`medvlm batch` (the real CLI, in process) with the preset name resolving to its replica."""
    from typer.testing import CliRunner

    from medvlm.cli import app

    out = tmp_path / "run"
    monkeypatch.setenv("MEDVLM_MODEL_" + "".join(c if c.isalnum() else "_" for c in preset).upper(), str(replicas[preset]))
    proc = CliRunner().invoke(app, [
        "batch", str(mixed_studies), "--model", preset, "--out", str(out), "--quant", "int8", "--batch-size", "3",
        "--max-new-tokens", "8", "--max-images", "2", "--no-pdf",
    ])
    assert proc.exit_code == 0, (proc.output[-3000:], proc.exception)
    with open(out / "summary.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3 and all(r["status"] == "ok" for r in rows), rows
    images_per_study = set()
    for row in rows:
        doc = json.loads((out / row["report"]).read_text(encoding="utf-8"))
        images_per_study.add(len(doc["images"]))
        provenance = doc["provenance"]
        assert provenance["model"]["architecture"] == json.loads(
            (preset_config_dir(preset) / "config.json").read_text())["architectures"][0]
        assert provenance["quantization"].startswith("int8")
        assert "checkpoint streamed" in provenance["quantization"] or "streamed load not possible" in provenance["quantization"]
        text = doc["model_output"]["text"]
        assert not any(marker in text for marker in LEAK_MARKERS), text
        if doc["model_output"]["answer_status"] != "complete":
            assert doc["risk"]["level"] != "normal"
    assert images_per_study == {1, 2}  # one batch held one- and two-image studies


@pytest.mark.parametrize("preset", ["smolvlm-256m", "qwen2.5-vl-3b"])
def test_real_processor_expands_images_like_the_replica(backends, preset):
    """The published tokenizer and processor (read in place) give the same image placeholders and control ids."""
    from medvlm.models.hf.processor import cap_visual_tokens, load_processor
    from medvlm.models.hf.tokens import control_token_ids

    real = load_processor(_shared_model_dir(preset))
    cap_visual_tokens(real)  # as the backend does on load
    backend = backends[preset]
    image_id = backend.model.config.image_token_id
    for study in (_study(1, key="s-one"), _study(2, size=(2048, 1700), key="s-two")):
        messages = backend._messages(study, _prompt(study))
        images = [[img.image for img in study.images]]
        ours = backend.processor(text=[_rendered(backend, study)], images=images, return_tensors="pt")
        theirs = real(text=[real.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)],
                      images=images, return_tensors="pt")
        assert int((theirs["input_ids"] == image_id).sum()) == int((ours["input_ids"] == image_id).sum())
        assert theirs["pixel_values"].shape == ours["pixel_values"].shape
    real_markup = control_token_ids(real.tokenizer, real)
    assert {i for i in REPLICAS[preset].layout.tokens if i not in REPLICAS[preset].stop_ids} <= real_markup | set(
        backend.tokenizer.all_special_ids)
    assert not set(real.tokenizer.encode("The lungs are clear.", add_special_tokens=False)) & real_markup
