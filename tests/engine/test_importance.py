"""Importance baselines: hand-computed BM25 and DSIR, RDS vs explicit loops, LESS aggregation,
seeded randomness, and each method finding the probes' task in the planted pool."""

from __future__ import annotations

import hashlib
import math
import random
from collections import Counter

import pytest
import torch

from workers.engine.data import Example
from workers.engine.errors import InvalidInput
from workers.engine.importance import (
    DSIR_SMOOTHING,
    bm25_scores,
    dsir_scores,
    example_text,
    gumbel_top_k,
    hash_bucket,
    ngram_buckets,
    random_scores,
    rds_scores,
    tokenize,
)
from workers.engine.influence import DEFAULT_SUBTASK
from workers.engine.synthetic import TASKS, planted_tasks

# --- BM25 ---------------------------------------------------------------------------------------


def test_bm25_matches_lucene_formula_by_hand() -> None:
    # Lucene BM25 as in bm25s (scoring._score_idf_lucene, _score_tfc_lucene):
    #   score(q, d) = Σ_{t ∈ q} idf(t) · tf / (tf + k1 (1 - b + b |d| / avgdl)),
    #   idf(t) = ln(1 + (N - df + 0.5) / (df + 0.5)),   k1 = 1.5, b = 0.75.
    # Documents: |d0| = 3, |d1| = 2, |d2| = 4, so N = 3 and avgdl = 3.
    pool = ["Apple banana apple", "banana cherry", "cherry cherry cherry date"]
    k1, b, avgdl = 1.5, 0.75, 3.0
    idf_apple = math.log(1 + (3 - 1 + 0.5) / (1 + 0.5))  # df = 1: ln(8/3)
    idf_cherry = math.log(1 + (3 - 2 + 0.5) / (2 + 0.5))  # df = 2: ln(1.6)

    def tfc(tf: int, doc_len: int) -> float:
        return tf / (tf + k1 * (1 - b + b * doc_len / avgdl))

    expected = [
        idf_apple * tfc(2, 3),  # d0: apple twice = ln(8/3) · 4/7
        idf_cherry * tfc(1, 2),  # d1: cherry once = ln(1.6) · 8/17
        idf_cherry * tfc(3, 4),  # d2: cherry thrice = ln(1.6) · 8/13
    ]
    assert expected[0] == pytest.approx(math.log(8 / 3) * 4 / 7)
    assert expected[2] == pytest.approx(math.log(1.6) * 8 / 13)

    scores, per_subtask = bm25_scores(pool, ["apple, CHERRY!"], [None])
    assert scores.dtype == torch.float64
    torch.testing.assert_close(scores, torch.tensor(expected, dtype=torch.float64))
    assert list(per_subtask) == [DEFAULT_SUBTASK]
    torch.testing.assert_close(per_subtask[DEFAULT_SUBTASK], scores)


def test_bm25_unknown_query_scores_zero_and_repeated_terms_count_again() -> None:
    pool = ["apple banana", "banana cherry"]
    zero, _ = bm25_scores(pool, ["zebra"], ["a"])
    torch.testing.assert_close(zero, torch.zeros(2, dtype=torch.float64))
    once, _ = bm25_scores(pool, ["apple"], ["a"])
    twice, _ = bm25_scores(pool, ["apple apple"], ["a"])
    torch.testing.assert_close(twice, 2 * once)


def test_tokenize_lowercases_words_and_punctuation() -> None:
    assert tokenize("What is 3+4?\n\nAnswer:7") == [
        "what",
        "is",
        "3",
        "+",
        "4",
        "?",
        "answer",
        ":",
        "7",
    ]


# --- DSIR ---------------------------------------------------------------------------------------


def test_hash_bucket_is_sha256_mod_m() -> None:
    for gram in ("x", "y x", "capital of"):
        digest = int(hashlib.sha256(gram.encode()).hexdigest(), 16)
        assert hash_bucket(gram, 10_000) == digest % 10_000


