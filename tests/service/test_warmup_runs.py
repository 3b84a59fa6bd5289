"""Uploaded LoRA checkpoint runs: checked without torch or pickle, stored only when all is well."""

from __future__ import annotations

import json
import pickle
import struct
import uuid
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from safetensors.numpy import save as save_safetensors
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.auth import keys
from service.blobs import BlobStore, TenantBlobStore
from service.config import Settings, get_settings
from service.db.models import Checkpoint, WarmupRun
from service.warmup_runs import adapters, repository
from service.warmup_runs import endpoints as warmup_endpoints

MODULE = "base_model.model.model.layers.{layer}.self_attn.{proj}"
URL = "/v1/warmup-runs"


def lora_tensors(
    r: int = 4,
    projs: tuple[str, ...] = ("q_proj", "v_proj"),
    layers: int = 2,
    width: int = 8,
    seed: int = 0,
    suffix: str = "weight",
) -> dict[str, np.ndarray]:
    """A PEFT-saved LoRA adapter: ``<module>.lora_A.weight`` [r, in], ``lora_B`` [out, r]."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for layer in range(layers):
        for proj in projs:
            module = MODULE.format(layer=layer, proj=proj)
            out[f"{module}.lora_A.{suffix}"] = rng.standard_normal((r, width), dtype=np.float32)
            out[f"{module}.lora_B.{suffix}"] = rng.standard_normal((width, r), dtype=np.float32)
    return out


def adapter(seed: int = 0, **kwargs: Any) -> bytes:
    return save_safetensors(lora_tensors(seed=seed, **kwargs))


def raw_safetensors(header: dict[str, Any], data: bytes) -> bytes:
    encoded = json.dumps(header).encode()
    return struct.pack("<Q", len(encoded)) + encoded + data


def upload(
    client: TestClient,
    model_id: str,
    files: list[bytes],
    steps: list[Any] | None = None,
    learning_rates: list[Any] | None = None,
    lora_alpha: Any = 16.0,
    names: list[str] | None = None,
) -> Any:
    steps = [10 * (i + 1) for i in range(len(files))] if steps is None else steps
    learning_rates = [1e-4] * len(files) if learning_rates is None else learning_rates
    names = names or [f"step-{i}.safetensors" for i in range(len(files))]
    return client.post(
        URL,
        data={
            "model_id": model_id,
            "lora_alpha": str(lora_alpha),
            "steps": [str(s) for s in steps],
            "learning_rates": [str(lr) for lr in learning_rates],
        },
        files=[
            ("adapters", (name, data, "application/octet-stream"))
            for name, data in zip(names, files, strict=True)
        ],
    )


def error(response: Any, status: int = 422) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()["error"]
    assert set(body) == {"code", "message", "field"}
    return body


def assert_nothing_written(db: Session, tenant_blobs: BlobStore) -> None:
    assert (db.scalar(select(func.count()).select_from(WarmupRun)) or 0) == 0
    assert (db.scalar(select(func.count()).select_from(Checkpoint)) or 0) == 0
    assert tenant_blobs.list_keys("uploads/") == []


# --- create -----------------------------------------------------------------------------------


def test_upload_two_checkpoints(
    client: TestClient, db: Session, tenant_blobs: BlobStore, model: dict[str, Any]
) -> None:
    files = [adapter(seed=0), adapter(seed=1)]
    response = upload(client, model["id"], files, steps=[0, 250], learning_rates=[2e-4, 1e-4])
    assert response.status_code == 201, response.text
    run = response.json()
    assert run["origin"] == "upload" and run["status"] == "complete"
    assert run["model_id"] == model["id"]
    assert run["pool_dataset_id"] is None and run["n_train"] is None and run["warmup"] is None
    assert run["lora"] == {
        "r": 4,
        "alpha": 16.0,
        "dropout": 0.0,
        "target_modules": ["q_proj", "v_proj"],
    }
    assert run["checkpoints"] == [
        {"epoch": 1, "step": 0, "learning_rate": 2e-4, "has_optimizer_state": False},
        {"epoch": 2, "step": 250, "learning_rate": 1e-4, "has_optimizer_state": False},
    ]

    row = db.get(WarmupRun, run["id"])
    assert row is not None and row.content_key.startswith("upload:")
    assert len(row.content_key) <= 128
    keys = [f"uploads/{run['id']}/step-0000000000.safetensors"]
    keys.append(f"uploads/{run['id']}/step-0000000250.safetensors")
    assert [c.adapter_blob_key for c in row.checkpoints] == keys
    assert all(c.optimizer_blob_key is None for c in row.checkpoints)
    assert [len(c.content_hash) for c in row.checkpoints] == [64, 64]
    assert tenant_blobs.list_keys("uploads/") == keys
    assert [tenant_blobs.get_bytes(k) for k in keys] == files  # stored byte for byte

    assert client.get(f"{URL}/{run['id']}").json() == run
    listed = client.get(URL).json()
    assert listed["total"] == 1 and listed["items"] == [run]


def test_identical_upload_returns_the_existing_run(
    client: TestClient, db: Session, tenant_blobs: BlobStore, model: dict[str, Any]
) -> None:
    files = [adapter(seed=0), adapter(seed=1)]
    first = upload(client, model["id"], files)
    assert first.status_code == 201, first.text
    again = upload(client, model["id"], files, names=["other.safetensors", "names.safetensors"])
    assert again.status_code == 200, again.text
    assert again.json() == first.json()
    assert (db.scalar(select(func.count()).select_from(WarmupRun)) or 0) == 1
    assert len(tenant_blobs.list_keys("uploads/")) == 2

    other_lr = upload(client, model["id"], files, learning_rates=[1e-4, 5e-5])
    assert other_lr.status_code == 201 and other_lr.json()["id"] != first.json()["id"]


def test_concurrent_identical_upload_gets_the_winner(
    client: TestClient,
    db: Session,
    tenant_blobs: BlobStore,
    model: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Both requests miss the lookup; the loser hits the unique content_key and drops its files."""
    files = [adapter(seed=0)]
    first = upload(client, model["id"], files).json()
    real = repository.get_by_content_key
    calls: list[str] = []

    def miss_once(session: Session, key: str) -> WarmupRun | None:
        calls.append(key)
        return None if len(calls) == 1 else real(session, key)

    monkeypatch.setattr(repository, "get_by_content_key", miss_once)
    again = upload(client, model["id"], files)
    assert again.status_code == 200, again.text
    assert again.json()["id"] == first["id"] and len(calls) == 2
    assert tenant_blobs.list_keys("uploads/") == [
        f"uploads/{first['id']}/step-0000000010.safetensors"
    ]


