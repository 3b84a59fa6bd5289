"""Importance baselines influence must beat: Random, BM25, DSIR, RDS (seed 002 §4.3, app. D).

Each scores pool records z_i against probes z_v, s(z_i, z_v) [N, M], then aggregates like LESS
(``influence.aggregate_subtasks``): the mean over each subtask's probes, the max over subtasks.
Shapes: N pool records, M probes, m hash buckets, h embedding size. Scores come back as float64 [N]
in pool order, with the per-subtask values [N] they max over.

    random: u(seed, id_i) ~ U(0, 1), a hash of (seed, record id): blind to probes and pool order.
    bm25  : s = Σ_{t ∈ q_v} idf(t) tf(t, d_i) / (tf(t, d_i) + k1 (1 - b + b |d_i| / avgdl)),
            idf(t) = ln(1 + (N - df(t) + 0.5) / (df(t) + 0.5)), the Lucene variant of ``bm25s``
            (no (k1 + 1) numerator factor: it scales every score alike); q_v = probe text as the
            query, d_i = pool text as the document; a query term repeated in q_v counts again.
    dsir  : log w(z_i) = Σ_b h(z_i)_b (log γ_b - log β_b)  (Xie et al. 2023, §3; seed 003 eq. 47),
            h the hashed unigram + bigram counts, γ / β bag-of-n-gram models of the probes (target)
            / the pool (raw), additively smoothed. One γ per probe subtask, the max over them.
    rds   : s = cos(e(z_i), e(z_v)) for embeddings computed elsewhere (SentenceBERT in app. D).

Texts for BM25 and DSIR are "Question:{prompt}\\n\\nAnswer:{response}" (``example_text``, app. D),
lowercased and split into words and punctuation runs by ``TOKEN_PATTERN`` (no stemming, no
stopwords): the same tokens for both, reproducible without downloads.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence
from functools import lru_cache

import bm25s
import torch
from torch import Tensor

from workers.engine.data import DEFAULT_PROMPT_FORMAT, Example
from workers.engine.errors import InvalidInput
from workers.engine.influence import DEFAULT_SUBTASK, aggregate_subtasks, cosine_matrix, rank

TOKEN_PATTERN = re.compile(r"\w+|[^\w\s]+")
"""Word characters or punctuation runs, the pattern of NLTK's ``WordPunctTokenizer`` (one of the
two tokenizers of the DSIR code); applied to lowercased text."""

DSIR_NUM_BUCKETS = 10_000
"""Hash buckets m of DSIR's n-gram features (the paper's and its code's default)."""

DSIR_SMOOTHING = 0.01
"""Pseudo-count α per bucket of the bag-of-n-grams models: a total α m = 100 at m = 10,000, below
the n-gram count of a handful of probes. Add-one (α = 1, mass 10,000) swamps a probe set of tens
of examples: γ turns nearly uniform and log w ranks records by their rarity under the pool instead
(on the planted pool: 0 of the top 20 from the probes' task for "capital", 8 probes)."""


def example_text(example: Example) -> str:
    """The text BM25 and DSIR see: "Question:…\\n\\nAnswer:…" for one user turn, as in app. D;
    longer conversations in the TULU layout (app. D uses it for multi-turn RLHF)."""
    *prompt, response = example.messages
    if len(prompt) == 1 and prompt[0]["role"] == "user":
        return f"Question:{prompt[0]['content']}\n\nAnswer:{response['content']}"
    return "".join(DEFAULT_PROMPT_FORMAT.format(**message) for message in example.messages)


def tokenize(text: str) -> list[str]:
    """Lowercased words and punctuation runs (``TOKEN_PATTERN``)."""
    return TOKEN_PATTERN.findall(text.lower())


# --- random -------------------------------------------------------------------------------------


def random_scores(
    record_ids: Sequence[str], *, seed: int, probe_subtasks: Sequence[str | None] = ()
) -> tuple[Tensor, dict[str, Tensor]]:
    """u(seed, id_i) ~ U(0, 1) [N]: a hash, so the same record gets the same score whatever the
    pool order or size. Random ignores the probes; each probe subtask (or ``DEFAULT_SUBTASK``
    without probes) maps to the same draw so tables line up with the other methods."""
    _require_unique(record_ids)
    scores = torch.tensor(
        [_uniform("random", seed, record_id) for record_id in record_ids], dtype=torch.float64
    )
    names = sorted({_subtask(s) for s in probe_subtasks}) or [DEFAULT_SUBTASK]
    return scores, {name: scores.clone() for name in names}