def test_dsir_log_weights_by_hand() -> None:
    # Add-one smoothing (α = 1) on m = 4 buckets, unigrams + bigrams.
    m = 4
    buckets = {"x": 1, "y": 2, "x y": 1, "y x": 3, "y y": 0}  # sha256 mod 4, checked here
    assert {g: hash_bucket(g, m) for g in buckets} == buckets
    assert ngram_buckets("X y", num_buckets=m) == [1, 2, 1]
    # Pool features h: "x y" -> [0,2,1,0], "y y" -> [1,0,2,0], "y x" -> [0,1,1,1].
    # Raw counts [1,3,4,1], Σ 9: β = ([1,3,4,1] + 1) / (9 + 4) = [2,4,5,2] / 13.
    # Subtask a, probe "x": counts [0,1,0,0], γ_a = [1,2,1,1] / 5.
    # Subtask b, probe "y y": counts [1,0,2,0], γ_b = [2,1,3,1] / 7.
    beta = [2 / 13, 4 / 13, 5 / 13, 2 / 13]
    gamma_a = [1 / 5, 2 / 5, 1 / 5, 1 / 5]
    gamma_b = [2 / 7, 1 / 7, 3 / 7, 1 / 7]
    pool_h = [[0, 2, 1, 0], [1, 0, 2, 0], [0, 1, 1, 1]]

    def log_w(gamma: list[float], h: list[int]) -> float:
        return sum(h_b * math.log(g / q) for h_b, g, q in zip(h, gamma, beta, strict=True))

    expected_a = [log_w(gamma_a, h) for h in pool_h]
    expected_b = [log_w(gamma_b, h) for h in pool_h]
    assert expected_a[0] == pytest.approx(2 * math.log(26 / 20) + math.log(13 / 25))

    scores, per_subtask = dsir_scores(
        ["x y", "y y", "y x"], ["x", "y y"], ["a", "b"], num_buckets=m, alpha=1.0
    )
    f64 = torch.float64
    torch.testing.assert_close(per_subtask["a"], torch.tensor(expected_a, dtype=f64))
    torch.testing.assert_close(per_subtask["b"], torch.tensor(expected_b, dtype=f64))
    torch.testing.assert_close(
        scores,
        torch.tensor([max(a, b) for a, b in zip(expected_a, expected_b, strict=True)], dtype=f64),
    )

    alone, _ = dsir_scores(["x y", "y y", "y x"], ["x"], [None], num_buckets=m, alpha=1.0)
    torch.testing.assert_close(alone, torch.tensor(expected_a, dtype=f64))

    # α = 1/2: β = ([1,3,4,1] + 1/2) / (9 + 2), γ_a = ([0,1,0,0] + 1/2) / (1 + 2); for "x y",
    # log w = 2 log((1.5/3) / (3.5/11)) + log((0.5/3) / (4.5/11)) = 2 log(11/7) + log(11/27).
    half, _ = dsir_scores(["x y", "y y", "y x"], ["x"], [None], num_buckets=m, alpha=0.5)
    assert float(half[0]) == pytest.approx(2 * math.log(11 / 7) + math.log(11 / 27))


def test_gumbel_top_k_is_seeded_and_order_free() -> None:
    ids = [f"r{i:02d}" for i in range(30)]
    log_w = torch.linspace(-3.0, 3.0, 30, dtype=torch.float64)
    chosen = [ids[i] for i in gumbel_top_k(log_w, ids, 10, seed=0)]
    assert len(set(chosen)) == 10
    assert [ids[i] for i in gumbel_top_k(log_w, ids, 10, seed=0)] == chosen
    assert [ids[i] for i in gumbel_top_k(log_w, ids, 10, seed=1)] != chosen

    order = list(range(30))
    random.Random(3).shuffle(order)
    shuffled_ids = [ids[i] for i in order]
    picked = gumbel_top_k(log_w[order], shuffled_ids, 10, seed=0)
    assert [shuffled_ids[i] for i in picked] == chosen

    # A weight e^50 times larger is sampled first whatever the noise.
    heavy = torch.zeros(30, dtype=torch.float64)
    heavy[7] = 50.0
    assert gumbel_top_k(heavy, ids, 1, seed=5) == [7]
    with pytest.raises(InvalidInput):
        gumbel_top_k(log_w, ids, 31, seed=0)