def test_sift_adapter_names_are_accepted(client: TestClient, model: dict[str, Any]) -> None:
    files = [adapter(suffix="default.weight", projs=("k_proj",), r=2)]
    response = upload(client, model["id"], files, lora_alpha=8)
    assert response.status_code == 201, response.text
    assert response.json()["lora"]["r"] == 2
    assert response.json()["lora"]["target_modules"] == ["k_proj"]


# --- rejected uploads -------------------------------------------------------------------------

GOOD = adapter(seed=0)
HEADER_LEN = struct.unpack("<Q", GOOD[:8])[0]
A_NAME = f"{MODULE.format(layer=0, proj='q_proj')}.lora_A.weight"
B_NAME = f"{MODULE.format(layer=0, proj='q_proj')}.lora_B.weight"


def _without(name: str) -> bytes:
    return save_safetensors({k: v for k, v in lora_tensors().items() if k != name})


def _mixed_rank() -> bytes:
    tensors = lora_tensors(r=4, projs=("q_proj",))
    tensors.update(lora_tensors(r=2, projs=("v_proj",)))
    return save_safetensors(tensors)


def _offsets_beyond_file() -> bytes:
    header = {A_NAME: {"dtype": "F32", "shape": [4, 8], "data_offsets": [0, 128]}}
    return raw_safetensors(header, b"\0" * 64)


def _short_offsets() -> bytes:
    header = {A_NAME: {"dtype": "F32", "shape": [4, 8], "data_offsets": [0, 64]}}
    return raw_safetensors(header, b"\0" * 64)


def _unknown_dtype() -> bytes:
    header = {A_NAME: {"dtype": "F128", "shape": [1], "data_offsets": [0, 16]}}
    return raw_safetensors(header, b"\0" * 16)


def _deep_header() -> bytes:
    encoded = b"[" * 100_000 + b"]" * 100_000
    return struct.pack("<Q", len(encoded)) + encoded


def _nul_name() -> bytes:
    header = {f"{A_NAME}\u0000": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}
    return raw_safetensors(header, b"\0" * 4)


