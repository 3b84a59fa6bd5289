"""Random projection of gradient features: R^P -> R^d (Johnson-Lindenstrauss, as in LESS/TRAK).

With Π ∈ R^{P×d} of i.i.d. entries ±1/√d, E[<xΠ, yΠ>] = <x, y> and, for d in the thousands,
inner products and cosines are preserved up to O(1/√d) relative error. P is the LoRA parameter
count (millions for a 7B model), so Π (P × d) is never held in memory: it is regenerated block
by block from a seed, and a feature set records the projector's ``spec``, seed and d in its
provenance so pool and probe features are always projected by the same Π.

Shapes: x [B, P] -> x Π [B, d].
"""

from __future__ import annotations

import hashlib
import math
from abc import ABC, abstractmethod

import torch
from torch import Tensor

from workers.engine.errors import InvalidInput

ROWS_PER_BLOCK = 1024
"""Rows of Π drawn from one generator: Π's block b (rows b·1024 ...) depends only on (seed, b).
Part of the ``rademacher-chunked:v1`` definition; changing it changes every projection."""


class Projector(ABC):
    """x [B, P] -> x Π [B, d], computed and returned in ``dtype``."""

    input_dim: int
    dim: int
    seed: int
    dtype: torch.dtype

    @abstractmethod
    def project(self, x: Tensor) -> Tensor:
        """Project a batch of flat gradients ``x`` [B, input_dim] to [B, dim]."""

    @abstractmethod
    def spec(self) -> str:
        """Name and version of the construction of Π (seed and d are recorded separately)."""

    def _check_input(self, x: Tensor) -> None:
        if x.ndim != 2 or x.shape[1] != self.input_dim:
            raise InvalidInput(
                f"{type(self).__name__} expects [B, {self.input_dim}], got {tuple(x.shape)}"
            )


class IdentityProjector(Projector):
    """Π = I (d = P): exact features, for tests and tiny models."""

    def __init__(self, input_dim: int, *, dtype: torch.dtype = torch.float32) -> None:
        if input_dim < 1:
            raise InvalidInput(f"input_dim must be >= 1, got {input_dim}")
        self.input_dim = input_dim
        self.dim = input_dim
        self.seed = 0
        self.dtype = dtype

    def project(self, x: Tensor) -> Tensor:
        self._check_input(x)
        return x.to(self.dtype)

    def spec(self) -> str:
        return "identity"


class RademacherProjector(Projector):
    """Π with i.i.d. ±1/√d entries, regenerated ``chunk_size`` rows at a time.

    Block b of ``ROWS_PER_BLOCK`` rows comes from a CPU ``torch.Generator`` seeded by
    hash(seed, b), so Π depends only on (input_dim, dim, seed): not on the batch size, the
    ``chunk_size`` (a memory knob: chunk_size × d floats at a time, a multiple of the block) or
    the device (blocks are drawn on CPU, then moved). Accumulation is in ``dtype`` (fp32
    default). Each call regenerates Π, so callers should project large batches.
    """

    def __init__(
        self,
        input_dim: int,
        dim: int,
        seed: int,
        *,
        chunk_size: int = 4 * ROWS_PER_BLOCK,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if input_dim < 1 or dim < 1:
            raise InvalidInput(f"input_dim and dim must be >= 1, got {input_dim}, {dim}")
        if seed < 0:
            raise InvalidInput(f"seed must be >= 0, got {seed}")
        if chunk_size < 1 or chunk_size % ROWS_PER_BLOCK != 0:
            raise InvalidInput(
                f"chunk_size must be a positive multiple of {ROWS_PER_BLOCK}, got {chunk_size}"
            )
        self.input_dim = input_dim
        self.dim = dim
        self.seed = seed
        self.chunk_size = chunk_size
        self.dtype = dtype

    def spec(self) -> str:
        return "rademacher-chunked:v1"

    def project(self, x: Tensor) -> Tensor:
        self._check_input(x)
        out = torch.zeros((x.shape[0], self.dim), dtype=self.dtype, device=x.device)
        for start in range(0, self.input_dim, self.chunk_size):
            stop = min(start + self.chunk_size, self.input_dim)
            rows = _rademacher_rows(start, stop, self.input_dim, self.dim, self.seed, self.dtype)
            out += x[:, start:stop].to(self.dtype) @ rows.to(x.device)
        return out


def _block_seed(seed: int, block: int) -> int:
    digest = hashlib.sha256(f"rademacher-chunked:v1:{seed}:{block}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _rademacher_rows(
    start: int, stop: int, input_dim: int, dim: int, seed: int, dtype: torch.dtype
) -> Tensor:
    """Rows ``start:stop`` of Π [stop - start, d]; ``start`` must be block-aligned."""
    blocks = []
    for block in range(start // ROWS_PER_BLOCK, math.ceil(stop / ROWS_PER_BLOCK)):
        n_rows = min(ROWS_PER_BLOCK, input_dim - block * ROWS_PER_BLOCK)
        generator = torch.Generator(device="cpu").manual_seed(_block_seed(seed, block))
        bits = torch.randint(0, 2, (n_rows, dim), generator=generator, dtype=torch.int8)
        blocks.append(bits)
    signs = torch.cat(blocks).to(dtype) * 2 - 1
    return signs / math.sqrt(dim)


def dense_rademacher_matrix(
    input_dim: int, dim: int, seed: int, *, dtype: torch.dtype = torch.float32
) -> Tensor:
    """The whole Π [P, d] that ``RademacherProjector`` uses, materialised: tests only."""
    return _rademacher_rows(0, input_dim, input_dim, dim, seed, dtype)
