"""Shared fixtures: the builtin tiny Llama with small LoRA adapters, warmed up for 2 epochs."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from workers.engine.data import Example, TokenizedExample, tokenize_examples
from workers.engine.features import Provenance, checkpoint_hash
from workers.engine.lora import LoraSettings, attach_lora, parameter_order_hash
from workers.engine.models import TINY_LLAMA, load_model_and_tokenizer, model_fingerprint
from workers.engine.projection import Projector
from workers.engine.synthetic import planted_tasks
from workers.engine.warmup import Checkpoint, WarmupSettings, warmup

MAX_LENGTH = 64


def to_examples(records: list[dict[str, object]], *, with_subtask: bool) -> list[Example]:
    return [
        Example(
            record_id=str(r["id"]),
            messages=tuple(r["messages"]),  # type: ignore[arg-type]
            subtask=str(r["subtask"]) if with_subtask else None,
        )
        for r in records
    ]


def make_provenance(
    model: PeftModel,
    checkpoint: Checkpoint,
    projector: Projector,
    *,
    kind: str,
    dtype: str = "float32",
    max_length: int = MAX_LENGTH,
) -> Provenance:
    return Provenance(
        model=model_fingerprint(TINY_LLAMA, model),
        checkpoint=checkpoint_hash(checkpoint.adapter_state),
        projector=projector.spec(),
        seed=projector.seed,
        dim=projector.dim,
        dtype=dtype,
        param_order_hash=parameter_order_hash(model),
        kind=kind,
        max_length=max_length,
    )


@dataclass
class Warmed:
    model: PeftModel
    tokenizer: PreTrainedTokenizerBase
    pool: list[TokenizedExample]
    probes: list[TokenizedExample]
    checkpoints: list[Checkpoint]


@pytest.fixture(scope="session")
def warmed() -> Warmed:
    """Tiny Llama + LoRA r=4 warmed up 2 epochs (lr 1e-3): 2 checkpoints with nonzero B."""
    model, tokenizer = load_model_and_tokenizer(TINY_LLAMA)
    peft_model = attach_lora(model, LoraSettings(r=4, alpha=16.0, dropout=0.1), seed=0)
    pool, _ = tokenize_examples(
        tokenizer, to_examples(planted_tasks(4, seed=0), with_subtask=False), MAX_LENGTH
    )
    probe_records = planted_tasks(1, seed=1, id_prefix="v")
    probes, _ = tokenize_examples(
        tokenizer, to_examples(probe_records, with_subtask=True), MAX_LENGTH
    )
    checkpoints = warmup(
        peft_model,
        pool[:16],
        WarmupSettings(epochs=2, learning_rate=1e-3, warmup_ratio=0.0, batch_size=4, seed=0),
        pad_token_id=int(tokenizer.pad_token_id),
    )
    return Warmed(peft_model, tokenizer, pool, probes, checkpoints)
