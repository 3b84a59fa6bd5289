"""NICE-AMC responses from an OpenAI-compatible endpoint, against a loopback fake server."""

from __future__ import annotations

import pytest

from tests.fake_openai import FakeOpenAI, serve
from workers.engine import http
from workers.engine.assist import ChatEndpoint, fetch_responses
from workers.engine.errors import EngineError, InvalidInput
from workers.engine.nice import ProbePrompt
from workers.outbound import OutboundPolicy

LOOPBACK = OutboundPolicy.from_entries(["127.0.0.1/32"])  # the fake server listens there

PROBES = [
    ProbePrompt(
        "q1",
        (
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Capital of Peru?"},
            {"role": "assistant", "content": "a wrong label"},
        ),
    ),
    ProbePrompt("q2", ({"role": "user", "content": "Capital of Chile?"},)),
]


def _answer(messages: list[dict[str, str]], i: int) -> str:
    return f"{messages[-1]['content']} answer {i}"


@pytest.fixture(autouse=True)
def _fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http, "BACKOFF_S", 0.01)


def test_fetches_n_answers_per_probe_with_the_documented_request() -> None:
    with serve(FakeOpenAI(_answer, api_key="sk-test")) as fake:
        endpoint = ChatEndpoint(
            fake.base_url + "/", "big-model", n=3, temperature=0.7, max_tokens=64, api_key="sk-test"
        )
        got = fetch_responses(endpoint, PROBES, outbound=LOOPBACK)
    assert got == {
        "q1": [f"Capital of Peru? answer {i}" for i in range(3)],
        "q2": [f"Capital of Chile? answer {i}" for i in range(3)],
    }
    assert len(fake.requests) == 2
    first = next(r for r in fake.requests if r["body"]["messages"][-1]["content"].endswith("Peru?"))
    assert first["path"] == "/v1/chat/completions"
    assert first["headers"]["authorization"] == "Bearer sk-test"
    assert first["body"] == {
        "model": "big-model",
        "messages": [  # the probe's own (wrong) answer is not sent
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Capital of Peru?"},
        ],
        "n": 3,
        "temperature": 0.7,
        "max_tokens": 64,
    }


def test_a_server_that_ignores_n_is_asked_again() -> None:
    with serve(FakeOpenAI(_answer, ignore_n=True)) as fake:
        got = fetch_responses(ChatEndpoint(fake.base_url, "m", n=3), PROBES[:1], outbound=LOOPBACK)
    assert len(got["q1"]) == 3
    assert [r["body"]["n"] for r in fake.requests] == [3, 2, 1]


def test_overloaded_server_is_retried_and_client_errors_are_not() -> None:
    with serve(FakeOpenAI(_answer, failures=2)) as fake:
        got = fetch_responses(
            ChatEndpoint(fake.base_url, "m", n=1, retries=2), PROBES[1:], outbound=LOOPBACK
        )
    assert got == {"q2": ["Capital of Chile? answer 0"]}
    with serve(FakeOpenAI(_answer, failures=5)) as fake:
        with pytest.raises(EngineError, match=r"after 2 attempt\(s\): status 503"):
            fetch_responses(
                ChatEndpoint(fake.base_url, "m", n=1, retries=1), PROBES[1:], outbound=LOOPBACK
            )
    with serve(FakeOpenAI(_answer, api_key="right")) as fake:
        with pytest.raises(EngineError, match="status 401") as info:
            fetch_responses(
                ChatEndpoint(fake.base_url, "m", api_key="wrong"), PROBES[1:], outbound=LOOPBACK
            )
    assert len(fake.requests) == 1 and "wrong" not in str(info.value)


def test_an_endpoint_on_loopback_needs_the_operator_allowlist() -> None:
    with serve(FakeOpenAI(_answer)) as fake:
        with pytest.raises(InvalidInput, match="assist endpoint .* refused"):
            fetch_responses(ChatEndpoint(fake.base_url, "m"), PROBES[1:])
    assert fake.requests == []


def test_malformed_replies_and_unreachable_servers_are_clear_errors() -> None:
    with serve(FakeOpenAI(_answer)) as fake:
        with pytest.raises(EngineError, match="status 404"):
            fetch_responses(
                ChatEndpoint(fake.base_url + "/nowhere", "m"), PROBES[1:], outbound=LOOPBACK
            )
    with pytest.raises(EngineError, match="ConnectError"):
        fetch_responses(
            ChatEndpoint("http://127.0.0.1:9", "m", retries=0), PROBES[1:], outbound=LOOPBACK
        )
