"""Label Studio, client side: push a valuation's pool into a project (tasks best first, with
their scores and ranks), connect Sift to the project as its ML backend, and pull the
annotations back as a new Sift dataset.

It talks to Sift's HTTP API with Sift's Python client (:class:`service.client.Client`: httpx
and pydantic) and to Label Studio with ``label-studio-sdk`` (the ``label-studio`` extra,
imported only in :func:`client`), from the user's machine: Sift's server never calls a Label
Studio URL. The only calls between the
two servers go the other way, Label Studio → Sift, to the ML backend routes
(:mod:`service.integrations.label_studio_backend`), with a Sift key that :func:`connect`
stores in the backend's Basic auth password.

A task's data::

    {"prompt": ..., "response": ...,            # text the default label config shows
     "sift_record_id": ..., "sift_score": ..., "sift_rank": ...,  # rank 0 is the best
     "sift_valuation_id": ..., "sift_dataset_id": ..., "subtask": ...,
     "sift_messages": [...], "sift_metadata": {...}}  # the record as Sift holds it

Tasks are imported in rank order, so Label Studio's default order (task id) is best first.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.integrations.records import messages_of, ranked, split_messages

if TYPE_CHECKING:
    from service.client import Client, models

RECORD_FIELD = "sift_record_id"  # = label_studio_backend.RECORD_FIELD (that module needs fastapi)
IMPORT_BATCH = 1000
BACKEND_USER = "sift"
"""The Basic auth user name stored with the backend (Sift reads only the password)."""

DEFAULT_LABEL_CONFIG = """\
<View>
  <Header value="Sift rank $sift_rank, score $sift_score"/>
  <Text name="prompt" value="$prompt"/>
  <Text name="response" value="$response"/>
  <Choices name="verdict" toName="response" choice="single" showInLine="true">
    <Choice value="keep"/>
    <Choice value="drop"/>
  </Choices>
  <TextArea name="corrected_response" toName="response" maxSubmissions="1" editable="true"
            placeholder="A corrected response (optional)"/>
</View>
"""
"""Keep or drop each record, and optionally correct its response (``pull`` replaces the
record's last assistant turn with it)."""

CORRECTION_FIELD = "corrected_response"


def client(url: str | None = None, api_key: str | None = None) -> Any:
    """A ``label_studio_sdk.LabelStudio`` (``LABEL_STUDIO_URL`` / ``LABEL_STUDIO_API_KEY``
    when not given)."""
    import os

    try:
        from label_studio_sdk import LabelStudio
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            "the Label Studio integration needs label-studio-sdk: pip install 'sift[label-studio]'"
            " (in a virtualenv of its own: it pins numpy < 2.3 through opencv)"
        ) from e
    url = url or os.environ.get("LABEL_STUDIO_URL") or "http://127.0.0.1:8080"
    key = api_key or os.environ.get("LABEL_STUDIO_API_KEY")
    if not key:
        raise RuntimeError("no Label Studio API key: pass one or set LABEL_STUDIO_API_KEY")
    return LabelStudio(base_url=url.rstrip("/"), api_key=key)


def _as_dict(obj: Any) -> dict[str, Any]:
    """An SDK object (a pydantic model) or a dict, as a dict."""
    if isinstance(obj, dict):
        return obj
    dump = getattr(obj, "model_dump", None) or getattr(obj, "dict", None)
    if dump is None:
        raise TypeError(f"cannot read {type(obj).__name__} as a dict")
    return dump()


# --- push -------------------------------------------------------------------------------------


def task_data(
    record: models.RecordRead, score: models.ScoreRead, valuation: models.ValuationRead
) -> dict[str, Any]:
    """The task data of one pool record and its score."""
    messages = messages_of(record)
    prompt, response = split_messages(messages)
    return {
        "prompt": prompt,
        "response": response,
        RECORD_FIELD: record.record_id,
        "sift_score": score.score,
        "sift_rank": score.rank,
        "sift_valuation_id": valuation.id,
        "sift_dataset_id": valuation.pool_dataset_id,
        "subtask": record.subtask or "",
        "sift_messages": messages,
        "sift_metadata": record.metadata or {},
    }


