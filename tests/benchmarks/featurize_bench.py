"""Featurization and scoring throughput, next to the plain batched forward+backward.

Run (the exact commands and the results are in docs/benchmarks.md):

    python -m tests.benchmarks.featurize_bench --shape tiny --device cpu
    python -m tests.benchmarks.featurize_bench --shape llama-1.1b --device cuda
    python -m tests.benchmarks.featurize_bench --shape llama2-7b --device cuda
    python -m tests.benchmarks.featurize_bench --score --device cuda

For a model shape (random init, LoRA on q/k/v/o with its B matrices randomised so that every
LoRA tensor has a gradient, as after warmup) and a batch of ``--seq-len`` token examples with
the loss on the last ``--loss-tokens``, it measures in the same process:

- ``plain``: one batched forward + backward of Σ_b L_b to the LoRA parameters (what training
  costs; the ceiling for any per-example method), with logits only at loss positions as
  featurization computes them (``gradients.response_losses``); ``plain_full_logits`` is the
  same step with logits at every position, as a default HF forward computes;
- ``sift``: ``features.featurize`` (kind "adam", the pool's path: per-example gradients from
  hooks, Adam features, SRHT projection to d) over ``--batches`` batches in one call, as a
  shard is featurized; ``sift_setup_s`` is the per-call set-up alone (loading the adapter,
  hashing it for the provenance check, moments to the device), which a shard of 1024 records
  amortises over more batches than the benchmark does (``..._after_setup`` leaves it out);
- ``fidelity``: Spearman and max error of projected vs exact cosine for a sample of examples
  (exact = the hooked per-example gradients unprojected, checked against the loop reference
  in the tests).

``--score`` measures scoring: N pool features (fp16) against M probes through
``influence.score_shard`` in shards, in memory and from a filesystem blob store.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from scipy.stats import spearmanr
from torch import Tensor
from transformers import LlamaConfig, LlamaForCausalLM

from workers.engine import features, influence, lora, nice, projection, rewards
from workers.engine.data import Example, TokenizedExample, collate, tokenize_examples
from workers.engine.gradients import (
    hooked_per_example_gradients,
    response_losses,
    response_nll,
)
from workers.engine.models import TINY_LLAMA, load_model_and_tokenizer
from workers.engine.synthetic import planted_tasks
from workers.engine.warmup import Checkpoint

LLAMA_SHAPES: dict[str, dict[str, int]] = {
    "llama-mini": dict(  # CPU-sized, but its LoRA tensors fill whole 2^16 Hadamard blocks
        hidden_size=512,
        intermediate_size=1024,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=2,
    ),
    "llama-1.1b": dict(
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=22,
        num_attention_heads=32,
        num_key_value_heads=4,
    ),
    "llama2-7b": dict(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
    ),
}


def build_model(shape: str, device: torch.device, dtype: torch.dtype) -> Any:
    if shape == "tiny":
        model, _ = load_model_and_tokenizer(TINY_LLAMA, dtype=dtype, device=device)
        return model
    config = LlamaConfig(vocab_size=32000, max_position_embeddings=4096, **LLAMA_SHAPES[shape])
    config._attn_implementation = "sdpa"
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            torch.manual_seed(0)
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    return model


def attach(model: Any, shape: str) -> Any:
    r, alpha = (8, 32.0) if shape == "tiny" else (128, 512.0)
    peft_model = lora.attach_lora(model, lora.LoraSettings(r=r, alpha=alpha), seed=0)
    generator = torch.Generator(device="cpu").manual_seed(1)
    with torch.no_grad():
        for name, p in lora.lora_parameters(peft_model):
            if "lora_B" in name:  # as after warmup: B != 0, so lora_A has gradients too
                p.copy_(torch.randn(p.shape, generator=generator) * 0.02 / math.sqrt(r))
    return peft_model


def make_examples(n: int, seq_len: int, loss_tokens: int, vocab: int) -> list[TokenizedExample]:
    generator = torch.Generator(device="cpu").manual_seed(2)
    out = []
    for i in range(n):
        ids = torch.randint(3, vocab, (seq_len,), generator=generator).tolist()
        labels = [-100] * (seq_len - loss_tokens) + ids[seq_len - loss_tokens :]
        out.append(
            TokenizedExample(f"x{i:05d}", tuple(ids), tuple(labels), None, loss_tokens, False)
        )
    return out


def _provenance(
    args: argparse.Namespace,
    model: Any,
    ckpt: Checkpoint,
    projector: Any,
    *,
    kind: str,
    dtype: str,
    max_length: int,
) -> features.Provenance:
    return features.Provenance(
        model=args.shape,
        checkpoint=features.checkpoint_hash(ckpt.adapter_state),
        projector=projector.spec(),
        seed=0,
        dim=args.dim,
        dtype=dtype,
        param_order_hash=lora.parameter_order_hash(model),
        kind=kind,
        max_length=max_length,
    )


def timed(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    """Seconds per call, after one untimed warm-up call."""
    fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(device)
    return (time.perf_counter() - start) / repeats


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic_checkpoint(model: Any) -> Checkpoint:
    generator = torch.Generator(device="cpu").manual_seed(3)
    state = {n: p.detach().float().cpu() for n, p in lora.lora_parameters(model)}
    return Checkpoint(
        epoch=1,
        step=100,
        mean_lr=1e-5,
        adapter_state=state,
        exp_avg={n: torch.randn(t.shape, generator=generator) * 1e-4 for n, t in state.items()},
        exp_avg_sq={n: torch.rand(t.shape, generator=generator) * 1e-7 for n, t in state.items()},
    )


def bench_featurize(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" and args.shape != "tiny" else torch.float32
    model = attach(build_model(args.shape, device, dtype), args.shape)
    model.eval()
    vocab = model.get_input_embeddings().num_embeddings
    sizes = [p.numel() for _, p in lora.lora_parameters(model)]
    projector = projection.BlockHadamardProjector(sizes, args.dim, seed=0)
    ckpt = synthetic_checkpoint(model)
    result: dict[str, Any] = {
        "shape": args.shape,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "dtype": str(dtype),
        "seq_len": args.seq_len,
        "loss_tokens": args.loss_tokens,
        "dim": args.dim,
        "lora_params": sum(sizes),
        "runs": [],
    }
    for batch_size in args.batch_sizes:
        run = _run_batch_size(model, projector, ckpt, args, batch_size, vocab, device)
        if args.with_loop and not run.get("oom"):
            run["loop_examples_per_s"] = _loop_throughput(model, ckpt, args, batch_size, vocab)
        result["runs"].append(run)
        print(json.dumps(run), flush=True)
    result["fidelity"] = fidelity(model, projector, args, vocab, device)
    print(json.dumps(result["fidelity"]), flush=True)
    return result


def _run_batch_size(
    model: Any,
    projector: Any,
    ckpt: Checkpoint,
    args: argparse.Namespace,
    batch_size: int,
    vocab: int,
    device: torch.device,
) -> dict[str, Any]:
    params = [p for _, p in lora.lora_parameters(model)]
    examples = make_examples(batch_size * args.batches, args.seq_len, args.loss_tokens, vocab)
    batch = {k: v.to(device) for k, v in collate(examples[:batch_size], 0).items()}

    def plain() -> None:
        """A training step's forward + backward, with the loss computed as featurization does."""
        with torch.enable_grad():
            torch.autograd.grad(response_losses(model, batch).sum(), params)

    def plain_full_logits() -> None:
        """The same with logits at every position (what a default HF forward computes)."""
        with torch.enable_grad():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            loss = response_nll(logits.logits.float(), batch["labels"]).sum()
            torch.autograd.grad(loss, params)

    provenance = _provenance(
        args, model, ckpt, projector, kind="adam", dtype="float16", max_length=args.seq_len
    )

    def sift(examples: list[TokenizedExample] = examples) -> None:
        features.featurize(
            model,
            examples,
            kind="adam",
            checkpoint=ckpt,
            projector=projector,
            provenance=provenance,
            batch_size=batch_size,
            pad_token_id=0,
        )

    def measure(fn: Callable[[], None], repeats: int) -> tuple[float, float | None]:
        """(seconds per call, peak accelerator GiB during the calls)."""
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        return timed(fn, device, repeats), _peak_gib(device)

    try:
        plain_s, plain_mem = measure(plain, args.batches)
        full_s, full_mem = measure(plain_full_logits, args.batches)
        sift_s, sift_mem = measure(sift, 1)  # one call = args.batches batches
        setup_s = timed(lambda: sift([]), device, 3)  # adapter, checks, moments: once a shard
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return {"batch_size": batch_size, "oom": True}
    run = {
        "batch_size": batch_size,
        "plain_examples_per_s": batch_size / plain_s,
        "plain_full_logits_examples_per_s": batch_size / full_s,
        "sift_examples_per_s": batch_size * args.batches / sift_s,
        "sift_setup_s": setup_s,
        "sift_examples_per_s_after_setup": batch_size * args.batches / (sift_s - setup_s),
        "plain_peak_gib": plain_mem,
        "plain_full_logits_peak_gib": full_mem,
        "sift_peak_gib": sift_mem,
    }
    run["sift_over_plain"] = run["sift_examples_per_s"] / run["plain_examples_per_s"]
    return run


