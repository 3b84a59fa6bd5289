"""Random projection of gradient features: R^P -> R^d (Johnson-Lindenstrauss, as in LESS/TRAK).

With Π ∈ R^{P×d} of i.i.d. entries ±1/√d, E[<xΠ, yΠ>] = <x, y> and, for d in the thousands,
inner products and cosines are preserved up to O(1/√d) relative error. P is the LoRA parameter
count (134M for a 7B model at r=128), so Π (P × d) is never held in memory, and a feature set
records the projector's ``spec``, seed and d in its provenance so pool and probe features are
always projected by the same Π.

Two constructions:
- ``RademacherProjector``: dense i.i.d. ±1/√d, regenerated block by block. The textbook JL
  map; costs 2·P·d flops per example (2.2 TFLOP for 7B), so it is the reference, not the
  production path.
- ``BlockHadamardProjector`` (default): a subsampled randomized Hadamard transform (SRHT) per
  block of each parameter tensor, summed over blocks. O(P log n) per example, Π's rows are
  still ±1/√d and E[Π Πᵀ] = I, and each block's map is (a scaled subset of) an isometry.

The input is a concatenation of ``segments`` (the LoRA parameter tensors, in
``lora_parameters`` order); ``project_segment`` projects one of them alone, which lets the
batched featurizer project each tensor's per-example gradients as backward produces them
(x Π = Σ_t x_t Π_t over the row blocks Π_t of Π).

Shapes: x [B, P] -> x Π [B, d]; x_t [B, P_t] -> x_t Π_t [B, d].
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import math
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

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
    segments: tuple[int, ...]
    """Sizes of the parameter tensors whose concatenation is R^P (sum = ``input_dim``)."""

    @abstractmethod
    def project_segment(self, index: int, x: Tensor) -> Tensor:
        """x_t Π_t [B, dim]: the contribution of segment ``index`` alone (x_t [B, P_t])."""

    def add_segment(self, out: Tensor, index: int, x: Tensor) -> None:
        """``out`` [B, dim] += x_t Π_t: what streaming featurizers call per LoRA tensor
        (a projector whose Π_t is zero outside some columns writes only those)."""
        out.add_(self.project_segment(index, x))

    def for_segments(self, segments: Sequence[int]) -> Projector:
        """This Π over R^P cut into ``segments``; raises if the cut would change Π.

        Dense projectors define Π by flat row index, so any cut of the same P works; a
        projector whose Π depends on the layout (``BlockHadamardProjector``) must match it.
        """
        segments = _check_segments(segments, self.input_dim)
        if segments == self.segments:
            return self
        if not self._layout_free:
            raise InvalidInput(
                f"{type(self).__name__} was built for segments {self.segments[:4]}..., "
                f"not {segments[:4]}...: build it from the model's LoRA tensor sizes"
            )
        clone = copy.copy(self)
        clone.segments = segments
        return clone

    _layout_free = True
    """Whether Π is the same for every cut of R^P into segments."""

    def project(self, x: Tensor) -> Tensor:
        """Project a batch of flat gradients ``x`` [B, input_dim] to [B, dim]."""
        self._check_input(x)
        out = torch.zeros((x.shape[0], self.dim), dtype=self.dtype, device=x.device)
        for index, (start, stop) in enumerate(self._offsets()):
            out += self.project_segment(index, x[:, start:stop])
        return out

    def _offsets(self) -> list[tuple[int, int]]:
        bounds, start = [], 0
        for size in self.segments:
            bounds.append((start, start + size))
            start += size
        return bounds

    def _check_segment(self, index: int, x: Tensor) -> None:
        if not 0 <= index < len(self.segments):
            raise InvalidInput(f"segment {index} out of range ({len(self.segments)} segments)")
        if x.ndim != 2 or x.shape[1] != self.segments[index]:
            raise InvalidInput(
                f"segment {index} expects [B, {self.segments[index]}], got {tuple(x.shape)}"
            )

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

    def __init__(
        self,
        input_dim: int,
        *,
        segments: Sequence[int] | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if input_dim < 1:
            raise InvalidInput(f"input_dim must be >= 1, got {input_dim}")
        self.input_dim = input_dim
        self.dim = input_dim
        self.seed = 0
        self.dtype = dtype
        self.segments = _check_segments(segments, input_dim)

    def project(self, x: Tensor) -> Tensor:
        self._check_input(x)
        return x.to(self.dtype)

    def project_segment(self, index: int, x: Tensor) -> Tensor:
        self._check_segment(index, x)
        start, stop = self._offsets()[index]
        out = torch.zeros((x.shape[0], self.dim), dtype=self.dtype, device=x.device)
        out[:, start:stop] = x.to(self.dtype)
        return out

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
        segments: Sequence[int] | None = None,
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
        self.segments = _check_segments(segments, input_dim)

    def spec(self) -> str:
        return "rademacher-chunked:v1"

    def project_segment(self, index: int, x: Tensor) -> Tensor:
        self._check_segment(index, x)
        start, stop = self._offsets()[index]
        aligned = start - start % ROWS_PER_BLOCK
        out = torch.zeros((x.shape[0], self.dim), dtype=self.dtype, device=x.device)
        for lo in range(aligned, stop, self.chunk_size):
            hi = min(lo + self.chunk_size, stop, self.input_dim)
            rows = _rademacher_rows(lo, hi, self.input_dim, self.dim, self.seed, self.dtype)
            first = max(lo, start)
            rows = rows[first - lo : hi - lo].to(x.device)
            out += x[:, first - start : hi - start].to(self.dtype) @ rows
        return out

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


def _check_segments(segments: Sequence[int] | None, input_dim: int) -> tuple[int, ...]:
    result = (input_dim,) if segments is None else tuple(int(s) for s in segments)
    if not result or any(s < 1 for s in result) or sum(result) != input_dim:
        raise InvalidInput(
            f"segments must be positive sizes summing to input_dim={input_dim}, got {result}"
        )
    return result


MAX_HADAMARD_BLOCK = 1 << 16
"""Largest block one Hadamard transform mixes: part of ``srht-blocks:v1``'s definition."""


