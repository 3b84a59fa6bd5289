"""Every valuation method, run through the valuation tasks on the builtin tiny model, stores the
scores its published formula gives on the features it stored.

The formulas are written out here, apart from the engine's scorers: what each method reads
(``READS``: its pool and probe feature kinds and its checkpoints) is stated below, the stored
feature sets of those kinds are read back from the blob store, and the scores are recomputed
in float64 (DataInf through ``tests.engine.reference.reference_datainf``, its inverse Hessians
taken by ``torch.linalg.inv``). Probes span three subtasks of two probes each, so each score is
a mean within subtasks and a max over them; the stored per-subtask means are checked too.
NICE's probes are assisted (NICE-AMC) by a dataset of the right answer and a wrong one under a
"contains" reward: no sampling, so the policy gradients are deterministic."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from sqlalchemy import select
from torch import Tensor

from service.blobs import TenantBlobStore, blob_store_from_settings
from service.config import get_settings
from service.db.models import (
    Checkpoint,
    FeatureSet,
    Model,
    Record,
    RewardSpec,
    Sample,
    Score,
    Valuation,
)
from service.db.session import SessionLocal
from service.tenancy import DEFAULT_TENANT_ID
from tests.engine.reference import reference_cosine, reference_datainf
from tests.workers.conftest import insert_dataset, run_valuation
from workers.engine import data, features, models
from workers.engine.projection import layer_input_sizes, layer_widths
from workers.engine.synthetic import planted_tasks

pytestmark = pytest.mark.usefixtures("migrated")

SETTINGS = {
    "warmup": {"fraction": 1.0, "epochs": 2, "batch_size": 4, "learning_rate": 3e-3},
    "lora": {"r": 4, "alpha": 16.0},
    "projection": {"dim": 256},
    "max_length": 128,  # room for NICE's assisted responses (byte-level tokenizer)
    "shard_size": 5,  # 12 pool records: 3 shards, DataInf's sums span them
}
N_POOL = 12
SUBTASKS = ("arithmetic", "capital", "uppercase")
WRONG = "I do not know."  # contains none of the probes' answers: reward 0
DAMPING = 0.1  # settings.datainf's default, relative: λ_l = 0.1 · Σ_i ‖g_il‖² / (n P_l)

# method: (pool feature kind, probe feature kind or None, warmup checkpoints it reads)
READS: dict[str, tuple[str, str | None, str]] = {
    "less": ("adam", "sgd", "all"),
    "tracin": ("sgd", "sgd", "all"),
    "tracin_adam": ("adam", "sgd", "all"),
    "nice": ("adam", "policy", "all"),
    "datainf": ("sgd", "sgd", "last"),
    "nice_if": ("sgd", "policy", "last"),
    "self_influence": ("sgd", None, "all"),
    "self_influence_adam": ("adam", None, "all"),
    "self_influence_token_weighted": ("sgd", None, "all"),
}


def _probe_rows() -> list[dict[str, Any]]:
    rows = [dict(r) for r in planted_tasks(2, seed=3) if r["subtask"] in SUBTASKS]
    assert sorted(str(r["subtask"]) for r in rows) == sorted(SUBTASKS * 2)
    return rows


@pytest.fixture()
def made() -> dict[str, str]:
    """The model, the pool, the probes (with subtasks), and for NICE a "contains" reward (as
    the API stores it) and an assist dataset: each probe's own answer and a wrong one."""
    probes = _probe_rows()
    assist = [
        {
            "id": f"{probe['id']}-{name}",
            "messages": [probe["messages"][0], {"role": "assistant", "content": answer}],
            "metadata": {"probe_id": probe["id"]},
        }
        for probe in probes
        for name, answer in (("right", probe["messages"][-1]["content"]), ("wrong", WRONG))
    ]
    with SessionLocal() as session:
        model = Model(tenant_id=DEFAULT_TENANT_ID, name="tiny", source=models.TINY_LLAMA)
        spec = RewardSpec(
            tenant_id=DEFAULT_TENANT_ID,
            name="answer",
            kind="contains",
            spec={"kind": "contains", "ignore_case": True},
        )
        session.add_all([model, spec])
        ids = {
            "pool": insert_dataset(
                session, "pool", [dict(r) for r in planted_tasks(3, seed=0)[:N_POOL]]
            ),
            "probes": insert_dataset(session, "probes", probes, subtasks=True),
            "assist": insert_dataset(session, "assist", assist),
        }
        session.commit()
        return ids | {"model": model.id, "reward_spec": spec.id}


