"""DataInf / NICE-IF: the Sherman–Morrison closed form vs explicit inverses; per-layer gradients
vs brute-force autograd."""

from __future__ import annotations

import torch

from workers.engine.datainf import combine_rows, datainf_scores, lora_layers, per_layer_gradients
from workers.engine.lora import lora_parameters
from workers.engine.projection import BlockHadamardProjector

from .conftest import Warmed
from .reference import reference_gradient


def _reference_datainf(pool: list[torch.Tensor], probes: list[torch.Tensor]) -> torch.Tensor:
    """Σ_l vᵀ [(1/n) Σ_i (g_i g_iᵀ + λ_l I)⁻¹] g_k with every inverse taken explicitly."""
    n, m = pool[0].shape[0], probes[0].shape[0]
    out = torch.zeros((n, m), dtype=torch.float64)
    for g, v in zip(pool, probes, strict=True):
        d = g.shape[1]
        lam = 0.1 * float((g * g).sum(dim=1).mean())
        inverse = (
            sum(
                torch.linalg.inv(torch.outer(g[i], g[i]) + lam * torch.eye(d, dtype=torch.float64))
                for i in range(n)
            )
            / n
        )
        for k in range(n):
            for j in range(m):
                out[k, j] += v[j] @ inverse @ g[k]
    return out


def test_closed_form_equals_explicit_inverses() -> None:
    gen = torch.Generator().manual_seed(0)
    pool = [torch.randn(7, 5, generator=gen, dtype=torch.float64) for _ in range(3)]
    probes = [torch.randn(4, 5, generator=gen, dtype=torch.float64) for _ in range(3)]
    torch.testing.assert_close(
        datainf_scores(pool, probes), _reference_datainf(pool, probes), rtol=1e-10, atol=1e-12
    )


def test_a_layer_without_gradient_contributes_nothing() -> None:
    gen = torch.Generator().manual_seed(1)
    pool = [torch.randn(5, 4, generator=gen, dtype=torch.float64), torch.zeros(5, 3)]
    probes = [torch.randn(2, 4, generator=gen, dtype=torch.float64), torch.randn(2, 3)]
    scores = datainf_scores(pool, probes)
    assert bool(torch.isfinite(scores).all())
    torch.testing.assert_close(scores, datainf_scores(pool[:1], probes[:1]))


def test_per_layer_gradients_are_the_exact_gradients_cut_by_layer(warmed: Warmed) -> None:
    model, ckpt = warmed.model, warmed.checkpoints[-1]
    examples = warmed.pool[:5]
    layers = per_layer_gradients(
        model, examples, checkpoint=ckpt, dim_per_layer=None, seed=0, batch_size=3, pad_token_id=0
    )
    assert len(layers) == len(lora_layers(model)) == len(lora_parameters(model)) // 2
    flat = torch.cat(layers, dim=1)  # layers are consecutive runs of lora_parameters
    model.eval()
    for row, example in enumerate(examples):
        expected = reference_gradient(model, example).double()
        assert float((flat[row] - expected).norm() / expected.norm()) < 1e-4

    projected = per_layer_gradients(
        model, examples, checkpoint=ckpt, dim_per_layer=64, seed=2, batch_size=5, pad_token_id=0
    )
    params = lora_parameters(model)
    for layer, group in enumerate(lora_layers(model)):
        sizes = [params[i][1].numel() for i in group]
        projector = BlockHadamardProjector(sizes, 64, seed=2 * 100_003 + layer)
        torch.testing.assert_close(
            projected[layer],
            projector.project(layers[layer].float()).double(),
            rtol=1e-4,
            atol=1e-6,
        )


def test_combine_rows_sums_weighted_rows_per_owner() -> None:
    rows = [torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]], dtype=torch.float64)]
    (combined,) = combine_rows(rows, owner=[0, 1, 0], weights=[0.5, 1.0, -1.0], n_owners=2)
    torch.testing.assert_close(
        combined, torch.tensor([[-2.5, -3.0], [0.0, 2.0]], dtype=torch.float64)
    )


def test_datainf_ranks_the_probes_task_on_the_tiny_model(warmed: Warmed) -> None:
    """Each planted probe's best-scored pool records share its task more often than chance."""
    model, ckpt = warmed.model, warmed.checkpoints[-1]
    common = dict(checkpoint=ckpt, dim_per_layer=None, seed=0, batch_size=8, pad_token_id=0)
    pool = per_layer_gradients(model, warmed.pool, **common)  # type: ignore[arg-type]
    probes = per_layer_gradients(model, warmed.probes, **common)  # type: ignore[arg-type]
    scores = datainf_scores(pool, probes)
    hits = 0
    for j, probe in enumerate(warmed.probes):
        best = scores[:, j].argsort(descending=True)[:4].tolist()
        hits += sum(probe.subtask in warmed.pool[i].record_id for i in best)
    n_tasks = len({p.subtask for p in warmed.probes})
    chance = 4 * len(warmed.probes) / n_tasks
    print(
        f"\nDataInf top-4 same-task hits: {hits} of {4 * len(warmed.probes)} (chance {chance:.1f})"
    )
    assert hits > 2 * chance


def test_nice_if_probe_side_equals_the_policy_gradient(warmed: Warmed) -> None:
    """NICE-IF: per-layer policy gradients (rows of -log f, weighted, summed per probe) cut
    the same vector as NICE's flat policy gradient."""
    import dataclasses

    from workers.engine.nice import (
        ProbePrompt,
        as_training_row,
        assisted_samples,
        policy_gradient_features,
        sample_weights,
    )
    from workers.engine.projection import IdentityProjector

    from .conftest import make_provenance

    model, ckpt = warmed.model, warmed.checkpoints[-1]
    probes = [
        ProbePrompt("a", ({"role": "user", "content": "Capital of Peru?"},)),
        ProbePrompt("b", ({"role": "user", "content": "Uppercase: river"},)),
    ]
    samples = assisted_samples(
        warmed.tokenizer, probes, {"a": ["Lima.", "No idea."], "b": ["RIVER", "river"]}
    )
    rewards = [1.0, 0.0, 1.0, 0.5]
    weights = sample_weights(rewards[:2], "baseline") + sample_weights(rewards[2:], "baseline")
    rows = per_layer_gradients(
        model,
        [as_training_row(s) for s in samples],
        checkpoint=ckpt,
        dim_per_layer=None,
        seed=0,
        batch_size=4,
        pad_token_id=0,
        token_loss="sum",
    )
    layers = combine_rows(rows, owner=[0, 0, 1, 1], weights=weights, n_owners=2)
    p = sum(x.numel() for _, x in lora_parameters(model))
    projector = IdentityProjector(p)
    provenance = dataclasses.replace(
        make_provenance(model, ckpt, projector, kind="sgd", max_length=128), kind="policy"
    )
    flat = policy_gradient_features(
        model,
        probes,
        samples,
        rewards,
        weighting="baseline",
        checkpoint=ckpt,
        projector=projector,
        provenance=provenance,
        batch_size=4,
        pad_token_id=0,
    ).features.features.double()
    torch.testing.assert_close(torch.cat(layers, dim=1), flat, rtol=1e-4, atol=1e-7)
