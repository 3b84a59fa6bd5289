"""Probe queries for strategy studies (seed 001 app. A, tab. 3): each strategy wraps a reference
example (q, r) in a fixed prompt; users supply the probe's response (a CoT answer, the
clarified query, the evaluation). Plain string work, served by the API."""

from __future__ import annotations

COT_DIRECTIVE = (
    "Please output the reason first and then the final answer, regardless of the above description."
)
CLARIFY_WRAPPER = (
    "[Input]: '{query}' It is known that the [input] is a user's question, which may not be "
    "clearly expressed. Please help me rephrase this question to make its meaning clearer."
)
EVALUATE_WRAPPER = (
    "It is known that the [input] stores the questions posed by the user to the dialogue "
    "system, and the [output] stores the responses of the dialogue system to the [input]. "
    "Please help me judge whether the following [output] appropriately responds to the "
    "[input]. [Input]: {query} [Output]: {response}"
)
STRATEGIES: tuple[str, ...] = ("cot", "clarify", "evaluate")


def wrap_query(strategy: str, query: str, response: str | None = None) -> str:
    """The probe query a strategy builds from a reference query (and, to evaluate, its
    response); users supply the probe's response (a CoT answer, the clarified query, the
    evaluation)."""
    if strategy == "cot":
        return f"{query.rstrip()} {COT_DIRECTIVE}"
    if strategy == "clarify":
        return CLARIFY_WRAPPER.format(query=query.strip())
    if strategy == "evaluate":
        if response is None:
            raise ValueError("the 'evaluate' strategy wraps a query and its response")
        return EVALUATE_WRAPPER.format(query=query.strip(), response=response.strip())
    raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
