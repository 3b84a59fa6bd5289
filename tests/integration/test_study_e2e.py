"""Strategy studies through the production stack: HTTP → Celery worker → Postgres → S3.

Checkpoints come both ways a user has them: from a warmup run Sift trained (for a valuation)
and uploaded as PEFT adapters. The evaluation set Z holds two planted-task examples per task;
probe set "same task" pairs each with another example of its task, "other task" with an
example of the next task, so training on the first should move Z more (seed 001's premise).
"""

from __future__ import annotations

import io
import time
import xml.etree.ElementTree as ET
from typing import Any

import httpx
import pytest
import torch
from peft import get_peft_model_state_dict
from safetensors.torch import save as save_safetensors

from tests.integration.test_valuation_e2e import SETTINGS, _model, _records, _upload, _value
from workers.engine import lora, models
from workers.engine.synthetic import TASKS, planted_tasks

pytestmark = pytest.mark.integration

# Its own warmup seed: the valuation tests expect to train their warmup run themselves.
VALUATION_SETTINGS = {**SETTINGS, "warmup": {**SETTINGS["warmup"], "seed": 7}}
STUDY_SETTINGS = {"projection": {"dim": 512, "seed": 0}, "max_length": 96, "bootstrap": 200}


def _wait(api: httpx.Client, path: str, timeout: float = 600) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body = api.get(path).json()
        if body["status"] in ("succeeded", "failed", "cancelled"):
            return body
        assert time.monotonic() < deadline, f"stuck: {body}"
        time.sleep(0.5)


def _paired_sets() -> dict[str, list[dict[str, Any]]]:
    """Z and two probe sets, paired by metadata.pair = "<task>-<k>"."""
    rows = planted_tasks(4, seed=31, id_prefix="st")
    by_task: dict[str, list[dict[str, Any]]] = {t: [] for t in TASKS}
    for row in rows:
        by_task[str(row["subtask"])].append(row)

    def record(row: dict[str, Any], pair: str, prefix: str) -> dict[str, Any]:
        messages = row["messages"]
        return {
            "id": f"{prefix}-{pair}",
            "prompt": messages[0]["content"],
            "response": messages[1]["content"],
            "metadata": {"pair": pair, "task": row["subtask"]},
        }

    sets: dict[str, list[dict[str, Any]]] = {"Z": [], "same task": [], "other task": []}
    for t, task in enumerate(TASKS):
        other = TASKS[(t + 1) % len(TASKS)]
        for k in range(2):
            pair = f"{task}-{k}"
            sets["Z"].append(record(by_task[task][k], pair, "z"))
            sets["same task"].append(record(by_task[task][k + 2], pair, "a"))
            sets["other task"].append(record(by_task[other][k + 2], pair, "b"))
    return sets