# --- RDS and aggregation ------------------------------------------------------------------------


def test_aggregation_mean_within_subtask_max_over_subtasks_by_hand() -> None:
    pool = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    probes = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]])
    # cos rows: z0 [1, 0, 1], z1 [0, 1, 0], z2 [r, r, r] with r = 1/√2.
    # Subtask a = probes 0, 1 (mean), b = probe 2; the score is the larger of the two.
    r = 1 / math.sqrt(2)
    scores, per_subtask = rds_scores(pool, probes, ["a", "a", "b"])
    f64 = torch.float64
    torch.testing.assert_close(per_subtask["a"], torch.tensor([0.5, 0.5, r], dtype=f64))
    torch.testing.assert_close(per_subtask["b"], torch.tensor([1.0, 0.0, r], dtype=f64))
    torch.testing.assert_close(scores, torch.tensor([1.0, 0.5, r], dtype=f64))


def test_rds_equals_explicit_cosine_and_aggregation() -> None:
    gen = torch.Generator().manual_seed(0)
    pool = torch.randn(7, 5, generator=gen)
    pool[3] = 0.0  # no direction: similarity 0
    probes = torch.randn(4, 5, generator=gen, dtype=torch.float64)
    subtasks = ["b", None, "b", "c"]
    scores, per_subtask = rds_scores(pool, probes, subtasks)

    names = {"b": [0, 2], DEFAULT_SUBTASK: [1], "c": [3]}
    expected_scores = []
    for i in range(7):
        p = pool[i].double()
        cos = [
            0.0 if float(p.norm()) == 0 else float(p @ probes[v] / (p.norm() * probes[v].norm()))
            for v in range(4)
        ]
        means = {name: sum(cos[v] for v in vs) / len(vs) for name, vs in names.items()}
        for name, value in means.items():
            assert float(per_subtask[name][i]) == pytest.approx(value, abs=1e-12)
        expected_scores.append(max(means.values()))
    assert scores.dtype == torch.float64
    torch.testing.assert_close(scores, torch.tensor(expected_scores, dtype=torch.float64))


def test_rds_rejects_bad_shapes() -> None:
    with pytest.raises(InvalidInput):
        rds_scores(torch.zeros(3, 4), torch.zeros(2, 5), ["a", "a"])
    with pytest.raises(InvalidInput):
        rds_scores(torch.zeros(3, 4), torch.zeros(2, 4), ["a"])
    with pytest.raises(InvalidInput):
        rds_scores(torch.zeros(3, 4), torch.full((2, 4), float("nan")), ["a", "a"])


# --- random -------------------------------------------------------------------------------------


def test_random_is_seeded_and_independent_of_pool_order() -> None:
    ids = [f"z-{i}" for i in range(50)]
    first, per_subtask = random_scores(ids, seed=0)
    again, _ = random_scores(ids, seed=0)
    other, _ = random_scores(ids, seed=1)
    assert first.dtype == torch.float64
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert not torch.equal(first, other)
    assert bool(((first > 0) & (first < 1)).all())
    assert list(per_subtask) == [DEFAULT_SUBTASK]

    reversed_scores, _ = random_scores(ids[::-1][:20], seed=0, probe_subtasks=["a", "b"])
    by_id = dict(zip(ids, first.tolist(), strict=True))
    assert reversed_scores.tolist() == [by_id[i] for i in ids[::-1][:20]]
    with pytest.raises(InvalidInput):
        random_scores(["a", "a"], seed=0)


# --- texts and checks ---------------------------------------------------------------------------


