from __future__ import annotations

import pytest
import torch
from scipy.linalg import hadamard

from workers.engine import projection
from workers.engine.errors import InvalidInput
from workers.engine.projection import (
    ROWS_PER_BLOCK,
    BlockHadamardProjector,
    IdentityProjector,
    LayerwiseProjector,
    RademacherProjector,
    dense_rademacher_matrix,
    layer_input_sizes,
    layer_widths,
    split_layers,
    sylvester_hadamard,
)

P, D = 2 * ROWS_PER_BLOCK + 300, 64  # a partial last block on purpose


def test_chunked_projection_equals_dense_matrix() -> None:
    x = torch.randn(5, P, generator=torch.Generator().manual_seed(0))
    dense = dense_rademacher_matrix(P, D, seed=7)
    assert set(torch.unique(dense * D**0.5).tolist()) == {-1.0, 1.0}
    expected = x @ dense
    for chunk in (ROWS_PER_BLOCK, 2 * ROWS_PER_BLOCK, 8 * ROWS_PER_BLOCK):
        got = RademacherProjector(P, D, seed=7, chunk_size=chunk).project(x)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_projection_is_independent_of_batch_size() -> None:
    x = torch.randn(6, P, generator=torch.Generator().manual_seed(1))
    projector = RademacherProjector(P, D, seed=3)
    whole = projector.project(x)
    rows = torch.cat([projector.project(x[i : i + 1]) for i in range(6)])
    torch.testing.assert_close(rows, whole, rtol=1e-5, atol=1e-5)


def test_seed_determines_the_matrix() -> None:
    assert torch.equal(dense_rademacher_matrix(P, D, 5), dense_rademacher_matrix(P, D, 5))
    assert not torch.equal(dense_rademacher_matrix(P, D, 5), dense_rademacher_matrix(P, D, 6))


def test_projection_preserves_inner_products_in_expectation() -> None:
    x = torch.randn(2, P, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    projected = RademacherProjector(P, 4096, seed=0, dtype=torch.float64).project(x)
    assert projected.dtype == torch.float64
    rel = (projected.norm(dim=1) ** 2 - x.norm(dim=1) ** 2).abs() / x.norm(dim=1) ** 2
    assert bool((rel < 0.1).all())


def test_identity_projector() -> None:
    x = torch.randn(3, 10)
    projector = IdentityProjector(10)
    assert torch.equal(projector.project(x), x) and projector.spec() == "identity"
    assert projector.dim == 10


def test_bad_arguments_raise() -> None:
    with pytest.raises(InvalidInput):
        RademacherProjector(P, D, seed=0, chunk_size=ROWS_PER_BLOCK + 1)
    with pytest.raises(InvalidInput):
        RademacherProjector(P, D, seed=0).project(torch.zeros(2, P + 1))


# --- block SRHT (the default projector) -----------------------------------------------------


def _explicit_block_hadamard(projector: BlockHadamardProjector) -> torch.Tensor:
    """Π [P, d] written out from the definition with scipy's Hadamard matrices (float64)."""
    pi = torch.zeros(projector.input_dim, projector.dim, dtype=torch.float64)
    offset = 0
    for size, plan in zip(projector.segments, projector._plan(torch.device("cpu")), strict=True):
        for block in plan.blocks:
            h = torch.tensor(hadamard(block.size), dtype=torch.float64)
            rows = h[: block.length] * block.signs[: block.length, None].double()  # D H (H sym.)
            start = offset + block.offset
            if block.size >= projector.dim:
                pi[start : start + block.length] = rows[:, block.index] / projector.dim**0.5
            else:
                pi[start : start + block.length, block.index] += rows / block.size**0.5
        offset += size
    return pi


@pytest.mark.parametrize("dim", [16, 200])  # below and above the small block sizes
def test_block_hadamard_equals_its_explicit_matrix(dim: int, monkeypatch) -> None:
    monkeypatch.setattr(projection, "MAX_HADAMARD_BLOCK", 64)  # several full blocks per segment
    segments = (300, 70, 5, 128)
    projector = BlockHadamardProjector(segments, dim, seed=3, dtype=torch.float64)
    x = torch.randn(4, sum(segments), generator=torch.Generator().manual_seed(0)).double()
    pi = _explicit_block_hadamard(projector)
    torch.testing.assert_close(projector.project(x), x @ pi, rtol=1e-12, atol=1e-12)
    if dim <= 64:  # blocks of 64 sampled down to d: every entry of Π is ±1/√d or 0
        assert set((pi[:256] * dim**0.5).round().unique().tolist()) <= {-1.0, 0.0, 1.0}


def test_block_hadamard_segments_add_up_and_are_deterministic() -> None:
    segments = (70_000, 3_000, 1)
    x = torch.randn(3, sum(segments), generator=torch.Generator().manual_seed(2))
    a = BlockHadamardProjector(segments, 512, seed=5)
    b = BlockHadamardProjector(segments, 512, seed=5)
    whole = a.project(x)
    parts = a.project_segment(0, x[:, :70_000]) + a.project_segment(1, x[:, 70_000:73_000])
    parts += a.project_segment(2, x[:, 73_000:])
    torch.testing.assert_close(parts, whole)
    assert torch.equal(whole, b.project(x))  # same (segments, d, seed): same Π, bit for bit
    assert not torch.allclose(whole, BlockHadamardProjector(segments, 512, seed=6).project(x))


def test_block_hadamard_preserves_norms_and_inner_products_like_jl() -> None:
    """E||xΠ||² = ||x||²; at d = 4096 relative errors are O(1/√d), as for a dense Π."""
    segments = (1 << 17, 40_000)
    x = torch.randn(16, sum(segments), generator=torch.Generator().manual_seed(4))
    y = BlockHadamardProjector(segments, 4096, seed=0).project(x)
    ratio = y.norm(dim=1) ** 2 / x.norm(dim=1) ** 2
    assert float((ratio - 1).abs().max()) < 6 * (2 / 4096) ** 0.5
    exact = torch.nn.functional.normalize(x, dim=1) @ torch.nn.functional.normalize(x, dim=1).T
    approx = torch.nn.functional.normalize(y, dim=1) @ torch.nn.functional.normalize(y, dim=1).T
    assert float((exact - approx).abs().max()) < 6 / 4096**0.5


def test_layout_free_projectors_recut_and_block_hadamard_refuses() -> None:
    x = torch.randn(2, P, generator=torch.Generator().manual_seed(5))
    dense = RademacherProjector(P, D, seed=1)
    recut = dense.for_segments([1000, P - 1000])
    torch.testing.assert_close(
        recut.project_segment(0, x[:, :1000]) + recut.project_segment(1, x[:, 1000:]),
        dense.project(x),
        rtol=1e-5,
        atol=1e-5,
    )
    srht = BlockHadamardProjector([1000, P - 1000], D, seed=1)
    assert srht.for_segments([1000, P - 1000]) is srht
    with pytest.raises(InvalidInput, match="segments"):
        srht.for_segments([P])
    with pytest.raises(InvalidInput, match="segment 0 expects"):
        srht.project_segment(0, x[:, :999])


def test_sylvester_hadamard_is_orthogonal() -> None:
    h = sylvester_hadamard(16)
    torch.testing.assert_close(h @ h.T, 16 * torch.eye(16))
    assert torch.equal(h, torch.tensor(hadamard(16), dtype=torch.float32))
    with pytest.raises(InvalidInput):
        sylvester_hadamard(12)


def test_layerwise_projector_is_block_diagonal_and_keeps_each_layers_geometry() -> None:
    layers = [[3000, 5000], [4096], [700, 300]]
    proj = LayerwiseProjector(layers, 512, seed=4)
    assert proj.dim == 3 * 512 and layer_widths(proj.spec()) == [512, 512, 512]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, proj.input_dim, generator=gen)
    out = proj.project(x)
    bounds = [0, 8000, 12096, 13096]
    for layer in range(3):
        only = torch.zeros_like(x)
        only[:, bounds[layer] : bounds[layer + 1]] = x[:, bounds[layer] : bounds[layer + 1]]
        alone = split_layers(proj.project(only), proj.spec())
        for other in range(3):  # layer l's coordinates reach only layer l's columns
            if other != layer:
                assert float(alone[other].abs().max()) == 0.0
        torch.testing.assert_close(alone[layer], split_layers(out, proj.spec())[layer])
        exact = x[:, bounds[layer] : bounds[layer + 1]]
        gram, approx = exact @ exact.T, alone[layer] @ alone[layer].T
        assert float((approx - gram).norm() / gram.norm()) < 0.15  # JL at d=512
    torch.testing.assert_close(LayerwiseProjector(layers, 512, seed=4).project(x), out)
    assert not torch.allclose(LayerwiseProjector(layers, 512, seed=5).project(x), out)