def _stored_features(
    valuation_id: str, dataset_id: str, kind: str, checkpoints: str
) -> tuple[list[float], list[features.FeatureSet]]:
    """η̄_e and the whole stored ``kind`` feature set of a dataset at each checkpoint read."""
    blobs = TenantBlobStore(blob_store_from_settings(get_settings()), DEFAULT_TENANT_ID)
    with SessionLocal() as session:
        valuation = session.get(Valuation, valuation_id)
        assert valuation is not None
        ckpts = session.scalars(
            select(Checkpoint)
            .where(Checkpoint.warmup_run_id == valuation.warmup_run_id)
            .order_by(Checkpoint.epoch)
        ).all()
        assert [c.epoch for c in ckpts] == [1, 2]
        used = list(ckpts) if checkpoints == "all" else list(ckpts[-1:])
        lrs, sets = [], []
        for ckpt in used:
            (row,) = session.scalars(
                select(FeatureSet).where(
                    FeatureSet.checkpoint_id == ckpt.id,
                    FeatureSet.dataset_id == dataset_id,
                    FeatureSet.kind == kind,
                )
            ).all()
            shards = [
                features.FeatureSet.from_safetensors(
                    blobs.get_bytes(f"{row.blob_prefix}/shard-{i:05d}.safetensors")
                )
                for i in range(row.n_shards)
            ]
            sets.append(
                features.FeatureSet(
                    provenance=shards[0].provenance,
                    record_ids=[r for s in shards for r in s.record_ids],
                    subtasks=[t for s in shards for t in s.subtasks],
                    features=torch.cat([s.features for s in shards]),
                )
            )
            lrs.append(ckpt.mean_lr)
    assert sets[0].record_ids and all(s.record_ids == sets[0].record_ids for s in sets)
    return lrs, sets


def _pair_scores(
    method: str, lrs: list[float], pool: list[Tensor], probes: list[Tensor], spec: str
) -> Tensor:
    """Inf(z_i, z_v) [N, M] as each method's paper defines it, in float64; ``pool[e]`` [N, d]
    and ``probes[e]`` [M, d] at the e-th checkpoint read."""
    if method in ("datainf", "nice_if"):
        (g,), (v,) = pool, probes  # the last checkpoint only
        widths = layer_widths(spec)
        # every LoRA tensor kept whole (rotated, not cut): d_l is both its width and its P_l
        assert widths == layer_input_sizes(spec) and len(widths) > 1
        pool_layers = [list(row.double().split(widths)) for row in g]
        probe_layers = [list(row.double().split(widths)) for row in v]
        return reference_datainf(pool_layers, probe_layers, damping=DAMPING)
    out = torch.zeros((pool[0].shape[0], probes[0].shape[0]), dtype=torch.float64)
    for lr, g, v in zip(lrs, pool, probes, strict=True):
        if method in ("less", "nice"):  # Σ_e w_e cos(φ_e, ψ_e), w_e = η̄_e / Σ η̄
            cosines = [[reference_cosine(a, b) for b in v] for a in g]
            out += lr / sum(lrs) * torch.tensor(cosines, dtype=torch.float64)
        else:  # tracin, tracin_adam: Σ_e η̄_e ⟨φ_e, ψ_e⟩
            assert method in ("tracin", "tracin_adam")
            out += lr * (g.double() @ v.double().T)
    return out


def _expected(
    valuation_id: str, method: str, made: dict[str, str]
) -> tuple[list[str], Tensor, dict[str, Tensor]]:
    """Pool record ids, their scores [N] and per-subtask means, from the stored features."""
    pool_kind, probe_kind, checkpoints = READS[method]
    lrs, pool = _stored_features(valuation_id, made["pool"], pool_kind, checkpoints)
    record_ids = pool[0].record_ids
    assert len(record_ids) == N_POOL
    if probe_kind is None:  # SI(z) = Σ_e η̄_e ‖φ_e(z)‖²: no probes, no subtasks
        scores = torch.zeros(N_POOL, dtype=torch.float64)
        for lr, p in zip(lrs, pool, strict=True):
            scores += lr * (p.features.double() ** 2).sum(dim=1)
        if method == "self_influence_token_weighted":  # times T_z, from a tokenization here
            tokens = _response_tokens(made["pool"])
            scores *= torch.tensor([tokens[r] for r in record_ids], dtype=torch.float64)
        return record_ids, scores, {}
    probe_lrs, probes = _stored_features(valuation_id, made["probes"], probe_kind, checkpoints)
    assert probe_lrs == lrs
    subtask_of = {r["id"]: r["subtask"] for r in _probe_rows()}
    assert probes[0].record_ids == list(subtask_of)
    assert probes[0].subtasks == list(subtask_of.values())
    pairs = _pair_scores(
        method,
        lrs,
        [p.features for p in pool],
        [p.features for p in probes],
        pool[0].provenance.projector,
    )
    subtasks = list(subtask_of.values())
    per_subtask = {  # the mean over each subtask's probes
        name: pairs[:, [j for j, s in enumerate(subtasks) if s == name]].mean(dim=1)
        for name in SUBTASKS
    }
    scores = torch.stack([per_subtask[name] for name in SUBTASKS], dim=1).max(dim=1).values
    return record_ids, scores, per_subtask


