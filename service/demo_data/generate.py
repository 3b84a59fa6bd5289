"""Write the demo's pool and probes from the engine's planted-task generator.

The pool holds ``PER_TASK`` records of each of five clearly different tasks in prompt/response
format, the task named in ``metadata``; the probes are fresh records of ``PROBE_TASK`` only.
"""

from __future__ import annotations

import json
from pathlib import Path

from workers.engine.synthetic import planted_tasks

PER_TASK = 80
PROBE_TASK = "capital"
N_PROBES = 8
HERE = Path(__file__).parent


def _as_prompt_response(record: dict, **extra: object) -> dict:
    messages = record["messages"]
    return {
        "id": record["id"],
        "prompt": messages[0]["content"],
        "response": messages[1]["content"],
        **extra,
        "metadata": {"task": record["subtask"], "source": "sift-demo-synthetic"},
    }


def main() -> None:
    pool = [_as_prompt_response(r) for r in planted_tasks(PER_TASK, seed=1, id_prefix="pool")]
    in_pool = {(r["prompt"], r["response"]) for r in pool}
    # probes are held out: none repeats a pool record verbatim
    fresh = [
        r
        for r in planted_tasks(4 * N_PROBES, seed=2, id_prefix="probe")
        if r["subtask"] == PROBE_TASK
        and (r["messages"][0]["content"], r["messages"][1]["content"]) not in in_pool
    ]
    probes = [_as_prompt_response(r, subtask=PROBE_TASK) for r in fresh[:N_PROBES]]
    for name, rows in (("pool.jsonl", pool), ("probes.jsonl", probes)):
        (HERE / name).write_text("".join(json.dumps(row) + "\n" for row in rows))
        print(f"wrote {len(rows)} records to {HERE / name}")


if __name__ == "__main__":
    main()
