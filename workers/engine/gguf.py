"""GGUF model sources: converted once to a safetensors folder in a content-addressed cache.

A source is a GGUF file (``*.gguf``) or a folder holding exactly one ``.gguf`` and no
``config.json`` (a folder with ``config.json`` is an ordinary Hugging Face folder). transformers
de-quantises a GGUF checkpoint to full precision when it loads it (``gguf_file=``, ~40 s for
SmolLM2-135M on 2 CPU cores); saved as safetensors it reloads in about a second. So the first
load of a GGUF on a worker converts it into ``<cache_dir>/gguf-<sha256>/`` and every later load,
on any worker sharing the cache, reads that folder.

The key is the sha256 of the GGUF bytes (streamed), so the same file under two paths, or on two
workers with different mounts, converts once and gives one model fingerprint. Conversion runs
under an exclusive ``flock`` on ``<cache_dir>/gguf-<sha256>.lock`` into a private temporary
folder that is renamed into place when complete: a racing worker waits for the lock and then
finds the folder; nobody ever sees a half-written one. (Where ``flock`` is not shared, e.g.
some network filesystems, two workers may both convert; the atomic rename still leaves one
complete folder.)
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from workers.engine.errors import InvalidInput

GGUF_SUFFIX = ".gguf"
CACHE_PREFIX = "gguf-"
SHA256_CONFIG_KEY = "sift_gguf_sha256"
"""Written into the converted folder's ``config.json``: ``models.model_fingerprint`` derives
the fingerprint of a converted model from it instead of from the path it was loaded by."""
_READ_CHUNK = 1 << 20
_HASHES: dict[tuple[str, int, int, int], str] = {}


def find_gguf_file(source: str | os.PathLike[str]) -> Path | None:
    """The GGUF file ``source`` names, or ``None`` when it is not a GGUF source.

    A ``.gguf`` file, or a folder with no ``config.json`` that holds exactly one ``.gguf``
    (several are an ``InvalidInput`` naming them: which one is meant cannot be guessed).
    """
    path = Path(source)
    if path.is_file():
        return path if path.name.lower().endswith(GGUF_SUFFIX) else None
    if not path.is_dir() or (path / "config.json").exists():
        return None
    found = sorted(p for p in path.iterdir() if p.name.lower().endswith(GGUF_SUFFIX))
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise InvalidInput(f"model folder {path} holds {len(found)} GGUF files ({names}); name one")
    return found[0] if found else None


def gguf_sha256(path: Path) -> str:
    """sha256 of the file's bytes, streamed; remembered per (path, inode, size, mtime)."""
    stat = path.stat()
    memo = (str(path.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if memo not in _HASHES:
        digest = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(_READ_CHUNK):
                digest.update(chunk)
        _HASHES[memo] = digest.hexdigest()
    return _HASHES[memo]


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    with lock_path.open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def build_once(cache_dir: Path, key: str, build: Callable[[Path], object]) -> Path:
    """``<cache_dir>/<key>``, built by ``build(tmp_folder)`` if no process has built it yet.

    At most one process builds a key at a time (``flock``); ``build`` writes into a fresh
    temporary folder, which is renamed to ``<cache_dir>/<key>`` only once ``build`` returned,
    so the folder either does not exist or is complete. A build that raised leaves nothing;
    temporaries of a process that died mid-build are removed by the next builder.
    """
    final = cache_dir / key
    if final.is_dir():
        return final
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive(cache_dir / f"{key}.lock"):
        if final.is_dir():  # built while we waited for the lock
            return final
        for stale in cache_dir.glob(f".tmp-{key}-*"):  # a builder that died; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        tmp = cache_dir / f".tmp-{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            build(tmp)
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():  # not "someone without our lock got there first"
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Load ``gguf_path`` with transformers (de-quantised, fp32) and save model and tokenizer
    as a safetensors folder in ``out_dir``, with the GGUF's sha256 in ``config.json``.

    transformers refuses ``save_pretrained`` on a GGUF-loaded model while it carries its
    quantizer, so ``hf_quantizer`` and ``config.quantization_config`` are cleared first (the
    weights are already plain fp32 tensors).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    started = time.monotonic()
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    except ImportError as exc:  # the `gguf` package reads the file
        raise InvalidInput(f"cannot read GGUF {gguf_path}: {exc}") from exc
    except Exception as exc:  # a corrupt or unsupported file fails in many ways (struct, KeyError)
        raise InvalidInput(f"cannot load GGUF {gguf_path}: {type(exc).__name__}: {exc}") from exc
    model.hf_quantizer = None  # type: ignore[assignment]  # not a submodule: a plain attribute
    if hasattr(model.config, "quantization_config"):
        delattr(model.config, "quantization_config")
    setattr(model.config, SHA256_CONFIG_KEY, gguf_sha256(gguf_path))
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "sift-gguf.json").write_text(
        json.dumps(
            {
                "gguf_file": name,
                "sha256": gguf_sha256(gguf_path),
                "bytes": gguf_path.stat().st_size,
                "convert_seconds": round(time.monotonic() - started, 2),
            },
            indent=2,
        )
    )
    for path in out_dir.iterdir():  # some writers make 0600 files; workers may run as others
        path.chmod(0o644)


def converted_folder(gguf_path: Path, cache_dir: str | os.PathLike[str]) -> Path:
    """The safetensors folder of ``gguf_path`` in ``cache_dir``, converting it on first use."""
    key = CACHE_PREFIX + gguf_sha256(gguf_path)
    return build_once(Path(cache_dir), key, lambda out: convert_gguf(gguf_path, out))
