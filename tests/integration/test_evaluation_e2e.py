"""Evaluations through the production stack: a valuation's selection, a curation, a score set's
top k, random k under two seeds and the full pool, each fine-tuned by the Celery worker and
scored on a held-out target set (loss and multiple-choice accuracy, or a numeric reward of the
greedy answers); the table, curves and plot read back over HTTP, one arm recomputed here with
the engine alone."""

from __future__ import annotations

import time
from typing import Any

import httpx
import numpy as np
import pytest

from tests.integration.test_valuation_e2e import SETTINGS, _model, _records, _upload, _wait
from workers.engine import evaluation
from workers.engine.data import Example, tokenize_examples
from workers.engine.lora import LoraSettings, attach_lora, lora_parameters
from workers.engine.models import TINY_LLAMA, load_model_and_tokenizer
from workers.engine.warmup import WarmupSettings

pytestmark = pytest.mark.integration

BUDGET = 6
EVAL_SETTINGS: dict[str, Any] = {
    "training": {"epochs": 2, "learning_rate": 3e-3, "batch_size": 4, "seed": 0},
    "lora": {"r": 8, "alpha": 32},
    "max_length": 96,
    "batch_size": 8,
    "max_new_tokens": 6,
    "bootstrap": 300,
}
WRONG = ("Paris", "Tokyo", "Lima")


def _finished(api: httpx.Client, path: str, timeout: float = 600) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while (body := api.get(path).json())["status"] not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, f"stuck: {body}"
        time.sleep(0.3)
    assert body["status"] == "succeeded", body["error"]
    return body