def _study(api: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    response = api.post("/v1/studies", json={"settings": STUDY_SETTINGS, **body})
    assert response.status_code == 202, response.text
    done = _wait(api, f"/v1/studies/{response.json()['id']}")
    assert done["status"] == "succeeded", done["error"]
    return done


def _curve(study: dict[str, Any], name: str, metric: str) -> list[float]:
    (probe_set,) = [p for p in study["result"]["probe_sets"] if p["name"] == name]
    return [point["value"] for point in probe_set["metrics"][metric]["points"]]


def test_study_on_sift_checkpoints_end_to_end(api: httpx.Client) -> None:
    pool = _upload(api, "st-pool", _records("pool.jsonl", per_task=24))
    probes = _upload(api, "st-probes", _records("probes.jsonl"))
    valuation = _value(api, pool["id"], probes["id"], VALUATION_SETTINGS)
    valuation = _wait(api, f"/v1/valuations/{valuation['id']}")
    assert valuation["status"] == "succeeded", valuation["error"]
    run_id = valuation["warmup_run_id"]
    run = api.get(f"/v1/warmup-runs/{run_id}").json()
    steps = [c["step"] for c in run["checkpoints"]]
    assert len(steps) == SETTINGS["warmup"]["epochs"]

    ids = {name: _upload(api, f"st-{name}", rows)["id"] for name, rows in _paired_sets().items()}
    first = _study(
        api,
        {
            "name": "same task or other task?",
            "warmup_run_id": run_id,
            "eval_dataset_id": ids["Z"],
            "probe_sets": [
                {"name": "other task", "dataset_id": ids["other task"]},
                {"name": "same task", "dataset_id": ids["same task"]},
            ],
            "reference": "other task",
        },
    )
    result = first["result"]
    assert result["steps"] == steps
    assert [c["learning_rate"] for c in result["checkpoints"]] == pytest.approx(
        [c["learning_rate"] for c in run["checkpoints"]]
    )
    assert len(result["pair_ids"]) == 10
    same, other = _curve(first, "same task", "s_in"), _curve(first, "other task", "s_in")
    print(f"\ns_in by step {steps}: same task {same}, other task {other}")
    assert all(a > b for a, b in zip(same, other, strict=True))
    (same_set,) = [p for p in result["probe_sets"] if p["name"] == "same task"]
    for metric in ("s_in", "s_cross"):
        for point in same_set["metrics"][metric]["points"]:
            assert set(point["per_pair"]) == set(result["pair_ids"])
            mean = sum(point["per_pair"].values()) / len(point["per_pair"])
            assert point["value"] == pytest.approx(mean)
            assert point["low"] <= point["value"] <= point["high"]
    verdict = same_set["metrics"]["s_in"]["verdict"]
    assert verdict["exceeds_reference_from_step"] == steps[0]
    assert "helps" in result["verdict_rule"]

    png = api.get(first["plots"]["png"])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content.startswith(b"\x89PNG")
    svg = api.get(first["plots"]["svg"])
    assert svg.headers["content-type"] == "image/svg+xml"
    assert ET.fromstring(svg.content).tag.endswith("svg")

    # A second study on the same checkpoints and Z computes only its new probe set; Z as its
    # own probe set gives s_in = 1 exactly (RelInf(z, z) = 1), projection included.
    second = _study(
        api,
        {
            "warmup_run_id": run_id,
            "eval_dataset_id": ids["Z"],
            "probe_sets": [
                {"name": "same task", "dataset_id": ids["same task"]},
                {"name": "Z itself", "dataset_id": ids["Z"]},
            ],
        },
    )
    n = len(steps)
    assert (
        f"reused the stored gradients of dataset {ids['Z']} at {n} of {n} checkpoints"
        in (second["notes"])
    )
    reused_same = f"dataset {ids['same task']} at {n} of {n}"
    assert any(reused_same in note for note in second["notes"])
    assert _curve(second, "same task", "s_in") == pytest.approx(same)
    assert _curve(second, "Z itself", "s_in") == pytest.approx([1.0] * n)


def _adapter_bytes(model: Any, seed: int) -> bytes:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in lora.lora_parameters(model):
            p.copy_(0.05 * torch.randn(p.shape, generator=generator))
    state = {k: v.contiguous() for k, v in get_peft_model_state_dict(model).items()}
    return save_safetensors(state)


def test_study_on_uploaded_adapters(api: httpx.Client) -> None:
    base, _ = models.load_model_and_tokenizer(models.TINY_LLAMA, dtype=torch.float32)
    model = lora.attach_lora(
        base, lora.LoraSettings(r=4, alpha=16.0, target_modules=("q_proj", "v_proj"))
    )
    steps, lrs = [100, 250], [2e-4, 1e-4]
    files = [
        ("adapters", (f"step-{s}.safetensors", io.BytesIO(_adapter_bytes(model, s)))) for s in steps
    ]
    response = api.post(
        "/v1/warmup-runs",
        data={"model_id": _model(api), "lora_alpha": "16", "steps": steps, "learning_rates": lrs},
        files=files,
    )
    assert response.status_code == 201, response.text
    run = response.json()
    assert run["origin"] == "upload"
    assert [c["step"] for c in run["checkpoints"]] == steps

    sets = _paired_sets()
    ids = {name: _upload(api, f"up-{name}", sets[name])["id"] for name in ("Z", "same task")}
    study = _study(
        api,
        {
            "warmup_run_id": run["id"],
            "eval_dataset_id": ids["Z"],
            "probe_sets": [
                {"name": "same task", "dataset_id": ids["same task"]},
                {"name": "Z itself", "dataset_id": ids["Z"]},
            ],
        },
    )
    result = study["result"]
    assert result["steps"] == steps
    assert [c["learning_rate"] for c in result["checkpoints"]] == pytest.approx(lrs)
    assert _curve(study, "Z itself", "s_in") == pytest.approx([1.0, 1.0])
    # The two steps' adapters differ, so the gradients (and the metric) differ between them.
    same = _curve(study, "same task", "s_in")
    assert same[0] != pytest.approx(same[1])