def ranked_tasks(
    sift: Client, valuation_id: str, *, top: int | None = None, with_predictions: bool = False
) -> tuple[models.ValuationRead, list[dict[str, Any]]]:
    """The valuation and its pool's records as Label Studio tasks, best first (``top``: the
    first ``top`` only). ``with_predictions`` adds each score as a prediction too, for a Label
    Studio that cannot reach Sift as a backend."""
    found = ranked(sift, valuation_id, top=top)
    tasks = []
    for row in found.scores:
        record = found.records.get(row.record_id)
        if record is None:  # the pool lost it: nothing to show
            continue
        task: dict[str, Any] = {"data": task_data(record, row, found.valuation)}
        if with_predictions:
            task["predictions"] = [
                {"model_version": found.model_version, "score": row.score, "result": []}
            ]
        tasks.append(task)
    return found.valuation, tasks


@dataclass(frozen=True)
class Pushed:
    project_id: int
    n_tasks: int
    valuation_id: str


def push(
    sift: Client,
    ls: Any,
    valuation_id: str,
    *,
    project_id: int | None = None,
    title: str | None = None,
    label_config: str = DEFAULT_LABEL_CONFIG,
    top: int | None = None,
    with_predictions: bool = False,
) -> Pushed:
    """Import the valuation's pool into project ``project_id`` (a new one, ``title`` and
    ``label_config``, when None), best first."""
    valuation, tasks = ranked_tasks(sift, valuation_id, top=top, with_predictions=with_predictions)
    if project_id is None:
        project = ls.projects.create(
            title=title or f"Sift {valuation.method} {valuation.id}",
            label_config=label_config,
        )
        project_id = int(_as_dict(project)["id"])
    for start in range(0, len(tasks), IMPORT_BATCH):
        ls.projects.import_tasks(id=project_id, request=tasks[start : start + IMPORT_BATCH])
    return Pushed(project_id=project_id, n_tasks=len(tasks), valuation_id=valuation.id)


# --- the ML backend ---------------------------------------------------------------------------


def backend_url(sift_url: str, valuation_id: str) -> str:
    """The ML backend URL of a valuation, as Label Studio's server reaches Sift."""
    return f"{sift_url.rstrip('/')}/v1/label-studio/valuations/{valuation_id}"


def connect(
    ls: Any,
    project_id: int,
    url: str,
    api_key: str,
    *,
    title: str = "Sift",
    keep_webhook: bool = False,
) -> int:
    """Add Sift at ``url`` (:func:`backend_url`) as the project's ML backend, with ``api_key``
    (a read_only key will do) as its Basic auth password; the backend's id. Label Studio
    checks ``health`` and ``setup`` before it saves it (an error names what failed).

    Label Studio also adds a webhook that posts every project event to ``url/webhook``
    without credentials; Sift has nothing to train, so it is deleted unless
    ``keep_webhook``."""
    backend = _as_dict(
        ls.ml.create(
            project=project_id,
            url=url,
            title=title,
            is_interactive=False,
            auth_method="BASIC_AUTH",
            basic_auth_user=BACKEND_USER,
            basic_auth_pass=api_key,
        )
    )
    if not keep_webhook:
        hook_url = url.rstrip("/") + "/webhook"
        for hook in ls.webhooks.list(project=project_id):
            hook = _as_dict(hook)
            if hook.get("url") == hook_url:
                ls.webhooks.delete(id=hook["id"])
    return int(backend["id"])


def retrieve_predictions(ls: Any, project_id: int) -> None:
    """Ask Label Studio to fetch predictions for every task of the project from its ML
    backend (the Data Manager's *Retrieve Predictions* action)."""
    ls.actions.create(
        id="retrieve_tasks_predictions",
        project=project_id,
        selected_items={"all": True, "excluded": []},
    )


# --- pull -------------------------------------------------------------------------------------


def region_value(region: dict[str, Any]) -> Any:
    """What one result region says: its choices, text, rating, number, or its value."""
    value = region.get("value") or {}
    kind = str(region.get("type", "")).lower()
    if kind == "choices" and "choices" in value:
        choices = value["choices"]
        return choices[0] if len(choices) == 1 else choices
    if kind == "textarea" and "text" in value:
        return "\n".join(str(t) for t in value["text"])
    for key in ("rating", "number", "datetime", "taxonomy", "labels"):
        if key in value:
            return value[key]
    return value


