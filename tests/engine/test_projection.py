from __future__ import annotations

import pytest
import torch

from workers.engine.errors import InvalidInput
from workers.engine.projection import (
    ROWS_PER_BLOCK,
    IdentityProjector,
    RademacherProjector,
    dense_rademacher_matrix,
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
