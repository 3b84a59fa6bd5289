"""LoRA adapters: the parameters θ whose gradients are the features.

LESS computes influence on the LoRA parameters only. A gradient is a flat vector in ``R^P``
whose coordinates follow ``lora_parameters`` (sorted by parameter name); that order is part of
the provenance of every feature (``parameter_order_hash``), so features are never compared
across different layouts.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import Tensor, nn
from transformers import PreTrainedModel

from workers.engine.errors import InvalidInput, ProvenanceMismatch


@dataclass(frozen=True)
class LoraSettings:
    """LESS defaults: r=128, alpha=512 (alpha = 4r), dropout 0.1, attention projections."""

    r: int = 128
    alpha: float = 512.0
    dropout: float = 0.1
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")

    def __post_init__(self) -> None:
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise InvalidInput(f"LoRA r must be an integer >= 1, got {self.r!r}")
        if not self.alpha > 0:
            raise InvalidInput(f"LoRA alpha must be > 0, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise InvalidInput(f"LoRA dropout must be in [0, 1), got {self.dropout!r}")
        if not self.target_modules or not all(
            isinstance(m, str) and m for m in self.target_modules
        ):
            raise InvalidInput(
                f"LoRA target_modules must be non-empty names, got {self.target_modules!r}"
            )


def attach_lora(model: PreTrainedModel, settings: LoraSettings, *, seed: int = 0) -> PeftModel:
    """Wrap ``model`` with fresh LoRA adapters (B = 0, A ~ Kaiming-uniform from ``seed``).

    Only the adapters are trainable. Initialisation draws from a forked RNG: the same seed
    gives the same adapters and the caller's global RNG state is untouched.
    """
    config = LoraConfig(
        task_type="CAUSAL_LM",
        r=settings.r,
        lora_alpha=settings.alpha,  # type: ignore[arg-type]  # peft types it int; floats work
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        bias="none",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            peft_model = get_peft_model(model, config)
        except ValueError as exc:  # peft's error for target modules absent from the model
            raise InvalidInput(f"cannot attach LoRA: {exc}") from exc
    if not isinstance(peft_model, PeftModel):
        raise InvalidInput(f"peft returned {type(peft_model).__name__}, expected a PeftModel")
    if not lora_parameters(peft_model):
        raise InvalidInput(
            f"no module of the model matches target_modules {list(settings.target_modules)}"
        )
    return peft_model


def lora_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Trainable LoRA parameters ``(name, parameter)``, sorted by name: the layout of R^P."""
    return sorted(
        ((name, p) for name, p in model.named_parameters() if p.requires_grad and "lora_" in name),
        key=lambda item: item[0],
    )


def parameter_order_hash(model: nn.Module) -> str:
    """sha256 over the ``name:shape`` lines of ``lora_parameters``: identifies the layout of R^P."""
    lines = "\n".join(f"{name}:{tuple(p.shape)}" for name, p in lora_parameters(model))
    return hashlib.sha256(lines.encode()).hexdigest()[:16]


def load_adapter_state(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Copy ``state`` (keyed like ``lora_parameters``) into the adapters; all or nothing.

    Strict: a missing or unexpected key or a shape mismatch raises ``ProvenanceMismatch``
    before anything is written, since such a state belongs to another model or LoRA layout.
    """
    params = dict(lora_parameters(model))
    missing = sorted(set(params) - set(state))
    unexpected = sorted(set(state) - set(params))
    wrong_shape = sorted(
        f"{name}: {tuple(state[name].shape)} != {tuple(p.shape)}"
        for name, p in params.items()
        if name in state and state[name].shape != p.shape
    )
    if missing or unexpected or wrong_shape:
        raise ProvenanceMismatch(
            "adapter state does not fit the model: "
            f"missing={missing[:5]} (total {len(missing)}), "
            f"unexpected={unexpected[:5]} (total {len(unexpected)}), "
            f"shape mismatches={wrong_shape[:5]} (total {len(wrong_shape)})"
        )
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(state[name].to(device=p.device, dtype=p.dtype))


_LORA_WEIGHTS = (".lora_A.weight", ".lora_B.weight")


def adapter_state_from_peft(
    state: dict[str, Tensor], adapter_name: str = "default"
) -> dict[str, Tensor]:
    """Key a saved PEFT adapter like ``lora_parameters``, ready for ``load_adapter_state``.

    PEFT strips the adapter name when saving (``get_peft_model_state_dict``):
    ``...q_proj.lora_A.weight`` on disk is ``...q_proj.lora_A.<adapter_name>.weight`` in the
    model. Keys that already carry ``.<adapter_name>.`` are kept; anything that is not a
    lora_A or lora_B weight raises ``InvalidInput``, since it cannot belong to the adapters.
    """
    kept = (f".lora_A.{adapter_name}.weight", f".lora_B.{adapter_name}.weight")
    out: dict[str, Tensor] = {}
    foreign: list[str] = []
    for key, tensor in state.items():
        if key.endswith(kept):
            name = key
        elif key.endswith(_LORA_WEIGHTS):
            name = f"{key.removesuffix('.weight')}.{adapter_name}.weight"
        else:
            foreign.append(key)
            continue
        if name in out:
            raise InvalidInput(f"adapter state holds {name} twice (with and without the name)")
        out[name] = tensor
    if foreign:
        raise InvalidInput(
            f"not LoRA lora_A/lora_B weights of adapter {adapter_name!r}: {sorted(foreign)[:5]} "
            f"(total {len(foreign)})"
        )
    return out