def test_example_text_formats() -> None:
    single = Example(
        "r1",
        ({"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}),
    )
    assert example_text(single) == "Question:Hi?\n\nAnswer:Hello."
    multi = Example(
        "r2",
        (
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi?"},
            {"role": "assistant", "content": "Hello."},
        ),
    )
    assert example_text(multi) == "<|system|>\nBe brief.\n<|user|>\nHi?\n<|assistant|>\nHello.\n"


@pytest.mark.parametrize("method", [bm25_scores, dsir_scores])
def test_text_methods_reject_bad_inputs(method) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidInput):
        method(["a b"], [], [])
    with pytest.raises(InvalidInput):
        method(["a b"], ["a"], ["x", "y"])
    with pytest.raises(InvalidInput):
        method([], ["a"], ["x"])


# --- planted pool -------------------------------------------------------------------------------


def _texts(records: list[dict[str, object]]) -> list[str]:
    return [
        example_text(Example(str(r["id"]), tuple(r["messages"])))  # type: ignore[arg-type]
        for r in records
    ]


def _bag_of_words_tfidf(texts: list[str]) -> torch.Tensor:
    """TF-IDF rows [n, |V|] (tf · (ln(n / df) + 1)): a stand-in for sentence embeddings."""
    docs = [Counter(tokenize(t)) for t in texts]
    vocab = sorted(set().union(*docs))
    index = {w: j for j, w in enumerate(vocab)}
    df = Counter(w for doc in docs for w in doc)
    out = torch.zeros(len(texts), len(vocab), dtype=torch.float64)
    for i, doc in enumerate(docs):
        for w, tf in doc.items():
            out[i, index[w]] = tf * (math.log(len(texts) / df[w]) + 1)
    return out


WORD_TASKS = frozenset({"uppercase", "reverse_words"})
"""Same word list, and lowercased their answers are the same words: apart from the instruction
word, lexical features cannot tell them apart, so BM25 and bag-of-words RDS only find the pair."""


@pytest.mark.parametrize("task", TASKS)
def test_planted_pool_top_20_is_the_probe_task(task: str) -> None:
    pool = planted_tasks(40, seed=0)
    probes = [r for r in planted_tasks(20, seed=1, id_prefix="v") if r["subtask"] == task]
    pool_texts, probe_texts = _texts(pool), _texts(probes)
    subtasks = [task] * len(probes)

    embeddings = _bag_of_words_tfidf(pool_texts + probe_texts)
    results = {
        "bm25": bm25_scores(pool_texts, probe_texts, subtasks),
        "dsir": dsir_scores(pool_texts, probe_texts, subtasks),
        "rds": rds_scores(embeddings[: len(pool)], embeddings[len(pool) :], subtasks),
    }
    for name, (scores, per_subtask) in results.items():
        torch.testing.assert_close(per_subtask[task], scores)
        top = torch.argsort(scores, descending=True)[:20].tolist()
        wanted = WORD_TASKS if task in WORD_TASKS and name != "dsir" else {task}
        hits = sum(pool[i]["subtask"] in wanted for i in top)
        assert hits >= 18, f"{name}: {hits}/20 of the top 20 are in {sorted(wanted)}"


def test_planted_pool_add_one_smoothing_swamps_a_small_target() -> None:
    """Why ``DSIR_SMOOTHING`` is not 1: with m = 10,000 buckets, add-one drowns 8 probes."""
    pool = planted_tasks(40, seed=0)
    probes = [r for r in planted_tasks(8, seed=1, id_prefix="v") if r["subtask"] == "capital"]
    subtasks = ["capital"] * len(probes)
    hits = {}
    for alpha in (1.0, DSIR_SMOOTHING):
        scores, _ = dsir_scores(_texts(pool), _texts(probes), subtasks, alpha=alpha)
        top = torch.argsort(scores, descending=True)[:20].tolist()
        hits[alpha] = sum(pool[i]["subtask"] == "capital" for i in top)
    assert hits[1.0] <= 5
    assert hits[DSIR_SMOOTHING] >= 18
