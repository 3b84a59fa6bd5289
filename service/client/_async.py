"""The asyncio client, :class:`AsyncClient`. The blocking :class:`~service.client.Client` is
generated from this file (``python -m service.client.regenerate``), so edit here only."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import httpx
import pydantic

from service.client import _core, models
from service.client._core import (
    FilePart,
    Multipart,
    Progress,
    RetryPolicy,
    amultipart_chunks,
    asleep,
    body,
    params,
    path,
)
from service.client.errors import JobFailedError, SiftError, TransportError, WaitTimeoutError

M = TypeVar("M", bound=pydantic.BaseModel)
Body = pydantic.BaseModel | Mapping[str, Any] | None
PlotFormat = Literal["png", "svg"]


class AsyncClient:
    """A client of one Sift API with one API key.

    ``base_url`` and ``api_key`` default to ``SIFT_URL`` and ``SIFT_API_KEY``. Requests are
    retried per ``retry`` (429/503 and transport errors, bounded, honouring
    ``Retry-After``); every refusal is an :class:`~service.client.errors.ApiError` with the
    API's code, message and field. Pass ``http`` to bring your own httpx client (a test
    transport, a proxy): it is used as given and not closed by :meth:`aclose`.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        retry: RetryPolicy | None = None,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.base_url = _core.resolve_base_url(base_url)
        self.api_key = _core.resolve_api_key(api_key)
        self.retry = retry or RetryPolicy()
        self._owns_http = http is None
        self._http = http or httpx.AsyncClient(
            base_url=self.base_url, timeout=timeout, follow_redirects=False
        )
        if http is not None and not str(http.base_url).rstrip("/"):
            self._http.base_url = httpx.URL(self.base_url)
        self.keys = AsyncKeys(self)
        self.secrets = AsyncSecrets(self)
        self.datasets = AsyncDatasets(self)
        self.models = AsyncModels(self)
        self.reward_specs = AsyncRewardSpecs(self)
        self.valuations = AsyncValuations(self)
        self.selections = AsyncSelections(self)
        self.studies = AsyncStudies(self)
        self.score_sets = AsyncScoreSets(self)
        self.curations = AsyncCurations(self)
        self.evaluations = AsyncEvaluations(self)
        self.warmup_runs = AsyncWarmupRuns(self)
        self.webhooks = AsyncWebhooks(self)
        self.label_studio = AsyncLabelStudio(self)
        self._jobs: dict[str, Callable[[str], Any]] = {
            "valuation": self.valuations.get,
            "score_set": self.score_sets.get,
            "curation": self.curations.get,
            "study": self.studies.get,
            "evaluation": self.evaluations.get,
        }

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    # --- transport ----------------------------------------------------------------------------

    def _headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        headers = {"user-agent": _core.USER_AGENT, "accept": "application/json"}
        if self.api_key:
            headers["authorization"] = f"Bearer {self.api_key}"
        headers.update(extra or {})
        return headers

    async def _send(
        self,
        method: str,
        url: str,
        *,
        query: Mapping[str, Any] | None = None,
        json: Any = None,
        form: Multipart | None = None,
        stream: bool = False,
        accept: str | None = None,
        expect: frozenset[int] = frozenset(),
        retry: bool = True,
    ) -> httpx.Response:
        """One request with the retry policy; the response is checked: an error status raises
        its ApiError, an unexpected one a ProtocolError (``expect``: error statuses that are
        answers here, returned as they are)."""
        policy = self.retry if retry else _core.NO_RETRIES
        attempt = 0
        while True:
            headers = self._headers(form.headers if form is not None else None)
            if accept:
                headers["accept"] = accept
            request = self._http.build_request(
                method,
                url,
                params=query,
                json=json,
                content=amultipart_chunks(form) if form is not None else None,
                headers=headers,
            )
            try:
                response = await self._http.send(request, stream=stream)
            except httpx.TransportError as e:
                wait = policy.delay(attempt, None)
                if wait is None or not _core.may_retry_transport(method, e):
                    tries = f" (after {attempt + 1} attempts)" if attempt else ""
                    raise TransportError(
                        f"{method} {request.url.copy_with(query=None)}: "
                        f"{type(e).__name__}: {e or 'no detail'}{tries}"
                    ) from e
                await asleep(wait)
                attempt += 1
                continue
            if response.status_code in expect:
                return response
            if response.status_code in _core.RETRY_STATUSES:
                retry_after = _core.retry_after_seconds(response.headers.get("retry-after"))
                wait = policy.delay(attempt, retry_after)
                if wait is not None:
                    await response.aclose()
                    await asleep(wait)
                    attempt += 1
                    continue
            if response.status_code >= 400:
                content = await _read_capped(response)
                await response.aclose()
                raise _core.api_error(response, content)
            _core.check_status(response)
            return response

    async def _json(self, method: str, url: str, into: Any, **kwargs: Any) -> Any:
        response = await self._send(method, url, **kwargs)
        return _core.validate(response, into)

    async def _model(self, method: str, url: str, into: type[M], **kwargs: Any) -> M:
        result: M = await self._json(method, url, into, **kwargs)
        return result

    async def _none(self, method: str, url: str, **kwargs: Any) -> None:
        await self._send(method, url, **kwargs)

    async def _bytes(self, url: str, *, query: Mapping[str, Any] | None = None) -> bytes:
        response = await self._send("GET", url, query=query, accept="*/*")
        return response.content

    async def _iterate(
        self,
        url: str,
        page: type[Any],
        page_size: int | None,
        query: Mapping[str, Any] | None = None,
    ) -> AsyncIterator[Any]:
        """Every item of a paged list, a page at a time (``?limit=&offset=``). Without
        ``page_size`` the server's default page is asked for (it fits the deployment's
        SIFT_PAGE_SIZE_MAX, which a fixed size might not)."""
        if page_size is not None and page_size < 1:
            raise ValueError("page_size must be at least 1")
        offset: int | None = 0
        while offset is not None:
            response = await self._send(
                "GET", url, query={**(query or {}), **params(limit=page_size), "offset": offset}
            )
            current = _core.validate(response, page)
            for item in current.items:
                yield item
            offset = _core.next_offset(response, current, offset)

    @contextlib.asynccontextmanager
    async def _stream(
        self, url: str, query: Mapping[str, Any] | None = None
    ) -> AsyncIterator[httpx.Response]:
        response = await self._send("GET", url, query=query, stream=True, accept="*/*")
        try:
            yield response
        finally:
            await response.aclose()

    async def _lines(self, url: str, query: Mapping[str, Any]) -> AsyncIterator[dict[str, Any]]:
        async with self._stream(url, query) as response:
            number = 0
            async for line in response.aiter_lines():
                number += 1
                if line.strip():
                    yield _core.json_line(response, line, number)

    async def _download(self, url: str, query: Mapping[str, Any], to: str | Path) -> Path:
        """Stream a response body into ``to`` (written under a temporary name, then renamed,
        so a broken transfer never leaves a partial file under the real name)."""
        target = Path(to)
        partial = target.with_name(target.name + ".partial")
        try:
            async with self._stream(url, query) as response:
                with partial.open("wb") as f:
                    async for chunk in response.aiter_bytes():
                        f.write(chunk)
            partial.replace(target)
        except httpx.TransportError as e:
            raise TransportError(f"GET {url}: the download broke off: {e}") from e
        except OSError as e:
            raise SiftError(f"cannot write {target}: {e.strerror or e}") from None
        finally:
            partial.unlink(missing_ok=True)
        return target

    # --- the API's own routes -----------------------------------------------------------------

    async def me(self) -> models.Me:
        """The key's tenant and role: a cheap check that the URL and key work."""
        return await self._model("GET", "/v1/me", models.Me)

    async def health(self) -> models.Health:
        """``/healthz``: the API process is up (no key needed)."""
        return await self._model("GET", "/healthz", models.Health)

    async def ready(self) -> models.Readiness:
        """``/readyz``: database, broker and blob store. A 503 is returned, not raised (nor
        retried): its body says which dependency is down."""
        return await self._model(
            "GET", "/readyz", models.Readiness, expect=frozenset({503}), retry=False
        )

    async def wait(
        self,
        job: Any,
        *,
        kind: str | None = None,
        progress: Callable[[Progress], object] | None = None,
        timeout: float | None = None,
        poll_interval: float = 1.0,
        raise_on_failure: bool = True,
    ) -> Any:
        """Poll a job-backed resource (a valuation, score set, curation, study or evaluation as
        returned by the client, or its id with ``kind=``) until it finishes; return its final
        state.

        ``progress`` is called after every poll with a :class:`Progress` (status, stage,
        done/total and an ETA for the stage). A job that ends ``failed`` or ``cancelled``
        raises :class:`JobFailedError` (unless ``raise_on_failure`` is False); one still
        running after ``timeout`` seconds raises :class:`WaitTimeoutError` and keeps running.
        """
        kind, job_id = _core.job_ref(job, kind)
        if poll_interval <= 0:
            raise ValueError("poll_interval must be > 0 seconds")
        deadline = _core.job_deadline(timeout)
        get = self._jobs[kind]
        tracker = _core.ProgressTracker(kind, job_id)
        while True:
            resource = await get(job_id)
            if progress is not None:
                progress(tracker.update(resource))
            if resource.status in _core.FINISHED:
                break
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise WaitTimeoutError(kind, resource, timeout or 0.0)
            await asleep(poll_interval if left is None else min(poll_interval, left))
        if raise_on_failure and resource.status != "succeeded":
            raise JobFailedError(kind, resource)
        return resource