def _started(api: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    response = api.post("/v1/evaluations", json=body)
    assert response.status_code == 202, response.text
    return _finished(api, f"/v1/evaluations/{response.json()['id']}")


def _with_choices(probes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Multiple-choice targets: the probe's answer sentence among two wrong capitals."""
    out = []
    for i, row in enumerate(probes):
        country = row["response"].split(" is ")[0].removeprefix("The capital of ")
        wrong = [f"The capital of {country} is {c}." for c in WRONG if c not in row["response"]]
        choices = [*wrong[:2], row["response"]] if i % 2 else [row["response"], *wrong[:2]]
        out.append({**row, "metadata": {"choices": choices, "answer": row["response"]}})
    return out


def _examples(rows: list[dict[str, Any]]) -> list[Example]:
    return [
        Example(
            str(r["id"]),
            (
                {"role": "user", "content": r["prompt"]},
                {"role": "assistant", "content": r["response"]},
            ),
        )
        for r in rows
    ]


def _recompute(
    train_rows: list[dict[str, Any]], target_rows: list[dict[str, Any]]
) -> tuple[float, float]:
    """The arm's target loss and accuracy from the engine alone, as the settings say."""
    base, tokenizer = load_model_and_tokenizer(TINY_LLAMA)
    model = attach_lora(base, LoraSettings(r=8, alpha=32.0, dropout=0.1), seed=0)
    initial = {n: p.detach().clone() for n, p in lora_parameters(model)}
    train, _ = tokenize_examples(tokenizer, _examples(train_rows), 96)
    target, _ = tokenize_examples(tokenizer, _examples(target_rows), 96)
    settings = WarmupSettings(
        fraction=1.0, epochs=2, learning_rate=3e-3, batch_size=4, seed=0, warmup_ratio=0.03
    )
    evaluation.fine_tune(model, train, settings, initial_adapter=initial, pad_token_id=0)
    loss = float(evaluation.target_losses(model, target, batch_size=8, pad_token_id=0).mean())
    questions = [
        (
            [{"role": "user", "content": r["prompt"]}],
            r["metadata"]["choices"],
            r["metadata"]["choices"].index(r["metadata"]["answer"]),
        )
        for r in target_rows
    ]
    accuracy = float(
        np.mean(evaluation.multiple_choice_correct(model, tokenizer, questions, max_length=96))
    )
    return loss, accuracy


def test_evaluation_end_to_end(api: httpx.Client) -> None:
    rows = _records("pool.jsonl", per_task=6)
    by_id = {r["id"]: r for r in rows}
    pool = _upload(api, "ev-pool", rows)
    probes = _records("probes.jsonl")
    target_rows = _with_choices(probes)
    target = _upload(api, "ev-target", target_rows)
    probe_set = _upload(api, "ev-probes", probes)
    model_id = _model(api)

    valuation = api.post(
        "/v1/valuations",
        json={
            "model_id": model_id,
            "pool_dataset_id": pool["id"],
            "probe_dataset_id": probe_set["id"],
            "settings": SETTINGS,
        },
    )
    assert valuation.status_code == 202, valuation.text
    assert _wait(api, valuation.json()["id"], ("succeeded", "failed"))["status"] == "succeeded"
    selection = api.post(
        f"/v1/valuations/{valuation.json()['id']}/selections", json={"rule": "top_k", "value": 8}
    ).json()
    bm25 = api.post(
        "/v1/score-sets",
        json={"scorer": "bm25", "dataset_id": pool["id"], "probe_dataset_id": probe_set["id"]},
    ).json()
    _finished(api, f"/v1/score-sets/{bm25['id']}")
    curation = api.post(
        "/v1/curations",
        json={"dataset_id": pool["id"], "pick": {"method": "random", "seed": 3}, "budget": 7},
    ).json()
    curated = _finished(api, f"/v1/curations/{curation['id']}")

    started = time.monotonic()
    done = _started(
        api,
        {
            "name": "capital probes",
            "model_id": model_id,
            "pool_dataset_id": pool["id"],
            "target_dataset_id": target["id"],
            "budget": BUDGET,
            "arms": [
                {"kind": "selection", "selection_id": selection["id"], "name": "LESS top"},
                {"kind": "curation", "curation_id": curation["id"]},
                {"kind": "score_set", "score_set_id": bm25["id"], "column": "score"},
                {"kind": "random", "seeds": [0, 1]},
                {"kind": "full"},
            ],
            "metric": {"kind": "multiple_choice"},
            "settings": EVAL_SETTINGS,
        },
    )
    elapsed = time.monotonic() - started
    result = done["result"]
    names = [a["name"] for a in result["arms"]]
    assert names == [
        "LESS top",
        f"curation {curation['id'][:8]}",
        f"score desc ({bm25['id'][:8]})",
        "random",
        "full",
    ]
    assert [a["n_records"] for a in done["arms"]] == [BUDGET, BUDGET, BUDGET, None, None]
    assert result["n_target"] == len(target_rows) and result["metric"] == (
        "multiple-choice accuracy"
    )
    for arm in result["arms"]:
        for q in (arm["loss"], arm["metric"]):
            assert q["low"] <= q["mean"] <= q["high"]
        expected_train = len(rows) if arm["kind"] == "full" else BUDGET
        assert arm["n_train"] == expected_train
        steps = 2 * -(-expected_train // 4)  # 2 epochs of ceil(n / batch 4) steps
        assert [c["steps"] for c in arm["curves"]] == [list(range(1, steps + 1))] * len(
            arm["curves"]
        )
        assert all(len(c["loss"]) == steps for c in arm["curves"])
    random_arm = result["arms"][3]
    assert [c["seed"] for c in random_arm["curves"]] == [0, 1]
    assert len(random_arm["loss"]["per_seed"]) == 2 and random_arm["loss"]["seed_std"] > 0
    assert result["reference"] == "random" and random_arm["vs_reference"] is None
    for arm in (a for a in result["arms"] if a["name"] != "random"):
        diff = arm["vs_reference"]["loss"]
        assert diff["mean"] == pytest.approx(arm["loss"]["mean"] - random_arm["loss"]["mean"])
        assert diff["low"] <= diff["mean"] <= diff["high"]
    assert result["base"]["loss"]["mean"] > max(a["loss"]["mean"] for a in result["arms"])
    assert result["provenance"]["model"].startswith("builtin:tiny-llama@")
    assert result["provenance"]["target_content_hash"] == target["content_hash"]

    # The selection arm, recomputed from its records with the engine alone.
    picked = selection["record_ids"][:BUDGET]
    loss, accuracy = _recompute([by_id[r] for r in picked], target_rows)
    assert result["arms"][0]["loss"]["mean"] == pytest.approx(loss, rel=1e-4)
    assert result["arms"][0]["metric"]["mean"] == pytest.approx(accuracy)
    assert curated["record_ids"][:BUDGET]  # the curation arm trained on its first k picks

    # Per target example: each arm's values, whose means are the table's.
    page = api.get(f"/v1/evaluations/{done['id']}/examples", params={"limit": 1000}).json()
    assert page["total"] == len(target_rows) == len(page["items"])
    assert [e["record_id"] for e in page["items"]] == [r["id"] for r in target_rows]
    for arm in result["arms"]:
        for q in ("loss", "metric"):
            per_example = [e[q][arm["name"]] for e in page["items"]]
            assert float(np.mean(per_example)) == pytest.approx(arm[q]["mean"])
    base_losses = [e["base_loss"] for e in page["items"]]
    assert float(np.mean(base_losses)) == pytest.approx(result["base"]["loss"]["mean"])

    png = api.get(f"/v1/evaluations/{done['id']}/plot.png")
    svg = api.get(f"/v1/evaluations/{done['id']}/plot.svg")
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
    assert svg.headers["content-type"].startswith("image/svg+xml") and b"<svg" in svg.content
    print(f"evaluation of 5 arms (6 runs) took {elapsed:.1f} s")

    # A numeric reward of greedy answers (GSM8K-style) .
    arithmetic = [r for r in _records("pool.jsonl") if r["metadata"]["task"] == "arithmetic"]
    held_out = _upload(api, "ev-arith", arithmetic[-5:])
    spec = api.post(
        "/v1/reward-specs", json={"name": "ev-numeric", "spec": {"kind": "numeric"}}
    ).json()
    numeric = _started(
        api,
        {
            "model_id": model_id,
            "pool_dataset_id": pool["id"],
            "target_dataset_id": held_out["id"],
            "budget": BUDGET,
            "arms": [{"kind": "random", "seeds": [5]}],
            "metric": {"kind": "reward", "reward_spec_id": spec["id"]},
            "settings": EVAL_SETTINGS,
        },
    )
    (arm,) = numeric["result"]["arms"]
    assert numeric["result"]["metric"] == "numeric reward"
    assert 0.0 <= arm["metric"]["mean"] <= 1.0 and arm["metric"]["seed_std"] is None

    # Deleting the target is refused while the evaluation uses it; deleting it goes.
    conflict = api.delete(f"/v1/datasets/{held_out['id']}")
    assert conflict.status_code == 409 and numeric["id"] in conflict.text
    assert api.delete(f"/v1/evaluations/{numeric['id']}").status_code == 204
    assert api.get(f"/v1/evaluations/{numeric['id']}").status_code == 404
