"""NICE (seed 002 §3, app. C): influence on a reward instead of a loss.

When the target is a pass rate, a reward model or a judge, the probe side of LESS's cosine uses
a policy gradient instead of the loss gradient. For a probe prompt x and M responses
ŷ_1..ŷ_M sampled from the checkpoint's policy f(·|x; θ^e) with rewards r_j,

    ψ(x; θ^e) = Σ_j w_j · (-∇θ log f(ŷ_j | x; θ^e)),      log f(ŷ|x) = Σ_t log f(ŷ^t | x, ŷ^<t)

with w_j = r_j / M (REINFORCE), (r_j - r̄) / M with the mean-reward baseline, or r_j / |K| over
K = {j : r_j > 0} for the rejection variant. -ψ estimates ∇ E[r] the way ∇L stands for the
loss, so NICE scores are LESS's aggregation with ψ in place of the probe gradient.

The sum over samples is taken after projection (Π is linear, so Π Σ_j w_j g_j = Σ_j w_j Π g_j):
each sample is one row of the batched featurizer (``token_loss="sum"``), rows with w_j = 0 are
never computed, and a probe whose weights are all zero gets the zero vector (its cosine with
anything is then 0), reported in ``PolicyFeatures.zero_probes``, never a NaN.

An empty generation (the model emits EOS at once) is the one-token response [EOS]: its
log-probability and gradient are finite, so it is scored like any other sample.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import torch
from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from workers.engine.data import IGNORE_INDEX, TokenizedExample, render_prompt
from workers.engine.errors import InvalidInput
from workers.engine.features import FEATURE_DTYPES, FeatureSet, Provenance, featurize
from workers.engine.influence import streamed
from workers.engine.projection import Projector
from workers.engine.valuation_method import ValuationMethod
from workers.engine.warmup import Checkpoint

Weighting = Literal["reinforce", "baseline", "rejection"]


@dataclass(frozen=True)
class SamplingSettings:
    """Monte-Carlo sampling; defaults from seed 002 app. C.1."""

    m: int = 20
    temperature: float = 1.2
    top_k: int = 50
    top_p: float = 0.95
    max_new_tokens: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        if self.m < 1 or self.max_new_tokens < 1 or self.top_k < 0:
            raise InvalidInput("m and max_new_tokens must be >= 1 and top_k >= 0")
        if not self.temperature > 0 or not 0 < self.top_p <= 1:
            raise InvalidInput("temperature must be > 0 and top_p in (0, 1]")


@dataclass(frozen=True)
class ProbePrompt:
    """A probe as NICE sees it: the conversation up to the answer, and the label if any."""

    record_id: str
    messages: tuple[dict[str, str], ...]
    subtask: str | None = None
    label: str | None = None
    metadata: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class Sample:
    """One sampled response: its tokens (ending with EOS when the model stopped), its text."""

    probe_id: str
    index: int
    prompt_ids: tuple[int, ...]
    response_ids: tuple[int, ...]
    text: str
    finished: bool


@dataclass
class PolicyFeatures:
    features: FeatureSet
    zero_probes: list[str]
    """Probes whose sample weights were all zero (e.g. every reward 0): zero feature vector."""


def prompt_ids(
    tokenizer: PreTrainedTokenizerBase, probe: ProbePrompt, system_prompt: str | None = None
) -> list[int]:
    """Token ids of the prompt, formatted exactly as ``data.tokenize_examples`` formats one
    (``system_prompt`` as in ``data.render_prompt``)."""
    history = list(probe.messages)
    if history and history[-1].get("role") == "assistant":
        history = history[:-1]  # a probe given with its answer: sample a fresh one
    if not history:
        raise InvalidInput(f"probe {probe.record_id} has no prompt message")
    text = render_prompt(tokenizer, history, system_prompt)
    template_adds_specials = tokenizer.chat_template is not None
    return list(tokenizer(text, add_special_tokens=not template_adds_specials)["input_ids"])


def sample_responses(
    model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    probes: Sequence[ProbePrompt],
    settings: SamplingSettings,
    *,
    batch_size: int = 8,
    system_prompt: str | None = None,
) -> list[Sample]:
    """M samples per probe, ``batch_size`` prompts per ``generate`` call (left-padded); the
    prompts formatted by ``prompt_ids`` (``system_prompt`` as there).

    Seeded per batch from ``settings.seed`` in a forked RNG: the same probes, settings and batch
    size give the same samples, and the caller's RNG state is untouched.
    """
    if batch_size < 1:
        raise InvalidInput(f"batch_size must be >= 1, got {batch_size}")
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    if eos is None:
        raise InvalidInput("tokenizer has no EOS token")
    pad = eos if pad is None else pad
    device = next(model.parameters()).device
    samples: list[Sample] = []
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(probes), batch_size):
            chunk = probes[start : start + batch_size]
            ids = [prompt_ids(tokenizer, p, system_prompt) for p in chunk]
            width = max(len(x) for x in ids)
            input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
            attention = torch.zeros((len(ids), width), dtype=torch.long)
            for row, x in enumerate(ids):
                input_ids[row, width - len(x) :] = torch.tensor(x)
                attention[row, width - len(x) :] = 1
            devices = [device] if device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices), torch.no_grad():
                torch.manual_seed(settings.seed * 1_000_003 + start)
                out = model.generate(
                    input_ids=input_ids.to(device),
                    attention_mask=attention.to(device),
                    do_sample=True,
                    temperature=settings.temperature,
                    top_k=settings.top_k,
                    top_p=settings.top_p,
                    max_new_tokens=settings.max_new_tokens,
                    num_return_sequences=settings.m,
                    pad_token_id=pad,
                    eos_token_id=eos,
                )
            generated = out[:, width:].cpu()
            for row in range(generated.shape[0]):
                probe_row = row // settings.m
                tokens = generated[row].tolist()
                finished = eos in tokens
                tokens = tokens[: tokens.index(eos) + 1] if finished else tokens
                samples.append(
                    Sample(
                        probe_id=chunk[probe_row].record_id,
                        index=row % settings.m,
                        prompt_ids=tuple(ids[probe_row]),
                        response_ids=tuple(tokens),
                        text=tokenizer.decode(tokens, skip_special_tokens=True),
                        finished=finished,
                    )
                )
    finally:
        model.train(was_training)
    return samples


def assisted_samples(
    tokenizer: PreTrainedTokenizerBase,
    probes: Sequence[ProbePrompt],
    responses: Mapping[str, Sequence[str]],
    system_prompt: str | None = None,
) -> list[Sample]:
    """NICE-AMC (seed 002 §3.3): responses written by a stronger model instead of sampled ones.

    ``responses[probe_id]`` are that model's answers; each becomes a sample whose tokens end
    with EOS, as training responses do, so its log-probability under the checkpoint is the
    one the policy gradient needs. A probe without responses is an error (it would silently
    contribute nothing).
    """
    eos = tokenizer.eos_token
    if eos is None:
        raise InvalidInput("tokenizer has no EOS token")
    samples = []
    for probe in probes:
        texts = list(responses.get(probe.record_id, ()))
        if not texts:
            raise InvalidInput(f"no assisted responses for probe {probe.record_id}")
        ids = tuple(prompt_ids(tokenizer, probe, system_prompt))
        for index, text in enumerate(texts):
            tokens = tuple(tokenizer(text + str(eos), add_special_tokens=False)["input_ids"])
            samples.append(Sample(probe.record_id, index, ids, tokens, text, True))
    return samples


def sample_weights(rewards: Sequence[float], weighting: Weighting) -> list[float]:
    """w_j for one probe's M rewards (module docstring)."""
    values = [float(r) for r in rewards]
    if not values:
        raise InvalidInput("a probe needs at least one sample")
    if any(v != v or v in (float("inf"), float("-inf")) for v in values):
        raise InvalidInput(f"rewards must be finite, got {values}")
    m = len(values)
    if weighting == "reinforce":
        return [r / m for r in values]
    if weighting == "baseline":
        mean = sum(values) / m
        return [(r - mean) / m for r in values]
    if weighting == "rejection":
        kept = [r for r in values if r > 0]
        return [r / len(kept) if r > 0 else 0.0 for r in values]
    raise InvalidInput(f"weighting must be reinforce, baseline or rejection, got {weighting!r}")


