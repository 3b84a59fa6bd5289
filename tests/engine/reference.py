"""Brute-force references: the formulas of seed 002 §2 / app. F written out, slow and obvious.

Nothing here reuses the engine's math (loss, features, cosine, sums, aggregation); only the
parameter order (``lora_parameters``) is shared, since it defines the coordinates of R^P.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from workers.engine.data import TokenizedExample
from workers.engine.lora import lora_parameters


def reference_gradient(
    model: torch.nn.Module, example: TokenizedExample, *, summed: bool = False
) -> Tensor:
    """∇θ L(z; θ) [P] with L = -P⁻¹ Σ_p log softmax(logits)[next token] over response tokens
    (``summed``: without the P⁻¹, the sequence loss -log f(y|x))."""
    params = [p for _, p in lora_parameters(model)]
    ids = torch.tensor([example.input_ids])
    with torch.enable_grad():
        logits = model(input_ids=ids).logits[0]  # [T, V]
        log_probs = torch.log_softmax(logits, dim=-1)
        terms = []
        for t in range(1, len(example.input_ids)):
            if example.labels[t] != -100:
                terms.append(-log_probs[t - 1, example.labels[t]])
        loss = torch.stack(terms).sum() / (1 if summed else len(terms))
        grads = torch.autograd.grad(loss, params)
    return torch.cat([g.reshape(-1) for g in grads])


def reference_layer_gradients(model: torch.nn.Module, example: TokenizedExample) -> list[Tensor]:
    """∇θ_l L(z; θ) [P_l] for every LoRA weight tensor θ_l (DataInf's layers), in float64."""
    flat = reference_gradient(model, example).double()
    sizes = [p.numel() for _, p in lora_parameters(model)]
    return list(flat.split(sizes))


def reference_datainf(
    pool_grads: Sequence[Sequence[Tensor]],
    probe_grads: Sequence[Sequence[Tensor]],
    *,
    damping: float = 0.1,
) -> Tensor:
    """DataInf as published (Kwon et al. 2024, eq. 5 and their code), as explicit loops.

    ``pool_grads[i][l]`` is g_il [d_l], ``probe_grads[j][l]`` is v_jl [d_l]. Per layer l:
    λ_l = damping · (1/n) Σ_i (1/d_l) Σ_k g_il[k]²  (the mean of each gradient's squared
    coordinates, averaged over the pool), and the influence of z_k on z_j is
        -I(z_k, z_j) = Σ_l v_jlᵀ [(1/n) Σ_i (g_il g_ilᵀ + λ_l I)⁻¹] g_kl
    with every d_l x d_l inverse taken by ``torch.linalg.inv``. Returns [n, m].
    """
    n, m, n_layers = len(pool_grads), len(probe_grads), len(pool_grads[0])
    out = torch.zeros((n, m), dtype=torch.float64)
    for layer in range(n_layers):
        g = [pool_grads[i][layer].double() for i in range(n)]
        d = g[0].numel()
        lam = damping * sum(float((gi * gi).mean()) for gi in g) / n
        eye = torch.eye(d, dtype=torch.float64)
        inverse = sum(torch.linalg.inv(torch.outer(gi, gi) + lam * eye) for gi in g) / n
        for k in range(n):
            for j in range(m):
                out[k, j] += float(probe_grads[j][layer].double() @ inverse @ g[k])
    return out


def reference_adam_feature(
    g: Tensor, m: Tensor, v: Tensor, *, step: int, bias_correction: bool
) -> Tensor:
    """Γ = m'/sqrt(v' + ε), elementwise, with optional 1 - β^t (t = step + 1)."""
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    out = []
    for g_k, m_k, v_k in zip(g.tolist(), m.tolist(), v.tolist(), strict=True):
        m_new = beta1 * m_k + (1 - beta1) * g_k
        v_new = beta2 * v_k + (1 - beta2) * g_k * g_k
        if bias_correction:
            m_new = m_new / (1 - beta1 ** (step + 1))
            v_new = v_new / (1 - beta2 ** (step + 1))
        out.append(m_new / math.sqrt(v_new + eps))
    return torch.tensor(out, dtype=torch.float64)


def reference_cosine(a: Tensor, b: Tensor) -> float:
    dot = float((a.double() * b.double()).sum())
    norm_a = math.sqrt(float((a.double() ** 2).sum()))
    norm_b = math.sqrt(float((b.double() ** 2).sum()))
    return 0.0 if norm_a == 0 or norm_b == 0 else dot / (norm_a * norm_b)


def reference_scores(
    pool_feats: Sequence[Tensor],
    probe_feats: Sequence[Tensor],
    probe_subtasks: Sequence[str | None],
    mean_lrs: Sequence[float],
    *,
    method: str,
) -> list[float]:
    """Inf(z_i, D_V) = max_j mean_{v in j} Σ_e c_e sim_e(i, v), as explicit loops.

    ``pool_feats[e]`` [N, d], ``probe_feats[e]`` [M, d]. less: c_e = η̄_e / Σ η̄, sim = cosine;
    tracin: c_e = η̄_e, sim = inner product (TracIn with plain gradients as ``pool_feats``,
    tracin_adam with Adam features).
    """
    n, m = pool_feats[0].shape[0], probe_feats[0].shape[0]
    total_lr = sum(mean_lrs)
    subtasks = ["default" if s is None else s for s in probe_subtasks]
    scores = []
    for i in range(n):
        per_probe = []
        for v in range(m):
            s = 0.0
            for e in range(len(mean_lrs)):
                a, b = pool_feats[e][i], probe_feats[e][v]
                if method == "less":
                    s += mean_lrs[e] / total_lr * reference_cosine(a, b)
                else:
                    s += mean_lrs[e] * float((a.double() * b.double()).sum())
            per_probe.append(s)
        best = -math.inf
        for subtask in set(subtasks):
            members = [per_probe[v] for v in range(m) if subtasks[v] == subtask]
            best = max(best, sum(members) / len(members))
        scores.append(best)
    return scores


def reference_policy_gradient(
    model: torch.nn.Module,
    prompt_ids: Sequence[int],
    responses: Sequence[Sequence[int]],
    rewards: Sequence[float],
    weighting: str,
) -> Tensor:
    """ψ = Σ_j w_j (-∇θ log f(ŷ_j | x)) [P], one sample at a time, weights written out."""
    m = len(rewards)
    if weighting == "reinforce":
        weights = [r / m for r in rewards]
    elif weighting == "baseline":
        mean = sum(rewards) / m
        weights = [(r - mean) / m for r in rewards]
    else:  # rejection
        kept = [r for r in rewards if r > 0]
        weights = [r / len(kept) if r > 0 else 0.0 for r in rewards]
    params = [p for _, p in lora_parameters(model)]
    total = None
    for response, w in zip(responses, weights, strict=True):
        ids = list(prompt_ids) + list(response)
        with torch.enable_grad():
            log_probs = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0], dim=-1)
            log_f = sum(
                log_probs[len(prompt_ids) + k - 1, token] for k, token in enumerate(response)
            )
            grads = torch.autograd.grad(-log_f, params)
        flat = torch.cat([g.reshape(-1) for g in grads]).double() * w
        total = flat if total is None else total + flat
    assert total is not None
    return total