def annotation_labels(annotation: dict[str, Any]) -> dict[str, Any]:
    """``{from_name: value}`` of an annotation's result (several regions of one control:
    a list)."""
    labels: dict[str, Any] = {}
    for region in annotation.get("result") or []:
        name = region.get("from_name")
        if not name:
            continue
        value = region_value(region)
        if name in labels:
            previous = labels[name]
            labels[name] = [*(previous if isinstance(previous, list) else [previous]), value]
        else:
            labels[name] = value
    return labels


def _latest_annotation(task: dict[str, Any]) -> dict[str, Any] | None:
    done = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
    return max(done, key=lambda a: (str(a.get("updated_at") or ""), a.get("id") or 0), default=None)


def _matches(labels: dict[str, Any], only: dict[str, str]) -> bool:
    for name, wanted in only.items():
        value = labels.get(name)
        values = value if isinstance(value, list) else [value]
        if wanted not in [str(v) for v in values]:
            return False
    return True


def pulled_record(task: dict[str, Any], annotation: dict[str, Any], project_id: int) -> dict:
    """The Sift record (upload form) of an annotated task: the record as pushed (or the
    task's prompt/response), the response corrected when the annotator wrote one, and the
    annotation in ``metadata.label_studio``."""
    data = task.get("data") or {}
    labels = annotation_labels(annotation)
    messages = data.get("sift_messages")
    if not isinstance(messages, list) or not messages:
        messages = [{"role": "user", "content": str(data.get("prompt", ""))}]
        if data.get("response"):
            messages.append({"role": "assistant", "content": str(data["response"])})
    messages = [dict(m) for m in messages]
    correction = labels.get(CORRECTION_FIELD)
    corrected = isinstance(correction, str) and correction.strip() != ""
    if corrected:
        if messages[-1].get("role") == "assistant":
            messages[-1]["content"] = correction
        else:
            messages.append({"role": "assistant", "content": correction})
    record_id = data.get(RECORD_FIELD)
    metadata = dict(data.get("sift_metadata") or {})
    metadata["label_studio"] = {
        "project_id": project_id,
        "task_id": task.get("id"),
        "annotation_id": annotation.get("id"),
        "completed_by": annotation.get("completed_by"),
        "labels": labels,
        "corrected": corrected,
    }
    if record_id is not None:
        metadata["sift"] = {
            "record_id": str(record_id),
            "valuation_id": data.get("sift_valuation_id"),
            "dataset_id": data.get("sift_dataset_id"),
            "score": data.get("sift_score"),
            "rank": data.get("sift_rank"),
        }
    record: dict[str, Any] = {
        "id": str(record_id) if record_id is not None else f"ls-{task.get('id')}",
        "messages": [{"role": m.get("role"), "content": m.get("content")} for m in messages],
        "metadata": metadata,
    }
    if data.get("subtask"):
        record["subtask"] = str(data["subtask"])
    return record


def annotated_records(
    ls: Any, project_id: int, *, only: dict[str, str] | None = None
) -> Iterator[dict[str, Any]]:
    """Each annotated task's record (its latest submitted annotation), in task order;
    ``only``: the tasks whose labels have those values, e.g. ``{"verdict": "keep"}``."""
    for task in ls.tasks.list(project=project_id, fields="all"):
        task = _as_dict(task)
        annotation = _latest_annotation(task)
        if annotation is None:
            continue
        if only and not _matches(annotation_labels(annotation), only):
            continue
        yield pulled_record(task, annotation, project_id)


def pull(
    sift: Client,
    ls: Any,
    project_id: int,
    name: str,
    *,
    only: dict[str, str] | None = None,
) -> models.DatasetRead:
    """Upload the project's annotated tasks to Sift as a new dataset ``name``; the dataset.
    Its record ids are the pushed records' ids. The records go as a JSONL file in a temporary
    folder, streamed by ``datasets.upload`` (so the smaller limit of a JSON body,
    ``SIFT_MAX_JSON_UPLOAD_BYTES``, does not apply)."""
    with tempfile.TemporaryDirectory(prefix="sift-label-studio-") as folder:
        path = Path(folder) / f"label-studio-{project_id}.jsonl"
        n = 0
        with path.open("w", encoding="utf-8") as f:
            for record in annotated_records(ls, project_id, only=only):
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
                n += 1
        if not n:
            raise RuntimeError(f"Label Studio project {project_id} has no annotated task to pull")
        return sift.datasets.upload(path, name=name)
