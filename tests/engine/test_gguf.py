"""GGUF model sources: which paths are GGUF, the build-once cache, and the real conversion."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from pathlib import Path

import pytest
import torch

from workers.engine import gguf
from workers.engine.errors import InvalidInput
from workers.engine.models import load_model_and_tokenizer, model_fingerprint


def test_find_gguf_file_rules(tmp_path: Path) -> None:
    file = tmp_path / "m.Q4.gguf"
    file.write_bytes(b"GGUF")
    assert gguf.find_gguf_file(file) == file
    assert gguf.find_gguf_file(tmp_path) == file  # a folder holding exactly one
    (tmp_path / "other.GGUF").write_bytes(b"GGUF")
    with pytest.raises(InvalidInput, match="2 GGUF files .*m.Q4.gguf"):
        gguf.find_gguf_file(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    assert gguf.find_gguf_file(tmp_path) is None  # a Hugging Face folder wins
    (tmp_path / "weights.bin").write_bytes(b"x")
    assert gguf.find_gguf_file(tmp_path / "weights.bin") is None
    assert gguf.find_gguf_file(tmp_path / "missing") is None


def test_sha256_is_streamed_content_hash(tmp_path: Path) -> None:
    import hashlib

    data = os.urandom(3 * (1 << 20) + 17)  # spans several read chunks
    (tmp_path / "a.gguf").write_bytes(data)
    (tmp_path / "b.gguf").write_bytes(data)
    expected = hashlib.sha256(data).hexdigest()
    assert gguf.gguf_sha256(tmp_path / "a.gguf") == gguf.gguf_sha256(tmp_path / "b.gguf")
    assert gguf.gguf_sha256(tmp_path / "a.gguf") == expected
    time.sleep(0.01)
    (tmp_path / "a.gguf").write_bytes(data[:-1])  # a changed file is hashed again
    assert gguf.gguf_sha256(tmp_path / "a.gguf") == hashlib.sha256(data[:-1]).hexdigest()


def _slow_build(log: str, out: Path) -> None:
    """Writes two files with a pause between them and logs each build (O_APPEND is atomic)."""
    with open(log, "a") as f:
        f.write(f"{os.getpid()}\n")
    (out / "first").write_text("1")
    time.sleep(0.4)
    (out / "second").write_text("2")


def _race(cache: str, log: str, start: float, results: multiprocessing.Queue) -> None:
    time.sleep(max(0.0, start - time.time()))
    path = gguf.build_once(Path(cache), "gguf-key", lambda out: _slow_build(log, out))
    complete = (path / "first").is_file() and (path / "second").is_file()
    results.put((str(path), complete))


def _watch(final: str, until: float, results: multiprocessing.Queue) -> None:
    """Polls the final folder: whenever it exists, it must already be complete."""
    seen_partial = False
    while time.time() < until:
        if os.path.isdir(final) and not os.path.isfile(os.path.join(final, "second")):
            seen_partial = True
        time.sleep(0.001)
    results.put(("watch", not seen_partial))


def test_build_once_racing_processes_build_once_and_never_expose_partial(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    cache, log = tmp_path / "cache", tmp_path / "builds.log"
    results: multiprocessing.Queue = ctx.Queue()
    start = time.time() + 0.3
    procs = [
        ctx.Process(target=_race, args=(str(cache), str(log), start, results)) for _ in range(4)
    ]
    procs.append(ctx.Process(target=_watch, args=(str(cache / "gguf-key"), start + 1.5, results)))
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    got = [results.get(timeout=5) for _ in procs]
    assert ("watch", True) in got
    builders = [r for r in got if r[0] != "watch"]
    assert builders == [(str(cache / "gguf-key"), True)] * 4
    assert len(log.read_text().splitlines()) == 1  # one build among four racers
    assert sorted(p.name for p in cache.iterdir()) == ["gguf-key", "gguf-key.lock"]


def test_build_once_failure_leaves_nothing_and_stale_temporaries_are_removed(
    tmp_path: Path,
) -> None:
    def broken(out: Path) -> None:
        (out / "half").write_text("x")
        raise InvalidInput("conversion failed")

    with pytest.raises(InvalidInput, match="conversion failed"):
        gguf.build_once(tmp_path, "k", broken)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.lock"]
    stale = tmp_path / ".tmp-k-99999-deadbeef"  # a builder that died mid-build
    stale.mkdir()
    (stale / "half").write_text("x")
    path = gguf.build_once(tmp_path, "k", lambda out: (out / "whole").write_text("y"))
    assert (path / "whole").read_text() == "y" and not stale.exists()
    calls = []
    assert gguf.build_once(tmp_path, "k", lambda out: calls.append(out)) == path
    assert calls == []  # built: never again


def test_a_local_path_the_worker_lacks_is_named(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="does not exist on this worker"):
        load_model_and_tokenizer(str(tmp_path / "gone.gguf"), model_cache_dir=tmp_path)


def test_gguf_source_needs_a_cache_dir(tmp_path: Path) -> None:
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    with pytest.raises(InvalidInput, match="needs a model cache folder"):
        load_model_and_tokenizer(str(tmp_path / "m.gguf"))


def test_unreadable_gguf_is_invalid_input(tmp_path: Path) -> None:
    (tmp_path / "m.gguf").write_bytes(b"GGUF not really")
    with pytest.raises(InvalidInput, match="cannot load GGUF"):
        load_model_and_tokenizer(str(tmp_path / "m.gguf"), model_cache_dir=tmp_path / "c")
    assert not any(p.is_dir() for p in (tmp_path / "c").iterdir())


@pytest.mark.real_model
def test_smollm2_conversion_matches_direct_gguf_load(
    smollm2_gguf: Path, smollm2_folder: Path, model_cache_dir: Path, tmp_path: Path
) -> None:
    """The cached folder computes what transformers' own GGUF loading computes; file and folder
    sources (and a copy of the file elsewhere) share one folder and one fingerprint."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    sha = gguf.gguf_sha256(smollm2_gguf)
    assert smollm2_folder == model_cache_dir / f"gguf-{sha}"
    config = json.loads((smollm2_folder / "config.json").read_text())
    assert config[gguf.SHA256_CONFIG_KEY] == sha and "quantization_config" not in config
    started = time.monotonic()
    model, tokenizer = load_model_and_tokenizer(str(smollm2_gguf), model_cache_dir=model_cache_dir)
    assert time.monotonic() - started < 20  # a reload, not a conversion
    fingerprint = model_fingerprint(str(smollm2_gguf), model)
    assert fingerprint.startswith(f"gguf:sha256:{sha}@")
    by_folder, _ = load_model_and_tokenizer(
        str(smollm2_gguf.parent), model_cache_dir=model_cache_dir
    )
    assert model_fingerprint(str(smollm2_gguf.parent), by_folder) == fingerprint
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576

    reference = AutoModelForCausalLM.from_pretrained(
        str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name, dtype=torch.float32
    )
    ref_tokenizer = AutoTokenizer.from_pretrained(
        str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name
    )
    text = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    assert ids.tolist() == ref_tokenizer(text, return_tensors="pt")["input_ids"].tolist()
    assert tokenizer.chat_template == ref_tokenizer.chat_template
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits, rtol=0, atol=1e-5)