def _loop_throughput(
    model: Any, ckpt: Checkpoint, args: argparse.Namespace, batch_size: int, vocab: int
) -> float:
    """LESS's way: one backward per example, then a dense Rademacher projection of [B, P]."""
    sizes = [p.numel() for _, p in lora.lora_parameters(model)]
    dense = projection.RademacherProjector(sum(sizes), args.dim, seed=0, segments=sizes)
    examples = make_examples(batch_size, args.seq_len, args.loss_tokens, vocab)
    provenance = _provenance(
        args, model, ckpt, dense, kind="adam", dtype="float16", max_length=args.seq_len
    )
    start = time.perf_counter()
    features.featurize(
        model,
        examples,
        kind="adam",
        checkpoint=ckpt,
        projector=dense,
        provenance=provenance,
        batch_size=batch_size,
        pad_token_id=0,
        method="loop",
    )
    return batch_size / (time.perf_counter() - start)


def fidelity(
    model: Any, projector: Any, args: argparse.Namespace, vocab: int, device: torch.device
) -> dict[str, Any]:
    """Spearman(projected cosine, exact cosine) over pool x probe pairs of SGD gradients.

    Two example sets: the planted-task records (five instruction tasks, byte tokens: gradients
    cluster by task, as in real pools) and random token sequences sharing a prompt (cosines
    concentrated near one value: the hard case for any projection).
    """
    return {
        "planted_tasks": _fidelity_on(model, projector, args, planted_examples(args), device),
        "random_tokens": _fidelity_on(model, projector, args, random_examples(args, vocab), device),
    }


