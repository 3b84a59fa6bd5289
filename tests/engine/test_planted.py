"""End to end on a planted pool: LESS must rank the probes' task on top.

Pool: 5 synthetic tasks x 30 records (``synthetic.planted_tasks``); probes: 6 held-out records
of one task, all with that subtask. Warmup, Adam pool features / SGD probe features projected
to d=2048, LESS scores; the top 30 (the size of one task) should be mostly that task.
"""

from __future__ import annotations

import pytest

from workers.engine.data import TokenizedExample, tokenize_examples
from workers.engine.features import FeatureKind, FeatureSet, featurize
from workers.engine.influence import rank, score_shard
from workers.engine.lora import LoraSettings, attach_lora, lora_parameters
from workers.engine.models import TINY_LLAMA, load_model_and_tokenizer
from workers.engine.projection import RademacherProjector
from workers.engine.synthetic import TASKS, planted_tasks
from workers.engine.warmup import WarmupSettings, select_warmup_subset, warmup

from .conftest import make_provenance, to_examples

N_PER_TASK = 30
N_PROBES = 6
MAX_LENGTH = 128
LORA = LoraSettings(r=8, alpha=32.0, dropout=0.1)
WARMUP = dict(fraction=0.5, epochs=2, learning_rate=1e-3, warmup_ratio=0.0, batch_size=8)
DIM = 2048
MIN_FRACTION = 0.6


def _rows(features: FeatureSet, keep: list[int]) -> FeatureSet:
    return FeatureSet(
        provenance=features.provenance,
        record_ids=[features.record_ids[i] for i in keep],
        subtasks=[features.subtasks[i] for i in keep],
        features=features.features[keep],
    )


def planted_fractions(seed: int) -> dict[str, float]:
    """Fraction of the top-30 pool records that belong to the probes' task, for each task."""
    base, tokenizer = load_model_and_tokenizer(TINY_LLAMA, seed=seed)
    model = attach_lora(base, LORA, seed=seed)
    pool, skipped = tokenize_examples(
        tokenizer, to_examples(planted_tasks(N_PER_TASK, seed), with_subtask=False), MAX_LENGTH
    )
    probes, _ = tokenize_examples(
        tokenizer,
        to_examples(planted_tasks(N_PROBES, seed + 1000, id_prefix="probe"), with_subtask=True),
        MAX_LENGTH,
    )
    assert not skipped and len(pool) == N_PER_TASK * len(TASKS)
    settings = WarmupSettings(seed=seed, **WARMUP)  # type: ignore[arg-type]
    subset = select_warmup_subset(len(pool), settings.fraction, seed)
    checkpoints = warmup(model, [pool[i] for i in subset], settings, pad_token_id=0)

    n_params = sum(p.numel() for _, p in lora_parameters(model))
    projector = RademacherProjector(n_params, DIM, seed=seed)
    pool_sets: list[FeatureSet] = []
    probe_sets: list[FeatureSet] = []
    jobs: list[tuple[FeatureKind, list[TokenizedExample], list[FeatureSet]]] = [
        ("adam", pool, pool_sets),
        ("sgd", probes, probe_sets),
    ]
    for ckpt in checkpoints:
        for kind, examples, sets in jobs:
            provenance = make_provenance(model, ckpt, projector, kind=kind, max_length=MAX_LENGTH)
            features = featurize(
                model,
                examples,
                kind=kind,
                checkpoint=ckpt,
                projector=projector,
                provenance=provenance,
                batch_size=16,
                pad_token_id=0,
            )
            sets.append(features)
    fractions = {}
    for task in TASKS:
        keep = [i for i, ex in enumerate(probes) if ex.subtask == task]
        scores = score_shard(
            pool_sets,
            [_rows(s, keep) for s in probe_sets],
            [c.mean_lr for c in checkpoints],
            method="less",
        )
        top = [scores.record_ids[i] for i in rank(scores.record_ids, scores.scores)[:N_PER_TASK]]
        fractions[task] = sum(f"-{task}-" in rid for rid in top) / N_PER_TASK
    return fractions


@pytest.mark.parametrize("seed", [0, 1])
def test_less_finds_the_planted_task(seed: int) -> None:
    fractions = planted_fractions(seed)
    print(
        f"\nplanted task, seed {seed}: top-{N_PER_TASK} fraction from the probes' task: "
        + ", ".join(f"{task} {f:.2f}" for task, f in fractions.items())
    )
    assert min(fractions.values()) >= MIN_FRACTION, fractions
