"""NICE-AMC's stronger model behind an OpenAI-compatible chat-completions endpoint.

Assisted Monte-Carlo (seed 002 §3.3) rewards responses written by a stronger model instead of
the checkpoint's own samples. Any server speaking the OpenAI chat API (vLLM, TGI, llama.cpp,
a hosted API) can write them: for each probe prompt we POST

    {base_url}/chat/completions   {"model", "messages", "n", "temperature", "max_tokens"}

and take ``choices[*].message.content``. Servers that ignore ``n`` are asked again until the
probe has ``n`` responses. The responses are fetched once per valuation and reused at every
checkpoint (the gradients of their log-probability change with θ^e, the texts do not).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import httpx

from workers.engine import http
from workers.engine.errors import EngineError, InvalidInput
from workers.engine.nice import ProbePrompt
from workers.outbound import OutboundPolicy, guarded_client


@dataclass(frozen=True)
class ChatEndpoint:
    """Where and how to ask the stronger model; ``api_key`` is sent as a bearer token."""

    base_url: str
    model: str
    n: int = 4
    temperature: float = 1.0
    max_tokens: int = 512
    timeout_s: float = 60.0
    retries: int = 2
    api_key: str | None = None

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise InvalidInput(f"base_url must be http(s)://..., got {self.base_url!r}")
        if self.n < 1 or self.max_tokens < 1 or self.retries < 0 or not self.timeout_s > 0:
            raise InvalidInput("n and max_tokens must be >= 1, retries >= 0, timeout_s > 0")

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"


def prompt_messages(probe: ProbePrompt) -> list[dict[str, str]]:
    """The conversation the stronger model answers: the probe without its own answer."""
    history = [dict(m) for m in probe.messages]
    if history and history[-1].get("role") == "assistant":
        history = history[:-1]
    if not history:
        raise InvalidInput(f"probe {probe.record_id} has no prompt message")
    return history


def fetch_responses(
    endpoint: ChatEndpoint,
    probes: Sequence[ProbePrompt],
    *,
    outbound: OutboundPolicy | None = None,
) -> dict[str, list[str]]:
    """``endpoint.n`` responses per probe, by probe record id, in the order received.

    ``outbound`` is the operator's policy for client-supplied URLs (default: public https
    only; see ``workers.outbound``); a forbidden base_url raises InvalidInput.
    """
    headers = {"authorization": f"Bearer {endpoint.api_key}"} if endpoint.api_key else {}
    where = http.redacted(endpoint.url)

    def answers(client: httpx.Client, probe: ProbePrompt) -> list[str]:
        texts: list[str] = []
        for _ in range(endpoint.n):  # a server that ignores n answers once per request
            payload = {
                "model": endpoint.model,
                "messages": prompt_messages(probe),
                "n": endpoint.n - len(texts),
                "temperature": endpoint.temperature,
                "max_tokens": endpoint.max_tokens,
            }
            what = f"assist endpoint {where} for probe {probe.record_id!r}"
            body = http.post_json(
                client, endpoint.url, payload, retries=endpoint.retries, what=what
            )
            texts += _choices(body, what)
            if len(texts) >= endpoint.n:
                return texts[: endpoint.n]
        raise EngineError(
            f"assist endpoint {where} gave {len(texts)} of {endpoint.n} responses for probe "
            f"{probe.record_id!r} in {endpoint.n} requests"
        )

    policy = outbound or OutboundPolicy()
    with guarded_client(policy, timeout=endpoint.timeout_s, headers=headers) as client:
        fetched = http.map_parallel(lambda probe: answers(client, probe), probes)
    return {probe.record_id: texts for probe, texts in zip(probes, fetched, strict=True)}


def _choices(body: str, what: str) -> list[str]:
    try:
        data = json.loads(body)
        choices = data["choices"]
        texts = [choice["message"]["content"] for choice in choices]
    except (ValueError, KeyError, TypeError) as exc:
        raise EngineError(f"{what} sent no chat completion (choices[].message.content)") from exc
    if not texts or not all(isinstance(t, str) for t in texts):
        raise EngineError(f"{what} sent no text choices")
    return texts
