"""Strategy studies (seed 001): RelInf, s_in / s_cross, spread and verdicts, against hand
computations and a brute-force reference; and a synthetic study on the tiny model."""

from __future__ import annotations

import pytest
import torch

from workers.engine.data import tokenize_examples
from workers.engine.errors import InvalidInput
from workers.engine.features import featurize
from workers.engine.lora import lora_parameters
from workers.engine.projection import BlockHadamardProjector, IdentityProjector
from workers.engine.studies import (
    MetricPoint,
    pair_values,
    relinf_matrix,
    run_study,
    summarize,
    verdict,
)
from workers.engine.synthetic import TASKS, planted_tasks

from .conftest import MAX_LENGTH, Warmed, make_provenance, to_examples
from .reference import reference_gradient


def _sum_loss_features(warmed: Warmed, examples: list, checkpoint, projector):  # type: ignore[no-untyped-def]
    return featurize(
        warmed.model,
        examples,
        kind="sgd_sum",
        checkpoint=checkpoint,
        projector=projector,
        provenance=make_provenance(warmed.model, checkpoint, projector, kind="sgd_sum"),
        batch_size=4,
        pad_token_id=0,
    ).features


def _srht(warmed: Warmed, dim: int) -> BlockHadamardProjector:
    return BlockHadamardProjector([x.numel() for _, x in lora_parameters(warmed.model)], dim, 0)


