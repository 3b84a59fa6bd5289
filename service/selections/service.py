"""Selection rules: a subset of a succeeded valuation's pool, by rank or by score.

Ranks are 0-based and total (the worker breaks score ties deterministically), so every rule is
a prefix or filter of the rank order and the result is reproducible. ``order`` "asc" takes
the other end (the worst ranks, the scores at or below a threshold) in reverse rank order:
the lowest score first, ties in reverse record-id order, the exact reverse of "desc".
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from fractions import Fraction

from sqlalchemy.orm import Session

from service.db.models import Selection
from service.errors import InvalidInput, NotFound
from service.selections import repository
from service.selections.schemas import SelectionCreate
from service.valuations import service as valuations


def validate_rule(rule: str, value: float) -> None:
    if rule == "top_k" and (value != int(value) or value < 1):
        raise InvalidInput(f"top_k needs an integer k >= 1, got {value}", field="body.value")
    if rule == "top_fraction" and not 0 < value <= 1:
        raise InvalidInput(
            f"top_fraction needs a fraction in (0, 1], got {value}", field="body.value"
        )


def rank_cutoff(rule: str, value: float, n_scored: int) -> int:
    """How many of the best ranks ``top_k`` / ``top_fraction`` take."""
    if rule == "top_k":  # a k past the pool takes it all (and never reaches SQL as > int64)
        return min(int(value), n_scored)
    if rule == "top_fraction":
        # Exact decimal arithmetic: ceil(0.3 * 10) must be 3, not 4.
        return math.ceil(Fraction(repr(value)) * n_scored)
    raise ValueError(f"rule {rule!r} is not rank based")


def create_selection(session: Session, valuation_id: str, body: SelectionCreate) -> Selection:
    validate_rule(body.rule, body.value)
    valuation = valuations.get_valuation(session, valuation_id)
    valuations.require_succeeded(valuation)
    ascending = body.order == "asc"
    if body.rule == "threshold":
        record_ids = repository.record_ids_past(
            session, valuation_id, body.value, ascending=ascending
        )
    else:
        n_scored = repository.count_scores(session, valuation_id)
        cutoff = rank_cutoff(body.rule, body.value, n_scored)
        record_ids = repository.record_ids_by_rank(
            session, valuation_id, cutoff, ascending=ascending
        )
    selection = Selection(
        valuation_id=valuation_id,
        rule=body.rule,
        value=body.value,
        order=body.order,
        n_selected=len(record_ids),
        record_ids=record_ids,
    )
    session.add(selection)
    session.flush()
    return selection


def get_selection(session: Session, selection_id: str) -> Selection:
    selection = repository.get(session, selection_id)
    if selection is None:
        raise NotFound(f"selection {selection_id} not found", field="selection_id")
    return selection


def export_jsonl(session: Session, dataset_id: str, record_ids: list[str]) -> Iterator[bytes]:
    """Each record's ``raw`` JSON, one per line, in the given (rank) order.

    Runs while the response streams, possibly after the request's dependencies have exited:
    it closes ``session`` itself when done.
    """
    try:
        for raw in repository.iter_raw_records(session, dataset_id, record_ids):
            yield (json.dumps(raw, ensure_ascii=False) + "\n").encode()
    finally:
        session.close()
