"""DataInf influence (seed 002 app. E.3; Kwon et al. 2024) and NICE-IF.

Influence functions weight gradients by an inverse Hessian; DataInf makes that affordable for
LoRA by working layer by layer (a LoRA-adapted module's A and B together are one layer l) with
the damped empirical Fisher H_l = (1/n) Σ_i g_il g_ilᵀ + λ_l I and the swap

    (1/n Σ_i g_il g_ilᵀ + λ_l I)⁻¹  ≈  (1/n) Σ_i (g_il g_ilᵀ + λ_l I)⁻¹
                                    =  1/(n λ_l) Σ_i (I - g_il g_ilᵀ / (λ_l + ‖g_il‖²))

(Sherman–Morrison per term), so no matrix is ever inverted. The score of pool example k for
probe v is the helpfulness -I(z_k) = Σ_l v_lᵀ H_l⁻¹ g_kl (higher = upweighting z_k lowers the
probe's loss more; the sign LESS uses), i.e.

    Σ_l 1/(n λ_l) [ n v_lᵀ g_kl - Σ_i (v_lᵀ g_il)(g_ilᵀ g_kl) / (λ_l + ‖g_il‖²) ].

λ_l = ``damping`` · mean_i ‖g_il‖² (DataInf's default scale 0.1). Gradients are the per-layer
projected loss gradients at one checkpoint (the last); with ``policy=True`` rows the probe side
is NICE's policy gradient instead (NICE-IF). ``n`` is the pool given, so a pool is scored in
one call: the Σ_i couples every example with every other (two passes would stream it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from peft import PeftModel
from torch import Tensor

from workers.engine.data import TokenizedExample, collate
from workers.engine.errors import Cancelled, InvalidInput
from workers.engine.gradients import TokenLoss, backward_with_per_example_gradients
from workers.engine.lora import load_adapter_state, lora_parameters
from workers.engine.projection import BlockHadamardProjector
from workers.engine.warmup import Checkpoint


def lora_layers(model: PeftModel) -> list[list[int]]:
    """Indices into ``lora_parameters`` grouped by adapted module (its lora_A and lora_B)."""
    groups: dict[str, list[int]] = {}
    for index, (name, _) in enumerate(lora_parameters(model)):
        module = name.split(".lora_", 1)[0]
        groups.setdefault(module, []).append(index)
    return list(groups.values())


def per_layer_gradients(
    model: PeftModel,
    examples: Sequence[TokenizedExample],
    *,
    checkpoint: Checkpoint,
    dim_per_layer: int | None,
    seed: int,
    batch_size: int,
    pad_token_id: int,
    token_loss: TokenLoss = "mean",
    should_stop: Callable[[], bool] | None = None,
) -> list[Tensor]:
    """Per-layer per-example gradients at ``checkpoint``: one [N, d_l] float64 tensor per layer.

    ``dim_per_layer`` projects each layer with its own block SRHT (seeded by (seed, layer));
    ``None`` keeps the exact gradients (small models, tests).
    """
    if batch_size < 1:
        raise InvalidInput(f"batch_size must be >= 1, got {batch_size}")
    load_adapter_state(model, checkpoint.adapter_state)
    params = lora_parameters(model)
    layers = lora_layers(model)
    layer_of = {
        index: (layer, group.index(index)) for layer, group in enumerate(layers) for index in group
    }
    sizes = [[params[i][1].numel() for i in group] for group in layers]
    projectors = (
        [
            BlockHadamardProjector(group_sizes, dim_per_layer, seed=seed * 100_003 + layer)
            for layer, group_sizes in enumerate(sizes)
        ]
        if dim_per_layer is not None
        else None
    )
    widths = [dim_per_layer if dim_per_layer is not None else sum(g) for g in sizes]
    offsets = [[sum(g[:k]) for k in range(len(g))] for g in sizes]
    device = params[0][1].device
    rows: list[list[Tensor]] = [[] for _ in layers]
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(examples), batch_size):
            if should_stop is not None and should_stop():
                raise Cancelled(f"cancelled after {start} of {len(examples)} examples")
            batch = {
                k: v.to(device)
                for k, v in collate(examples[start : start + batch_size], pad_token_id).items()
            }
            n = batch["input_ids"].shape[0]
            out = [torch.zeros((n, w), dtype=torch.float64, device=device) for w in widths]

            def consume(index: int, grads: Tensor, out: list[Tensor] = out) -> None:
                layer, position = layer_of[index]
                if projectors is not None:
                    part = projectors[layer].project_segment(position, grads)
                    out[layer] += part.double()
                else:
                    lo = offsets[layer][position]
                    out[layer][:, lo : lo + grads.shape[1]] = grads.double()

            backward_with_per_example_gradients(model, batch, consume, token_loss)
            for layer in range(len(layers)):
                rows[layer].append(out[layer].cpu())
    finally:
        model.train(was_training)
    return [
        torch.cat(r) if r else torch.zeros((0, w), dtype=torch.float64)
        for r, w in zip(rows, widths, strict=True)
    ]


def combine_rows(
    layer_rows: Sequence[Tensor], owner: Sequence[int], weights: Sequence[float], n_owners: int
) -> list[Tensor]:
    """Σ_j w_j row_j per owner, per layer: NICE-IF's policy gradient from per-sample rows."""
    if len(owner) != len(weights):
        raise InvalidInput(f"{len(owner)} owners but {len(weights)} weights")
    index = torch.tensor(list(owner), dtype=torch.long)
    w = torch.tensor(list(weights), dtype=torch.float64)[:, None]
    out = []
    for rows in layer_rows:
        if rows.shape[0] != len(owner):
            raise InvalidInput(f"{rows.shape[0]} rows but {len(owner)} owners")
        acc = torch.zeros((n_owners, rows.shape[1]), dtype=torch.float64)
        out.append(acc.index_add_(0, index, rows.double() * w))
    return out


def datainf_scores(
    pool_layers: Sequence[Tensor], probe_layers: Sequence[Tensor], *, damping: float = 0.1
) -> Tensor:
    """Helpfulness [N, M] of each pool example for each probe (module docstring)."""
    if len(pool_layers) != len(probe_layers) or not pool_layers:
        raise InvalidInput("pool and probes need the same, non-empty list of layers")
    if not damping > 0:
        raise InvalidInput(f"damping must be > 0, got {damping}")
    n, m = pool_layers[0].shape[0], probe_layers[0].shape[0]
    if n == 0 or m == 0:
        raise InvalidInput("need at least one pool example and one probe")
    total = torch.zeros((n, m), dtype=torch.float64)
    for g, v in zip(pool_layers, probe_layers, strict=True):
        g, v = g.double(), v.double()
        if g.shape[0] != n or v.shape[0] != m or g.shape[1] != v.shape[1]:
            raise InvalidInput(
                f"layer shapes differ: pool {tuple(g.shape)}, probes {tuple(v.shape)}"
            )
        sq = (g * g).sum(dim=1)  # ‖g_i‖² [n]
        lam = damping * float(sq.mean())
        if lam == 0:
            continue  # a layer with no gradient contributes nothing
        vg = v @ g.T  # v_lᵀ g_il [m, n]
        correction = (vg / (lam + sq)[None, :]) @ g  # Σ_i (vᵀg_i) g_iᵀ / (λ+‖g_i‖²) [m, d]
        total += ((n * vg - correction @ g.T) / (n * lam)).T
    return total
