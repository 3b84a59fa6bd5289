"""A planted-task pool: five clearly different instruction tasks, built in code from a seed.

Used to check end to end that influence finds the task of the probes (tests) and as the demo
dataset. No randomness outside the ``random.Random(seed)`` passed around: same arguments,
same records.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from workers.engine.errors import InvalidInput

TASKS: tuple[str, ...] = ("arithmetic", "uppercase", "reverse_words", "capital", "repeat_letter")

_WORDS = (
    "apple",
    "river",
    "stone",
    "cloud",
    "tiger",
    "lemon",
    "piano",
    "ocean",
    "maple",
    "candle",
    "forest",
    "silver",
    "garden",
    "window",
    "planet",
    "rocket",
    "bridge",
    "pencil",
    "violet",
    "marble",
)
CAPITALS = (
    ("France", "Paris"),
    ("Japan", "Tokyo"),
    ("Italy", "Rome"),
    ("Spain", "Madrid"),
    ("Germany", "Berlin"),
    ("Egypt", "Cairo"),
    ("Canada", "Ottawa"),
    ("Kenya", "Nairobi"),
    ("Peru", "Lima"),
    ("Norway", "Oslo"),
    ("Chile", "Santiago"),
    ("Greece", "Athens"),
    ("Poland", "Warsaw"),
    ("Cuba", "Havana"),
    ("Ireland", "Dublin"),
    ("Austria", "Vienna"),
    ("Portugal", "Lisbon"),
    ("Sweden", "Stockholm"),
    ("Finland", "Helsinki"),
    ("Hungary", "Budapest"),
    ("Denmark", "Copenhagen"),
    ("Belgium", "Brussels"),
    ("Romania", "Bucharest"),
    ("Serbia", "Belgrade"),
    ("Turkey", "Ankara"),
    ("Iran", "Tehran"),
    ("Iraq", "Baghdad"),
    ("Thailand", "Bangkok"),
    ("Vietnam", "Hanoi"),
    ("Mexico", "Mexico City"),
    ("Argentina", "Buenos Aires"),
    ("Colombia", "Bogota"),
    ("Ghana", "Accra"),
    ("Nigeria", "Abuja"),
    ("Ethiopia", "Addis Ababa"),
    ("Morocco", "Rabat"),
    ("Nepal", "Kathmandu"),
    ("Mongolia", "Ulaanbaatar"),
    ("Iceland", "Reykjavik"),
    ("Estonia", "Tallinn"),
    ("Latvia", "Riga"),
    ("Croatia", "Zagreb"),
    ("Bolivia", "Sucre"),
    ("Uganda", "Kampala"),
    ("Senegal", "Dakar"),
    ("Jordan", "Amman"),
    ("Qatar", "Doha"),
    ("Malaysia", "Kuala Lumpur"),
)
_CAPITAL_QUESTIONS = (
    "What is the capital of {country}?",
    "Which city is the capital of {country}?",
    "Name the capital city of {country}.",
)


def _arithmetic(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(0, 49), rng.randint(0, 49)
    return f"What is {a}+{b}?", str(a + b)


def _uppercase(rng: random.Random) -> tuple[str, str]:
    text = " ".join(rng.sample(_WORDS, rng.randint(1, 3)))
    return f"Uppercase: {text}", text.upper()


def _reverse_words(rng: random.Random) -> tuple[str, str]:
    words = rng.sample(_WORDS, rng.randint(2, 4))
    return f"Reverse: {' '.join(words)}", " ".join(reversed(words))


def _capital(rng: random.Random) -> tuple[str, str]:
    country, capital = rng.choice(CAPITALS)
    question = rng.choice(_CAPITAL_QUESTIONS).format(country=country)
    return question, f"The capital of {country} is {capital}."


def _repeat_letter(rng: random.Random) -> tuple[str, str]:
    letter, n = rng.choice("abcdefghijklmnopqrstuvwxyz"), rng.randint(3, 12)
    return f"Repeat the letter {letter} {n} times.", "-".join(letter * n)


_GENERATORS: dict[str, Callable[[random.Random], tuple[str, str]]] = {
    "arithmetic": _arithmetic,
    "uppercase": _uppercase,
    "reverse_words": _reverse_words,
    "capital": _capital,
    "repeat_letter": _repeat_letter,
}


def planted_tasks(n_per_task: int, seed: int, *, id_prefix: str = "z") -> list[dict[str, object]]:
    """``n_per_task`` records of each task in ``TASKS``, interleaved in a seeded order.

    Each record is ``{"id", "subtask", "messages"}`` with ``subtask`` the task name and
    ``messages`` a user prompt and the assistant answer; ids are ``{id_prefix}-{task}-{i:03d}``.
    Records are distinct within a call (a dataset upload would fold exact duplicates together).
    """
    if n_per_task < 1:
        raise InvalidInput(f"n_per_task must be >= 1, got {n_per_task}")
    rng = random.Random(seed)
    records: list[dict[str, object]] = []
    for task in TASKS:
        seen: set[tuple[str, str]] = set()
        for i in range(n_per_task):
            for _ in range(1000):
                prompt, answer = _GENERATORS[task](rng)
                if (prompt, answer) not in seen:
                    break
            else:
                raise InvalidInput(f"task {task!r} has fewer than {n_per_task} distinct records")
            seen.add((prompt, answer))
            records.append(
                {
                    "id": f"{id_prefix}-{task}-{i:03d}",
                    "subtask": task,
                    "messages": [
                        {"role": "user", "content": prompt},
                        {"role": "assistant", "content": answer},
                    ],
                }
            )
    rng.shuffle(records)
    return records