async def _read_capped(response: httpx.Response) -> bytes:
    """An error body, at most MAX_ERROR_BODY bytes of it (a hostile or broken server may send
    an endless one)."""
    content = bytearray()
    async for chunk in response.aiter_bytes():
        content += chunk
        if len(content) >= _core.MAX_ERROR_BODY:
            break
    return bytes(content[: _core.MAX_ERROR_BODY])


class _AsyncResource:
    def __init__(self, client: AsyncClient) -> None:
        self._c = client


class AsyncKeys(_AsyncResource):
    """API keys of the caller's tenant (admin keys only)."""

    async def create(
        self, name: str, role: Literal["admin", "member", "read_only"] = "member"
    ) -> models.ApiKeyCreated:
        """A new key; ``.key`` holds it, shown this once."""
        return await self._c._model(
            "POST", "/v1/keys", models.ApiKeyCreated, json={"name": name, "role": role}
        )

    async def list(self) -> list[models.ApiKeyRead]:
        return await self._c._json("GET", "/v1/keys", list[models.ApiKeyRead])  # type: ignore[no-any-return]

    async def revoke(self, key_id: Any) -> None:
        await self._c._none("DELETE", path("/v1/keys/{}", key_id))


class AsyncSecrets(_AsyncResource):
    """Write-only tenant secrets (admin keys only), named by requests such as an assist
    endpoint's ``api_key_secret``."""

    async def create(self, name: str, value: str, hosts: Sequence[str]) -> models.SecretRead:
        payload = {"name": name, "value": value, "hosts": list(hosts)}
        return await self._c._model("POST", "/v1/secrets", models.SecretRead, json=payload)

    async def list(self) -> list[models.SecretRead]:
        return await self._c._json("GET", "/v1/secrets", list[models.SecretRead])  # type: ignore[no-any-return]

    async def delete(self, name: str) -> None:
        await self._c._none("DELETE", path("/v1/secrets/{}", name))