def planted_examples(args: argparse.Namespace) -> tuple[list[TokenizedExample], int]:
    _, tokenizer = load_model_and_tokenizer(TINY_LLAMA)
    records = planted_tasks(math.ceil(args.fidelity_pool / 5), seed=0)[: args.fidelity_pool]
    probes = [r for r in planted_tasks(4, seed=1, id_prefix="v") if r["subtask"] == "capital"]
    examples = [
        Example(str(r["id"]), tuple(r["messages"]), None)  # type: ignore[arg-type]
        for r in records + probes[: args.fidelity_probes]
    ]
    tokenized, _ = tokenize_examples(tokenizer, examples, args.seq_len)
    return tokenized, len(records)


def random_examples(args: argparse.Namespace, vocab: int) -> tuple[list[TokenizedExample], int]:
    n_pool = args.fidelity_pool
    examples = make_examples(n_pool + args.fidelity_probes, args.seq_len, args.loss_tokens, vocab)
    prefix = examples[0].input_ids[: args.seq_len - args.loss_tokens]
    return [
        TokenizedExample(
            ex.record_id,
            prefix + ex.input_ids[len(prefix) :],
            ex.labels,
            None,
            ex.n_response_tokens,
            False,
        )
        for ex in examples
    ], n_pool


def _fidelity_on(
    model: Any,
    projector: Any,
    args: argparse.Namespace,
    examples_and_pool_size: tuple[list[TokenizedExample], int],
    device: torch.device,
) -> dict[str, Any]:
    examples, n_pool = examples_and_pool_size
    rows = []
    for start in range(0, len(examples), 4):
        batch = {k: v.to(device) for k, v in collate(examples[start : start + 4], 0).items()}
        rows.append(hooked_per_example_gradients(model, batch))  # [b, P] fp32
    exact = torch.cat(rows)
    del rows
    exact_cos = _exact_cosines(exact, n_pool).flatten().cpu()
    report: dict[str, Any] = {
        "pairs": exact_cos.numel(),
        "exact_cosine_std": float(exact_cos.std()),
    }

    def compare(name: str, projected: Tensor) -> None:
        cos = influence.cosine_matrix(projected[:n_pool], projected[n_pool:]).flatten().cpu()
        rho = float(spearmanr(exact_cos.double().numpy(), cos.double().numpy()).statistic)
        report[name] = {"spearman": rho, "max_abs_error": float((exact_cos - cos).abs().max())}

    sizes = list(projector.segments)
    for dim in args.fidelity_dims:
        srht = projection.BlockHadamardProjector(sizes, dim, seed=0)
        compare(f"srht_d{dim}", srht.project(exact))
    if not args.skip_dense:
        compare(f"dense_gaussian_d{args.dim}", dense_gaussian_projection(exact, args.dim, device))
    return report