def _integer_lora() -> bytes:
    tensors = {k: v.astype(np.int32) for k, v in lora_tensors(projs=("q_proj",)).items()}
    return save_safetensors(tensors)


# (case, files, form overrides, expected field, words the message must contain)
CASES: list[tuple[str, list[bytes], dict[str, Any], str, tuple[str, ...]]] = [
    (
        "pickle",
        [GOOD, pickle.dumps({A_NAME: [[0.0] * 8] * 4})],
        {"names": ["a.safetensors", "adapter_model.bin"]},
        "adapters.1",
        ("adapter_model.bin", "only safetensors"),
    ),
    ("garbage", [b"PK\x03\x04 a zip"], {}, "adapters.0", ("only safetensors",)),
    ("too short", [b"\x01\x02"], {}, "adapters.0", ("too short", "only safetensors")),
    ("truncated header", [GOOD[: 8 + HEADER_LEN // 2]], {}, "adapters.0", ("header length",)),
    ("truncated data", [GOOD[:-7]], {}, "adapters.0", ("truncated", "only safetensors")),
    (
        "offsets beyond the file",
        [_offsets_beyond_file()],
        {},
        "adapters.0",
        ("end at byte 128", "holds 64 bytes"),
    ),
    ("offsets disagree with shape", [_short_offsets()], {}, "adapters.0", ("needs 128 bytes",)),
    ("unknown dtype", [_unknown_dtype()], {}, "adapters.0", ("F128",)),
    (
        "header nested 100,000 deep",
        [_deep_header()],
        {},
        "adapters.0",
        ("nested too deeply", "only safetensors"),
    ),
    (
        "header over the limit",
        [struct.pack("<Q", adapters.MAX_HEADER_BYTES + 1) + b" " * 64],
        {},
        "adapters.0",
        (f"exceeds {adapters.MAX_HEADER_BYTES} bytes",),
    ),
    ("NUL in a tensor name", [_nul_name()], {}, "adapters.0", ("NUL or a lone surrogate",)),
    (
        "header not json",
        [struct.pack("<Q", 4) + b"{{{{"],
        {},
        "adapters.0",
        ("not JSON", "only safetensors"),
    ),
    (
        "embedding tensor",
        [save_safetensors({**lora_tensors(), "base_model.model.embed_tokens.weight": np.ones(4)})],
        {},
        "adapters.0",
        ("not LoRA weights", "embed_tokens"),
    ),
    ("missing lora_B", [_without(B_NAME)], {}, "adapters.0", (A_NAME, "has no lora_B")),
    ("missing lora_A", [_without(A_NAME)], {}, "adapters.0", (B_NAME, "has no lora_A")),
    ("inconsistent r", [_mixed_rank()], {}, "adapters.0", ("one rank", "r=2", "r=4")),
    (
        "A and B ranks differ",
        [
            save_safetensors(
                {A_NAME: np.ones((4, 8), np.float32), B_NAME: np.ones((8, 2), np.float32)}
            )
        ],
        {},
        "adapters.0",
        ("[r, in]", A_NAME),
    ),
    ("integer weights", [_integer_lora()], {}, "adapters.0", ("I32", "F32")),
    (
        "files differ in shape",
        [GOOD, adapter(seed=1, r=8)],
        {},
        "adapters.1",
        ("same tensors", "reshaped", A_NAME),
    ),
    (
        "files differ in tensors",
        [GOOD, adapter(seed=1, projs=("q_proj",))],
        {},
        "adapters.1",
        ("same tensors", "missing", "v_proj"),
    ),
    ("steps not increasing", [GOOD, GOOD], {"steps": [5, 5]}, "steps.1", ("strictly increasing",)),
    ("negative step", [GOOD], {"steps": [-1]}, "steps.0", ("[0,",)),
    ("step not an integer", [GOOD], {"steps": ["1.5"]}, "steps.0", ("integer",)),
    ("lr zero", [GOOD, GOOD], {"learning_rates": [1e-4, 0]}, "learning_rates.1", ("> 0",)),
    ("lr negative", [GOOD], {"learning_rates": [-1e-4]}, "learning_rates.0", ("> 0",)),
    ("lr nan", [GOOD], {"learning_rates": ["nan"]}, "learning_rates.0", ("finite",)),
    ("alpha zero", [GOOD], {"lora_alpha": 0}, "lora_alpha", ("> 0",)),
    ("too few steps", [GOOD, GOOD], {"steps": [1]}, "steps", ("1 steps", "2 adapters")),
    (
        "too many learning rates",
        [GOOD],
        {"learning_rates": [1e-4, 1e-4]},
        "learning_rates",
        ("2 learning_rates", "1 adapters"),
    ),
    ("unknown model", [GOOD], {"model_id": "nope"}, "model_id", ("nope", "does not exist")),
]


@pytest.mark.parametrize(
    ("files", "overrides", "field", "words"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_rejected_upload_writes_nothing(
    client: TestClient,
    db: Session,
    tenant_blobs: BlobStore,
    model: dict[str, Any],
    files: list[bytes],
    overrides: dict[str, Any],
    field: str,
    words: tuple[str, ...],
) -> None:
    overrides = dict(overrides)
    model_id = overrides.pop("model_id", model["id"])
    body = error(upload(client, model_id, files, **overrides))
    assert body["field"] == field, body
    for word in words:
        assert word in body["message"], body
    assert_nothing_written(db, tenant_blobs)


def test_form_must_be_multipart_with_known_fields(
    client: TestClient, model: dict[str, Any]
) -> None:
    json_body = client.post(URL, json={"model_id": model["id"]})
    assert error(json_body, 415)["code"] == "unsupported_media_type"
    typo = client.post(
        URL,
        data={"model_id": model["id"], "lora_alpha": "16", "step": "1", "learning_rates": "1e-4"},
        files=[("adapters", ("a.safetensors", GOOD))],
    )
    assert error(typo)["field"] == "step"
    as_text = client.post(
        URL,
        data={"model_id": model["id"], "lora_alpha": "16", "steps": "1", "adapters": "x"},
        files=[("learning_rates", ("lr.txt", b"1e-4"))],
    )
    assert error(as_text)["field"] == "adapters.0"


def test_no_checkpoint(
    client: TestClient, db: Session, tenant_blobs: BlobStore, model: dict[str, Any]
) -> None:
    parts = [("model_id", model["id"]), ("lora_alpha", "16")]
    body = "".join(
        f'--b\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        for name, value in parts
    )
    response = client.post(
        URL,
        content=(body + "--b--\r\n").encode(),
        headers={"content-type": "multipart/form-data; boundary=b"},
    )
    err = error(response)
    assert err["field"] == "adapters" and "at least one checkpoint" in err["message"]
    assert_nothing_written(db, tenant_blobs)


def test_upload_over_the_limit_is_413(
    app: FastAPI,
    client: TestClient,
    db: Session,
    tenant_blobs: BlobStore,
    settings: Settings,
    model: dict[str, Any],
) -> None:
    small = settings.model_copy(update={"max_checkpoint_upload_bytes": len(GOOD) + 100})
    app.dependency_overrides[get_settings] = lambda: small
    body = error(upload(client, model["id"], [GOOD, GOOD]), 413)
    assert body["code"] == "payload_too_large"
    assert_nothing_written(db, tenant_blobs)

    # Without a declared length (chunked), the limit holds while the body streams in.
    request = client.build_request(
        "POST",
        URL,
        data={"model_id": model["id"], "lora_alpha": "16", "steps": ["1", "2"]},
        files=[("adapters", ("a.safetensors", GOOD)), ("adapters", ("b.safetensors", GOOD))],
    )
    data = request.read()
    chunks = iter([data[: len(data) // 2], data[len(data) // 2 :]])
    streamed = client.post(
        URL, content=chunks, headers={"content-type": request.headers["content-type"]}
    )
    assert error(streamed, 413)["code"] == "payload_too_large"
    assert_nothing_written(db, tenant_blobs)


def _form_body(parts: list[tuple[str, str | None, bytes]], close: bool = True) -> bytes:
    body = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (
            f'; filename="{filename}"' if filename is not None else ""
        )
        body += f"--b\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
    return body + b"--b--\r\n" if close else body


def _post_form(client: TestClient, body: bytes) -> Any:
    return client.post(
        URL, content=body, headers={"content-type": "multipart/form-data; boundary=b"}
    )


def _fields(model_id: str, n: int = 1) -> list[tuple[str, str | None, bytes]]:
    parts: list[tuple[str, str | None, bytes]] = [
        ("model_id", None, model_id.encode()),
        ("lora_alpha", None, b"16"),
    ]
    parts += [("steps", None, str(10 * (i + 1)).encode()) for i in range(n)]
    parts += [("learning_rates", None, b"1e-4") for _ in range(n)]
    return parts


def test_bad_forms_are_422s_naming_the_field(
    client: TestClient,
    db: Session,
    tenant_blobs: BlobStore,
    model: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fields = _fields(model["id"], 2)
    files = [("adapters", "a.safetensors", GOOD), ("adapters", "b.safetensors", GOOD)]
    truncated = error(_post_form(client, _form_body([*fields, *files], close=False)))
    assert truncated["field"] == "body" and "truncated" in truncated["message"]
    as_file = error(_post_form(client, _form_body([("steps", "s.txt", b"1"), *files])))
    assert as_file["field"] == "steps.0" and "must be text" in as_file["message"]
    long = error(_post_form(client, _form_body([("model_id", None, b"m" * 5000), *files])))
    assert long["field"] == "model_id"
    nul = error(_post_form(client, _form_body([("model_id", None, b"m\0"), *files])))
    assert nul["field"] == "model_id" and "NUL" in nul["message"]
    monkeypatch.setattr(warmup_endpoints, "MAX_CHECKPOINTS", 1)
    too_many = error(_post_form(client, _form_body([*fields, *files])))
    assert too_many["field"] == "adapters" and "at most 1" in too_many["message"]
    assert_nothing_written(db, tenant_blobs)


def test_adapters_are_streamed_to_the_store(
    client: TestClient,
    db: Session,
    tenant_blobs: BlobStore,
    model: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No adapter is read into memory whole: put_bytes is never called, put_file is."""

    def refuse(self: TenantBlobStore, key: str, data: bytes) -> None:
        raise AssertionError(f"put_bytes({key!r}) holds the whole adapter in memory")

    monkeypatch.setattr(TenantBlobStore, "put_bytes", refuse)
    files = [adapter(seed=0, width=512), adapter(seed=1, width=512)]
    response = upload(client, model["id"], files)
    assert response.status_code == 201, response.text
    keys = tenant_blobs.list_keys("uploads/")
    assert [tenant_blobs.get_bytes(k) for k in keys] == files


def test_a_failed_store_leaves_no_file_behind(
    client: TestClient,
    db: Session,
    tenant_blobs: BlobStore,
    model: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = TenantBlobStore.put_file
    calls: list[str] = []

    def second_fails(self: TenantBlobStore, key: str, f: Any) -> None:
        calls.append(key)
        if len(calls) == 2:
            raise OSError("disk full")
        real(self, key, f)

    monkeypatch.setattr(TenantBlobStore, "put_file", second_fails)
    with pytest.raises(OSError, match="disk full"):
        upload(client, model["id"], [adapter(seed=0), adapter(seed=1)])
    assert len(calls) == 2
    assert_nothing_written(db, tenant_blobs)


# --- read -------------------------------------------------------------------------------------


def test_list_is_newest_first_and_paged(
    client: TestClient, db: Session, model: dict[str, Any]
) -> None:
    ids = [upload(client, model["id"], [adapter(seed=seed)]).json()["id"] for seed in range(3)]
    for minutes, run_id in enumerate(ids):  # distinct times: uploads within a microsecond tie
        run = db.get(WarmupRun, run_id)
        assert run is not None
        run.created_at = datetime(2026, 1, 1, 0, minutes, tzinfo=UTC)
    db.commit()
    page = client.get(URL, params={"limit": 2}).json()
    assert page["total"] == 3 and page["limit"] == 2
    assert [run["id"] for run in page["items"]] == ids[::-1][:2]


def test_unknown_run_is_404(client: TestClient) -> None:
    body = error(client.get(f"{URL}/nope"), 404)
    assert body["code"] == "not_found" and "nope" in body["message"]


# --- training curves --------------------------------------------------------------------------

CURVE = {
    "step": [1, 2, 3, 4],
    "loss": [5.5, 5.25, 5.0, 4.5],
    "learning_rate": [0.0, 2e-5, 1e-5, 0.0],
    "epochs": [
        {"epoch": 1, "step": 2, "train_loss": 5.375},
        {"epoch": 2, "step": 4, "train_loss": 4.75},
    ],
}


def _trained_run(db: Session, model_id: str, pool_id: str, **fields: Any) -> WarmupRun:
    """A Sift-trained run's row as workers.tasks.valuation leaves it."""
    tenant = keys.get_or_create_tenant(db, "team-a")
    run = WarmupRun(
        tenant_id=tenant.id,
        content_key=uuid.uuid4().hex,
        origin="warmup",
        model_id=model_id,
        pool_dataset_id=pool_id,
        settings={
            "warmup": {"epochs": 2},
            "lora": {"r": 4, "alpha": 16.0, "dropout": 0.1, "target_modules": ["q_proj"]},
        },
        **{"status": "complete", "n_train": 3, "curve": CURVE, **fields},
    )
    db.add(run)
    db.commit()
    return run


def test_a_trained_run_shows_its_curve_and_serves_its_plot(
    client: TestClient,
    db: Session,
    tenant_blobs: BlobStore,
    model: dict[str, Any],
    make_dataset: Any,
) -> None:
    run = _trained_run(db, model["id"], make_dataset(3)["id"])
    body = client.get(f"{URL}/{run.id}").json()
    assert body["curve"] == {**CURVE, "heldout": []}  # no held-out set measured on it
    assert body["plots"] == {f: f"{URL}/{run.id}/plot.{f}" for f in ("png", "svg")}
    assert [r["curve"] for r in client.get(URL).json()["items"]] == [body["curve"]]
    figures = {"png": b"\x89PNG fake", "svg": b"<svg/>"}
    for fmt, content in figures.items():  # where the worker writes them
        tenant_blobs.put_bytes(f"warmup/{run.content_key}/curve.{fmt}", content)
    png = client.get(f"{URL}/{run.id}/plot.png")
    assert png.status_code == 200 and png.content == figures["png"]
    assert png.headers["content-type"] == "image/png"
    svg = client.get(f"{URL}/{run.id}/plot.svg")
    assert svg.content == figures["svg"] and svg.headers["content-type"] == "image/svg+xml"
    assert error(client.get(f"{URL}/{run.id}/plot.pdf"))["field"] == "path.fmt"


def test_a_trained_run_shows_the_heldout_loss_per_epoch(
    client: TestClient, db: Session, model: dict[str, Any], make_dataset: Any
) -> None:
    heldout = {
        "dataset_id": make_dataset(2, name="heldout")["id"],
        "content_hash": "c" * 64,
        "max_length": 64,
        "system_prompt": None,
        "n_records": 2,
        "n_skipped": 0,
        "epochs": [{"epoch": 1, "step": 2, "loss": 5.5}, {"epoch": 2, "step": 4, "loss": 5.0}],
    }
    run = _trained_run(
        db, model["id"], make_dataset(3)["id"], curve={**CURVE, "heldout": [heldout]}
    )
    assert client.get(f"{URL}/{run.id}").json()["curve"]["heldout"] == [heldout]
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    curve = schemas["service__warmup_runs__schemas__CurveRead"]  # evaluations have a CurveRead
    assert "warmup_eval_dataset_id" in curve["properties"]["heldout"]["description"]
    assert set(schemas["HeldoutRead"]["properties"]) == set(heldout)
    assert "warmup_eval_dataset_id" in schemas["ValuationCreate"]["properties"]


def test_plots_of_runs_without_a_finished_curve(
    client: TestClient, db: Session, model: dict[str, Any], make_dataset: Any
) -> None:
    pool = make_dataset(3)["id"]
    running = _trained_run(db, model["id"], pool, status="running", curve=None)
    assert client.get(f"{URL}/{running.id}").json()["curve"] is None
    body = error(client.get(f"{URL}/{running.id}/plot.png"), 409)
    assert "'running'" in body["message"] and "once it is complete" in body["message"]
    older = _trained_run(db, model["id"], pool, curve=None)  # trained before curves existed
    body = error(client.get(f"{URL}/{older.id}/plot.svg"), 404)
    assert "trained before curves were recorded" in body["message"]
    uploaded = upload(client, model["id"], [adapter()]).json()
    assert uploaded["curve"] is None and uploaded["plots"] is None
    body = error(client.get(f"{URL}/{uploaded['id']}/plot.png"), 404)
    assert "uploaded (trained elsewhere)" in body["message"]
    assert error(client.get(f"{URL}/nope/plot.png"), 404)["field"] == "warmup_run_id"