def _response_tokens(dataset_id: str) -> dict[str, int]:
    """Each record's response tokens at SETTINGS' max_length, as the builtin tokenizer and the
    chat template give them (``n_response_tokens``), not as the feature blobs record them."""
    with SessionLocal() as session:
        rows = session.scalars(select(Record).where(Record.dataset_id == dataset_id)).all()
        examples = [data.Example(r.record_id, tuple(r.messages), r.subtask) for r in rows]
    _, tokenizer = models.load_model_and_tokenizer(models.TINY_LLAMA)
    tokenized, skipped = data.tokenize_examples(tokenizer, examples, SETTINGS["max_length"])
    assert not skipped and all(not t.truncated for t in tokenized)
    return {t.record_id: t.n_response_tokens for t in tokenized}


def _close(got: list[float], want: Tensor) -> None:
    want = want.double()
    scale = float(want.abs().max())
    assert scale > 0
    torch.testing.assert_close(
        torch.tensor(got, dtype=torch.float64), want, rtol=1e-5, atol=1e-6 * scale
    )


@pytest.mark.parametrize("method", sorted(READS))
def test_stored_scores_are_the_published_formula_of_the_stored_features(
    made: dict[str, str], monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    pool_kind, probe_kind, checkpoints = READS[method]
    policy = probe_kind == "policy"
    valuation_id, _ = run_valuation(
        monkeypatch,
        method=method,
        model_id=made["model"],
        pool_id=made["pool"],
        probe_id=None if probe_kind is None else made["probes"],
        settings=SETTINGS,
        reward_spec_id=made["reward_spec"] if policy else None,
        assist_dataset_id=made["assist"] if policy else None,
    )
    with SessionLocal() as session:
        stored = session.scalars(
            select(Score).where(Score.valuation_id == valuation_id).order_by(Score.rank)
        ).all()
        kinds = {
            (row.dataset_id, row.kind, row.checkpoint_id)
            for row in session.scalars(select(FeatureSet))
        }
        epochs = {c.id: c.epoch for c in session.scalars(select(Checkpoint))}
        rewards = {
            (s.probe_record_id, s.text): s.reward
            for s in session.scalars(select(Sample).where(Sample.valuation_id == valuation_id))
        }
    # it stored exactly the features it reads, at exactly the checkpoints it reads
    read_epochs = [1, 2] if checkpoints == "all" else [2]
    expected_sets = {(made["pool"], pool_kind, e) for e in read_epochs}
    if probe_kind is not None:
        expected_sets |= {(made["probes"], probe_kind, e) for e in read_epochs}
    assert {(d, k, epochs[c]) for d, k, c in kinds} == expected_sets
    if policy:  # the assisted answers, rewarded by "contains": 1 right, 0 wrong
        assert len(rewards) == 2 * len(_probe_rows())
        assert all((reward == 0.0) == (text == WRONG) for (_, text), reward in rewards.items())

    record_ids, scores, per_subtask = _expected(valuation_id, method, made)
    by_id = {row.record_id: row for row in stored}
    assert sorted(by_id) == sorted(record_ids)
    _close([by_id[r].score for r in record_ids], scores)
    for row in stored:
        assert set(row.per_subtask) == set(per_subtask)
    for name, values in per_subtask.items():
        _close([by_id[r].per_subtask[name] for r in record_ids], values)
    assert [row.rank for row in stored] == list(range(N_POOL))
    ranked = [row.score for row in stored]
    assert ranked == sorted(ranked, reverse=True)
    if per_subtask:  # the max over subtasks is taken from more than one subtask
        best = torch.stack([per_subtask[n] for n in SUBTASKS], dim=1).argmax(dim=1)
        assert len(set(best.tolist())) >= 2, best
