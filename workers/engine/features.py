"""Projected gradient features at one checkpoint, with the provenance that makes them comparable.

``featurize`` computes, for examples z and a checkpoint θ^e,
    pool  (kind "adam"): Γ(z; θ^e) Π      (Adam feature, seed 002 app. F)   [N, d]
    probe (kind "sgd") : ∇θ L(z; θ^e) Π   (plain gradient, LESS)            [N, d]
Scores are only meaningful between features of the same model, adapter, projection Π and
token budget, so each ``FeatureSet`` carries a ``Provenance`` that is checked before any
concatenation or scoring.
"""

from __future__ import annotations

import gc
import hashlib
import itertools
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import torch
from peft import PeftModel
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import Tensor

from workers.engine.data import IGNORE_INDEX, TokenizedExample, collate
from workers.engine.errors import Cancelled, InvalidInput, ProvenanceMismatch
from workers.engine.gradients import (
    AdamFeatureMap,
    TokenLoss,
    backward_with_per_example_gradients,
    loop_per_example_gradients,
    sgd_features,
)
from workers.engine.lora import load_adapter_state, lora_parameters, parameter_order_hash
from workers.engine.projection import Projector
from workers.engine.safetensors_meta import read_metadata
from workers.engine.warmup import Checkpoint

FeatureKind = Literal["sgd", "adam", "sgd_sum"]
FEATURE_KINDS: tuple[str, ...] = ("sgd", "adam", "policy", "sgd_sum")
"""Stored kinds: probe loss gradients, pool Adam features, probe policy gradients (NICE), and
gradients of the loss summed over completion tokens (strategy studies, seed 001)."""
FEATURE_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}
"""Storage dtypes of features; scoring always computes in at least float32."""


