"""Planted disagreement between loss and reward (issue 4): probe labels are wrong, the reward
checks the right behaviour. NICE must rank the pool records that teach the rewarded behaviour
on top; LESS, following the wrong labels, must rank the records that teach the labels' on top.

Pool: capital-city questions answered right ("The capital of X is Y.", 20 records) or with the
labels' behaviour ("I do not know.", 20), plus 20 records of each of four other tasks.
Probes: 6 fresh capital questions labelled "I do not know." (the wrong label). NICE uses
assisted responses (NICE-AMC: a stronger model's answers, here one right and one refusal per
probe) rewarded by ``contains "capital of"``; LESS uses the labels.
"""

from __future__ import annotations

import dataclasses
import random

from workers.engine import rewards
from workers.engine.data import Example, tokenize_examples
from workers.engine.features import FeatureSet, featurize
from workers.engine.influence import rank, score_shard
from workers.engine.lora import LoraSettings, attach_lora, lora_parameters
from workers.engine.models import TINY_LLAMA, load_model_and_tokenizer
from workers.engine.nice import ProbePrompt, assisted_samples, policy_gradient_features
from workers.engine.projection import BlockHadamardProjector
from workers.engine.synthetic import CAPITALS, planted_tasks
from workers.engine.warmup import WarmupSettings, select_warmup_subset, warmup

from .conftest import make_provenance, to_examples

N_GROUP = 20
REFUSAL = "I do not know."
MAX_LENGTH = 96


def _capital_records(pairs: list[tuple[str, str]], answer: str, prefix: str) -> list[Example]:
    return [
        Example(
            f"{prefix}-{i:03d}",
            (
                {"role": "user", "content": f"What is the capital of {country}?"},
                {
                    "role": "assistant",
                    "content": f"The capital of {country} is {capital}."
                    if answer == "right"
                    else REFUSAL,
                },
            ),
        )
        for i, (country, capital) in enumerate(pairs)
    ]


def test_nice_follows_the_reward_and_less_follows_the_labels() -> None:
    rng = random.Random(0)
    countries = list(CAPITALS)
    rng.shuffle(countries)
    right = _capital_records(countries[:N_GROUP], "right", "right")
    refuse = _capital_records(countries[N_GROUP : 2 * N_GROUP], "refuse", "refuse")
    others = [r for r in planted_tasks(N_GROUP, seed=0) if r["subtask"] != "capital"]
    pool_examples = right + refuse + to_examples(others, with_subtask=False)
    probe_pairs = countries[2 * N_GROUP : 2 * N_GROUP + 6]

    base, tokenizer = load_model_and_tokenizer(TINY_LLAMA, seed=0)
    model = attach_lora(base, LoraSettings(r=8, alpha=32.0, dropout=0.1), seed=0)
    pool, skipped = tokenize_examples(tokenizer, pool_examples, MAX_LENGTH)
    assert not skipped
    settings = WarmupSettings(
        fraction=0.5, epochs=2, learning_rate=1e-3, warmup_ratio=0.0, batch_size=8, seed=0
    )
    subset = select_warmup_subset(len(pool), settings.fraction, settings.seed)
    checkpoints = warmup(model, [pool[i] for i in subset], settings, pad_token_id=0)

    # LESS: probes carry the wrong label (the refusal)
    labelled, _ = tokenize_examples(
        tokenizer, _capital_records(probe_pairs, "refuse", "probe"), MAX_LENGTH
    )
    # NICE-AMC: the same prompts, a stronger model's two answers, rewarded for the right one
    prompts = [
        ProbePrompt(
            f"probe-{i:03d}", ({"role": "user", "content": f"What is the capital of {c}?"},)
        )
        for i, (c, _) in enumerate(probe_pairs)
    ]
    assisted = {
        p.record_id: [f"The capital of {c} is {cap}.", REFUSAL]
        for p, (c, cap) in zip(prompts, probe_pairs, strict=True)
    }
    samples = assisted_samples(tokenizer, prompts, assisted)
    reward_values = rewards.compute_rewards(
        rewards.reward_from_dict({"kind": "contains"}),
        [rewards.RewardItem(s.probe_id, "", s.text, label="capital of") for s in samples],
    )
    assert reward_values == [1.0, 0.0] * len(prompts)

    sizes = [p.numel() for _, p in lora_parameters(model)]
    projector = BlockHadamardProjector(sizes, 2048, seed=0)
    pool_sets: list[FeatureSet] = []
    less_sets: list[FeatureSet] = []
    nice_sets: list[FeatureSet] = []
    for ckpt in checkpoints:

        def provenance(kind: str, ckpt=ckpt):  # type: ignore[no-untyped-def]
            return make_provenance(model, ckpt, projector, kind=kind, max_length=MAX_LENGTH)

        common = dict(checkpoint=ckpt, projector=projector, batch_size=16, pad_token_id=0)
        pool_sets.append(
            featurize(model, pool, kind="adam", provenance=provenance("adam"), **common)
        )
        less_sets.append(
            featurize(model, labelled, kind="sgd", provenance=provenance("sgd"), **common)
        )
        nice_sets.append(
            policy_gradient_features(
                model,
                prompts,
                samples,
                reward_values,
                weighting="reinforce",
                provenance=dataclasses.replace(provenance("sgd"), kind="policy"),
                **common,  # type: ignore[arg-type]
            ).features
        )
    lrs = [c.mean_lr for c in checkpoints]

    def top_groups(probe_sets: list[FeatureSet]) -> dict[str, int]:
        scores = score_shard(pool_sets, probe_sets, lrs, method="less")
        top = [scores.record_ids[i] for i in rank(scores.record_ids, scores.scores)[:N_GROUP]]
        return {g: sum(rid.startswith(g) for rid in top) for g in ("right", "refuse")}

    nice_top, less_top = top_groups(nice_sets), top_groups(less_sets)
    print(f"\ntop {N_GROUP}: NICE {nice_top}, LESS {less_top}")
    assert nice_top["right"] >= 0.6 * N_GROUP and nice_top["right"] > nice_top["refuse"]
    assert less_top["refuse"] >= 0.6 * N_GROUP and less_top["refuse"] > less_top["right"]
