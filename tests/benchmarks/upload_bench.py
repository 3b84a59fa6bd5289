"""Upload memory and throughput: a generated JSONL dataset and a large adapter, sent to a real
API process, while its resident memory is watched.

Run (the exact commands and the results are in docs/benchmarks.md):

    python -m tests.benchmarks.upload_bench --jsonl-mb 1024 --adapter-mb 1024
    python -m tests.benchmarks.upload_bench --jsonl-mb 300 --adapter-mb 0 --out docs/benchmarks

It migrates a fresh SQLite database in a scratch folder, starts ``uvicorn service.main:app``
on loopback with the upload limits raised above the sizes, warms it up with a small upload
(so imports and first-use caches are not counted), then for each upload resets the process's
peak resident set (``/proc/<pid>/clear_refs``) and reports:

- ``rss_peak_growth_mb``: peak RSS during the upload (``VmHWM``, cross-checked by sampling
  ``VmRSS`` every 50 ms) minus the RSS before it: the API's extra memory;
- ``mb_per_s``: body megabytes (10^6 bytes) over the wall time of the request (client and
  server share this machine's cores).

Records are ~1 KB instruction-tuning pairs (a prompt, a response, a subtask and a little
metadata), 1% of them exact duplicates. The adapter is a LoRA safetensors file (F32, r=64,
4096-wide q/k/v/o modules) of the requested size. The client streams both from disk.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy.orm import Session

from service.auth import keys
from service.db.migrate import upgrade_head
from service.db.session import make_engine
from tests.integration.servers import free_port

REPO = Path(__file__).resolve().parents[2]
MB = 1_000_000
SUBTASKS = ("math", "code", "chat", "summarize", "translate", "qa", "reasoning", "writing")
WORDS = (
    "the model should answer each question with care and show the steps it took to reach "
    "a result that a reader can check against the source material given in the prompt"
).split()


def _text(i: int, n_words: int, salt: str) -> str:
    words = [WORDS[(i * 7 + k * 13 + len(salt)) % len(WORDS)] for k in range(n_words)]
    return f"{salt} {i}: " + " ".join(words)


def write_jsonl(path: Path, target_bytes: int) -> int:
    """~1 KB records until ``target_bytes``; every 100th repeats an earlier one exactly."""
    n = 0
    size = 0
    with path.open("w", encoding="utf-8") as f:
        while size < target_bytes:
            i = n - 50 if n % 100 == 99 else n
            record = {
                "id": f"r{i}",
                "prompt": _text(i, 45, "Question"),
                "response": _text(i, 95, "Answer"),
                "subtask": SUBTASKS[i % len(SUBTASKS)],
                "metadata": {"source": "bench", "index": i, "tags": ["synthetic", "upload"]},
            }
            line = json.dumps(record) + "\n"
            f.write(line)
            size += len(line.encode())
            n += 1
    return n


def write_adapter(path: Path, target_bytes: int, r: int = 64, width: int = 4096) -> int:
    """A PEFT-named LoRA adapter (F32) of about ``target_bytes``; the tensor bytes repeat one
    random block (their values do not matter to the upload)."""
    tensor_bytes = r * width * 4
    per_module = 2 * tensor_bytes
    n_modules = max(1, target_bytes // per_module)
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    projs = ("q_proj", "k_proj", "v_proj", "o_proj")
    for m in range(n_modules):
        module = f"base_model.model.model.layers.{m // 4}.self_attn.{projs[m % 4]}"
        for kind, shape in (("lora_A", [r, width]), ("lora_B", [width, r])):
            header[f"{module}.{kind}.weight"] = {
                "dtype": "F32",
                "shape": shape,
                "data_offsets": [offset, offset + tensor_bytes],
            }
            offset += tensor_bytes
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    block = os.urandom(tensor_bytes)
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(encoded)) + encoded)
        for _ in range(2 * n_modules):
            f.write(block)
    return n_modules


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/{pid}/status")


class PeakWatcher:
    """Peak RSS of ``pid`` over a block: VmHWM after a reset, and VmRSS sampled meanwhile."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def __enter__(self) -> PeakWatcher:
        self.baseline_kb = _status_kb(self.pid, "VmRSS")
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")  # reset VmHWM to VmRSS
            self.hwm_reset = True
        except OSError:
            self.hwm_reset = False
        self.sampled_kb = self.baseline_kb
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.sampled_kb = max(self.sampled_kb, _status_kb(self.pid, "VmRSS"))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_kb = self.sampled_kb
        if self.hwm_reset:
            self.peak_kb = max(self.peak_kb, _status_kb(self.pid, "VmHWM"))

    def report(self) -> dict[str, Any]:
        return {
            "rss_before_mb": round(self.baseline_kb / 1024, 1),
            "rss_peak_mb": round(self.peak_kb / 1024, 1),
            "rss_peak_growth_mb": round((self.peak_kb - self.baseline_kb) / 1024, 1),
            "peak_from": "VmHWM+sampled VmRSS" if self.hwm_reset else "sampled VmRSS",
        }


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="sift-upload-bench-", dir=args.workdir))
    server: subprocess.Popen[bytes] | None = None
    try:
        database_url = f"sqlite:///{work / 'sift.db'}"
        upgrade_head(database_url)
        engine = make_engine(database_url)
        with Session(engine) as session:
            tenant = keys.get_or_create_tenant(session, "bench")
            _, api_key = keys.create_key(session, tenant.id, name="bench", role="admin")
            session.commit()
        engine.dispose()

        jsonl, adapter = work / "pool.jsonl", work / "adapter.safetensors"
        n_records = write_jsonl(jsonl, args.jsonl_mb * MB) if args.jsonl_mb else 0
        n_modules = write_adapter(adapter, args.adapter_mb * MB) if args.adapter_mb else 0
        limit = str(max(args.jsonl_mb, args.adapter_mb, 1) * MB * 2)
        port = free_port()
        env = {
            **os.environ,
            "SIFT_ENV": "development",
            "SIFT_DATABASE_URL": database_url,
            "SIFT_BLOB_URL": f"file://{work / 'blobs'}",
            "SIFT_BROKER_URL": "memory://",
            "SIFT_EMBEDDED_WORKER": "false",
            "SIFT_MAX_UPLOAD_BYTES": limit,
            "SIFT_MAX_CHECKPOINT_UPLOAD_BYTES": limit,
            "SIFT_SECRET_KEY_FILE": str(work / "secret.key"),
            "SIFT_API_KEY_FILE": str(work / "api-key"),
        }
        cmd = [sys.executable, "-m", "uvicorn", "service.main:app", "--host", "127.0.0.1"]
        cmd += ["--port", str(port), "--log-level", "warning"]
        server = subprocess.Popen(cmd, cwd=args.app_dir or REPO, env=env)
        base = f"http://127.0.0.1:{port}"
        api = httpx.Client(
            base_url=base, headers={"authorization": f"Bearer {api_key}"}, timeout=None
        )
        for _ in range(300):
            try:
                if httpx.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            raise RuntimeError("the API did not start")

        warm = b'{"prompt": "p", "response": "r"}\n'
        response = api.post("/v1/datasets", data={"name": "warm"}, files={"file": ("w", warm)})
        response.raise_for_status()
        model = api.post("/v1/models", json={"name": "tiny", "source": "builtin:tiny-llama"})
        model.raise_for_status()
        results: dict[str, Any] = {"machine": f"{os.cpu_count()} cores"}

        if args.jsonl_mb:
            size = jsonl.stat().st_size
            with jsonl.open("rb") as f, PeakWatcher(server.pid) as watch:
                start = time.perf_counter()
                response = api.post(
                    "/v1/datasets",
                    data={"name": "bench"},
                    files={"file": ("pool.jsonl", f, "application/x-ndjson")},
                )
                seconds = time.perf_counter() - start
            if response.status_code != 201:
                raise RuntimeError(f"dataset upload failed: {response.text[:500]}")
            body = response.json()
            results["jsonl"] = {
                "bytes": size,
                "lines": n_records,
                "n_records": body["n_records"],
                "n_duplicates": body["n_duplicates"],
                "upload_s": round(seconds, 1),
                "mb_per_s": round(size / MB / seconds, 1),
                "records_per_s": round(n_records / seconds),
                **watch.report(),
            }
            print(json.dumps({"jsonl": results["jsonl"]}), flush=True)

        if args.adapter_mb:
            size = adapter.stat().st_size
            form = {
                "model_id": model.json()["id"],
                "lora_alpha": "128",
                "steps": ["1"],
                "learning_rates": ["1e-4"],
            }
            with adapter.open("rb") as f, PeakWatcher(server.pid) as watch:
                start = time.perf_counter()
                response = api.post(
                    "/v1/warmup-runs",
                    data=form,
                    files=[("adapters", ("adapter.safetensors", f, "application/octet-stream"))],
                )
                seconds = time.perf_counter() - start
            if response.status_code != 201:
                raise RuntimeError(f"adapter upload failed: {response.text[:500]}")
            results["adapter"] = {
                "bytes": size,
                "lora_modules": n_modules,
                "upload_s": round(seconds, 1),
                "mb_per_s": round(size / MB / seconds, 1),
                **watch.report(),
            }
            print(json.dumps({"adapter": results["adapter"]}), flush=True)
        return results
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jsonl-mb", type=int, default=1024, help="dataset size (10^6 bytes)")
    parser.add_argument("--adapter-mb", type=int, default=1024, help="adapter size; 0: none")
    parser.add_argument("--workdir", default=None, help="scratch folder (default: system temp)")
    parser.add_argument("--app-dir", default=None, help="tree to run the API from (default: here)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument("--out", default=None, help="folder for upload-<MB>mb.json")
    args = parser.parse_args()
    results = run(args)
    print(json.dumps(results, indent=2))
    if args.out:
        path = Path(args.out) / f"upload-{args.jsonl_mb}mb-adapter-{args.adapter_mb}mb.json"
        path.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
