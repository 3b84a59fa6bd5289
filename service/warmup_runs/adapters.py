"""Uploaded LoRA adapters, checked from the safetensors header alone: no torch, no pickle.

A safetensors file is an 8-byte little-endian header length ``N``, ``N`` bytes of JSON
``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__"?: {str: str}}`` and
then the tensor bytes, offsets counted from the end of the header. The tensors must tile those
bytes exactly, as the safetensors loader demands, so a file that passes here loads in the worker.
Pickle-based checkpoints (``.bin``, ``.pt``, zip archives) are refused and never unpickled:
unpickling runs arbitrary code.

PEFT saves a LoRA module ``m`` as ``m.lora_A.weight`` ``[r, in]`` and ``m.lora_B.weight``
``[out, r]``; Sift's own names carry the adapter name, ``m.lora_A.default.weight``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, BinaryIO

from service.errors import InvalidInput

MAX_HEADER_BYTES = 4 * 1024 * 1024
"""A longer header is refused before it is read, so a hostile one cannot fill the API's memory.
The safetensors loader allows 100 MB; a LoRA adapter's header takes ~130 bytes a tensor (a 70B
model with every module adapted: ~150 KB)."""

DTYPE_BITS: dict[str, int] = {
    "BOOL": 8,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "I64": 64,
    "U64": 64,
    "F64": 64,
    "C64": 64,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
}
"""Every dtype safetensors knows, with its width in bits."""

LORA_DTYPES = ("F16", "BF16", "F32", "F64")

_LORA_SUFFIXES = (
    (".lora_A.weight", "A"),
    (".lora_B.weight", "B"),
    (".lora_A.default.weight", "A"),
    (".lora_B.default.weight", "B"),
)

_HASH_CHUNK = 1 << 20
_BAD_CHAR = re.compile("[\x00\ud800-\udfff]")


@dataclass(frozen=True)
class TensorEntry:
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class AdapterFile:
    """One checked upload: its tensors (from the header) and the sha256 of its bytes."""

    filename: str
    field: str
    tensors: dict[str, TensorEntry]
    sha256: str


@dataclass(frozen=True)
class LoraLayout:
    r: int
    target_modules: tuple[str, ...]
    """Sorted last components of the module names, e.g. ``("k_proj", "q_proj")``."""


def few(names: Iterable[str], limit: int = 5) -> str:
    """``a, b, c (and 4 more)``: names for a message that stays short."""
    items = list(names)
    shown = ", ".join(items[:limit])
    return shown + (f" (and {len(items) - limit} more)" if len(items) > limit else "")


def _not_safetensors(filename: str, field: str, reason: str) -> InvalidInput:
    return InvalidInput(
        f"adapter file {filename!r} is not a valid safetensors file ({reason}); only "
        "safetensors adapters are accepted (pickle-based .bin/.pt checkpoints are never loaded)",
        field=field,
    )


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def read_adapter_file(f: BinaryIO, filename: str, field: str) -> AdapterFile:
    """Check ``f`` is a well-formed safetensors file and hash it; reads the header, then streams."""
    f.seek(0, os.SEEK_END)
    size = f.tell()
    f.seek(0)
    prefix = f.read(8)
    if len(prefix) < 8:
        raise _not_safetensors(filename, field, f"{size} bytes, too short for a header")
    (header_len,) = struct.unpack("<Q", prefix)
    if header_len > MAX_HEADER_BYTES:
        raise _not_safetensors(
            filename, field, f"header length {header_len} exceeds {MAX_HEADER_BYTES} bytes"
        )
    if header_len > size - 8:
        raise _not_safetensors(
            filename, field, f"header length {header_len} exceeds the {size}-byte file"
        )
    try:
        header = json.loads(f.read(header_len))
    except ValueError as exc:
        raise _not_safetensors(filename, field, f"header is not JSON: {exc}") from None
    except RecursionError:
        raise _not_safetensors(filename, field, "header JSON is nested too deeply") from None
    if not isinstance(header, dict):
        raise _not_safetensors(filename, field, "header is not a JSON object")
    tensors = _check_entries(header, size - 8 - header_len, filename, field)
    f.seek(0)
    digest = hashlib.sha256()
    while chunk := f.read(_HASH_CHUNK):
        digest.update(chunk)
    return AdapterFile(filename=filename, field=field, tensors=tensors, sha256=digest.hexdigest())


def _check_entries(
    header: dict[str, Any], data_len: int, filename: str, field: str
) -> dict[str, TensorEntry]:
    """Dtypes known, shapes × dtype sizes equal to the offsets, the tensors tiling the data."""
    tensors: dict[str, TensorEntry] = {}
    spans: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        if name == "__metadata__":
            if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
                raise _not_safetensors(filename, field, "__metadata__ is not a str -> str map")
            continue
        if _BAD_CHAR.search(name):
            raise _not_safetensors(
                filename, field, f"tensor name {name!r} holds NUL or a lone surrogate"
            )
        if not isinstance(entry, dict):
            raise _not_safetensors(filename, field, f"entry {name!r} is not an object")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
            raise _not_safetensors(filename, field, f"tensor {name!r} has unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
            raise _not_safetensors(filename, field, f"tensor {name!r} has a bad shape {shape!r}")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(_is_count(o) for o in offsets)
            or offsets[0] > offsets[1]
        ):
            raise _not_safetensors(
                filename, field, f"tensor {name!r} has bad data_offsets {offsets!r}"
            )
        begin, end = offsets
        bits = math.prod(shape) * DTYPE_BITS[dtype]
        if bits % 8 or bits // 8 != end - begin:
            needed = bits // 8 if bits % 8 == 0 else bits / 8
            raise _not_safetensors(
                filename,
                field,
                f"tensor {name!r} of shape {shape} and dtype {dtype} needs {needed} bytes, "
                f"its data_offsets {offsets} span {end - begin}",
            )
        tensors[name] = TensorEntry(dtype=dtype, shape=tuple(shape))
        spans.append((begin, end, name))
    position = 0
    for begin, end, name in sorted(spans):
        if begin != position:
            raise _not_safetensors(
                filename,
                field,
                f"tensor {name!r} starts at data byte {begin}, expected {position} "
                "(tensors overlap or leave a gap)",
            )
        position = end
    if position != data_len:
        raise _not_safetensors(
            filename,
            field,
            f"the header's data_offsets end at byte {position} but the file holds {data_len} "
            "bytes of tensor data (truncated or padded)",
        )
    return tensors


def _split_lora_name(name: str) -> tuple[str, str] | None:
    """``(module, "A" | "B")`` for a PEFT or Sift LoRA weight name, else None."""
    for suffix, kind in _LORA_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], kind
    return None


def lora_layout(adapter: AdapterFile) -> LoraLayout:
    """The rank and target modules of a LoRA adapter; anything but LoRA A/B pairs is refused."""
    label = f"adapter file {adapter.filename!r}"
    modules: dict[str, dict[str, str]] = {}
    foreign: list[str] = []
    for name in sorted(adapter.tensors):
        split = _split_lora_name(name)
        if split is None:
            foreign.append(name)
            continue
        module, kind = split
        if kind in modules.setdefault(module, {}):
            raise InvalidInput(
                f"{label} holds lora_{kind} of {module!r} twice: {modules[module][kind]} and "
                f"{name}",
                field=adapter.field,
            )
        modules[module][kind] = name
    if foreign:
        raise InvalidInput(
            f"{label} holds tensors that are not LoRA weights (names must end in "
            f".lora_A.weight or .lora_B.weight): {few(foreign)}",
            field=adapter.field,
        )
    if not modules:
        raise InvalidInput(f"{label} holds no LoRA weights", field=adapter.field)
    unpaired = [
        f"{names.get('A') or names['B']} has no lora_{'B' if 'A' in names else 'A'}"
        for names in modules.values()
        if len(names) != 2
    ]
    if unpaired:
        raise InvalidInput(
            f"{label}: each LoRA module needs both lora_A and lora_B: {few(unpaired)}",
            field=adapter.field,
        )
    not_float = [
        f"{name} ({entry.dtype})"
        for name, entry in sorted(adapter.tensors.items())
        if entry.dtype not in LORA_DTYPES
    ]
    if not_float:
        raise InvalidInput(
            f"{label}: LoRA weights must be {', '.join(LORA_DTYPES)}: {few(not_float)}",
            field=adapter.field,
        )
    ranks: dict[int, str] = {}
    bad_shapes: list[str] = []
    for names in modules.values():
        a, b = adapter.tensors[names["A"]].shape, adapter.tensors[names["B"]].shape
        if len(a) != 2 or len(b) != 2 or a[0] != b[1] or 0 in (*a, *b):
            bad_shapes.append(f"{names['A']} {list(a)} / {names['B']} {list(b)}")
        else:
            ranks.setdefault(a[0], names["A"])
    if bad_shapes:
        raise InvalidInput(
            f"{label}: lora_A must be [r, in] and lora_B [out, r] with the same r >= 1: "
            f"{few(bad_shapes)}",
            field=adapter.field,
        )
    if len(ranks) > 1:
        raise InvalidInput(
            f"{label}: all LoRA modules must share one rank r, found "
            f"{few(f'r={r} in {name}' for r, name in sorted(ranks.items()))}",
            field=adapter.field,
        )
    target_modules = tuple(sorted({module.rsplit(".", 1)[-1] for module in modules}))
    return LoraLayout(r=next(iter(ranks)), target_modules=target_modules)


def check_same_tensors(first: AdapterFile, other: AdapterFile) -> None:
    """Later checkpoints of one run hold the same tensors, with the same shapes, as the first."""
    missing = sorted(set(first.tensors) - set(other.tensors))
    extra = sorted(set(other.tensors) - set(first.tensors))
    reshaped = [
        f"{name} {list(entry.shape)} (first file: {list(first.tensors[name].shape)})"
        for name, entry in sorted(other.tensors.items())
        if name in first.tensors and entry.shape != first.tensors[name].shape
    ]
    problems = [
        f"{what}: {few(names)}"
        for what, names in (("missing", missing), ("unexpected", extra), ("reshaped", reshaped))
        if names
    ]
    if problems:
        raise InvalidInput(
            f"adapter file {other.filename!r} does not hold the same tensors as "
            f"{first.filename!r} (every checkpoint of a run must): {'; '.join(problems)}",
            field=other.field,
        )
