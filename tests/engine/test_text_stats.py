"""Text indicators on short strings whose values are worked out by hand in the comments."""

from __future__ import annotations

import pytest

from workers.engine.data import Example
from workers.engine.errors import InvalidInput
from workers.engine.text_stats import (
    distinct_n,
    example_text_stats,
    lexical_tokens,
    mtld,
    text_stats,
    ttr,
)


def test_lexical_tokens_lowercase_and_strip_edge_punctuation() -> None:
    # "--" is all punctuation and disappears; the inner apostrophe of "world's" stays.
    text = "Hello, world! HELLO... World's end -- «ok»"
    assert lexical_tokens(text) == ["hello", "world", "hello", "world's", "end", "ok"]
    assert lexical_tokens("  \n\t ") == []


def test_ttr_and_distinct_n_by_hand() -> None:
    words = lexical_tokens("The cat sat on the cat.")
    assert words == ["the", "cat", "sat", "on", "the", "cat"]
    # 6 words, types {the, cat, sat, on}: TTR = distinct-1 = 4/6.
    assert ttr(words) == pytest.approx(4 / 6)
    assert distinct_n(words, 1) == pytest.approx(4 / 6)
    # bigrams (the cat) (cat sat) (sat on) (on the) (the cat): 5 in all, 4 distinct.
    assert distinct_n(words, 2) == pytest.approx(4 / 5)
    # trigrams: (the cat sat) (cat sat on) (sat on the) (on the cat): 4, all distinct.
    assert distinct_n(words, 3) == pytest.approx(1.0)


def test_undefined_values_are_none() -> None:
    assert ttr([]) is None
    assert distinct_n(["one"], 2) is None
    assert mtld([]) is None
    # No word repeats: no factor completes and the partial factor is (1 - 1) / 0.28 = 0.
    assert mtld(["a", "b", "c"]) is None


def test_mtld_repeated_word() -> None:
    # Forward "the the the the": TTR 1/1, then 1/2 <= .72 -> factor 1, restart; 1/1, then
    # 1/2 -> factor 2, restart; nothing left (partial 0). 4 words / 2 factors = 2, same backward.
    assert mtld(["the"] * 4) == pytest.approx(2.0)


def test_mtld_forward_and_backward_differ() -> None:
    words = ["a", "a", "b", "c", "d", "e"]
    # Forward: a (1/1), a (1/2 = .5 <= .72) -> factor 1, restart at b; b c d e keep TTR 1,
    # partial (1 - 1) / .28 = 0. MTLD_fwd = 6 / 1 = 6.
    # Backward e d c b a a: TTR 1, 1, 1, 1, 1, then 5/6 = .833 > .72, no factor;
    # partial (1 - 5/6) / .28 = .595238...; MTLD_bwd = 6 / .595238 = 6 * 6 * .28 = 10.08.
    # MTLD = (6 + 10.08) / 2 = 8.04.
    assert mtld(words) == pytest.approx(8.04)


def test_mtld_factor_completes_at_the_threshold_itself() -> None:
    words = ["a", "b", "c", "a"]
    # Threshold .75: TTR 1, 1, 1, then 3/4 = .75 <= .75 -> one full factor, nothing left:
    # 4 / 1 = 4 in both directions ("a c b a" backward).
    assert mtld(words, threshold=0.75) == pytest.approx(4.0)
    # Default .72: 3/4 = .75 > .72, no factor; partial (1 - .75) / .28 = .892857; 4 / .892857
    # = 4.48 both ways.
    assert mtld(words) == pytest.approx(4.48)


def test_text_stats_of_a_record() -> None:
    stats = text_stats("What is 2+2?", "Four. Four!")
    # Q: 12 characters, 3 whitespace tokens; A: 11 characters, 2 whitespace tokens.
    assert (stats.prompt_chars, stats.prompt_words) == (12, 3)
    assert (stats.response_chars, stats.response_words) == (11, 2)
    # A's words: four, four. TTR = distinct-1 = 1/2; one bigram (four four): distinct-2 = 1.
    # MTLD: 1/1, then 1/2 -> one factor, nothing left: 2 / 1 = 2 both ways.
    assert stats.ttr == pytest.approx(0.5)
    assert stats.distinct_1 == pytest.approx(0.5)
    assert stats.distinct_2 == pytest.approx(1.0)
    assert stats.mtld == pytest.approx(2.0)


def test_example_text_stats_joins_the_prompt_messages() -> None:
    example = Example(
        "r1",
        (
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello there"},
        ),
    )
    [stats] = example_text_stats([example])
    # Q = "Be brief.\nHi": 12 characters, 3 whitespace tokens.
    assert (stats.prompt_chars, stats.prompt_words) == (12, 3)
    assert (stats.response_chars, stats.response_words) == (11, 2)
    assert stats.ttr == pytest.approx(1.0) and stats.mtld is None


def test_bad_arguments_raise() -> None:
    with pytest.raises(InvalidInput):
        distinct_n(["a"], 0)
    with pytest.raises(InvalidInput):
        mtld(["a", "a"], threshold=1.0)
