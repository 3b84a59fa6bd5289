"""Per-example LoRA gradients ∇θ L(z; θ) and the features built from them (seed 002 §2.1, app. F).

Shapes: B examples per batch, T tokens, V vocabulary, P LoRA parameters (``lora_parameters``
order). Every gradient function maps a collated batch to a ``[B, P]`` matrix in float32, or
float64 for a float64 model (used by the exactness tests).

Training (pool) examples use Adam features Γ(z; θ^e) (LESS, NICE app. F); validation (probe)
examples use plain SGD gradients (``sgd_features``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal

import torch
from peft import PeftModel
from torch import Tensor, nn

from workers.engine.data import IGNORE_INDEX
from workers.engine.errors import InvalidInput
from workers.engine.lora import lora_parameters

TokenLoss = Literal["mean", "sum"]
"""How an example's token losses combine: ``mean`` is the NTP loss L(z) of LESS; ``sum`` is
-log f(y|x) of the whole response, the quantity a policy gradient differentiates (NICE)."""

PerExampleGradientFn = Callable[[PeftModel, dict[str, Tensor]], Tensor]
"""``(model, batch from data.collate) -> [B, P]`` flat per-example LoRA gradients, at least
float32 (a bfloat16 model's gradients are upcast; a float64 model's stay float64)."""


def response_nll(logits: Tensor, labels: Tensor, token_loss: TokenLoss = "mean") -> Tensor:
    """Per-example NTP loss L(z; θ) = -P⁻¹ Σ_p log f(y^p | x, y^<p) (seed 002 §2): [B].

    With ``token_loss="sum"`` the P⁻¹ is dropped: -log f(y | x), the sequence log-likelihood.

    ``logits`` [B, T, V] at position t predict token t+1, so they are scored against
    ``labels[:, 1:]``; positions labelled ``-100`` (prompt, padding) are not counted.
    """
    return _target_nll(logits[:, :-1, :], labels[:, 1:], token_loss)


def response_losses(
    model: nn.Module, batch: dict[str, Tensor], token_loss: TokenLoss = "mean"
) -> Tensor:
    """``response_nll`` of the model on a collated batch, [B], in at least float32.

    Logits are computed only at positions where some row of the batch takes a loss (the
    model's ``logits_to_keep``): the prompt's share of the vocabulary projection, of its
    float32 upcast and of the softmax is skipped, in the forward and the backward. The
    numbers equal ``response_nll`` over full logits (tests hold them equal); a model whose
    forward lacks ``logits_to_keep`` computes full logits and gets the same result.
    """
    targets = batch["labels"][:, 1:]
    positions = (targets != IGNORE_INDEX).any(dim=0).nonzero().squeeze(1)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    if _accepts_logits_to_keep(model) and positions.numel() > 0:
        logits = model(**inputs, logits_to_keep=positions).logits
    else:
        logits = model(**inputs).logits
    if logits.shape[1] == batch["input_ids"].shape[1]:  # the model kept every position
        logits = logits[:, positions]
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return _target_nll(logits, targets[:, positions], token_loss)


def _target_nll(logits: Tensor, targets: Tensor, token_loss: TokenLoss) -> Tensor:
    """Σ (or mean) over each row's counted positions of -log softmax(logits)[target]: [B]."""
    is_target = targets != IGNORE_INDEX
    n_targets = is_target.sum(dim=1)
    if bool((n_targets == 0).any()):
        raise InvalidInput("an example has no response token to take the loss on")
    token_nll = torch.nn.functional.cross_entropy(
        logits.transpose(1, 2), targets.masked_fill(~is_target, 0), reduction="none"
    )  # [B, K]
    total = (token_nll * is_target).sum(dim=1)
    return total if token_loss == "sum" else total / n_targets


def _accepts_logits_to_keep(model: nn.Module) -> bool:
    """Whether the underlying causal LM's forward takes ``logits_to_keep`` (transformers' LMs)."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def loop_per_example_gradients(
    model: PeftModel, batch: dict[str, Tensor], token_loss: TokenLoss = "mean"
) -> Tensor:
    """One forward + backward per row, padding removed: [B, P], >= float32 (the reference path).

    Uses the model in whatever mode the caller set (``featurize`` sets eval: no dropout).
    The batched interface lets a hook-based method (one backward for the whole batch,
    per-example gradients from layer inputs and output gradients) replace this loop later;
    it must then equal this function, which the tests check against a brute-force reference.
    """
    params = [p for _, p in lora_parameters(model)]
    input_ids, attention_mask, labels = (
        batch["input_ids"],
        batch["attention_mask"],
        batch["labels"],
    )
    rows: list[Tensor] = []
    with torch.enable_grad():
        for b in range(input_ids.shape[0]):
            length = int(attention_mask[b].sum())
            if not bool(attention_mask[b, :length].all()):
                raise InvalidInput("batch must be right-padded (attention_mask = 1...1 0...0)")
            row = {
                "input_ids": input_ids[b : b + 1, :length],
                "attention_mask": attention_mask[b : b + 1, :length],
                "labels": labels[b : b + 1, :length],
            }
            loss = response_losses(model, row, token_loss)[0]
            grads = torch.autograd.grad(loss, params)
            flat = torch.cat([g.reshape(-1) for g in grads])
            rows.append(flat.to(torch.promote_types(flat.dtype, torch.float32)))
    return torch.stack(rows)


SegmentConsumer = Callable[[int, Tensor], None]
"""``(index in lora_parameters, per-example gradient [B, P_t] in float32+)`` -> None."""


def lora_linear_modules(model: nn.Module) -> list[nn.Linear]:
    """The ``nn.Linear`` owning each LoRA parameter, in ``lora_parameters`` order.

    The batched method needs every LoRA parameter to be the weight of a bias-free linear layer
    (peft's ``lora_A`` / ``lora_B``); anything else (DoRA magnitudes, LoRA on embeddings) is
    rejected rather than silently mis-computed.
    """
    modules: list[nn.Linear] = []
    for name, param in lora_parameters(model):
        module = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else None
        if (
            not isinstance(module, nn.Linear)
            or module.weight is not param
            or module.bias is not None
        ):
            raise InvalidInput(
                f"batched per-example gradients support LoRA on linear layers only; "
                f"{name} is not the weight of a bias-free nn.Linear (use the loop method)"
            )
        modules.append(module)
    return modules


@contextmanager
def _per_example_gradient_hooks(
    modules: list[nn.Linear], consume: SegmentConsumer
) -> Iterator[None]:
    """While active, backward hands ``consume`` each module's per-example weight gradients.

    For y = x Wᵀ applied to every token, ∂L_b/∂W = Σ_t g_{b,t} ⊗ x_{b,t} with x the layer's
    input and g = ∂L/∂y its output gradient: one batched matmul per layer, no per-example
    backward. With L = Σ_b L_b, g_{b,t} depends on example b alone (examples do not interact,
    and padding positions carry neither loss nor gradient), so the result is exact.
    Accumulated in float32 (float64 for a float64 model).
    """
    inputs: dict[int, Tensor] = {}
    handles = []

    def on_forward(index: int, module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
        if not output.requires_grad:
            return
        inputs[index] = args[0].detach()

        def on_output_grad(grad: Tensor) -> None:
            x = inputs.pop(index)
            g = grad.reshape(grad.shape[0], -1, grad.shape[-1])  # [B, T, out]
            xs = x.reshape(x.shape[0], -1, x.shape[-1])  # [B, T, in]
            consume(index, _sum_of_outer_products(g, xs).reshape(grad.shape[0], -1))

        output.register_hook(on_output_grad)

    try:
        for index, module in enumerate(modules):
            handles.append(
                module.register_forward_hook(
                    lambda mod, args, out, index=index: on_forward(index, mod, args, out)
                )
            )
        yield
    finally:
        for handle in handles:
            handle.remove()
        inputs.clear()


def _sum_of_outer_products(g: Tensor, x: Tensor) -> Tensor:
    """Σ_t g_{b,t} ⊗ x_{b,t} [B, out, in] in at least float32.

    Half-precision inputs on CUDA multiply on tensor cores with float32 accumulation and a
    float32 result (``out_dtype``); elsewhere the inputs are upcast first.
    """
    if g.is_cuda and g.dtype in (torch.bfloat16, torch.float16) and x.dtype == g.dtype:
        try:
            return torch.bmm(g.transpose(1, 2), x, out_dtype=torch.float32)
        except (TypeError, NotImplementedError, RuntimeError):
            pass  # a torch without bmm(out_dtype=...): upcast below
    dtype = torch.promote_types(g.dtype, torch.float32)
    return torch.bmm(g.transpose(1, 2).to(dtype), x.to(dtype))


def backward_with_per_example_gradients(
    model: PeftModel,
    batch: dict[str, Tensor],
    consume: SegmentConsumer,
    token_loss: TokenLoss = "mean",
) -> None:
    """One forward + backward of Σ_b L_b over the batch; ``consume`` gets every LoRA tensor's
    per-example gradients [B, P_t] (index in ``lora_parameters`` order) as backward reaches it.

    Rows must be right-padded (``data.collate``). Each tensor is reported exactly once.
    """
    _require_right_padded(batch["attention_mask"])
    modules = lora_linear_modules(model)
    params = [m.weight for m in modules]
    seen: set[int] = set()

    def consume_once(index: int, grad: Tensor) -> None:
        if index in seen:
            raise InvalidInput(f"LoRA layer {index} ran twice in one forward: unsupported")
        seen.add(index)
        consume(index, grad)

    with torch.enable_grad(), _per_example_gradient_hooks(modules, consume_once):
        loss = response_losses(model, batch, token_loss).sum()
        torch.autograd.grad(loss, params)
    if len(seen) != len(modules):
        raise InvalidInput(f"only {len(seen)} of {len(modules)} LoRA layers got a gradient")


def hooked_per_example_gradients(
    model: PeftModel, batch: dict[str, Tensor], token_loss: TokenLoss = "mean"
) -> Tensor:
    """Per-example gradients [B, P] from one batched backward (``PerExampleGradientFn``).

    Materialises [B, P]; featurization streams each tensor into the projector instead
    (``features.featurize``). Kept for the exactness tests and small models.
    """
    parts: dict[int, Tensor] = {}
    backward_with_per_example_gradients(model, batch, parts.__setitem__, token_loss)
    return torch.cat([parts[i] for i in range(len(parts))], dim=1)


def _require_right_padded(attention_mask: Tensor) -> None:
    lengths = attention_mask.sum(dim=1, keepdim=True)
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)[None]
    if not bool(((positions < lengths) == attention_mask.bool()).all()):
        raise InvalidInput("batch must be right-padded (attention_mask = 1...1 0...0)")


def sgd_features(grads: Tensor) -> Tensor:
    """Probe features: the plain gradient ∇θ L(z_v; θ^e), [B, P] -> [B, P] (LESS)."""
    return grads


def adam_features(
    grads: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    *,
    step: int,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    bias_correction: bool = False,
) -> Tensor:
    """Pool features Γ(z; θ^e) = m' / sqrt(v' + ε), the Adam update z would cause (app. F).

    m' = β1 m + (1-β1) g and v' = β2 v + (1-β2) g², elementwise, from the checkpoint's Adam
    moments ``exp_avg`` = m, ``exp_avg_sq`` = v [P] and per-example gradients g [B, P].

    ``bias_correction=False`` (default) follows LESS's released code: raw moments. NICE app. F
    writes the bias-corrected m'/(1-β1^t), v'/(1-β2^t); with ``True`` we use t = ``step`` + 1,
    the index of the Adam step that would take g after ``step`` optimizer steps. ε stays inside
    the square root in both cases, as in both sources.
    """
    if grads.ndim != 2 or exp_avg.shape != (grads.shape[1],) or exp_avg_sq.shape != exp_avg.shape:
        raise InvalidInput(
            f"expected grads [B, P] and moments [P]; got {tuple(grads.shape)}, "
            f"{tuple(exp_avg.shape)}, {tuple(exp_avg_sq.shape)}"
        )
    if step < 0:
        raise InvalidInput(f"step must be >= 0, got {step}")
    m = beta1 * exp_avg + (1.0 - beta1) * grads
    v = beta2 * exp_avg_sq + (1.0 - beta2) * grads**2
    if bias_correction:
        t = step + 1
        m = m / (1.0 - beta1**t)
        v = v / (1.0 - beta2**t)
    return m / torch.sqrt(v + eps)


class AdamFeatureMap:
    """``adam_features`` for one parameter tensor with its moment terms folded once.

    Γ = (K_m + a_m g) / sqrt(K_v + a_v g²) with K_m = β1 m / c1, a_m = (1-β1) / c1,
    K_v = β2 v / c2 + ε, a_v = (1-β2) / c2 and c1, c2 the bias corrections (1 without them):
    the same numbers as ``adam_features`` (tests hold them equal) in four passes over the
    batch instead of eight, with the constants on the gradients' device.
    """

    def __init__(
        self,
        exp_avg: Tensor,
        exp_avg_sq: Tensor,
        *,
        step: int,
        device: torch.device,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-8,
        bias_correction: bool = False,
    ) -> None:
        if step < 0:
            raise InvalidInput(f"step must be >= 0, got {step}")
        c1, c2 = (
            (1.0 - beta1 ** (step + 1), 1.0 - beta2 ** (step + 1))
            if bias_correction
            else (1.0, 1.0)
        )
        self.k_m = (beta1 / c1) * exp_avg.to(device=device, dtype=torch.float32)
        self.k_v = (beta2 / c2) * exp_avg_sq.to(device=device, dtype=torch.float32) + eps
        self.a_m, self.a_v = (1.0 - beta1) / c1, (1.0 - beta2) / c2

    def __call__(self, grads: Tensor) -> Tensor:
        if grads.ndim != 2 or grads.shape[1] != self.k_m.shape[0]:
            raise InvalidInput(
                f"expected [B, {self.k_m.shape[0]}] gradients, got {tuple(grads.shape)}"
            )
        k_m, k_v = self.k_m.to(grads.dtype), self.k_v.to(grads.dtype)
        denominator = torch.addcmul(k_v, grads, grads, value=self.a_v).sqrt_()
        return torch.add(k_m, grads, alpha=self.a_m).div_(denominator)