def _record_filter(record_ids: Sequence[str] | None) -> list[str] | None:
    """``record_ids`` as the repeated ``record_id`` query parameter. An empty list is refused:
    sent, it would be no parameter at all, and so every record."""
    if record_ids is None:
        return None
    if isinstance(record_ids, str):
        raise TypeError("record_ids is a sequence of ids, not one string")
    if not record_ids:
        raise ValueError("record_ids names no record (None lists every record)")
    return list(record_ids)


class AsyncDatasets(_AsyncResource):
    async def upload(self, file: str | Path, *, name: str | None = None) -> models.DatasetRead:
        """Upload a JSONL file (one record a line), streamed from disk: neither this process
        nor the API holds it whole. ``name`` defaults to the file's stem."""
        file = Path(file)
        form = Multipart(
            [
                ("name", name or file.stem),
                FilePart("file", file, "application/x-ndjson"),
            ]
        )
        return await self._c._model("POST", "/v1/datasets", models.DatasetRead, form=form)

    async def create(self, name: str, records: Sequence[Mapping[str, Any]]) -> models.DatasetRead:
        """A dataset from records in memory (a JSON body: the server reads it whole, up to
        SIFT_MAX_JSON_UPLOAD_BYTES; use :meth:`upload` for large ones)."""
        payload = {"name": name, "records": [dict(r) for r in records]}
        return await self._c._model("POST", "/v1/datasets", models.DatasetRead, json=payload)

    async def import_file(
        self,
        file: str | Path,
        *,
        mapping: Mapping[str, Any],
        name: str | None = None,
        format: Literal["auto", "parquet", "csv", "jsonl"] = "auto",
    ) -> models.DatasetRead:
        """Upload a table (parquet, CSV, JSONL, gzipped CSV/JSONL), streamed, with a column
        mapping such as ``{"prompt": "question", "response": "answer"}``; the server maps it."""
        file = Path(file)
        form = Multipart(
            [
                ("name", name or file.name.split(".")[0]),
                ("mapping", json.dumps(dict(mapping))),
                ("format", format),
                FilePart("file", file),
            ]
        )
        return await self._c._model("POST", "/v1/datasets/import", models.DatasetRead, form=form)

    async def import_source(
        self,
        name: str,
        source: Mapping[str, Any],
        mapping: Mapping[str, Any],
    ) -> models.DatasetRead:
        """Import a table the server reads itself: ``{"path": ...}`` under its
        SIFT_IMPORT_ROOTS, or ``{"hub": ...}`` where the operator allows the hub."""
        payload = {"name": name, "source": dict(source), "mapping": dict(mapping)}
        return await self._c._model("POST", "/v1/datasets/import", models.DatasetRead, json=payload)

    async def list(self, *, limit: int | None = None, offset: int = 0) -> models.PageDatasetRead:
        query = params(limit=limit, offset=offset)
        return await self._c._model("GET", "/v1/datasets", models.PageDatasetRead, query=query)

    async def iter(self, *, page_size: int | None = None) -> AsyncIterator[models.DatasetRead]:
        """Every dataset, newest first, fetched a page at a time."""
        async for item in self._c._iterate("/v1/datasets", models.PageDatasetRead, page_size):
            yield item

    async def get(self, dataset_id: Any) -> models.DatasetRead:
        return await self._c._model("GET", path("/v1/datasets/{}", dataset_id), models.DatasetRead)

    async def delete(self, dataset_id: Any, *, cascade: bool = False) -> None:
        """409 (ConflictError naming them) while jobs read it, unless ``cascade``."""
        await self._c._none(
            "DELETE", path("/v1/datasets/{}", dataset_id), query=params(cascade=cascade or None)
        )

    async def records(
        self,
        dataset_id: Any,
        *,
        record_ids: Sequence[str] | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> models.PageRecordRead:
        """A page of records in upload order; with ``record_ids`` (at most 200 a request),
        only those records (ids the dataset lacks are left out; ``total`` counts the found)."""
        return await self._c._model(
            "GET",
            path("/v1/datasets/{}/records", dataset_id),
            models.PageRecordRead,
            query=params(record_id=_record_filter(record_ids), limit=limit, offset=offset),
        )

    async def iter_records(
        self,
        dataset_id: Any,
        *,
        record_ids: Sequence[str] | None = None,
        page_size: int | None = None,
    ) -> AsyncIterator[models.RecordRead]:
        """Every record in upload order; with ``record_ids`` (at most 200), those records."""
        url = path("/v1/datasets/{}/records", dataset_id)
        query = params(record_id=_record_filter(record_ids))
        async for item in self._c._iterate(url, models.PageRecordRead, page_size, query):
            yield item


class AsyncModels(_AsyncResource):
    async def create(self, name: str, source: str) -> models.ModelRead:
        """Register ``builtin:tiny-llama``, a local folder or GGUF file, or a hub id."""
        payload = {"name": name, "source": source}
        return await self._c._model("POST", "/v1/models", models.ModelRead, json=payload)

    async def list(self, *, limit: int | None = None, offset: int = 0) -> models.PageModelRead:
        query = params(limit=limit, offset=offset)
        return await self._c._model("GET", "/v1/models", models.PageModelRead, query=query)

    async def iter(self, *, page_size: int | None = None) -> AsyncIterator[models.ModelRead]:
        async for item in self._c._iterate("/v1/models", models.PageModelRead, page_size):
            yield item

    async def get(self, model_id: Any) -> models.ModelRead:
        return await self._c._model("GET", path("/v1/models/{}", model_id), models.ModelRead)

    async def delete(self, model_id: Any, *, cascade: bool = False) -> None:
        await self._c._none(
            "DELETE", path("/v1/models/{}", model_id), query=params(cascade=cascade or None)
        )


class AsyncRewardSpecs(_AsyncResource):
    async def create(
        self, name: str, spec: pydantic.BaseModel | Mapping[str, Any]
    ) -> models.RewardSpecRead:
        """A reward for NICE and reward score sets, e.g. ``{"kind": "numeric"}``."""
        payload = {"name": name, "spec": _core.jsonable(spec)}
        return await self._c._model("POST", "/v1/reward-specs", models.RewardSpecRead, json=payload)

    async def list(self, *, limit: int | None = None, offset: int = 0) -> models.PageRewardSpecRead:
        query = params(limit=limit, offset=offset)
        return await self._c._model(
            "GET", "/v1/reward-specs", models.PageRewardSpecRead, query=query
        )

    async def iter(self, *, page_size: int | None = None) -> AsyncIterator[models.RewardSpecRead]:
        url = "/v1/reward-specs"
        async for item in self._c._iterate(url, models.PageRewardSpecRead, page_size):
            yield item

    async def get(self, spec_id: Any) -> models.RewardSpecRead:
        return await self._c._model(
            "GET", path("/v1/reward-specs/{}", spec_id), models.RewardSpecRead
        )

    async def delete(self, spec_id: Any, *, cascade: bool = False) -> None:
        await self._c._none(
            "DELETE", path("/v1/reward-specs/{}", spec_id), query=params(cascade=cascade or None)
        )


class AsyncValuations(_AsyncResource):
    async def create(self, request: Body = None, **fields: Any) -> models.ValuationRead:
        """Start a valuation (202: queued). Give a :class:`models.ValuationCreate`, a mapping,
        or the fields as keywords (``model_id=, pool_dataset_id=, probe_dataset_id=,
        method=, settings=``); keywords win. :meth:`AsyncClient.wait` follows it."""
        return await self._c._model(
            "POST", "/v1/valuations", models.ValuationRead, json=body(request, fields)
        )

    async def list(self, *, limit: int | None = None, offset: int = 0) -> models.PageValuationRead:
        query = params(limit=limit, offset=offset)
        return await self._c._model("GET", "/v1/valuations", models.PageValuationRead, query=query)

    async def iter(self, *, page_size: int | None = None) -> AsyncIterator[models.ValuationRead]:
        url = "/v1/valuations"
        async for item in self._c._iterate(url, models.PageValuationRead, page_size):
            yield item

    async def get(self, valuation_id: Any) -> models.ValuationRead:
        return await self._c._model(
            "GET", path("/v1/valuations/{}", valuation_id), models.ValuationRead
        )

    async def delete(self, valuation_id: Any) -> None:
        """Deletes its scores, samples and selections; a live one is cancelled."""
        await self._c._none("DELETE", path("/v1/valuations/{}", valuation_id))

    async def cancel(self, valuation_id: Any) -> models.ValuationRead:
        """409 (ConflictError) once it has finished."""
        return await self._c._model(
            "POST", path("/v1/valuations/{}/cancel", valuation_id), models.ValuationRead
        )

    async def scores(
        self, valuation_id: Any, *, limit: int | None = None, offset: int = 0
    ) -> models.PageScoreRead:
        """Pool records by rank (0 best); 409 until the valuation has succeeded."""
        return await self._c._model(
            "GET",
            path("/v1/valuations/{}/scores", valuation_id),
            models.PageScoreRead,
            query=params(limit=limit, offset=offset),
        )

    async def iter_scores(
        self, valuation_id: Any, *, page_size: int | None = None
    ) -> AsyncIterator[models.ScoreRead]:
        url = path("/v1/valuations/{}/scores", valuation_id)
        async for item in self._c._iterate(url, models.PageScoreRead, page_size):
            yield item

    async def samples(
        self, valuation_id: Any, *, limit: int | None = None, offset: int = 0
    ) -> models.PageSampleRead:
        """NICE's sampled responses with their rewards."""
        return await self._c._model(
            "GET",
            path("/v1/valuations/{}/samples", valuation_id),
            models.PageSampleRead,
            query=params(limit=limit, offset=offset),
        )

    async def iter_samples(
        self, valuation_id: Any, *, page_size: int | None = None
    ) -> AsyncIterator[models.SampleRead]:
        url = path("/v1/valuations/{}/samples", valuation_id)
        async for item in self._c._iterate(url, models.PageSampleRead, page_size):
            yield item

    async def distribution(self, valuation_id: Any) -> models.ValuationDistributionRead:
        return await self._c._model(
            "GET",
            path("/v1/valuations/{}/distribution", valuation_id),
            models.ValuationDistributionRead,
        )

    async def distribution_png(self, valuation_id: Any) -> bytes:
        return await self._c._bytes(path("/v1/valuations/{}/distribution.png", valuation_id))

    async def select(
        self,
        valuation_id: Any,
        request: Body = None,
        *,
        rule: Literal["top_k", "top_fraction", "threshold"] | None = None,
        value: float | None = None,
        order: Literal["desc", "asc"] | None = None,
    ) -> models.SelectionRead:
        """A selection of the valuation's records, e.g. ``select(v, rule="top_k", value=50)``;
        ``order="asc"`` takes the lowest scores."""
        payload = body(request, {"rule": rule, "value": value, "order": order})
        return await self._c._model(
            "POST",
            path("/v1/valuations/{}/selections", valuation_id),
            models.SelectionRead,
            json=payload,
        )


class AsyncSelections(_AsyncResource):
    async def get(self, selection_id: Any) -> models.SelectionRead:
        return await self._c._model(
            "GET", path("/v1/selections/{}", selection_id), models.SelectionRead
        )

    async def delete(self, selection_id: Any) -> None:
        await self._c._none("DELETE", path("/v1/selections/{}", selection_id))

    async def export(self, selection_id: Any) -> AsyncIterator[dict[str, Any]]:
        """The selected records as uploaded, best rank first, streamed line by line."""
        url = path("/v1/selections/{}/export", selection_id)
        async for record in self._c._lines(url, {"format": "jsonl"}):
            yield record

    async def download(self, selection_id: Any, to: str | Path) -> Path:
        """The export as a JSONL file at ``to``, streamed to disk."""
        url = path("/v1/selections/{}/export", selection_id)
        return await self._c._download(url, {"format": "jsonl"}, to)


class AsyncStudies(_AsyncResource):
    async def create(self, request: Body = None, **fields: Any) -> models.StudyRead:
        """Start a strategy study (202): ``warmup_run_id``, ``eval_dataset_id``,
        ``probe_sets``, ``pair_key``, ``reference``..."""
        return await self._c._model(
            "POST", "/v1/studies", models.StudyRead, json=body(request, fields)
        )

    async def list(self, *, limit: int | None = None, offset: int = 0) -> models.PageStudyRead:
        query = params(limit=limit, offset=offset)
        return await self._c._model("GET", "/v1/studies", models.PageStudyRead, query=query)

    async def iter(self, *, page_size: int | None = None) -> AsyncIterator[models.StudyRead]:
        async for item in self._c._iterate("/v1/studies", models.PageStudyRead, page_size):
            yield item

    async def probe_queries(
        self, strategy: str, examples: Sequence[Mapping[str, Any]]
    ) -> models.ProbeQueriesRead:
        """Probe queries from reference examples with a seed 001 wrapper (cot, clarify,
        evaluate)."""
        payload = {"strategy": strategy, "examples": [_core.jsonable(e) for e in examples]}
        return await self._c._model(
            "POST", "/v1/studies/probe-queries", models.ProbeQueriesRead, json=payload
        )

    async def get(self, study_id: Any) -> models.StudyRead:
        return await self._c._model("GET", path("/v1/studies/{}", study_id), models.StudyRead)

    async def delete(self, study_id: Any) -> None:
        await self._c._none("DELETE", path("/v1/studies/{}", study_id))

    async def cancel(self, study_id: Any) -> models.StudyRead:
        return await self._c._model(
            "POST", path("/v1/studies/{}/cancel", study_id), models.StudyRead
        )

    async def plot(self, study_id: Any, fmt: PlotFormat = "png") -> bytes:
        return await self._c._bytes(path("/v1/studies/{}/plot.{}", study_id, fmt))


class AsyncScoreSets(_AsyncResource):
    async def create(self, request: Body = None, **fields: Any) -> models.ScoreSetRead:
        """Start a score set (202): ``scorer=``, ``dataset_id=``, and what the scorer needs
        (``model_id``, ``probe_dataset_id``, ``reward_spec_id``, ``settings``)."""
        return await self._c._model(
            "POST", "/v1/score-sets", models.ScoreSetRead, json=body(request, fields)
        )

    async def list(self, *, limit: int | None = None, offset: int = 0) -> models.PageScoreSetRead:
        query = params(limit=limit, offset=offset)
        return await self._c._model("GET", "/v1/score-sets", models.PageScoreSetRead, query=query)

    async def iter(self, *, page_size: int | None = None) -> AsyncIterator[models.ScoreSetRead]:
        async for item in self._c._iterate("/v1/score-sets", models.PageScoreSetRead, page_size):
            yield item

    async def compare(
        self,
        a: Any,
        a_column: str,
        b: Any,
        b_column: str,
        *,
        k: int = 100,
        a_order: Literal["desc", "asc"] = "desc",
        b_order: Literal["desc", "asc"] = "desc",
    ) -> models.CompareRead:
        """Spearman correlation and top-k overlap of two columns."""
        query = params(
            a=_core.ident(a),
            a_column=a_column,
            b=_core.ident(b),
            b_column=b_column,
            k=k,
            a_order=a_order,
            b_order=b_order,
        )
        return await self._c._model(
            "GET", "/v1/score-sets/compare", models.CompareRead, query=query
        )

    async def get(self, score_set_id: Any) -> models.ScoreSetRead:
        return await self._c._model(
            "GET", path("/v1/score-sets/{}", score_set_id), models.ScoreSetRead
        )

    async def delete(self, score_set_id: Any, *, cascade: bool = False) -> None:
        await self._c._none(
            "DELETE",
            path("/v1/score-sets/{}", score_set_id),
            query=params(cascade=cascade or None),
        )

    async def cancel(self, score_set_id: Any) -> models.ScoreSetRead:
        return await self._c._model(
            "POST", path("/v1/score-sets/{}/cancel", score_set_id), models.ScoreSetRead
        )

    async def values(
        self, score_set_id: Any, *, limit: int | None = None, offset: int = 0
    ) -> models.PageRecordValues:
        return await self._c._model(
            "GET",
            path("/v1/score-sets/{}/values", score_set_id),
            models.PageRecordValues,
            query=params(limit=limit, offset=offset),
        )

    async def iter_values(
        self, score_set_id: Any, *, page_size: int | None = None
    ) -> AsyncIterator[models.RecordValues]:
        url = path("/v1/score-sets/{}/values", score_set_id)
        async for item in self._c._iterate(url, models.PageRecordValues, page_size):
            yield item

    async def distribution(self, score_set_id: Any, column: str) -> models.DistributionRead:
        return await self._c._model(
            "GET",
            path("/v1/score-sets/{}/distribution", score_set_id),
            models.DistributionRead,
            query={"column": column},
        )

    async def distribution_png(self, score_set_id: Any, column: str) -> bytes:
        return await self._c._bytes(
            path("/v1/score-sets/{}/distribution.png", score_set_id), query={"column": column}
        )


class AsyncCurations(_AsyncResource):
    async def create(self, request: Body = None, **fields: Any) -> models.CurationRead:
        """Start a curation (202): ``dataset_id``, ``filters``, ``pick``, ``budget``..."""
        return await self._c._model(
            "POST", "/v1/curations", models.CurationRead, json=body(request, fields)
        )

    async def list(self, *, limit: int | None = None, offset: int = 0) -> models.PageCurationRead:
        query = params(limit=limit, offset=offset)
        return await self._c._model("GET", "/v1/curations", models.PageCurationRead, query=query)

    async def iter(self, *, page_size: int | None = None) -> AsyncIterator[models.CurationRead]:
        async for item in self._c._iterate("/v1/curations", models.PageCurationRead, page_size):
            yield item

    async def get(self, curation_id: Any) -> models.CurationRead:
        return await self._c._model(
            "GET", path("/v1/curations/{}", curation_id), models.CurationRead
        )

    async def delete(self, curation_id: Any) -> None:
        await self._c._none("DELETE", path("/v1/curations/{}", curation_id))

    async def cancel(self, curation_id: Any) -> models.CurationRead:
        return await self._c._model(
            "POST", path("/v1/curations/{}/cancel", curation_id), models.CurationRead
        )

    async def export(self, curation_id: Any) -> AsyncIterator[dict[str, Any]]:
        """The picked records as uploaded, in pick order; 409 until it has succeeded."""
        url = path("/v1/curations/{}/export", curation_id)
        async for record in self._c._lines(url, {"format": "jsonl"}):
            yield record

    async def download(self, curation_id: Any, to: str | Path) -> Path:
        url = path("/v1/curations/{}/export", curation_id)
        return await self._c._download(url, {"format": "jsonl"}, to)


class AsyncEvaluations(_AsyncResource):
    async def create(self, request: Body = None, **fields: Any) -> models.EvaluationRead:
        """Start an evaluation (202): ``model_id``, ``pool_dataset_id``,
        ``target_dataset_id``, ``budget``, ``arms``, ``metric``, ``settings``."""
        return await self._c._model(
            "POST", "/v1/evaluations", models.EvaluationRead, json=body(request, fields)
        )

    async def list(self, *, limit: int | None = None, offset: int = 0) -> models.PageEvaluationRead:
        query = params(limit=limit, offset=offset)
        return await self._c._model(
            "GET", "/v1/evaluations", models.PageEvaluationRead, query=query
        )

    async def iter(self, *, page_size: int | None = None) -> AsyncIterator[models.EvaluationRead]:
        url = "/v1/evaluations"
        async for item in self._c._iterate(url, models.PageEvaluationRead, page_size):
            yield item

    async def get(self, evaluation_id: Any) -> models.EvaluationRead:
        return await self._c._model(
            "GET", path("/v1/evaluations/{}", evaluation_id), models.EvaluationRead
        )

    async def delete(self, evaluation_id: Any) -> None:
        await self._c._none("DELETE", path("/v1/evaluations/{}", evaluation_id))

    async def cancel(self, evaluation_id: Any) -> models.EvaluationRead:
        return await self._c._model(
            "POST", path("/v1/evaluations/{}/cancel", evaluation_id), models.EvaluationRead
        )

    async def examples(
        self, evaluation_id: Any, *, limit: int | None = None, offset: int = 0
    ) -> models.PageExampleRead:
        return await self._c._model(
            "GET",
            path("/v1/evaluations/{}/examples", evaluation_id),
            models.PageExampleRead,
            query=params(limit=limit, offset=offset),
        )

    async def iter_examples(
        self, evaluation_id: Any, *, page_size: int | None = None
    ) -> AsyncIterator[models.ExampleRead]:
        url = path("/v1/evaluations/{}/examples", evaluation_id)
        async for item in self._c._iterate(url, models.PageExampleRead, page_size):
            yield item

    async def plot(self, evaluation_id: Any, fmt: PlotFormat = "png") -> bytes:
        return await self._c._bytes(path("/v1/evaluations/{}/plot.{}", evaluation_id, fmt))


class AsyncWarmupRuns(_AsyncResource):
    async def upload(
        self,
        model_id: Any,
        *,
        lora_alpha: float,
        checkpoints: Sequence[tuple[int, float, str | Path]],
    ) -> models.WarmupRunRead:
        """Upload LoRA checkpoints trained elsewhere: ``(step, learning_rate, adapter path)``
        per checkpoint, each a PEFT safetensors adapter, streamed from disk. The same upload
        again returns the existing run."""
        fields: list[tuple[str, str] | FilePart] = [
            ("model_id", _core.ident(model_id)),
            ("lora_alpha", repr(float(lora_alpha))),
        ]
        fields += [("steps", str(int(step))) for step, _, _ in checkpoints]
        fields += [("learning_rates", repr(float(lr))) for _, lr, _ in checkpoints]
        fields += [FilePart("adapters", Path(file)) for _, _, file in checkpoints]
        return await self._c._model(
            "POST", "/v1/warmup-runs", models.WarmupRunRead, form=Multipart(fields)
        )

    async def list(self, *, limit: int | None = None, offset: int = 0) -> models.PageWarmupRunRead:
        query = params(limit=limit, offset=offset)
        return await self._c._model("GET", "/v1/warmup-runs", models.PageWarmupRunRead, query=query)

    async def iter(self, *, page_size: int | None = None) -> AsyncIterator[models.WarmupRunRead]:
        url = "/v1/warmup-runs"
        async for item in self._c._iterate(url, models.PageWarmupRunRead, page_size):
            yield item

    async def get(self, warmup_run_id: Any) -> models.WarmupRunRead:
        return await self._c._model(
            "GET", path("/v1/warmup-runs/{}", warmup_run_id), models.WarmupRunRead
        )

    async def delete(self, warmup_run_id: Any, *, cascade: bool = False) -> None:
        await self._c._none(
            "DELETE",
            path("/v1/warmup-runs/{}", warmup_run_id),
            query=params(cascade=cascade or None),
        )

    async def plot(self, warmup_run_id: Any, fmt: PlotFormat = "png") -> bytes:
        return await self._c._bytes(path("/v1/warmup-runs/{}/plot.{}", warmup_run_id, fmt))


class AsyncWebhooks(_AsyncResource):
    """Endpoints that receive this tenant's job events, their delivery log, and the signing
    secret of jobs' ``callback_url`` deliveries."""

    async def create(
        self, url: str, event_types: Sequence[str], *, description: str | None = None
    ) -> models.WebhookCreated:
        """Register ``url``; ``.secret`` (shown only now) verifies each delivery's
        ``webhook-signature``."""
        payload = body(None, {"url": url, "event_types": list(event_types)})
        payload.update({"description": description} if description is not None else {})
        return await self._c._model("POST", "/v1/webhooks", models.WebhookCreated, json=payload)

    async def list(self, *, limit: int | None = None, offset: int = 0) -> models.PageWebhookRead:
        query = params(limit=limit, offset=offset)
        return await self._c._model("GET", "/v1/webhooks", models.PageWebhookRead, query=query)

    async def iter(self, *, page_size: int | None = None) -> AsyncIterator[models.WebhookRead]:
        async for item in self._c._iterate("/v1/webhooks", models.PageWebhookRead, page_size):
            yield item

    async def get(self, webhook_id: Any) -> models.WebhookRead:
        return await self._c._model("GET", path("/v1/webhooks/{}", webhook_id), models.WebhookRead)

    async def delete(self, webhook_id: Any) -> None:
        await self._c._none("DELETE", path("/v1/webhooks/{}", webhook_id))

    async def deliveries(
        self,
        webhook_id: Any,
        *,
        status: str | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> models.PageDeliveryRead:
        """One endpoint's deliveries, newest first (``status``: only those in that state)."""
        return await self._c._model(
            "GET",
            path("/v1/webhooks/{}/deliveries", webhook_id),
            models.PageDeliveryRead,
            query=params(status=status, limit=limit, offset=offset),
        )

    async def iter_deliveries(
        self, webhook_id: Any, *, status: str | None = None, page_size: int | None = None
    ) -> AsyncIterator[models.DeliveryRead]:
        url = path("/v1/webhooks/{}/deliveries", webhook_id)
        query = params(status=status)
        async for item in self._c._iterate(url, models.PageDeliveryRead, page_size, query):
            yield item

    async def all_deliveries(
        self,
        *,
        status: str | None = None,
        job_id: str | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> models.PageDeliveryRead:
        """Every delivery of the tenant (endpoints' and jobs' ``callback_url``)."""
        return await self._c._model(
            "GET",
            "/v1/webhook-deliveries",
            models.PageDeliveryRead,
            query=params(status=status, job_id=job_id, limit=limit, offset=offset),
        )

    async def signing_secret(self) -> models.SigningSecretRead:
        """Whether the tenant has a callback signing secret (never its value)."""
        return await self._c._model("GET", "/v1/webhook-secret", models.SigningSecretRead)

    async def rotate_signing_secret(self) -> models.SigningSecretCreated:
        """Create or rotate it (admin keys); the value is in this reply only."""
        return await self._c._model("POST", "/v1/webhook-secret", models.SigningSecretCreated)


class AsyncLabelStudio(_AsyncResource):
    """The Label Studio ML-backend routes of a valuation. Label Studio calls them itself; here
    they serve to check a connection before giving Label Studio the URL and key."""

    async def health(self, valuation_id: Any) -> models.HealthRead:
        url = path("/v1/label-studio/valuations/{}/health", valuation_id)
        return await self._c._model("GET", url, models.HealthRead)

    async def setup(self, valuation_id: Any, request: Body = None) -> models.SetupRead:
        url = path("/v1/label-studio/valuations/{}/setup", valuation_id)
        return await self._c._model("POST", url, models.SetupRead, json=body(request, {}))

    async def predict(
        self, valuation_id: Any, tasks: Sequence[Mapping[str, Any]], **fields: Any
    ) -> models.PredictRead:
        """Predictions (the valuation's score) for tasks ``{"id", "data": {"sift_record_id"}}``."""
        url = path("/v1/label-studio/valuations/{}/predict", valuation_id)
        payload = body(None, {"tasks": [dict(t) for t in tasks], **fields})
        return await self._c._model("POST", url, models.PredictRead, json=payload)

    async def webhook(
        self, valuation_id: Any, request: Body = None
    ) -> models.LabelStudioWebhookRead:
        url = path("/v1/label-studio/valuations/{}/webhook", valuation_id)
        return await self._c._model(
            "POST", url, models.LabelStudioWebhookRead, json=body(request, {})
        )