def test_relinf_against_brute_force_and_of_an_example_with_itself(warmed: Warmed) -> None:
    model, ckpt = warmed.model, warmed.checkpoints[-1]
    examples = warmed.probes[:4]
    p = sum(x.numel() for _, x in lora_parameters(model))
    exact = _sum_loss_features(warmed, examples, ckpt, IdentityProjector(p))
    model.eval()  # the reference: one example at a time, the summed loss written out
    brute = torch.stack(
        [reference_gradient(model, ex).double() * ex.n_response_tokens for ex in examples]
    )
    expected = torch.tensor(
        [[float(a @ b) / float(b @ b) for b in brute] for a in brute], dtype=torch.float64
    )
    torch.testing.assert_close(relinf_matrix(exact, exact), expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(  # RelInf(z, z) = 1, exactly as well as projected
        relinf_matrix(exact, exact).diagonal(), torch.ones(4, dtype=torch.float64)
    )
    projected = _sum_loss_features(warmed, examples, ckpt, _srht(warmed, 256))
    torch.testing.assert_close(
        relinf_matrix(projected, projected).diagonal(), torch.ones(4, dtype=torch.float64)
    )


def test_s_in_and_s_cross_by_hand() -> None:
    relinf = torch.tensor([[1.0, 0.2, -0.1], [0.4, 0.5, 0.0], [0.3, 0.3, 0.9]], dtype=torch.float64)
    assert pair_values(relinf, "s_in").tolist() == [1.0, 0.5, 0.9]
    cross = pair_values(relinf, "s_cross")
    torch.testing.assert_close(cross, torch.tensor([0.05, 0.2, 0.3], dtype=torch.float64))
    # eq. 5: the sum over i and j != i divided by n(n-1)
    assert abs(float(cross.mean()) - (0.2 - 0.1 + 0.4 + 0.0 + 0.3 + 0.3) / 6) < 1e-12
    with pytest.raises(InvalidInput, match="square"):
        pair_values(relinf[:2], "s_in")
    with pytest.raises(InvalidInput, match="zero gradient"):
        relinf_matrix(torch.ones(2, 3), torch.tensor([[1.0, 0, 0], [0, 0, 0]]), eval_ids=["a", "b"])


def test_spread_is_the_std_and_a_seeded_bootstrap_interval() -> None:
    values = torch.tensor([0.1, 0.3, 0.2, 0.6, 0.4], dtype=torch.float64)
    point = summarize(values, bootstrap=2000, confidence=0.9, seed=7)
    assert point.value == pytest.approx(0.32)
    assert point.std == pytest.approx(float(values.std()))
    assert 0.1 < point.low < point.value < point.high < 0.6
    assert point == summarize(values, bootstrap=2000, confidence=0.9, seed=7)
    wider = summarize(values, bootstrap=2000, confidence=0.99, seed=7)
    assert wider.low <= point.low and wider.high >= point.high
    assert point.per_pair == values.tolist()


def _point(value: float, low: float, high: float) -> MetricPoint:
    return MetricPoint(value, 0.0, low, high, [])


def test_verdict_rule() -> None:
    steps = [10, 20, 30]
    helps = [_point(0.5, 0.1, 0.9)] * 3
    assert verdict(helps, steps).outcome == "helps"
    assert verdict([_point(-0.5, -0.9, -0.1)] * 3, steps).outcome == "hurts"
    mixed = [_point(0.5, 0.1, 0.9), _point(0.1, -0.1, 0.3), _point(0.5, 0.1, 0.9)]
    assert verdict(mixed, steps).outcome == "inconclusive"
    reference = [_point(v, v, v) for v in (0.6, 0.4, 0.3)]
    curve = [_point(v, v, v) for v in (0.5, 0.45, 0.35)]
    assert verdict(curve, steps, reference).exceeds_reference_from_step == 20
    assert verdict(reference, steps, curve).exceeds_reference_from_step is None


def test_synthetic_study_related_probes_beat_unrelated_ones(warmed: Warmed) -> None:
    """Z: one example per task; A: another example of the same task (shares the structure);
    B: an example of a different task. s_in(A) > s_in(B) at every checkpoint."""

    def tokenized(records: list[dict[str, object]]) -> dict[str, object]:
        rows, _ = tokenize_examples(
            warmed.tokenizer, to_examples(records, with_subtask=True), MAX_LENGTH
        )
        return {str(r.subtask): r for r in rows}

    evaluation = tokenized(planted_tasks(1, seed=11, id_prefix="z"))
    related = tokenized(planted_tasks(1, seed=12, id_prefix="a"))
    order = list(TASKS)
    unrelated = {task: related[order[(k + 1) % len(order)]] for k, task in enumerate(order)}
    projector = _srht(warmed, 512)
    sets: dict[str, list[torch.Tensor]] = {"Z": [], "A": [], "B": []}
    for ckpt in warmed.checkpoints:
        for name, rows in (("Z", evaluation), ("A", related), ("B", unrelated)):
            sets[name].append(_sum_loss_features(warmed, [rows[t] for t in order], ckpt, projector))
    steps = [c.step for c in warmed.checkpoints]
    result = run_study(
        sets["Z"], {"A": sets["A"], "B": sets["B"]}, steps, order, reference="B", bootstrap=200
    )
    s_in = {name: [p.value for p in result.curves[name]["s_in"]] for name in ("A", "B")}
    print(f"\ns_in by step {steps}: {s_in}")
    for k in range(len(steps)):
        assert s_in["A"][k] > s_in["B"][k]
        assert s_in["A"][k] == pytest.approx(
            float(pair_values(relinf_matrix(sets["A"][k], sets["Z"][k]), "s_in").mean())
        )
    assert result.verdicts["A"]["s_in"].exceeds_reference_from_step == steps[0]
    report = result.to_dict()
    assert [p["name"] for p in report["probe_sets"]] == ["A", "B"]  # type: ignore[index]


def test_run_study_checks_its_inputs() -> None:
    g = torch.randn(3, 8, dtype=torch.float64)
    with pytest.raises(InvalidInput, match="reference"):
        run_study([g], {"A": [g]}, [1], ["a", "b", "c"], reference="B")
    with pytest.raises(InvalidInput, match="1 of 2 steps"):
        run_study([g, g], {"A": [g]}, [1, 2], ["a", "b", "c"])
    with pytest.raises(InvalidInput, match="pairs"):
        run_study([g], {"A": [g[:2]]}, [1], ["a", "b", "c"])
    same = run_study([g], {"Z itself": [g]}, [5], ["a", "b", "c"])
    assert same.curves["Z itself"]["s_in"][0].value == pytest.approx(1.0)
    assert same.curves["Z itself"]["s_in"][0].per_pair == pytest.approx([1.0, 1.0, 1.0])
