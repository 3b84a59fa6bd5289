"""Base models and tokenizers: the builtin tiny Llama for tests and demos, or any causal LM.

The builtin model needs no files and no hub: a random-init 2-layer Llama (hidden 64) over a
byte-level tokenizer (3 special tokens + 256 bytes = 259 ids). Influence scores only need
*a* differentiable model whose LoRA gradients separate tasks; warmup training gives the tiny
model enough structure for that (see ``tests/engine/test_planted.py``).
"""

from __future__ import annotations

import hashlib
import json
import os

import torch
from peft import PeftModel
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from workers.engine import gguf
from workers.engine.errors import InvalidInput

TINY_LLAMA = "builtin:tiny-llama"
BUILTIN_PREFIX = "builtin:"

PAD, BOS, EOS = "<pad>", "<s>", "</s>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS)
"""Ids 0, 1, 2; byte ``b`` has id ``len(SPECIAL_TOKENS) + b``."""

BYTE_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
"""Same layout as ``data.DEFAULT_PROMPT_FORMAT``, preceded by ``<s>``."""

_BUILTIN_SEED_KEY = "sift_builtin_seed"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map, the alphabet of ``ByteLevel``."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = list(printable)
    shift = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + shift)
            shift += 1
    return {b: chr(c) for b, c in zip(printable, chars, strict=True)}


def build_byte_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level tokenizer: every UTF-8 byte is one token, no merges, no files.

    A BPE model with an empty merge list over the 256 ``ByteLevel`` characters tokenizes any
    text into its bytes; ``<pad>``, ``<s>``, ``</s>`` are special tokens (ids 0, 1, 2) and are
    matched as whole tokens when they appear in text (the chat template writes ``<s>``).
    """
    byte_chars = _bytes_to_unicode()
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for b in range(256):
        vocab[byte_chars[b]] = len(SPECIAL_TOKENS) + b
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        model_max_length=1024,
    )
    tokenizer.chat_template = BYTE_CHAT_TEMPLATE
    return tokenizer


def build_tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    """Random-init Llama: hidden 64, 2 layers, 4 heads (2 KV heads), MLP 128, 1024 positions.

    Deterministic: the same ``seed`` gives bit-identical weights. Initialisation draws from a
    forked RNG, so the caller's global torch RNG state is left untouched.
    """
    n_vocab = len(SPECIAL_TOKENS) + 256
    config = LlamaConfig(
        vocab_size=n_vocab,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        max_position_embeddings=1024,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    setattr(config, _BUILTIN_SEED_KEY, seed)
    config._attn_implementation = "eager"  # exact, dtype-agnostic; speed is irrelevant here
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model


def load_model_and_tokenizer(
    source: str,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    seed: int = 0,
    model_cache_dir: str | os.PathLike[str] | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Resolve ``source`` (``builtin:*``, a local path or a hub id) to a model and tokenizer.

    A local GGUF file (or a folder holding one, ``gguf.find_gguf_file``) is converted once to
    a safetensors folder under ``model_cache_dir`` (required for such a source) and loaded from
    there. ``seed`` only matters for builtin models. A tokenizer without a pad token gets its
    EOS token as pad (padding is always masked out, so the choice does not change any loss).
    """
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    if source.startswith(BUILTIN_PREFIX):
        if source != TINY_LLAMA:
            raise InvalidInput(f"unknown builtin model {source!r}; known: {TINY_LLAMA!r}")
        model = build_tiny_llama(seed)
        tokenizer = build_byte_tokenizer()
    else:
        folder = source
        if source.startswith(("/", ".", "~")) and not os.path.exists(source):
            raise InvalidInput(f"model path {source} does not exist on this worker")
        gguf_file = gguf.find_gguf_file(source) if os.path.exists(source) else None
        if gguf_file is not None:
            if model_cache_dir is None:
                raise InvalidInput(f"GGUF source {source!r} needs a model cache folder")
            folder = str(gguf.converted_folder(gguf_file, model_cache_dir))
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise InvalidInput(f"tokenizer of {source!r} has neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
    model = model.to(device=device, dtype=dtype)  # type: ignore[call-arg]  # HF wraps .to
    return model, tokenizer


def model_fingerprint(source: str, model: PreTrainedModel | PeftModel) -> str:
    """``source@config-sha256[:16]`` (plus ``#seed=N`` for builtins): provenance of features.

    A model converted from GGUF is ``gguf:sha256:<hex>@config-sha256[:16]`` instead: named by
    its file's content, not the path it was registered by, so it is the same on every worker.
    The config hash ignores fields that do not change the function computed
    (``transformers_version``, ``_name_or_path``), so it is stable across library upgrades.
    """
    config = model.config.to_dict()
    for volatile in ("transformers_version", "_name_or_path"):
        config.pop(volatile, None)
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    gguf_sha256 = config.get(gguf.SHA256_CONFIG_KEY)
    name = f"gguf:sha256:{gguf_sha256}" if isinstance(gguf_sha256, str) else source
    fingerprint = f"{name}@{hashlib.sha256(blob).hexdigest()[:16]}"
    if source.startswith(BUILTIN_PREFIX):
        seed = getattr(model.config, _BUILTIN_SEED_KEY, None)
        if seed is None:
            raise InvalidInput(f"model was not built by {source!r}: its config has no seed")
        fingerprint += f"#seed={seed}"
    return fingerprint
