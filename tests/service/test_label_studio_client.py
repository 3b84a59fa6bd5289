"""The Label Studio client (service/integrations/label_studio.py) and the integrations' CLI,
reading Sift with ``service.client.Client`` against the app in process, and a stand-in for the
SDK (the real Label Studio: tests/integration/test_label_studio.py)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.client import Client, ConflictError, models
from service.integrations import argilla_export, cli, label_studio
from service.integrations.records import split_messages

RANKED = [("p2", 0.5), ("p0", 0.25), ("p1", -0.5)]
RECORDS = [
    {"id": "p0", "prompt": "q0", "response": "a0", "subtask": "math", "metadata": {"src": "x"}},
    {
        "id": "p1",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "q1"},
            {"role": "assistant", "content": "a1"},
        ],
    },
    {"id": "p2", "prompt": "q2", "response": "a2"},
]


class FakeLabelStudio:
    """The part of ``label_studio_sdk.LabelStudio`` the client calls, recording the calls."""

    def __init__(self, tasks: list[dict[str, Any]] | None = None) -> None:
        self.imported: list[tuple[int, list[dict[str, Any]]]] = []
        self.created: list[dict[str, Any]] = []
        self.backends: list[dict[str, Any]] = []
        self.hooks = [{"id": 1, "url": "http://sift/v1/x/webhook"}, {"id": 2, "url": "other"}]
        self.deleted: list[int] = []
        self.action_calls: list[dict[str, Any]] = []
        self.listed = tasks or []

        def create_project(**kwargs: Any) -> dict[str, Any]:
            self.created.append(kwargs)
            return {"id": 40 + len(self.created)}

        def create_backend(**kwargs: Any) -> SimpleNamespace:
            self.backends.append(kwargs)
            return SimpleNamespace(model_dump=lambda: {"id": 9, **kwargs})

        self.projects = SimpleNamespace(
            create=create_project,
            import_tasks=lambda id, request: self.imported.append((id, request)),
        )
        self.ml = SimpleNamespace(create=create_backend)
        self.webhooks = SimpleNamespace(
            list=lambda project: list(self.hooks), delete=lambda id: self.deleted.append(id)
        )
        self.actions = SimpleNamespace(create=lambda **kw: self.action_calls.append(kw))
        self.tasks = SimpleNamespace(list=lambda project, fields: iter(self.listed))


@pytest.fixture()
def scored(make_scored: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    return make_scored(RECORDS, RANKED)


def test_push_imports_the_pool_best_first(sift: Client, scored: dict[str, Any]) -> None:
    ls = FakeLabelStudio()
    pushed = label_studio.push(sift, ls, scored["id"])
    assert pushed == label_studio.Pushed(project_id=41, n_tasks=3, valuation_id=scored["id"])
    assert ls.created == [
        {"title": f"Sift less {scored['id']}", "label_config": label_studio.DEFAULT_LABEL_CONFIG}
    ]
    ((project, tasks),) = ls.imported
    assert project == 41
    data = [t["data"] for t in tasks]
    assert [d["sift_record_id"] for d in data] == ["p2", "p0", "p1"]
    assert [d["sift_rank"] for d in data] == [0, 1, 2]
    assert [d["sift_score"] for d in data] == [0.5, 0.25, -0.5]
    assert data[1] == {
        "prompt": "q0",
        "response": "a0",
        "sift_record_id": "p0",
        "sift_score": 0.25,
        "sift_rank": 1,
        "sift_valuation_id": scored["id"],
        "sift_dataset_id": scored["pool_dataset_id"],
        "subtask": "math",
        "sift_messages": [
            {"role": "user", "content": "q0"},
            {"role": "assistant", "content": "a0"},
        ],
        "sift_metadata": {"src": "x"},
    }
    assert data[2]["prompt"] == "system: Be brief.\n\nuser: q1"
    assert all("predictions" not in t for t in tasks)


def test_push_into_a_project_the_top_with_predictions(sift: Client, scored: dict[str, Any]) -> None:
    ls = FakeLabelStudio()
    label_studio.push(sift, ls, scored["id"], project_id=5, top=2, with_predictions=True)
    assert ls.created == []
    ((project, tasks),) = ls.imported
    assert project == 5 and [t["data"]["sift_record_id"] for t in tasks] == ["p2", "p0"]
    assert tasks[0]["predictions"] == [
        {"model_version": f"sift-less-{scored['id']}", "score": 0.5, "result": []}
    ]


def test_push_of_a_running_valuation_is_refused(sift: Client, make_valuation: Any) -> None:
    with pytest.raises(ConflictError, match="409"):
        label_studio.push(sift, FakeLabelStudio(), make_valuation()["id"])


def test_connect_stores_the_key_as_basic_auth_and_drops_the_webhook() -> None:
    ls = FakeLabelStudio()
    url = label_studio.backend_url("http://sift/", "x")
    assert url == "http://sift/v1/label-studio/valuations/x"
    ls.hooks = [{"id": 1, "url": url + "/webhook"}, {"id": 2, "url": "http://elsewhere/hook"}]
    assert label_studio.connect(ls, 3, url, "sift_key") == 9
    assert ls.backends == [
        {
            "project": 3,
            "url": url,
            "title": "Sift",
            "is_interactive": False,
            "auth_method": "BASIC_AUTH",
            "basic_auth_user": "sift",
            "basic_auth_pass": "sift_key",
        }
    ]
    assert ls.deleted == [1]
    ls.deleted.clear()
    label_studio.connect(ls, 3, url, "sift_key", keep_webhook=True)
    assert ls.deleted == []
    label_studio.retrieve_predictions(ls, 3)
    assert ls.action_calls == [
        {
            "id": "retrieve_tasks_predictions",
            "project": 3,
            "selected_items": {"all": True, "excluded": []},
        }
    ]


def _region(name: str, kind: str, value: dict[str, Any]) -> dict[str, Any]:
    return {"from_name": name, "to_name": "response", "type": kind, "value": value}


def _annotated(task_id: int, record: str, *annotations: dict[str, Any]) -> dict[str, Any]:
    messages = [{"role": "user", "content": f"q-{record}"}, {"role": "assistant", "content": "a"}]
    return {
        "id": task_id,
        "data": {
            "prompt": f"q-{record}",
            "response": "a",
            "sift_record_id": record,
            "sift_score": 0.5,
            "sift_rank": task_id,
            "sift_valuation_id": "v1",
            "sift_dataset_id": "d1",
            "subtask": "math",
            "sift_messages": messages,
            "sift_metadata": {"src": "x"},
        },
        "annotations": list(annotations),
    }


def test_pull_uploads_the_annotated_tasks(sift: Client, client: TestClient) -> None:
    keep = _region("verdict", "choices", {"choices": ["keep"]})
    drop = _region("verdict", "choices", {"choices": ["drop"]})
    fix = _region("corrected_response", "textarea", {"text": ["better", "answer"]})
    tasks = [
        _annotated(
            1,
            "r1",
            {"id": 10, "result": [drop], "updated_at": "2026-01-01T00:00:00Z"},
            {
                "id": 11,
                "result": [keep, fix],
                "updated_at": "2026-01-02T00:00:00Z",
                "completed_by": 1,
            },
        ),  # fmt: skip
        _annotated(2, "r2"),  # not annotated
        _annotated(3, "r3", {"id": 12, "result": [keep], "was_cancelled": True}),  # skipped
        _annotated(4, "r4", {"id": 13, "result": [drop]}),
        {  # a task made in Label Studio: no Sift record, prompt only
            "id": 5,
            "data": {"prompt": "new question"},
            "annotations": [{"id": 14, "result": [keep, fix]}],
        },
    ]
    ls = FakeLabelStudio(tasks)
    dataset = label_studio.pull(sift, ls, 7, "reviewed")
    assert isinstance(dataset, models.DatasetRead) and dataset.name == "reviewed"
    assert dataset.n_records == 3
    records = client.get(f"/v1/datasets/{dataset.id}/records").json()["items"]
    by_id = {r["record_id"]: r for r in records}
    assert list(by_id) == ["r1", "r4", "ls-5"]
    r1 = by_id["r1"]
    assert r1["messages"][-1] == {"role": "assistant", "content": "better\nanswer"}
    assert r1["subtask"] == "math"
    assert r1["metadata"] == {
        "src": "x",
        "label_studio": {
            "project_id": 7,
            "task_id": 1,
            "annotation_id": 11,
            "completed_by": 1,
            "labels": {"verdict": "keep", "corrected_response": "better\nanswer"},
            "corrected": True,
        },
        "sift": {
            "record_id": "r1",
            "valuation_id": "v1",
            "dataset_id": "d1",
            "score": 0.5,
            "rank": 1,
        },
    }
    assert by_id["r4"]["messages"][-1]["content"] == "a"
    assert by_id["r4"]["metadata"]["label_studio"]["corrected"] is False
    assert by_id["ls-5"]["messages"] == [
        {"role": "user", "content": "new question"},
        {"role": "assistant", "content": "better\nanswer"},
    ]
    assert "sift" not in by_id["ls-5"]["metadata"]

    kept = label_studio.pull(sift, FakeLabelStudio(tasks), 7, "kept", only={"verdict": "keep"})
    assert kept.n_records == 2
    with pytest.raises(RuntimeError, match="no annotated task"):
        label_studio.pull(sift, FakeLabelStudio([_annotated(2, "r2")]), 7, "none")


def test_region_values() -> None:
    assert label_studio.region_value(_region("c", "choices", {"choices": ["a", "b"]})) == [
        "a",
        "b",
    ]
    assert label_studio.region_value(_region("r", "rating", {"rating": 4})) == 4
    assert label_studio.region_value(_region("n", "number", {"number": 2.5})) == 2.5
    assert label_studio.region_value(_region("x", "labels", {"start": 0, "labels": ["L"]})) == ["L"]
    assert label_studio.region_value(_region("x", "custom", {"foo": 1})) == {"foo": 1}
    labels = label_studio.annotation_labels(
        {
            "result": [
                _region("t", "textarea", {"text": ["one"]}),
                _region("t", "textarea", {"text": ["two"]}),
                {"type": "choices", "value": {}},  # no from_name: ignored
            ]
        }
    )
    assert labels == {"t": ["one", "two"]}


def test_split_messages() -> None:
    assert split_messages([{"role": "user", "content": "q"}]) == ("q", "")
    assert split_messages(
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    ) == ("q", "a")
    turns = [
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q2"},
        {"role": "assistant", "content": "a2"},
    ]
    assert split_messages(turns) == ("user: q1\n\nassistant: a1\n\nuser: q2", "a2")


def test_the_cli_registers_and_runs(
    sift: Client, scored: dict[str, Any], make_valuation: Any, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    parser = argparse.ArgumentParser(prog="sift")
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(
        ["label-studio", "push", "--valuation", "v", "--top", "3", "--connect", "--predict"]
    )
    assert args.func.__name__ == "cmd_push" and args.top == 3 and args.connect and args.predict
    args = parser.parse_args(["label-studio", "pull", "--project", "4", "--name", "n",
                              "--only", "verdict=keep"])  # fmt: skip
    assert args.only == ["verdict=keep"]
    assert cli._only(args.only) == {"verdict": "keep"}
    with pytest.raises(SystemExit):
        cli._only(["verdict"])
    with pytest.raises(SystemExit, match="give --valuation or --curation"):
        cli.main(["argilla", "export", "--out", str(tmp_path / "x")])

    pytest.importorskip("argilla")
    monkeypatch.setattr(cli, "_sift", lambda args: sift)  # its http (the test's) stays open
    cli.main(["argilla", "export", "--valuation", scored["id"], "--out", str(tmp_path / "a")])
    assert json.loads(capsys.readouterr().out)["n_records"] == 3
    running = make_valuation()["id"]  # the client's ConflictError, as one line
    with pytest.raises(SystemExit, match="sift argilla export: GET .* 409 conflict"):
        cli.main(["argilla", "export", "--valuation", running, "--out", str(tmp_path / "b")])
    assert not (tmp_path / "b").exists()


def test_the_cli_finds_the_sift_key_as_the_other_api_commands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parser = argparse.ArgumentParser(prog="sift")
    cli.register(parser.add_subparsers(dest="command", required=True))
    argv = ["label-studio", "pull", "--project", "1", "--name", "n", "--url", "http://sift:1"]
    for name in ("SIFT_API_KEY", "SIFT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SIFT_API_KEY_FILE", str(tmp_path / "api-key"))
    with pytest.raises(SystemExit, match="label-studio pull: no Sift API key"):
        cli._sift(parser.parse_args(argv))
    (tmp_path / "api-key").write_text("sift_from-file\n")  # the embedded default's file
    with cli._sift(parser.parse_args(argv)) as sift:
        assert (sift.base_url, sift.api_key) == ("http://sift:1", "sift_from-file")
    monkeypatch.setenv("SIFT_API_KEY", "sift_from-env")
    with cli._sift(parser.parse_args(argv)) as sift:
        assert sift.api_key == "sift_from-env"
    with cli._sift(parser.parse_args([*argv, "--api-key", "sift_flag"])) as sift:
        assert sift.api_key == "sift_flag"
    with pytest.raises(SystemExit, match="must start with http"):
        cli._sift(parser.parse_args([*argv, "--url", "sift:1"]))


def test_a_missing_sdk_names_its_extra(
    sift: Client, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(cli, "_sift", lambda args: sift)
    monkeypatch.setitem(sys.modules, "label_studio_sdk", None)  # import fails
    monkeypatch.setitem(sys.modules, "argilla", None)
    argv = ["label-studio", "connect", "--valuation", "v", "--project", "1", "--ls-api-key", "k"]
    with pytest.raises(SystemExit, match=r"connect: .*pip install 'sift\[label-studio\]'"):
        cli.main(argv)
    with pytest.raises(RuntimeError, match=r"pip install 'sift\[argilla\]'"):
        argilla_export.offline_client().__enter__()


def test_sift_lists_the_integrations(capsys: pytest.CaptureFixture[str]) -> None:
    import service.cli

    with pytest.raises(SystemExit):
        service.cli.main(["--help"])
    out = capsys.readouterr().out
    assert "label-studio" in out and "argilla" in out
    with pytest.raises(SystemExit):
        service.cli.main(["label-studio", "push", "--help"])
    assert "--valuation" in capsys.readouterr().out
