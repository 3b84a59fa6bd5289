"""NICE through the production stack, on a pool where loss and reward disagree (issue 4).

Probe labels are wrong (refusals); an HTTP judge rewards the right behaviour. LESS on the
labelled probes ranks the refusal records on top; NICE-AMC (a stronger model's answers supplied
as a dataset, rewarded by the judge) on the prompt-only probes ranks the right records on top.
The influence-function pair behaves the same way: DataInf follows the labels, NICE-IF the judge.
"""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from tests.fake_openai import FakeOpenAI, serve
from tests.integration.conftest import Stack
from tests.integration.test_valuation_e2e import SETTINGS, _model, _upload, _wait
from workers.engine.synthetic import CAPITALS, planted_tasks

pytestmark = pytest.mark.integration

N_GROUP = 20
REFUSAL = "I do not know."


JUDGE_TOKEN = "judge-token-5f3a9c"
ENDPOINT_KEY = "sk-endpoint-77d1e0"


class _Judge(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        if self.headers.get("authorization") != f"Bearer {JUDGE_TOKEN}":
            self.send_response(401)  # the sealed header must reach the judge
            self.send_header("content-length", "0")
            self.end_headers()
            return
        reward = 1.0 if "capital of" in body["response"] else 0.0
        payload = json.dumps({"reward": reward}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture()
def judge_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Judge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/judge"
    finally:
        server.shutdown()


def _answer(country: str, capital: str, right: bool) -> str:
    return f"The capital of {country} is {capital}." if right else REFUSAL


def test_nice_follows_the_judge_where_less_follows_wrong_labels(
    api: httpx.Client, stack: Stack, judge_url: str
) -> None:
    countries = list(CAPITALS)
    random.Random(0).shuffle(countries)
    pool_rows = [
        {
            "id": f"{group}-{i:03d}",
            "prompt": f"What is the capital of {c}?",
            "response": _answer(c, cap, group == "right"),
        }
        for group, pairs in (
            ("right", countries[:N_GROUP]),
            ("refuse", countries[N_GROUP : 2 * N_GROUP]),
        )
        for i, (c, cap) in enumerate(pairs)
    ]
    pool_rows += [
        {
            "id": r["id"],
            "prompt": r["messages"][0]["content"],
            "response": r["messages"][1]["content"],
        }
        for r in planted_tasks(N_GROUP, seed=3)
        if r["subtask"] != "capital"
    ]
    probe_pairs = countries[2 * N_GROUP : 2 * N_GROUP + 6]
    pool = _upload(api, "nice-pool", pool_rows)
    labelled = _upload(
        api,
        "nice-probes-labelled",
        [
            {"id": f"q{i}", "prompt": f"What is the capital of {c}?", "response": REFUSAL}
            for i, (c, _) in enumerate(probe_pairs)
        ],
    )
    prompts = _upload(
        api,
        "nice-probes-prompts",
        [
            {"id": f"q{i}", "prompt": f"What is the capital of {c}?"}
            for i, (c, _) in enumerate(probe_pairs)
        ],
    )
    assert prompts["n_prompt_only"] == len(probe_pairs)
    assist = _upload(
        api,
        "nice-assist",
        [
            {
                "prompt": f"What is the capital of {c}?",
                "response": _answer(c, cap, right),
                "metadata": {"probe_id": f"q{i}"},
            }
            for i, (c, cap) in enumerate(probe_pairs)
            for right in (True, False)
        ],
    )
    judge = {
        "kind": "http_judge",
        "url": judge_url,
        "headers": {"Authorization": f"Bearer {JUDGE_TOKEN}"},
    }
    reward = api.post("/v1/reward-specs", json={"name": "judge", "spec": judge})
    assert reward.status_code == 201, reward.text
    secret = api.post(
        "/v1/secrets",
        json={"name": "stronger-key", "value": ENDPOINT_KEY, "hosts": ["127.0.0.1"]},
    )
    assert secret.status_code == 201, secret.text
    settings = {**SETTINGS, "projection": {"dim": 1024, "seed": 0}}

    def value(**body: Any) -> dict[str, Any]:
        response = api.post(
            "/v1/valuations",
            json={
                "model_id": _model(api),
                "pool_dataset_id": pool["id"],
                "settings": settings,
                **body,
            },
        )
        assert response.status_code == 202, response.text
        done = _wait(api, response.json()["id"], ("succeeded", "failed", "cancelled"), 400)
        assert done["status"] == "succeeded", done["error"]
        return done

    def top_groups(valuation: dict[str, Any]) -> dict[str, int]:
        items = api.get(
            f"/v1/valuations/{valuation['id']}/scores", params={"limit": N_GROUP}
        ).json()["items"]
        return {g: sum(s["record_id"].startswith(g) for s in items) for g in ("right", "refuse")}

    less = value(method="less", probe_dataset_id=labelled["id"])
    nice = value(
        method="nice",
        probe_dataset_id=prompts["id"],
        reward_spec_id=reward.json()["id"],
        assist_dataset_id=assist["id"],
    )
    samples = api.get(f"/v1/valuations/{nice['id']}/samples", params={"limit": 100}).json()
    assert samples["total"] == 2 * len(probe_pairs) * 2  # epochs x probes x assisted answers
    assert all(s["reward"] == (1.0 if "capital of" in s["text"] else 0.0) for s in samples["items"])
    assert any("reused warmup run" in note for note in nice["notes"])
    # the influence-function pair: DataInf on the wrong labels, NICE-IF with the judge
    datainf = value(method="datainf", probe_dataset_id=labelled["id"])
    nice_if = value(
        method="nice_if",
        probe_dataset_id=prompts["id"],
        reward_spec_id=reward.json()["id"],
        assist_dataset_id=assist["id"],
    )
    # NICE-AMC with the stronger model behind an OpenAI-compatible endpoint
    capitals = dict(probe_pairs)

    def stronger(messages: list[dict[str, str]], i: int) -> str:
        country = messages[-1]["content"].removeprefix("What is the capital of ").rstrip("?")
        return _answer(country, capitals[country], right=i == 0)

    with serve(FakeOpenAI(stronger, api_key=ENDPOINT_KEY)) as fake:
        endpoint = {
            "base_url": fake.base_url,
            "model": "stronger",
            "n": 2,
            "api_key_secret": "stronger-key",
        }
        nice_api = value(
            method="nice",
            probe_dataset_id=prompts["id"],
            reward_spec_id=reward.json()["id"],
            settings={**settings, "nice": {"assist_endpoint": endpoint}},
        )
    assert len(fake.requests) == len(probe_pairs)  # fetched once, used at both checkpoints
    api_samples = api.get(f"/v1/valuations/{nice_api['id']}/samples", params={"limit": 100})

    def audit(items: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        keys = ("epoch", "probe_record_id", "sample_index", "text", "reward")
        return sorted(tuple(item[k] for k in keys) for item in items)

    assert audit(api_samples.json()["items"]) == audit(samples["items"])  # same texts, rewards
    if_samples = api.get(f"/v1/valuations/{nice_if['id']}/samples").json()
    assert if_samples["total"] == len(probe_pairs) * 2  # the last checkpoint only
    assert any("DataInf damping" in note for note in nice_if["notes"])
    less_top, nice_top = top_groups(less), top_groups(nice)
    datainf_top, nice_if_top = top_groups(datainf), top_groups(nice_if)
    nice_api_top = top_groups(nice_api)
    print(
        f"\ntop {N_GROUP}: LESS {less_top}, NICE {nice_top}, DataInf {datainf_top}, "
        f"NICE-IF {nice_if_top}, NICE-AMC via endpoint {nice_api_top}"
    )
    assert nice_api_top == nice_top  # the same texts as the assist dataset's: the same scores
    # The secrets reached the judge and the endpoint, and nothing else: no response, note, error
    # or log line of the API or the worker holds them.
    assert all(r["headers"]["authorization"] == f"Bearer {ENDPOINT_KEY}" for r in fake.requests)
    shown = [api.get("/v1/reward-specs").text, api.get("/v1/secrets").text]
    shown += [api.get(f"/v1/valuations/{v['id']}").text for v in (nice, nice_if, nice_api)]
    shown += [path.read_text() for path in stack.logs.glob("*.log")]
    assert not [text for text in shown if JUDGE_TOKEN in text or ENDPOINT_KEY in text]
    assert less_top["refuse"] >= 0.6 * N_GROUP > less_top["right"]
    assert nice_top["right"] >= 0.6 * N_GROUP > nice_top["refuse"]
    assert datainf_top["refuse"] >= 0.6 * N_GROUP > datainf_top["right"]
    assert nice_if_top["right"] >= 0.6 * N_GROUP > nice_if_top["refuse"]