def _uniform(purpose: str, seed: int, record_id: str) -> float:
    """A uniform in the open interval (0, 1) from the top 53 bits of blake2b(purpose, seed, id)."""
    digest = hashlib.blake2b(f"{purpose}\0{seed}\0{record_id}".encode(), digest_size=8).digest()
    return ((int.from_bytes(digest, "big") >> 11) + 0.5) / 2**53


# --- BM25 ---------------------------------------------------------------------------------------


def bm25_scores(
    pool_texts: Sequence[str],
    probe_texts: Sequence[str],
    probe_subtasks: Sequence[str | None],
    *,
    k1: float = 1.5,
    b: float = 0.75,
) -> tuple[Tensor, dict[str, Tensor]]:
    """BM25(q = probe text, d = pool text) [N, M] aggregated over subtasks (module docstring).

    The index is the pool, so idf and avgdl are pool statistics; k1 and b default to ``bm25s``'s
    (rank_bm25, used in app. D, has the same). A probe with no token in the pool scores 0.
    """
    subtasks = _probe_subtasks(len(probe_texts), probe_subtasks)
    if not pool_texts:
        raise InvalidInput("need at least one pool record to score")
    if not (math.isfinite(k1) and k1 >= 0) or not (0 <= b <= 1):
        raise InvalidInput(f"BM25 needs k1 >= 0 and 0 <= b <= 1, got k1={k1}, b={b}")
    corpus = [tokenize(text) for text in pool_texts]
    if not any(corpus):
        raise InvalidInput("no pool record has a token; BM25 has no vocabulary")
    retriever = bm25s.BM25(k1=k1, b=b, method="lucene", dtype="float64")
    retriever.index(corpus, show_progress=False)
    columns = [
        torch.from_numpy(retriever.get_scores_from_ids(retriever.get_tokens_ids(tokenize(text))))
        for text in probe_texts
    ]
    return aggregate_subtasks(torch.stack(columns, dim=1).to(torch.float64), subtasks)


# --- DSIR ---------------------------------------------------------------------------------------


@lru_cache(maxsize=1 << 20)
def hash_bucket(ngram: str, num_buckets: int) -> int:
    """sha256(n-gram) mod m, as in the DSIR code: stable across processes, unlike ``hash``."""
    return int.from_bytes(hashlib.sha256(ngram.encode("utf-8")).digest(), "big") % num_buckets


def ngram_buckets(text: str, *, num_buckets: int = DSIR_NUM_BUCKETS, n: int = 2) -> list[int]:
    """Buckets of the 1..n-grams of ``tokenize(text)`` (an n-gram joins tokens with a space), one
    entry per occurrence: their counts are DSIR's feature vector h(x) [m]."""
    if num_buckets < 1 or n < 1:
        raise InvalidInput(f"need num_buckets >= 1 and n >= 1, got {num_buckets}, {n}")
    tokens = tokenize(text)
    return [
        hash_bucket(" ".join(tokens[start : start + order]), num_buckets)
        for order in range(1, n + 1)
        for start in range(len(tokens) - order + 1)
    ]


def dsir_scores(
    pool_texts: Sequence[str],
    probe_texts: Sequence[str],
    probe_subtasks: Sequence[str | None],
    *,
    num_buckets: int = DSIR_NUM_BUCKETS,
    n: int = 2,
    alpha: float = DSIR_SMOOTHING,
) -> tuple[Tensor, dict[str, Tensor]]:
    """DSIR log importance weights log w(z_i) [N] (module docstring), max over probe subtasks.

    β is fit on the whole pool; γ^(j) on subtask j's probes only, so a record resembling any one
    subtask ranks high, as LESS's max does (DSIR itself has one target). Smoothing is additive,
    γ_b = (c_b + α) / (Σ c + α m), the same for β (α = 1 is add-one; see ``DSIR_SMOOTHING`` for
    the default); the DSIR code adds 1e-8 to unsmoothed probabilities instead, which its large
    targets allow. Weights are not length-normalised (as in DSIR): longer records have larger
    |log w|.
    """
    subtasks = _probe_subtasks(len(probe_texts), probe_subtasks)
    if not pool_texts:
        raise InvalidInput("need at least one pool record to score")
    if not (math.isfinite(alpha) and alpha > 0):
        raise InvalidInput(f"the smoothing pseudo-count alpha must be > 0, got {alpha}")
    pool_buckets = [ngram_buckets(text, num_buckets=num_buckets, n=n) for text in pool_texts]
    log_beta = _log_bag_of_ngrams(pool_buckets, num_buckets, alpha)

    names = sorted(set(subtasks))
    log_gammas = torch.stack(
        [
            _log_bag_of_ngrams(
                [
                    ngram_buckets(text, num_buckets=num_buckets, n=n)
                    for text, s in zip(probe_texts, subtasks, strict=True)
                    if s == name
                ],
                num_buckets,
                alpha,
            )
            for name in names
        ]
    )  # [S, m]
    log_ratio = log_gammas - log_beta  # log(γ^(j)_b / β_b), [S, m]

    flat = torch.tensor([bk for buckets in pool_buckets for bk in buckets], dtype=torch.long)
    owner = torch.repeat_interleave(
        torch.arange(len(pool_buckets)),
        torch.tensor([len(buckets) for buckets in pool_buckets], dtype=torch.long),
    )
    log_w = torch.zeros(len(names), len(pool_buckets), dtype=torch.float64)
    log_w.index_add_(1, owner, log_ratio[:, flat])  # Σ_b h(z_i)_b log(γ_b / β_b), [S, N]
    # One column per subtask: the mean within each is the column itself, the max is over them.
    return aggregate_subtasks(log_w.T, names)


