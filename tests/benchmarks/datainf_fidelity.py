"""DataInf and TracIn fidelity on a real LoRA model: projected vs exact DataInf, the retired
damping rule vs the published one, and TracIn (plain gradients) vs ``tracin_adam``.

    .venv/bin/python -m tests.benchmarks.datainf_fidelity                       # builtin tiny
    .venv/bin/python -m tests.benchmarks.datainf_fidelity --model PATH --r 128 \\
        --pool 24 --probes 6 --dims 256,512,1024,2048                           # e.g. SmolLM2

Spearman correlations over every (pool record, probe) pair, and over the pool's scores
aggregated like Sift's (mean within a probe subtask, max over subtasks). DataInf at the last
checkpoint of a short warmup on planted tasks; exact = unprojected per-tensor gradients.
"""

from __future__ import annotations

import argparse
import time

import torch
from scipy.stats import spearmanr

from tests.engine.conftest import to_examples
from workers.engine.data import tokenize_examples
from workers.engine.datainf import datainf_scores, layer_sizes, layerwise_projector
from workers.engine.features import Provenance, checkpoint_hash, featurize
from workers.engine.influence import aggregate_subtasks, score_shard
from workers.engine.lora import LoraSettings, attach_lora, lora_parameters, parameter_order_hash
from workers.engine.models import TINY_LLAMA, load_model_and_tokenizer
from workers.engine.projection import (
    BlockHadamardProjector,
    IdentityProjector,
    Projector,
    split_layers,
)
from workers.engine.synthetic import planted_tasks
from workers.engine.warmup import WarmupSettings, warmup