def test_exact_layerwise_projector_is_the_identity_with_layer_widths() -> None:
    proj = LayerwiseProjector([[4, 6], [5]], None, seed=0)
    x = torch.randn(3, 15)
    torch.testing.assert_close(proj.project(x), x)
    assert layer_widths(proj.spec()) == [10, 5]
    with pytest.raises(InvalidInput, match="layer by layer"):
        layer_widths("srht-blocks:v1")
    with pytest.raises(InvalidInput, match="do not match"):
        split_layers(torch.zeros(2, 14), proj.spec())


def test_layerwise_spec_records_parameter_counts_and_caps_widths() -> None:
    proj = LayerwiseProjector([[300], [4096], [64]], 256, seed=1)
    assert layer_widths(proj.spec()) == [256, 256, 64]  # a layer no wider is not padded
    assert layer_input_sizes(proj.spec()) == [300, 4096, 64]
    x = torch.randn(4, 64, dtype=torch.float64)
    flat = torch.cat([torch.zeros(4, 4396), x], 1).float()
    small = split_layers(proj.project(flat), proj.spec())[2].double()
    torch.testing.assert_close(small @ small.T, x @ x.T, rtol=1e-5, atol=1e-5)  # a rotation
    with pytest.raises(InvalidInput, match="layerwise:v2"):  # per-module v1 features retired
        layer_widths("layerwise:v1:srht-blocks:v1:64,64")


def test_block_hadamard_plan_is_drawn_once_per_process() -> None:
    """A worker builds a projector per shard; the same (segments, d, seed) reuses the plan
    (and so Π), a different seed draws its own."""
    cpu = torch.device("cpu")
    segments = (300, 70, 5, 128)
    first = BlockHadamardProjector(segments, 64, seed=3)._plan(cpu)
    assert BlockHadamardProjector(segments, 64, seed=3)._plan(cpu) is first
    other = BlockHadamardProjector(segments, 64, seed=4)._plan(cpu)
    assert other is not first
    assert not torch.equal(other[0].blocks[0].signs, first[0].blocks[0].signs)