def policy_gradient_features(
    model: PeftModel,
    probes: Sequence[ProbePrompt],
    samples: Sequence[Sample],
    rewards: Sequence[float],
    *,
    weighting: Weighting,
    checkpoint: Checkpoint,
    projector: Projector,
    provenance: Provenance,
    batch_size: int,
    pad_token_id: int,
    should_stop: Callable[[], bool] | None = None,
) -> PolicyFeatures:
    """ψ(x; θ^e) Π for every probe [N, d] (kind "policy"), from its samples and rewards.

    ``samples[i]`` has reward ``rewards[i]``; every probe needs at least one sample.
    ``provenance`` describes the result (kind "policy"); rows are computed as SGD rows of the
    same Π, so pool Adam features at this checkpoint compare with them.
    """
    if len(samples) != len(rewards):
        raise InvalidInput(f"{len(samples)} samples but {len(rewards)} rewards")
    if provenance.kind != "policy":
        raise InvalidInput(f"policy features need a 'policy' provenance, got {provenance.kind!r}")
    by_probe: dict[str, list[int]] = {p.record_id: [] for p in probes}
    for i, sample in enumerate(samples):
        if sample.probe_id not in by_probe:
            raise InvalidInput(f"sample of unknown probe {sample.probe_id}")
        by_probe[sample.probe_id].append(i)
    rows: list[TokenizedExample] = []
    row_weights: list[tuple[int, float]] = []  # (probe index, w) per computed row
    zero_probes: list[str] = []
    for p_index, probe in enumerate(probes):
        members = by_probe[probe.record_id]
        if not members:
            raise InvalidInput(f"probe {probe.record_id} has no samples")
        weights = sample_weights([rewards[i] for i in members], weighting)
        if all(w == 0 for w in weights):
            zero_probes.append(probe.record_id)
        for i, w in zip(members, weights, strict=True):
            if w != 0:
                rows.append(as_training_row(samples[i]))
                row_weights.append((p_index, w))
    out = torch.zeros((len(probes), projector.dim), dtype=torch.float64)
    if rows:
        row_features = featurize(
            model,
            rows,
            kind="sgd",
            checkpoint=checkpoint,
            projector=projector,
            provenance=replace(provenance, kind="sgd", dtype="float32"),
            batch_size=batch_size,
            pad_token_id=pad_token_id,
            token_loss="sum",
            should_stop=should_stop,
        ).features.double()
        index = torch.tensor([p for p, _ in row_weights])
        weights = torch.tensor([w for _, w in row_weights], dtype=torch.float64)
        out.index_add_(0, index, row_features * weights[:, None])
    features = FeatureSet(
        provenance=provenance,
        record_ids=[p.record_id for p in probes],
        subtasks=[p.subtask for p in probes],
        features=out.to(FEATURE_DTYPES[provenance.dtype]),
    )
    return PolicyFeatures(features=features, zero_probes=zero_probes)