def _exact_cosines(x: Tensor, n_pool: int) -> Tensor:
    """cos(x_i, x_j) for pool rows i < n_pool and probe rows j >= n_pool, from the Gram matrix
    accumulated in float64 over column chunks (no normalised copy of a [N, P] matrix)."""
    gram = torch.zeros((x.shape[0], x.shape[0]), dtype=torch.float64, device=x.device)
    for start in range(0, x.shape[1], 1 << 22):
        chunk = x[:, start : start + (1 << 22)].double()
        gram += chunk @ chunk.T
    norms = gram.diagonal().sqrt().clamp_min(torch.finfo(torch.float64).tiny)
    return (gram / norms[:, None] / norms[None, :])[:n_pool, n_pool:].float()


def dense_gaussian_projection(x: Tensor, dim: int, device: torch.device) -> Tensor:
    """x G / √d with G i.i.d. N(0, 1) drawn chunk by chunk: the textbook JL map, for reference."""
    generator = torch.Generator(device=device).manual_seed(5)
    out = torch.zeros((x.shape[0], dim), device=device)
    for start in range(0, x.shape[1], 1 << 16):
        chunk = x[:, start : start + (1 << 16)]
        g = torch.randn((chunk.shape[1], dim), generator=generator, device=device)
        out += chunk @ g
    return out / math.sqrt(dim)


def bench_score(args: argparse.Namespace) -> dict[str, Any]:
    """N x d fp16 pool against M probes, shard by shard (as the score task streams them)."""
    device = torch.device(args.device)
    d, m, shard = args.dim, args.score_probes, args.score_shard
    n_shards = math.ceil(args.score_pool / shard)
    prov = dict(
        model="bench",
        checkpoint="c0",
        projector="srht-blocks:v1",
        seed=0,
        dim=d,
        dtype="float16",
        param_order_hash="h",
        max_length=512,
    )
    generator = torch.Generator(device="cpu").manual_seed(4)
    probes = features.FeatureSet(
        features.Provenance(**prov, kind="sgd"),
        [f"v{i}" for i in range(m)],
        [f"task{i % 4}" for i in range(m)],
        torch.randn(m, d, generator=generator).half(),
    )
    pool_shard = features.FeatureSet(
        features.Provenance(**prov, kind="adam"),
        [f"p{i}" for i in range(shard)],
        [None] * shard,
        torch.randn(shard, d, generator=generator).half(),
    )

    def score_all(load: Callable[[int], features.FeatureSet]) -> None:
        for i in range(n_shards):
            influence.score_shard([load(i)], [probes], [1e-5], method="less", device=device)
        sync(device)

    in_memory_s = timed(lambda: score_all(lambda i: pool_shard), device, 1)
    blob = pool_shard.to_safetensors()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "shard.safetensors"
        path.write_bytes(blob)  # one file re-read per shard: page cache, like a local blob store
        from_file_s = timed(
            lambda: score_all(lambda i: features.FeatureSet.from_safetensors(path.read_bytes())),
            device,
            1,
        )
    n = n_shards * shard
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "pool": n,
        "probes": m,
        "dim": d,
        "shard": shard,
        "in_memory_s": in_memory_s,
        "from_blob_file_s": from_file_s,
        "pool_rows_per_s_in_memory": n / in_memory_s,
    }