@dataclass(frozen=True)
class _Block:
    """One block of a segment: ``length`` coordinates from ``offset``, padded to ``size`` = 2^k.

    ``signs`` [size] is D; ``index`` picks where its Hadamard outputs go: with size >= d the
    d sampled outputs (y = (H D x)[index] / √d), else the d-slots receiving all size outputs
    (y[index] += H D x / √size). Either way the block maps isometrically in expectation.
    """

    offset: int
    length: int
    size: int
    signs: Tensor
    index: Tensor


class BlockHadamardProjector(Projector):
    """Π = Σ over blocks of a subsampled randomized Hadamard transform (spec ``srht-blocks:v1``).

    Each segment (parameter tensor) is cut into blocks of ``MAX_HADAMARD_BLOCK`` coordinates
    (the last one zero-padded to the next power of two). Block g gets its own random signs D_g
    and output positions S_g drawn on CPU from hash(seed, g), so Π depends only on
    (segments, d, seed), never on batch size or device. For a block of size n >= d,
    x_g Π_g = (H_n D_g x_g)[S_g] / √d: every entry of Π is ±1/√d, distinct output columns
    within a block are orthogonal, and independent D_g decorrelate blocks, so inner products
    are preserved like a dense Rademacher projection's (tests compare their fidelity) at
    O(n log n) instead of O(n d) per block. H_n is applied as H_{n1} X H_{n2} with
    n = n1·n2 (Sylvester's H_n = H_{n1} ⊗ H_{n2}), two small matmuls.

    The plan (signs and indices, ~1.25 bytes + d·8/n bytes per coordinate) is drawn once per
    (segments, d, seed, device) and process (``_srht_plan``): a worker featurizing shard after
    shard pays it once, not per shard (0.6 s on 2 CPU cores for the 1.1B shape's 550 blocks).
    Computation is in ``dtype`` (fp32 default).
    """

    def __init__(
        self,
        segments: Sequence[int],
        dim: int,
        seed: int,
        *,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        segments = tuple(int(s) for s in segments)
        if dim < 1:
            raise InvalidInput(f"dim must be >= 1, got {dim}")
        if seed < 0:
            raise InvalidInput(f"seed must be >= 0, got {seed}")
        self.input_dim = sum(segments)
        self.segments = _check_segments(segments, self.input_dim)
        self.dim = dim
        self.seed = seed
        self.dtype = dtype
        self._plans: dict[str, tuple[_SegmentPlan, ...]] = {}
        self._hadamards: dict[tuple[int, str], Tensor] = {}

    _layout_free = False

    def spec(self) -> str:
        return "srht-blocks:v1"

    def project_segment(self, index: int, x: Tensor) -> Tensor:
        self._check_segment(index, x)
        out = torch.zeros((x.shape[0], self.dim), dtype=self.dtype, device=x.device)
        plan = self._plan(x.device)[index]
        x = x.to(self.dtype)
        if plan.full_signs is not None:  # all full blocks of the segment in one transform
            n_full, n = plan.full_signs.shape
            xs = x[:, : n_full * n].reshape(x.shape[0], n_full, n)
            mixed = self._hadamard(xs * plan.full_signs.to(self.dtype), n)  # [B, n_full, n]
            self._scatter(out, mixed, plan.full_index, n)
        for block in plan.blocks[plan.n_full :]:
            xb = torch.zeros((x.shape[0], 1, block.size), dtype=self.dtype, device=x.device)
            xb[:, 0, : block.length] = x[:, block.offset : block.offset + block.length]
            mixed = self._hadamard(xb * block.signs.to(self.dtype), block.size)
            self._scatter(out, mixed, block.index[None], block.size)
        return out

    def _scatter(self, out: Tensor, mixed: Tensor, index: Tensor, size: int) -> None:
        """Add blocks' Hadamard outputs ``mixed`` [B, G, n] to ``out`` [B, d] per ``index``."""
        if size >= self.dim:  # sample d of the n outputs: index [G, d]
            picked = torch.gather(mixed, 2, index[None].expand(mixed.shape[0], -1, -1))
            out += picked.sum(dim=1) / math.sqrt(self.dim)
        else:  # all n outputs into n of the d slots: index [G, n]
            flat = index.reshape(-1)
            out.index_add_(1, flat, mixed.reshape(mixed.shape[0], -1) / math.sqrt(size))

    def _hadamard(self, x: Tensor, n: int) -> Tensor:
        """Unnormalised Sylvester H_n applied to the last axis of ``x`` [B, G, n]."""
        bits = n.bit_length() - 1
        n1, n2 = 1 << (bits // 2), 1 << (bits - bits // 2)
        h1, h2 = self._hadamard_matrix(n1, x), self._hadamard_matrix(n2, x)
        y = x.reshape(*x.shape[:-1], n1, n2)
        with _tf32_on_cuda(x):
            y = torch.matmul(torch.matmul(h1, y), h2)
        return y.reshape(x.shape)

    def _hadamard_matrix(self, n: int, like: Tensor) -> Tensor:
        key = (n, f"{like.device}:{like.dtype}")
        if key not in self._hadamards:
            self._hadamards[key] = sylvester_hadamard(n).to(device=like.device, dtype=like.dtype)
        return self._hadamards[key]

    def _plan(self, device: torch.device) -> tuple[_SegmentPlan, ...]:
        key = str(device)
        if key not in self._plans:  # kept here too: many live projectors outnumber the cache
            self._plans[key] = _srht_plan(
                self.segments, self.dim, self.seed, MAX_HADAMARD_BLOCK, key
            )
        return self._plans[key]


@dataclass(frozen=True)
class _SegmentPlan:
    """The blocks of one segment, with its first ``n_full`` (full-size) blocks' signs and
    indices also stacked (``full_signs`` [G, n] int8, ``full_index`` [G, ·]) for one
    batched transform; None when the segment has no full block."""

    blocks: tuple[_Block, ...]
    n_full: int
    full_signs: Tensor | None
    full_index: Tensor | None


@functools.lru_cache(maxsize=2)  # a 7B model's plan is ~270 MB of accelerator memory
def _srht_plan(
    segments: tuple[int, ...], dim: int, seed: int, max_block: int, device: str
) -> tuple[_SegmentPlan, ...]:
    """Every block's D_g and S_g, in segment order (block g counted across segments)."""
    plan, g = [], 0
    for size in segments:
        blocks = []
        for offset in range(0, size, max_block):
            length = min(max_block, size - offset)
            blocks.append(_draw_block(seed, dim, g, offset, length, torch.device(device)))
            g += 1
        full = [b for b in blocks if b.length == b.size == max_block]
        plan.append(
            _SegmentPlan(
                blocks=tuple(blocks),
                n_full=len(full),
                full_signs=torch.stack([b.signs for b in full]) if full else None,
                full_index=torch.stack([b.index for b in full]) if full else None,
            )
        )
    return tuple(plan)


def _draw_block(
    seed: int, dim: int, g: int, offset: int, length: int, device: torch.device
) -> _Block:
    """Block g's signs and indices, from a CPU generator seeded by hash(seed, g) alone."""
    size = 1 << max(length - 1, 0).bit_length()
    digest = hashlib.sha256(f"srht-blocks:v1:{seed}:{g}".encode()).digest()
    generator = torch.Generator(device="cpu").manual_seed(
        int.from_bytes(digest[:8], "little") & (2**63 - 1)
    )
    signs = torch.randint(0, 2, (size,), generator=generator, dtype=torch.int8) * 2 - 1
    if size >= dim:
        index = torch.randperm(size, generator=generator)[:dim]
    else:
        index = torch.randperm(dim, generator=generator)[:size]
    return _Block(offset, length, size, signs.to(device), index.to(device))


LAYERWISE_SPEC = "layerwise:v2"
"""Spec prefix of ``LayerwiseProjector``:
``layerwise:v2:<inner spec>:<w_1>,...,<w_L>:<P_1>,...,<P_L>`` (projected widths, then each
layer's parameter count). v1 (one layer per adapted module, no parameter counts) is retired:
features stored under it are never matched to a v2 valuation."""


class LayerwiseProjector(Projector):
    """Block-diagonal Π: each layer (a group of consecutive segments; DataInf's layers are one
    LoRA weight tensor each) is projected alone, and the L results are laid side by side.

    DataInf (seed 002 app. E.3) needs per-layer gradients: its Hessian is block diagonal by
    layer, so inner products must be kept per layer rather than summed over the model. Layer
    l (P_l parameters) gets its own ``BlockHadamardProjector`` to w_l = min(``dim_per_layer``,
    P_l) columns, seeded from (seed, l): a layer no wider than ``dim_per_layer`` is rotated,
    not compressed (exact geometry when P_l is a power of two). ``dim_per_layer=None`` keeps
    each layer exact (Π_l = I, tests and tiny models). The spec records w_l and P_l, so
    ``layer_widths`` / ``layer_input_sizes`` read stored features without the model.
    """

    _layout_free = False

    def __init__(
        self,
        layers: Sequence[Sequence[int]],
        dim_per_layer: int | None,
        seed: int,
        *,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if not layers or any(not group for group in layers):
            raise InvalidInput("need at least one layer, each with at least one segment")
        if dim_per_layer is not None and dim_per_layer < 1:
            raise InvalidInput(f"dim_per_layer must be >= 1, got {dim_per_layer}")
        if seed < 0:
            raise InvalidInput(f"seed must be >= 0, got {seed}")
        self.segments = _check_segments(
            [s for group in layers for s in group], sum(sum(g) for g in layers)
        )
        self.input_dim = sum(self.segments)
        self.seed = seed
        self.dtype = dtype
        self.layer_sizes = tuple(sum(group) for group in layers)
        self._inner: list[Projector] = [
            BlockHadamardProjector(
                group, min(dim_per_layer, sum(group)), _layer_seed(seed, layer), dtype=dtype
            )
            if dim_per_layer is not None
            else IdentityProjector(sum(group), segments=group, dtype=dtype)
            for layer, group in enumerate(layers)
        ]
        self.widths = tuple(inner.dim for inner in self._inner)
        self.dim = sum(self.widths)
        self._inner_spec = "identity" if dim_per_layer is None else self._inner[0].spec()
        starts = [sum(self.widths[:layer]) for layer in range(len(layers))]
        self._where = [  # segment index -> (layer, position in layer, first output column)
            (layer, position, starts[layer])
            for layer, group in enumerate(layers)
            for position in range(len(group))
        ]

    def spec(self) -> str:
        return (
            f"{LAYERWISE_SPEC}:{self._inner_spec}:"
            + ",".join(map(str, self.widths))
            + ":"
            + ",".join(map(str, self.layer_sizes))
        )

    def project_segment(self, index: int, x: Tensor) -> Tensor:
        out = torch.zeros((x.shape[0], self.dim), dtype=self.dtype, device=x.device)
        self.add_segment(out, index, x)
        return out

    def add_segment(self, out: Tensor, index: int, x: Tensor) -> None:
        self._check_segment(index, x)
        layer, position, start = self._where[index]
        inner = self._inner[layer]
        out[:, start : start + inner.dim] += inner.project_segment(position, x).to(out.dtype)


def _layer_seed(seed: int, layer: int) -> int:
    digest = hashlib.sha256(f"{LAYERWISE_SPEC}:{seed}:{layer}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def _layer_fields(spec: str) -> tuple[list[int], list[int]]:
    if not spec.startswith(LAYERWISE_SPEC + ":"):
        raise InvalidInput(
            f"features were not projected layer by layer as {LAYERWISE_SPEC} (projector {spec!r})"
        )
    try:
        widths_field, sizes_field = spec.rsplit(":", 2)[1:]
        widths = [int(w) for w in widths_field.split(",")]
        sizes = [int(p) for p in sizes_field.split(",")]
    except ValueError as exc:
        raise InvalidInput(f"malformed layerwise projector spec {spec!r}") from exc
    if not widths or min(widths) < 1 or len(sizes) != len(widths) or min(sizes) < 1:
        raise InvalidInput(f"malformed layerwise projector spec {spec!r}")
    return widths, sizes


def layer_widths(spec: str) -> list[int]:
    """Per-layer widths w_l of features made by a ``LayerwiseProjector`` with this spec."""
    return _layer_fields(spec)[0]


def layer_input_sizes(spec: str) -> list[int]:
    """Per-layer parameter counts P_l (the unprojected d_l) behind features of this spec."""
    return _layer_fields(spec)[1]


def split_layers(features: Tensor, spec: str) -> list[Tensor]:
    """Features [N, Σ w_l] of a ``LayerwiseProjector`` as L tensors [N, w_l]."""
    widths = layer_widths(spec)
    if features.ndim != 2 or features.shape[1] != sum(widths):
        raise InvalidInput(
            f"features {tuple(features.shape)} do not match layer widths summing to {sum(widths)}"
        )
    return list(features.split(widths, dim=1))


@contextlib.contextmanager
def _tf32_on_cuda(x: Tensor) -> Iterator[None]:
    """TF32 tensor cores for the ±1 Hadamard products of float32 CUDA inputs.

    H is exact in TF32; rounding x to TF32's 10-bit mantissa perturbs each projected
    coordinate by ~5e-4 relative, far inside the JL error (~1/√d = 1e-2 at d = 8192).
    CPU and float64 computations are untouched.
    """
    if not (x.is_cuda and x.dtype == torch.float32):
        yield
        return
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def sylvester_hadamard(n: int) -> Tensor:
    """H_n with H[i, j] = (-1)^popcount(i & j), n a power of two (float32, entries ±1)."""
    if n < 1 or n & (n - 1):
        raise InvalidInput(f"Hadamard size must be a power of two, got {n}")
    i = torch.arange(n)
    bits = torch.bitwise_and(i[:, None], i[None, :])
    parity = torch.zeros_like(bits)
    while bool(bits.any()):
        parity ^= bits & 1
        bits = bits >> 1
    return (1 - 2 * parity).to(torch.float32)
