"""Make the demo model convertible by llama.cpp's convert_hf_to_gguf.py, and serve the GGUF with llama-cpp-python.

Two things stop the converter on the demo model as built by medvlm:
- its tokenizer is a byte-level BPE trained here, whose pre-tokenizer hash llama.cpp does not know
  ("BPE pre-tokenizer was not recognized"); the converter's Gemma 3 path takes a SentencePiece
  `tokenizer.model` instead, so the export writes one with the same pieces at the same ids;
- transformers 5 saves the vision tower as `vision_tower.embeddings.*`, where the converter expects
  the older `vision_tower.vision_model.embeddings.*`; the export renames the keys.
It also writes `preprocessor_config.json` (the converter reads `image_seq_length` there to size the
projector's pooling). Nothing from llama.cpp is copied here: the converter runs from its own source.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

SPECIAL = {"<pad>", "<eos>", "<bos>", "<unk>", "<start_of_image>", "<end_of_image>", "<image_soft_token>",
           "<start_of_turn>", "<end_of_turn>"}


def _byte_decoder() -> dict[str, int]:
    """The inverse of the GPT-2 byte-level alphabet (byte -> printable character)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(printable, chars)}


def sentencepiece_model(tokenizer_json: dict) -> bytes:
    """A SentencePiece BPE model with the byte-level BPE's pieces at the same ids (spaces as ▁)."""
    from sentencepiece import sentencepiece_model_pb2 as sp

    vocab = dict(tokenizer_json["model"]["vocab"])
    for added in tokenizer_json.get("added_tokens", []):
        vocab[added["content"]] = added["id"]
    decoder = _byte_decoder()
    model = sp.ModelProto()
    spec = model.trainer_spec
    spec.model_type = sp.TrainerSpec.BPE
    spec.vocab_size = len(vocab)
    spec.pad_id, spec.eos_id, spec.bos_id, spec.unk_id = vocab["<pad>"], vocab["<eos>"], vocab["<bos>"], vocab["<unk>"]
    spec.byte_fallback = False
    norm = model.normalizer_spec
    norm.name = "identity"
    norm.add_dummy_prefix = False
    norm.remove_extra_whitespaces = False
    norm.escape_whitespaces = True
    seen: set[str] = set()
    for token, token_id in sorted(vocab.items(), key=lambda item: item[1]):
        piece = model.pieces.add()
        if token in SPECIAL:
            piece.piece = token
            piece.type = sp.ModelProto.SentencePiece.UNKNOWN if token == "<unk>" else sp.ModelProto.SentencePiece.CONTROL
            piece.score = 0.0
        else:
            try:
                text = bytes(decoder[c] for c in token).decode("utf-8").replace(" ", "\u2581")
            except (KeyError, UnicodeDecodeError):
                text = token  # part of a multi-byte character: keep the byte-level spelling
            if "\x00" in text:
                text = token  # SentencePiece pieces may not hold NUL
            if not text or text in seen:
                text = f"<medvlm_unused_{token_id}>"
                piece.type = sp.ModelProto.SentencePiece.UNUSED
            else:
                piece.type = sp.ModelProto.SentencePiece.NORMAL
            piece.piece = text
            piece.score = -float(token_id)  # earlier merges first
        seen.add(piece.piece)
    return model.SerializeToString()


def export_for_llamacpp(model_dir: Path, out: Path) -> Path:
    """A copy of the demo model directory that convert_hf_to_gguf.py accepts (see the module docstring)."""
    from safetensors.torch import load_file, save_file

    out.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "generation_config.json", "tokenizer_config.json", "chat_template.jinja",
                 "tokenizer.json"):
        if (model_dir / name).is_file():
            shutil.copy2(model_dir / name, out / name)
    tensors = load_file(str(model_dir / "model.safetensors"))
    renamed = {}
    for key, value in tensors.items():
        if key.startswith("vision_tower.") and not key.startswith("vision_tower.vision_model."):
            key = "vision_tower.vision_model." + key[len("vision_tower."):]
        if key.startswith("language_model.") and not key.startswith("language_model.model."):
            key = "language_model.model." + key[len("language_model."):]
        renamed[key] = value.contiguous()
    save_file(renamed, str(out / "model.safetensors"), metadata={"format": "pt"})
    tokenizer = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    (out / "tokenizer.model").write_bytes(sentencepiece_model(tokenizer))
    processor = json.loads((model_dir / "processor_config.json").read_text(encoding="utf-8"))
    pre = dict(processor.get("image_processor", {}))
    pre["image_seq_length"] = processor.get("image_seq_length", 256)
    pre["processor_class"] = "Gemma3Processor"
    (out / "preprocessor_config.json").write_text(json.dumps(pre, indent=2))
    chat_template = out / "chat_template.jinja"
    if chat_template.is_file():  # the converter takes the template from tokenizer_config.json
        config = json.loads((out / "tokenizer_config.json").read_text())
        config["chat_template"] = chat_template.read_text()
        (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return out


def convert(converter: Path, exported: Path, out: Path, *, mmproj: bool, timeout: float = 600) -> Path:
    """Run llama.cpp's converter (from its own source tree) on an exported model; returns the GGUF path."""
    target = out / ("mmproj-demo-f32.gguf" if mmproj else "demo-f32.gguf")
    cmd = [sys.executable, str(converter), str(exported), "--outfile", str(target), "--outtype", "f32"]
    if mmproj:
        cmd.append("--mmproj")
    env = dict(os.environ)
    env.pop("NO_LOCAL_GGUF", None)
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if result.returncode != 0 or not target.is_file():
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}):\n{tail}")
    return target


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def llamacpp_server_cmd(model: Path, mmproj: Path, port: int, alias: str = "demo-gguf") -> list[str]:
    return [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--clip_model_path", str(mmproj),
            "--chat_format", "mtmd", "--model_alias", alias, "--host", "127.0.0.1", "--port", str(port),
            "--n_ctx", "4096", "--n_threads", "2", "--seed", "0", "--verbose", "false"]