def bench_nice(args: argparse.Namespace) -> dict[str, Any]:
    """NICE cost per probe at one checkpoint: sampling M responses, rewarding them, and the
    policy-gradient feature (rows of -log f through the batched featurizer, then the sum)."""
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" and args.shape != "tiny" else torch.float32
    model = attach(build_model(args.shape, device, dtype), args.shape)
    _, tokenizer = load_model_and_tokenizer(TINY_LLAMA)  # byte tokenizer: ids fit every vocab
    sizes = [p.numel() for _, p in lora.lora_parameters(model)]
    projector = projection.BlockHadamardProjector(sizes, args.dim, seed=0)
    ckpt = synthetic_checkpoint(model)
    probes = [
        nice.ProbePrompt(
            f"q{i}", ({"role": "user", "content": f"Name a word with the letter {c}."},), label=c
        )
        for i, c in enumerate("abcdefghijklmnop"[: args.nice_probes])
    ]
    settings = nice.SamplingSettings(m=args.nice_samples, max_new_tokens=args.nice_new_tokens)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    lora.load_adapter_state(model, ckpt.adapter_state)
    samples = nice.sample_responses(model, tokenizer, probes, settings, batch_size=len(probes))
    sync(device)
    timings["generation_s"] = time.perf_counter() - start
    start = time.perf_counter()
    values = rewards.compute_rewards(
        rewards.reward_from_dict({"kind": "contains"}),
        [rewards.RewardItem(s.probe_id, "", s.text, label="e") for s in samples],
    )
    timings["reward_contains_s"] = time.perf_counter() - start
    start = time.perf_counter()  # a sandboxed HumanEval-style test per sample (subprocesses)
    rewards.compute_rewards(
        rewards.reward_from_dict({"kind": "python_tests", "timeout_s": 5, "cpu_time_s": 5}),
        [
            rewards.RewardItem(
                s.probe_id,
                "def add(a, b):\n",
                "    return a + b\n",
                metadata={"test": "def check(f):\n    assert f(2, 3) == 5\n", "entry_point": "add"},
            )
            for s in samples
        ],
    )
    timings["reward_python_tests_s"] = time.perf_counter() - start
    values = [1.0 if i % 2 else v for i, v in enumerate(values)]  # some signal on every probe
    provenance = _provenance(
        args,
        model,
        ckpt,
        projector,
        kind="policy",
        dtype="float32",
        max_length=512 + args.nice_new_tokens,
    )
    start = time.perf_counter()
    nice.policy_gradient_features(
        model,
        probes,
        samples,
        values,
        weighting="reinforce",
        checkpoint=ckpt,
        projector=projector,
        provenance=provenance,
        batch_size=args.batch_sizes[0],
        pad_token_id=0,
    )
    sync(device)
    timings["gradient_s"] = time.perf_counter() - start
    n = len(probes)
    return {
        "shape": args.shape,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "probes": n,
        "samples_per_probe": settings.m,
        "max_new_tokens": settings.max_new_tokens,
        "mean_sample_tokens": sum(len(s.response_ids) for s in samples) / len(samples),
        **{f"{k}_per_probe": v / n for k, v in timings.items()},
    }


def _peak_gib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=["tiny", *LLAMA_SHAPES], default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--loss-tokens", type=int, default=256)
    parser.add_argument("--dim", type=int, default=8192)
    parser.add_argument(
        "--batch-sizes", type=int, nargs="*", default=[8], help="none: fidelity only"
    )
    parser.add_argument("--batches", type=int, default=3, help="timed batches per run")
    parser.add_argument("--fidelity-pool", type=int, default=48)
    parser.add_argument("--fidelity-probes", type=int, default=8)
    parser.add_argument("--fidelity-dims", type=int, nargs="+", default=[8192, 32768])
    parser.add_argument(
        "--skip-dense", action="store_true", help="no dense Gaussian map in the fidelity check"
    )
    parser.add_argument("--with-loop", action="store_true", help="also time the loop reference")
    parser.add_argument("--score", action="store_true", help="benchmark scoring instead")
    parser.add_argument("--nice", action="store_true", help="benchmark NICE cost per probe")
    parser.add_argument("--nice-probes", type=int, default=8)
    parser.add_argument("--nice-samples", type=int, default=20)
    parser.add_argument("--nice-new-tokens", type=int, default=64)
    parser.add_argument("--score-pool", type=int, default=1_000_000)
    parser.add_argument("--score-probes", type=int, default=1000)
    parser.add_argument("--score-shard", type=int, default=16384)
    parser.add_argument("--out", default=os.environ.get("OUT"), help="folder for a JSON result")
    args = parser.parse_args()
    if args.score:
        result = bench_score(args)
    elif args.nice:
        result = bench_nice(args)
    else:
        result = bench_featurize(args)
    print(json.dumps(result, indent=2))
    if args.out:
        name = "score" if args.score else f"{'nice' if args.nice else 'featurize'}-{args.shape}"
        Path(args.out, f"{name}-{args.device.split(':')[0]}.json").write_text(
            json.dumps(result, indent=2)
        )


if __name__ == "__main__":
    main()
