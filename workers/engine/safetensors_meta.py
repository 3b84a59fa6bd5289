"""Read the string metadata of an in-memory safetensors blob.

``safetensors.torch.load`` returns only the tensors. The format is an 8-byte little-endian
header length, then a JSON header whose optional ``"__metadata__"`` entry maps str -> str.
"""

from __future__ import annotations

import json
import struct

from workers.engine.errors import InvalidInput


def read_metadata(blob: bytes) -> dict[str, str]:
    """The ``__metadata__`` dict of a safetensors blob (empty if it has none)."""
    if len(blob) < 8:
        raise InvalidInput("not a safetensors blob: shorter than its 8-byte header length")
    (header_len,) = struct.unpack("<Q", blob[:8])
    if 8 + header_len > len(blob):
        raise InvalidInput("not a safetensors blob: header length exceeds the blob")
    try:
        header = json.loads(blob[8 : 8 + header_len])
    except ValueError as exc:
        raise InvalidInput(f"not a safetensors blob: bad header ({exc})") from exc
    metadata = header.get("__metadata__", {})
    if not isinstance(metadata, dict):
        raise InvalidInput("safetensors __metadata__ is not a mapping")
    return {str(k): str(v) for k, v in metadata.items()}