def as_training_row(sample: Sample) -> TokenizedExample:
    """Prompt + sampled response as a training row whose targets are the response tokens."""
    if not sample.response_ids:
        raise InvalidInput(f"sample {sample.index} of {sample.probe_id} has no tokens")
    ids = sample.prompt_ids + sample.response_ids
    labels = (IGNORE_INDEX,) * len(sample.prompt_ids) + sample.response_ids
    return TokenizedExample(
        record_id=f"{sample.probe_id}#{sample.index}",
        input_ids=ids,
        labels=labels,
        subtask=None,
        n_response_tokens=len(sample.response_ids),
        truncated=False,
    )


NICE = ValuationMethod(
    name="nice",
    title="NICE",
    pool_features="adam",
    probe_features="policy",
    checkpoints="all",
    projection="flat",
    score=streamed("less"),  # LESS's aggregation, ψ in place of the probe gradient
    formula=(
        "Inf(z, D_V) = max_j mean_{x_v ∈ D_V^(j)} Σ_e w_e cos(Π Γ_e(z), Π ψ(x_v; θ^e)), "
        "ψ(x; θ^e) = Σ_m w_m · (-∇ log f(ŷ_m | x; θ^e)), ŷ_m ~ f(·|x; θ^e) (or an assist "
        "model, NICE-AMC), w_m from the rewards r(x, ŷ_m)"
    ),
    reference="Wang et al., NICE (seed 002 §3.1, §3.3, app. C)",
    cost=(
        "featurize: the pool as for LESS; per probe and checkpoint, M sampled responses "
        "(generation, settings.nice) and their rewards, then one backward pass per rewarded "
        "sample; score: as LESS"
    ),
    good_for=(
        "a target measured by a reward that has no gradient (a pass rate, exact match, a "
        "reward model, a judge): probes may be prompts without responses"
    ),
    settings=("nice",),
)
