"""Hand-crafted text indicators of a record (seed 003 §3.1, §4.1): lengths and lexical diversity.

No model: plain functions of the prompt Q and response A text.

Lengths: characters (Unicode code points) and whitespace tokens (``str.split()``), of Q and A.

Lexical diversity is measured on the response's *words*: its whitespace tokens, lowercased,
with leading and trailing punctuation (Unicode category P*) stripped, tokens left empty
dropped (``lexical_tokens``), the preprocessing McCarthy & Jarvis (2010) apply. For words
w_1..w_n:

    TTR        = |{w_i}| / n                                          (eq. 20)
    distinct-n = |{(w_i..w_{i+n-1})}| / (n_words - n + 1)               (Li et al. 2016; n = 1, 2)

distinct-n divides by the number of n-grams, so distinct-1 = TTR and every value lies in
(0, 1]; the seed's wording divides by the number of words instead, which for n = 2 caps the
value at (n_words - 1) / n_words.

MTLD (eq. 24; McCarthy & Jarvis 2010, "MTLD, vocd-D, and HD-D", Behav. Res. Methods 42(2)):
read the words in order keeping a running TTR of the current segment; when it falls to the
threshold (TTR <= 0.72) a factor is complete: the count goes up by 1 and the segment restarts
at the next word. The words left at the end form a partial factor worth
(1 - TTR_rest) / (1 - 0.72), 0 when nothing is left. One pass gives n / factors; MTLD is the
mean of the forward pass and the pass over the reversed words. A text whose words never
repeat completes no factor and leaves a partial of 0: its MTLD is undefined (None), as are
TTR and distinct-n of too short a text. McCarthy & Jarvis advise at least ~100 words for a
stable value; short responses give noisy MTLDs.

Implemented here rather than taken from ``lexicalrichness`` (last release 2023, pulls in
scipy/pandas for one loop); the tests check it on cases worked by hand.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from workers.engine.data import Example
from workers.engine.errors import InvalidInput

MTLD_THRESHOLD = 0.72
"""McCarthy & Jarvis' default factor size: the TTR at which a factor is complete."""


@dataclass(frozen=True)
class TextStats:
    """Indicators of one record; lexical ones are of the response (None where undefined)."""

    prompt_chars: int
    prompt_words: int
    response_chars: int
    response_words: int
    ttr: float | None
    mtld: float | None
    distinct_1: float | None
    distinct_2: float | None


def lexical_tokens(text: str) -> list[str]:
    """Lowercased whitespace tokens with leading/trailing punctuation stripped, empties dropped."""
    words = (_strip_punctuation(token.lower()) for token in text.split())
    return [word for word in words if word]


def _strip_punctuation(token: str) -> str:
    start, end = 0, len(token)
    while start < end and unicodedata.category(token[start]).startswith("P"):
        start += 1
    while end > start and unicodedata.category(token[end - 1]).startswith("P"):
        end -= 1
    return token[start:end]


def ttr(words: Sequence[str]) -> float | None:
    """Type-token ratio |types| / |tokens| (eq. 20); None for no words."""
    return len(set(words)) / len(words) if words else None


def distinct_n(words: Sequence[str], n: int) -> float | None:
    """Distinct n-grams / n-grams (Li et al. 2016); None when there is no n-gram."""
    if n < 1:
        raise InvalidInput(f"n must be >= 1, got {n}")
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else None


def mtld(words: Sequence[str], threshold: float = MTLD_THRESHOLD) -> float | None:
    """MTLD (module docstring): mean of the forward and backward n / factors; None if undefined."""
    if not 0.0 < threshold < 1.0:
        raise InvalidInput(f"the MTLD threshold must lie in (0, 1), got {threshold}")
    forward = _mtld_pass(words, threshold)
    backward = _mtld_pass(words[::-1], threshold)
    if forward is None or backward is None:
        return None
    return (forward + backward) / 2.0


def _mtld_pass(words: Sequence[str], threshold: float) -> float | None:
    """n / (complete factors + partial factor) in one reading direction."""
    factors = 0.0
    types: set[str] = set()
    length = 0
    segment_ttr = 1.0
    for word in words:
        types.add(word)
        length += 1
        segment_ttr = len(types) / length
        if segment_ttr <= threshold:
            factors += 1.0
            types, length, segment_ttr = set(), 0, 1.0
    factors += (1.0 - segment_ttr) / (1.0 - threshold)
    return len(words) / factors if factors > 0 else None


def text_stats(prompt: str, response: str, *, threshold: float = MTLD_THRESHOLD) -> TextStats:
    """Lengths of Q and A, and the lexical diversity of A."""
    words = lexical_tokens(response)
    return TextStats(
        prompt_chars=len(prompt),
        prompt_words=len(prompt.split()),
        response_chars=len(response),
        response_words=len(response.split()),
        ttr=ttr(words),
        mtld=mtld(words, threshold),
        distinct_1=distinct_n(words, 1),
        distinct_2=distinct_n(words, 2),
    )


def example_text_stats(
    examples: Sequence[Example], *, threshold: float = MTLD_THRESHOLD
) -> list[TextStats]:
    """``text_stats`` per example: Q is the content of every message but the last, joined with
    newlines (raw text, no chat formatting); A is the last (assistant) message's content."""
    return [
        text_stats(
            "\n".join(m["content"] for m in ex.messages[:-1]),
            ex.messages[-1]["content"],
            threshold=threshold,
        )
        for ex in examples
    ]