@dataclass(frozen=True)
class Provenance:
    """Everything that must agree for two feature sets to be compared.

    ``checkpoint`` is ``checkpoint_hash`` of the adapter; ``projector`` the projector's spec;
    ``seed`` and ``dim`` those of Π; ``param_order_hash`` the layout of R^P; ``kind`` "sgd"
    (probe loss gradients), "adam" (pool) or "policy" (probe policy gradients, NICE);
    ``dtype`` the storage dtype of the features; ``max_length`` and ``system_prompt`` how the
    records were tokenized (``system_prompt`` None: the chat template's own default, and then
    left out of :meth:`to_dict`, so feature sets stored before it existed keep their keys).
    """

    model: str
    checkpoint: str
    projector: str
    seed: int
    dim: int
    dtype: str
    param_order_hash: str
    kind: str
    max_length: int
    system_prompt: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in FEATURE_KINDS:
            raise InvalidInput(f"provenance kind must be one of {FEATURE_KINDS}, got {self.kind!r}")
        if self.dtype not in FEATURE_DTYPES:
            raise InvalidInput(f"provenance dtype must be one of {sorted(FEATURE_DTYPES)}")
        if self.dim < 1 or self.max_length < 1:
            raise InvalidInput(
                f"dim and max_length must be >= 1, got {self.dim}, {self.max_length}"
            )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if data["system_prompt"] is None:
            del data["system_prompt"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Provenance:
        expected = {f.name for f in fields(cls)}
        missing = expected - set(data) - {"system_prompt"}  # optional: see to_dict
        unexpected = set(data) - expected
        if missing or unexpected:
            raise InvalidInput(
                f"provenance fields differ: missing {sorted(missing)}, "
                f"unexpected {sorted(unexpected)}"
            )
        return cls(**data)

    def require_compatible(self, other: Provenance, *, allow_kind_difference: bool) -> None:
        """Raise ``ProvenanceMismatch`` naming every field that differs (``kind`` optionally
        exempt: pool Adam features are scored against probe SGD features)."""
        ignored = {"kind"} if allow_kind_difference else set()
        diffs = [
            f"{f.name}: {getattr(self, f.name)!r} != {getattr(other, f.name)!r}"
            for f in fields(self)
            if f.name not in ignored and getattr(self, f.name) != getattr(other, f.name)
        ]
        if diffs:
            raise ProvenanceMismatch("incompatible feature provenance: " + "; ".join(diffs))


@dataclass
class FeatureSet:
    """Features [N, d] of N records, row i belonging to ``record_ids[i]``.

    ``target_tokens[i]``: how many response tokens record i's loss was taken over (T_i), so a
    scorer can undo the mean over tokens (∇ℓ_sum = T ∇ℓ_mean, and Π(Tφ) = TΠφ); None for sets
    stored before it was kept, and for NICE's policy rows.
    """

    provenance: Provenance
    record_ids: list[str]
    subtasks: list[str | None]
    features: Tensor
    target_tokens: list[int] | None = None

    def __post_init__(self) -> None:
        n = len(self.record_ids)
        if self.features.ndim != 2 or self.features.shape != (n, self.provenance.dim):
            raise InvalidInput(
                f"features must be [N={n}, d={self.provenance.dim}], "
                f"got {tuple(self.features.shape)}"
            )
        if len(self.subtasks) != n:
            raise InvalidInput(f"{len(self.subtasks)} subtasks for {n} records")
        if self.features.dtype != FEATURE_DTYPES[self.provenance.dtype]:
            raise InvalidInput(
                f"features are {self.features.dtype}, provenance says {self.provenance.dtype}"
            )
        if self.target_tokens is not None and (
            len(self.target_tokens) != n
            or any(
                not isinstance(t, int) or isinstance(t, bool) or t < 1 for t in self.target_tokens
            )
        ):
            raise InvalidInput(f"target_tokens must be {n} integers >= 1")

    def to_safetensors(self) -> bytes:
        """One tensor ``features``; provenance, ids, subtasks (and target tokens) as JSON in
        the metadata."""
        metadata = {
            "provenance": json.dumps(self.provenance.to_dict(), sort_keys=True),
            "record_ids": json.dumps(self.record_ids),
            "subtasks": json.dumps(self.subtasks),
        }
        if self.target_tokens is not None:
            metadata["target_tokens"] = json.dumps(self.target_tokens)
        return save_safetensors(
            {"features": self.features.detach().cpu().contiguous()}, metadata=metadata
        )

    @classmethod
    def from_safetensors(cls, blob: bytes) -> FeatureSet:
        meta = read_metadata(blob)
        try:
            provenance = Provenance.from_dict(json.loads(meta["provenance"]))
            record_ids = json.loads(meta["record_ids"])
            subtasks = json.loads(meta["subtasks"])
            target_tokens = json.loads(meta["target_tokens"]) if "target_tokens" in meta else None
        except (KeyError, ValueError) as exc:
            raise InvalidInput(f"feature blob lacks its metadata: {exc}") from exc
        features = load_safetensors(blob)["features"]
        return cls(provenance, record_ids, subtasks, features, target_tokens)

    @staticmethod
    def concat(parts: Sequence[FeatureSet]) -> FeatureSet:
        """Stack shards row-wise; every part must have exactly the same provenance."""
        if not parts:
            raise InvalidInput("nothing to concatenate")
        first = parts[0].provenance
        for part in parts[1:]:
            first.require_compatible(part.provenance, allow_kind_difference=False)
        counted = all(part.target_tokens is not None for part in parts)
        return FeatureSet(
            provenance=first,
            record_ids=[rid for part in parts for rid in part.record_ids],
            subtasks=[sub for part in parts for sub in part.subtasks],
            features=torch.cat([part.features for part in parts]),
            target_tokens=(
                [t for part in parts for t in part.target_tokens or []] if counted else None
            ),
        )


def checkpoint_hash(adapter_state: dict[str, Tensor]) -> str:
    """sha256 over names, shapes and fp32 values of an adapter: identifies θ^e's adapter."""
    digest = hashlib.sha256()
    for name in sorted(adapter_state):
        tensor = adapter_state[name].detach().to(device="cpu", dtype=torch.float32).contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()[:16]


def flat_moments(model: PeftModel, checkpoint: Checkpoint) -> tuple[Tensor, Tensor]:
    """Adam moments m^e, v^e [P] flattened in ``lora_parameters`` order (like the gradients)."""
    names = [name for name, _ in lora_parameters(model)]
    missing = [n for n in names if n not in checkpoint.exp_avg or n not in checkpoint.exp_avg_sq]
    if missing:
        raise ProvenanceMismatch(f"checkpoint lacks Adam moments for {missing[:5]}")
    exp_avg = torch.cat([checkpoint.exp_avg[n].reshape(-1) for n in names]).to(torch.float32)
    exp_avg_sq = torch.cat([checkpoint.exp_avg_sq[n].reshape(-1) for n in names])
    return exp_avg, exp_avg_sq.to(torch.float32)


GradientMethod = Literal["batched", "loop"]
"""``batched``: one forward + backward per batch, per-example gradients from layer hooks,
streamed tensor by tensor into the projector (``gradients.backward_with_per_example_gradients``).
``loop``: one backward per example, the whole [B, P] gradient, then the projection: the
reference path, equal to ``batched`` up to float rounding (tests hold them equal)."""


def featurize(
    model: PeftModel,
    examples: Sequence[TokenizedExample],
    *,
    kind: FeatureKind,
    checkpoint: Checkpoint,
    projector: Projector,
    provenance: Provenance,
    batch_size: int,
    pad_token_id: int,
    method: GradientMethod = "batched",
    token_loss: TokenLoss = "mean",
    adam_bias_correction: bool = False,
    should_stop: Callable[[], bool] | None = None,
    on_progress: Callable[[int], None] | None = None,
    on_batch_size: Callable[[int], None] | None = None,
) -> FeatureSet:
    """Projected features of ``examples`` at ``checkpoint``: [N, d] in ``provenance.dtype``.

    Loads the checkpoint's adapter into ``model`` itself (so features can never be computed
    at the wrong θ^e) and checks that ``provenance`` describes this computation. The model runs
    in eval mode (LoRA dropout off: a feature must be a deterministic function of z and θ^e);
    its previous mode is restored afterwards. ``on_progress`` gets the number of examples done
    after each batch; ``should_stop`` returning True raises ``Cancelled``.

    ``token_loss`` "sum" gives gradients of -log f(y|x) instead of the mean NTP loss (NICE's
    policy-gradient rows, ``nice.policy_gradient_features``); kind "sgd_sum" always sums.

    ``batch_size`` is an upper bound: a batch that runs out of accelerator memory is retried
    at half the size (down to 1), and ``on_batch_size`` hears of each reduction. Features do
    not depend on the batch size beyond float rounding.
    """
    if batch_size < 1:
        raise InvalidInput(f"batch_size must be >= 1, got {batch_size}")
    if method not in ("batched", "loop"):
        raise InvalidInput(f"method must be 'batched' or 'loop', got {method!r}")
    if kind == "sgd_sum":
        token_loss = "sum"
    load_adapter_state(model, checkpoint.adapter_state)
    _require_provenance_describes(model, examples, kind, checkpoint, projector, provenance)
    projector = projector.for_segments([p.numel() for _, p in lora_parameters(model)])
    device = lora_parameters(model)[0][1].device
    out_dtype = FEATURE_DTYPES[provenance.dtype]
    adam_maps = (
        [
            AdamFeatureMap(
                m, v, step=checkpoint.step, device=device, bias_correction=adam_bias_correction
            )
            for m, v in _segment_moments(model, checkpoint)
        ]
        if kind == "adam"
        else None
    )

    def transform(index: int, grads: Tensor) -> Tensor:
        """SGD features are the gradients; Adam features need this segment's moments."""
        return sgd_features(grads) if adam_maps is None else adam_maps[index](grads)

    def features_of(batch: dict[str, Tensor]) -> Tensor:
        batch = {k: v.to(device) for k, v in batch.items()}
        if method == "loop":
            grads = loop_per_example_gradients(model, batch, token_loss)
            bounds = itertools.pairwise([0, *itertools.accumulate(projector.segments)])
            parts = [transform(i, grads[:, a:b]) for i, (a, b) in enumerate(bounds)]
            return projector.project(torch.cat(parts, dim=1))
        n = batch["input_ids"].shape[0]
        out = torch.zeros((n, projector.dim), dtype=projector.dtype, device=device)

        def consume(index: int, grads: Tensor) -> None:
            projector.add_segment(out, index, transform(index, grads))

        backward_with_per_example_gradients(model, batch, consume, token_loss)
        return out

    rows: list[Tensor] = []
    was_training = model.training
    model.eval()
    try:
        start = 0
        while start < len(examples):
            if should_stop is not None and should_stop():
                raise Cancelled(f"featurization cancelled after {start} of {len(examples)}")
            chunk = examples[start : start + batch_size]
            try:
                feats = features_of(collate(chunk, pad_token_id))
            except torch.OutOfMemoryError:
                if batch_size == 1:
                    raise
                batch_size = max(1, batch_size // 2)
                _release_accelerator_memory(device)
                if on_batch_size is not None:
                    on_batch_size(batch_size)
                continue
            rows.append(feats.to(device="cpu", dtype=out_dtype))
            start += len(chunk)
            if on_progress is not None:
                on_progress(start)
    finally:
        model.train(was_training)
    features = torch.cat(rows) if rows else torch.zeros((0, projector.dim), dtype=out_dtype)
    return FeatureSet(
        provenance=provenance,
        record_ids=[ex.record_id for ex in examples],
        subtasks=[ex.subtask for ex in examples],
        features=features,
        target_tokens=[target_tokens(ex) for ex in examples],
    )


def target_tokens(example: TokenizedExample) -> int:
    """The response tokens ``example``'s loss is taken over: the labels the shifted loss
    counts (``gradients.response_losses``: label position 0 is never a target)."""
    return sum(1 for label in example.labels[1:] if label != IGNORE_INDEX)


def _segment_moments(model: PeftModel, checkpoint: Checkpoint) -> list[tuple[Tensor, Tensor]]:
    """Adam moments (m, v) of each LoRA tensor, flattened, in ``lora_parameters`` order."""
    exp_avg, exp_avg_sq = flat_moments(model, checkpoint)
    sizes = [p.numel() for _, p in lora_parameters(model)]
    return list(zip(exp_avg.split(sizes), exp_avg_sq.split(sizes), strict=True))


def _release_accelerator_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _require_provenance_describes(
    model: PeftModel,
    examples: Sequence[TokenizedExample],
    kind: FeatureKind,
    checkpoint: Checkpoint,
    projector: Projector,
    provenance: Provenance,
) -> None:
    n_params = sum(p.numel() for _, p in lora_parameters(model))
    actual = {
        "kind": kind,
        "checkpoint": checkpoint_hash(checkpoint.adapter_state),
        "projector": projector.spec(),
        "seed": projector.seed,
        "dim": projector.dim,
        "param_order_hash": parameter_order_hash(model),
    }
    diffs = [
        f"{key}: provenance says {getattr(provenance, key)!r}, actual {value!r}"
        for key, value in actual.items()
        if getattr(provenance, key) != value
    ]
    if projector.input_dim != n_params:
        diffs.append(f"projector input_dim {projector.input_dim} != {n_params} LoRA parameters")
    too_long = [ex.record_id for ex in examples if len(ex.input_ids) > provenance.max_length]
    if too_long:
        diffs.append(f"{len(too_long)} examples exceed max_length {provenance.max_length}")
    if diffs:
        raise ProvenanceMismatch(
            "provenance does not describe this featurization: " + "; ".join(diffs)
        )