def _log_bag_of_ngrams(buckets: Sequence[Sequence[int]], num_buckets: int, alpha: float) -> Tensor:
    """log of the smoothed unigram model over buckets, log((c_b + α) / (Σ c + α m)) [m]."""
    counts = torch.zeros(num_buckets, dtype=torch.float64)
    flat = [bk for record in buckets for bk in record]
    if flat:
        counts.index_add_(0, torch.tensor(flat), torch.ones(len(flat), dtype=torch.float64))
    return torch.log(counts + alpha) - math.log(len(flat) + alpha * num_buckets)


def gumbel_top_k(log_weights: Tensor, record_ids: Sequence[str], k: int, *, seed: int) -> list[int]:
    """Indices of k records sampled without replacement with probability ∝ w_i, as DSIR resamples:
    the top k of log w_i + G_i with G_i = -log(-log u(seed, id_i)) Gumbel noise.

    The noise is a hash of (seed, record id) (not of the position), so the sample depends on the
    seed and the records, not on the pool order; ties break by record id. Best first.
    """
    if log_weights.ndim != 1 or log_weights.shape[0] != len(record_ids):
        raise InvalidInput(f"log weights {tuple(log_weights.shape)} for {len(record_ids)} records")
    if not 0 <= k <= len(record_ids):
        raise InvalidInput(f"k must be in [0, {len(record_ids)}], got {k}")
    if bool(torch.isnan(log_weights).any()):
        raise InvalidInput("log weights contain NaN")
    _require_unique(record_ids)
    gumbel = torch.tensor(
        [-math.log(-math.log(_uniform("gumbel", seed, rid))) for rid in record_ids],
        dtype=torch.float64,
    )
    return rank(record_ids, log_weights.to(torch.float64).cpu() + gumbel)[:k]


# --- RDS ----------------------------------------------------------------------------------------


def rds_scores(
    pool_embeddings: Tensor, probe_embeddings: Tensor, probe_subtasks: Sequence[str | None]
) -> tuple[Tensor, dict[str, Tensor]]:
    """cos(e(z_i), e(z_v)) [N, M] of pool [N, h] and probe [M, h] embeddings, aggregated over
    subtasks in float64; a zero embedding has similarity 0 (``influence.cosine_matrix``)."""
    if pool_embeddings.ndim != 2 or probe_embeddings.ndim != 2 or pool_embeddings.shape[0] == 0:
        raise InvalidInput(
            f"expected embeddings [N >= 1, h] and [M, h], got {tuple(pool_embeddings.shape)}, "
            f"{tuple(probe_embeddings.shape)}"
        )
    subtasks = _probe_subtasks(probe_embeddings.shape[0], probe_subtasks)
    for name, x in (("pool", pool_embeddings), ("probe", probe_embeddings)):
        if not x.is_floating_point() or not bool(torch.isfinite(x).all()):
            raise InvalidInput(f"{name} embeddings must be finite floating point")
    similarity = cosine_matrix(
        pool_embeddings.to(torch.float64), probe_embeddings.to(torch.float64)
    )
    return aggregate_subtasks(similarity, subtasks)


# --- checks -------------------------------------------------------------------------------------


def _subtask(name: str | None) -> str:
    return DEFAULT_SUBTASK if name is None else name


def _probe_subtasks(n_probes: int, probe_subtasks: Sequence[str | None]) -> list[str]:
    if n_probes == 0:
        raise InvalidInput("need at least one probe to score against")
    if n_probes != len(probe_subtasks):
        raise InvalidInput(f"{n_probes} probes but {len(probe_subtasks)} probe subtasks")
    return [_subtask(s) for s in probe_subtasks]


def _require_unique(record_ids: Sequence[str]) -> None:
    if len(set(record_ids)) != len(record_ids):
        raise InvalidInput("record ids must be unique")
