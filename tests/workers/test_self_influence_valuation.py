"""Self-influence valuations run through the valuation tasks on a migrated database (builtin
tiny model): a ``tracin`` valuation stores SGD pool features and a ``less`` one Adam pool
features; a self-influence valuation of the same model, pool and settings then reuses them
(the job says so, and no shard is featurized again), needs no probes, and scores
Σ_e η̄_e ‖φ_e‖² of the stored features, ranked highest first, with the scores' histogram."""

from __future__ import annotations

import pytest
import torch

from service.blobs import TenantBlobStore, blob_store_from_settings
from service.config import get_settings
from service.db.models import Checkpoint, FeatureSet, Model, Score, Valuation
from service.db.session import SessionLocal
from service.tenancy import DEFAULT_TENANT_ID
from tests.workers.conftest import insert_dataset, run_valuation
from workers.contracts import VALUATION_FEATURIZE_SHARD, VALUATION_SCORE
from workers.engine import features, models
from workers.engine.synthetic import planted_tasks

pytestmark = pytest.mark.usefixtures("migrated")

SETTINGS = {
    "warmup": {"fraction": 1.0, "epochs": 2, "batch_size": 4, "learning_rate": 3e-3},
    "lora": {"r": 4, "alpha": 16.0},
    "projection": {"dim": 256},
    "max_length": 64,
    "shard_size": 5,
}


@pytest.fixture()
def made() -> dict[str, str]:
    with SessionLocal() as session:
        model = Model(tenant_id=DEFAULT_TENANT_ID, name="tiny", source=models.TINY_LLAMA)
        session.add(model)
        pool = [dict(r) for r in planted_tasks(3, seed=0)[:12]]
        probes = [dict(r) for r in planted_tasks(1, seed=3)]
        ids = {
            "pool": insert_dataset(session, "pool", pool),
            "probes": insert_dataset(session, "probes", probes),
        }
        session.commit()
        return ids | {"model": model.id}


def _value(
    made: dict[str, str], method: str, monkeypatch: pytest.MonkeyPatch
) -> tuple[str, list[str]]:
    """Create a valuation and run it to the end, its shard and scoring tasks inline; its id
    and the names of the tasks it sent."""
    probes = None if method.startswith("self_influence") else made["probes"]
    return run_valuation(
        monkeypatch,
        method=method,
        model_id=made["model"],
        pool_id=made["pool"],
        probe_id=probes,
        settings=SETTINGS,
    )


def _stored_self_influence(
    valuation_id: str, kind: str, *, token_weighted: bool = False
) -> dict[str, float]:
    """Σ_e η̄_e ‖φ_e(z)‖² from the stored shards of ``kind`` pool features, written out
    (``token_weighted``: each term times the record's response tokens the shard recorded)."""
    blobs = TenantBlobStore(blob_store_from_settings(get_settings()), DEFAULT_TENANT_ID)
    out: dict[str, float] = {}
    with SessionLocal() as session:
        valuation = session.get(Valuation, valuation_id)
        assert valuation is not None
        ckpts = session.query(Checkpoint).filter_by(warmup_run_id=valuation.warmup_run_id).all()
        for ckpt in ckpts:
            (row,) = session.query(FeatureSet).filter_by(
                checkpoint_id=ckpt.id, kind=kind, dataset_id=valuation.pool_dataset_id
            )
            for i in range(row.n_shards):
                shard = features.FeatureSet.from_safetensors(
                    blobs.get_bytes(f"{row.blob_prefix}/shard-{i:05d}.safetensors")
                )
                tokens = shard.target_tokens or [1] * len(shard.record_ids)
                rows = zip(shard.record_ids, shard.features, tokens, strict=True)
                for record_id, phi, n_tokens in rows:
                    total = sum(float(x) ** 2 for x in phi.double().tolist())
                    total *= n_tokens if token_weighted else 1
                    out[record_id] = out.get(record_id, 0.0) + ckpt.mean_lr * total
    return out


@pytest.mark.parametrize(
    ("first", "method", "kind"),
    [
        ("tracin", "self_influence", "sgd"),
        ("less", "self_influence_adam", "adam"),
        ("tracin", "self_influence_token_weighted", "sgd"),
    ],
)
def test_self_influence_reuses_the_stored_pool_features(
    made: dict[str, str], monkeypatch: pytest.MonkeyPatch, first: str, method: str, kind: str
) -> None:
    _, sent = _value(made, first, monkeypatch)
    assert sent.count(VALUATION_FEATURIZE_SHARD) == 2 * (3 + 1)  # 2 epochs x (3 pool + 1 probe)
    valuation_id, sent = _value(made, method, monkeypatch)
    assert sent == [VALUATION_SCORE]  # nothing featurized again
    with SessionLocal() as session:
        row = session.get(Valuation, valuation_id)
        assert row is not None and row.probe_dataset_id is None
        notes = row.job.notes
        scores = {
            s.record_id: (s.rank, s.score, s.per_subtask)
            for s in session.query(Score).filter_by(valuation_id=valuation_id)
        }
        summary = row.score_summary
    assert any(note.startswith("reused warmup run") for note in notes), notes
    reused = [n for n in notes if n.startswith(f"reused {kind} features of dataset {made['pool']}")]
    assert len(reused) == 2, notes  # one per checkpoint
    expected = _stored_self_influence(
        valuation_id, kind, token_weighted=method == "self_influence_token_weighted"
    )
    assert set(scores) == set(expected) and len(scores) == 12
    got = torch.tensor([scores[r][1] for r in sorted(expected)], dtype=torch.float64)
    want = torch.tensor([expected[r] for r in sorted(expected)], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    by_rank = sorted(scores.values())
    assert [s for _, s, _ in by_rank] == sorted((s for _, s, _ in by_rank), reverse=True)
    assert all(per_subtask == {} for _, _, per_subtask in by_rank)
    assert summary is not None and summary["count"] == 12
    assert sum(summary["histogram"]["counts"]) == 12
    assert summary["max"] == pytest.approx(max(expected.values()), rel=1e-9)


def test_self_influence_alone_featurizes_only_the_pool(
    made: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    valuation_id, sent = _value(made, "self_influence", monkeypatch)
    assert sent.count(VALUATION_FEATURIZE_SHARD) == 2 * 3  # 2 epochs x 3 pool shards, no probes
    with SessionLocal() as session:
        kinds = {row.kind for row in session.query(FeatureSet)}
        assert kinds == {"sgd"}
        assert all(row.dataset_id == made["pool"] for row in session.query(FeatureSet))
    assert len(_stored_self_influence(valuation_id, "sgd")) == 12