def _rho(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(spearmanr(a.flatten().numpy(), b.flatten().numpy()).statistic)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=TINY_LLAMA)
    parser.add_argument("--r", type=int, default=8)
    parser.add_argument("--pool", type=int, default=64)
    parser.add_argument("--probes", type=int, default=8)
    parser.add_argument("--dims", default="16,32,64,128,256,512")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument(
        "--tracin-dim", type=int, default=0, help="project TracIn's features (0: exact)"
    )
    parser.add_argument("--tracin-only", action="store_true", help="skip the DataInf part")
    args = parser.parse_args()
    torch.manual_seed(0)
    t0 = time.time()
    model, tokenizer = load_model_and_tokenizer(args.model)
    peft = attach_lora(model, LoraSettings(r=args.r, alpha=4.0 * args.r, dropout=0.1), seed=0)
    n_tasks = len({str(r["subtask"]) for r in planted_tasks(1, seed=0)})
    pool, _ = tokenize_examples(
        tokenizer,
        to_examples(planted_tasks(-(-args.pool // n_tasks), seed=0), with_subtask=False),
        args.max_length,
    )
    probes, _ = tokenize_examples(
        tokenizer,
        to_examples(
            planted_tasks(-(-args.probes // n_tasks), seed=1, id_prefix="v"), with_subtask=True
        ),
        args.max_length,
    )
    pool, probes = pool[: args.pool], probes[: args.probes]
    pad = int(tokenizer.pad_token_id)
    ckpts = warmup(
        peft,
        pool[: max(8, len(pool) // 4)],
        WarmupSettings(epochs=2, learning_rate=args.lr, warmup_ratio=0.0, batch_size=4, seed=0),
        pad_token_id=pad,
    )
    print(f"model {args.model} r={args.r}: warmed in {time.time() - t0:.0f}s")

    def feats(examples: list, kind: str, ckpt: int, projector: Projector) -> torch.Tensor:
        c = ckpts[ckpt]
        prov = Provenance(
            model="bench",
            checkpoint=checkpoint_hash(c.adapter_state),
            projector=projector.spec(),
            seed=projector.seed,
            dim=projector.dim,
            dtype="float32",
            param_order_hash=parameter_order_hash(peft),
            kind=kind,
            max_length=args.max_length,
        )
        return featurize(
            peft,
            examples,
            kind=kind,  # type: ignore[arg-type]
            checkpoint=c,
            projector=projector,
            provenance=prov,
            batch_size=4,
            pad_token_id=pad,
        ).features

    subtasks = [p.subtask or "default" for p in probes]
    sizes = [g[0] for g in layer_sizes(peft)]
    if not args.tracin_only:
        _datainf(args, peft, feats, pool, probes, subtasks, sizes, t0)
    _tracin(args, peft, feats, ckpts, pool, probes, sizes, t0)


def _datainf(args, peft, feats, pool, probes, subtasks, sizes, t0):  # type: ignore[no-untyped-def]
    exact_proj = layerwise_projector(peft, None, 0)
    g_flat = feats(pool, "sgd", -1, exact_proj)
    v_flat = feats(probes, "sgd", -1, exact_proj)
    print(
        f"P = {sum(sizes)} in {len(sizes)} tensors of {sorted(set(sizes))}; "
        f"features in {time.time() - t0:.0f}s"
    )
    g_l = split_layers(g_flat, exact_proj.spec())
    v_l = split_layers(v_flat, exact_proj.spec())
    exact = datainf_scores(g_l, v_l)
    exact_agg = aggregate_subtasks(exact, subtasks)[0]

    # the retired rule: one layer per module (lora_A ++ lora_B), λ_l = 0.1 · mean_i ‖g_il‖²
    names = [n.split(".lora_", 1)[0] for n, _ in lora_parameters(peft)]
    groups: list[list[int]] = []
    for i, name in enumerate(names):
        if i and names[i - 1] == name:
            groups[-1].append(i)
        else:
            groups.append([i])
    g_mod = [torch.cat([g_l[i] for i in grp], 1) for grp in groups]
    v_mod = [torch.cat([v_l[i] for i in grp], 1) for grp in groups]
    old = datainf_scores(g_mod, v_mod, layer_dims=[1] * len(groups))
    lam_old = [0.1 * float((g.double() ** 2).sum(1).mean()) for g in g_mod]
    scaled_tracin = sum(
        (v.double() @ g.double().T).T / lam for g, v, lam in zip(g_mod, v_mod, lam_old, strict=True)
    )
    assert isinstance(scaled_tracin, torch.Tensor)
    print(
        f"retired rule vs published DataInf: pairs {_rho(old, exact):.4f}, "
        f"aggregated {_rho(aggregate_subtasks(old, subtasks)[0], exact_agg):.4f}; "
        f"vs per-layer-scaled TracIn: pairs {_rho(old, scaled_tracin):.4f}"
    )

    for dim in [int(d) for d in args.dims.split(",")]:
        rows: dict[str, list[tuple[float, float]]] = {"d_l = P_l": [], "d_l = w_l": []}
        for seed in range(args.seeds):
            proj = layerwise_projector(peft, dim, seed)
            gp = split_layers(proj.project(g_flat), proj.spec())
            vp = split_layers(proj.project(v_flat), proj.spec())
            for label, dims in (("d_l = P_l", sizes), ("d_l = w_l", None)):
                s = datainf_scores(gp, vp, layer_dims=dims)
                rows[label].append(
                    (_rho(s, exact), _rho(aggregate_subtasks(s, subtasks)[0], exact_agg))
                )
        for label, values in rows.items():
            pairs = sum(v[0] for v in values) / len(values)
            agg = sum(v[1] for v in values) / len(values)
            print(
                f"dim_per_layer {dim:5d} ({label}): Spearman vs exact pairs {pairs:.4f}, "
                f"aggregated {agg:.4f} (mean of {len(values)} seeds)"
            )
        print(f"  [{time.time() - t0:.0f}s]")


def _tracin(args, peft, feats, ckpts, pool, probes, sizes, t0):  # type: ignore[no-untyped-def]
    """TracIn as published (plain gradients) vs tracin_adam, every checkpoint."""
    flat: Projector = (
        BlockHadamardProjector(sizes, args.tracin_dim, 0)
        if args.tracin_dim
        else IdentityProjector(sum(sizes))
    )
    lrs = [c.mean_lr for c in ckpts]
    from workers.engine.features import FeatureSet

    def fs(x: torch.Tensor, kind: str, e: int, examples: list) -> FeatureSet:
        c = ckpts[e]
        prov = Provenance(
            model="bench", checkpoint=checkpoint_hash(c.adapter_state), projector=flat.spec(),
            seed=0, dim=flat.dim, dtype="float32", param_order_hash=parameter_order_hash(peft),
            kind=kind, max_length=args.max_length,
        )  # fmt: skip
        return FeatureSet(prov, [x.record_id for x in examples], [x.subtask for x in examples], x)

    results = {}
    for kind in ("sgd", "adam"):
        pool_sets = [fs(feats(pool, kind, e, flat), kind, e, pool) for e in range(len(ckpts))]
        probe_sets = [
            fs(feats(probes, "sgd", e, flat), "sgd", e, probes) for e in range(len(ckpts))
        ]
        results[kind] = score_shard(pool_sets, probe_sets, lrs, method="tracin").scores
    rho = _rho(results["sgd"], results["adam"])
    projected = f"projected to {args.tracin_dim}" if args.tracin_dim else "exact"
    print(
        f"tracin vs tracin_adam ({projected} features), aggregated scores: Spearman {rho:.4f}"
        f" [{time.time() - t0:.0f}s]"
    )


if __name__ == "__main__":
    main()
