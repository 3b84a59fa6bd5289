"""Rewards r(x, y) for NICE: score a sampled response y to a probe prompt x with a number.

NICE values training data by the policy gradient of an expected reward, so the reward never
has to be differentiable: it can be string matching, a number check, unit tests run in a
sandbox, a reward model or a remote judge. The seven kinds mirror the wire format in
``workers.contracts`` ("Reward specs"): each dataclass here has the same ``kind``, field names
and defaults, so the glue builds one with ``reward_from_dict(spec.model_dump())`` and this
module stays free of pydantic. ``compute_rewards`` returns one finite float per item.

Label kinds (``REWARD_NEEDS_LABEL``) compare against the probe's label; the others use the
prompt and response only (``python_tests`` also reads ``metadata["test"]`` and
``metadata["entry_point"]``, HumanEval-style). Heavy imports (torch, transformers) happen only
when a reward model is scored.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import regex

from workers.engine import http
from workers.engine.errors import EngineError, InvalidInput
from workers.engine.sandbox import run_python
from workers.outbound import OutboundPolicy, guarded_client


@dataclass(frozen=True)
class RewardItem:
    """One sampled response to score; ``metadata`` carries per-probe extras (tests, entry point)."""

    probe_id: str
    prompt: str
    response: str
    label: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


def record_label(messages: Sequence[Mapping[str, str]], metadata: Mapping[str, Any]) -> str | None:
    """What a label reward compares a generated response with, for a probe or target record:
    its ``metadata.label`` when that is a non-empty string (e.g. the gold letter of a
    multiple-choice record whose response is ``"B. text"``), else its response, else None."""
    label = metadata.get("label")
    if isinstance(label, str) and label:
        return label
    if messages and messages[-1]["role"] == "assistant":
        return messages[-1]["content"]
    return None


def _check_bool(spec: object, *names: str) -> None:
    for name in names:
        if not isinstance(getattr(spec, name), bool):
            raise InvalidInput(f"{type(spec).__name__}.{name} must be a bool")


def _check_int(spec: object, name: str, lo: int, hi: int | None = None) -> None:
    v = getattr(spec, name)
    if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
        bound = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise InvalidInput(f"{type(spec).__name__}.{name} must be an integer {bound}, got {v!r}")


def _check_float(
    spec: object, name: str, *, lo: float, hi: float | None = None, open_lo: bool = False
) -> None:
    v = getattr(spec, name)
    ok = not isinstance(v, bool) and isinstance(v, int | float) and math.isfinite(v)
    ok = ok and (v > lo if open_lo else v >= lo) and (hi is None or v <= hi)
    if not ok:
        raise InvalidInput(f"{type(spec).__name__}.{name} out of range: {v!r}")


class _Spec:
    """Shared checks: ``kind`` must be the class's own (it is the dispatch key on the wire)."""

    KIND: ClassVar[str]
    NEEDS_LABEL: ClassVar[bool]
    kind: str

    def _check_kind(self) -> None:
        if self.kind != self.KIND:
            raise InvalidInput(f"{type(self).__name__}.kind must be {self.KIND!r}")


@dataclass(frozen=True, kw_only=True)
class ExactMatch(_Spec):
    """1 if the response equals the label after optional strip / casefold."""

    KIND: ClassVar[str] = "exact_match"
    NEEDS_LABEL: ClassVar[bool] = True
    kind: Literal["exact_match"] = "exact_match"
    ignore_case: bool = True
    strip: bool = True

    def __post_init__(self) -> None:
        self._check_kind()
        _check_bool(self, "ignore_case", "strip")


@dataclass(frozen=True, kw_only=True)
class Contains(_Spec):
    """1 if the label occurs in the response (an empty label occurs everywhere)."""

    KIND: ClassVar[str] = "contains"
    NEEDS_LABEL: ClassVar[bool] = True
    kind: Literal["contains"] = "contains"
    ignore_case: bool = True

    def __post_init__(self) -> None:
        self._check_kind()
        _check_bool(self, "ignore_case")


@dataclass(frozen=True, kw_only=True)
class Regex(_Spec):
    """1 if ``pattern`` finds an answer in the response (group 1, else the whole match) that
    equals the label, both stripped (and casefolded with ``ignore_case``)."""

    KIND: ClassVar[str] = "regex"
    NEEDS_LABEL: ClassVar[bool] = True
    kind: Literal["regex"] = "regex"
    pattern: str
    ignore_case: bool = False

    def __post_init__(self) -> None:
        self._check_kind()
        _check_bool(self, "ignore_case")
        if not isinstance(self.pattern, str) or not 1 <= len(self.pattern) <= 2000:
            raise InvalidInput("Regex.pattern must be a string of 1 to 2000 characters")
        try:
            re.compile(self.pattern)  # the syntax the API validates with
            compiled = regex.compile(self.pattern, regex.IGNORECASE if self.ignore_case else 0)
        except (re.error, regex.error) as exc:
            raise InvalidInput(f"invalid regex pattern {self.pattern!r}: {exc}") from exc
        object.__setattr__(self, "_compiled", compiled)

    @property
    def compiled(self) -> regex.Pattern[str]:
        return self._compiled  # type: ignore[attr-defined, no-any-return]


@dataclass(frozen=True, kw_only=True)
class Numeric(_Spec):
    """1 if the last number in the response is ``math.isclose`` to the numeric label."""

    KIND: ClassVar[str] = "numeric"
    NEEDS_LABEL: ClassVar[bool] = True
    kind: Literal["numeric"] = "numeric"
    abs_tol: float = 1e-6
    rel_tol: float = 0.0

    def __post_init__(self) -> None:
        self._check_kind()
        _check_float(self, "abs_tol", lo=0.0)
        _check_float(self, "rel_tol", lo=0.0)


@dataclass(frozen=True, kw_only=True)
class PythonTests(_Spec):
    """HumanEval-style unit tests run in ``sandbox.run_python`` with these limits."""

    KIND: ClassVar[str] = "python_tests"
    NEEDS_LABEL: ClassVar[bool] = False
    kind: Literal["python_tests"] = "python_tests"
    program: Literal["prompt+response", "response"] = "prompt+response"
    timeout_s: float = 10.0
    cpu_time_s: int = 10
    memory_mb: int = 1024
    max_processes: int = 8
    max_file_mb: int = 16

    def __post_init__(self) -> None:
        self._check_kind()
        if self.program not in ("prompt+response", "response"):
            raise InvalidInput(
                f"PythonTests.program must be 'prompt+response' or 'response', got {self.program!r}"
            )
        _check_float(self, "timeout_s", lo=0.0, hi=300.0, open_lo=True)
        _check_int(self, "cpu_time_s", 1, 300)
        _check_int(self, "memory_mb", 64, 65536)
        _check_int(self, "max_processes", 1, 256)
        _check_int(self, "max_file_mb", 1, 4096)


@dataclass(frozen=True, kw_only=True)
class RewardModel(_Spec):
    """Logit ``label_index`` (or the single logit) of a local sequence-classification model."""

    KIND: ClassVar[str] = "reward_model"
    NEEDS_LABEL: ClassVar[bool] = False
    kind: Literal["reward_model"] = "reward_model"
    model_path: str
    label_index: int = 0
    batch_size: int = 16

    def __post_init__(self) -> None:
        self._check_kind()
        if not isinstance(self.model_path, str) or not 1 <= len(self.model_path) <= 1024:
            raise InvalidInput("RewardModel.model_path must be a string of 1 to 1024 characters")
        _check_int(self, "label_index", 0)
        _check_int(self, "batch_size", 1, 1024)


@dataclass(frozen=True, kw_only=True)
class HttpJudge(_Spec):
    """A remote judge: POST the item as JSON, read ``{"reward": number}``; bounded retries."""

    KIND: ClassVar[str] = "http_judge"
    NEEDS_LABEL: ClassVar[bool] = False
    kind: Literal["http_judge"] = "http_judge"
    url: str
    timeout_s: float = 30.0
    retries: int = 2
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._check_kind()
        if not isinstance(self.url, str) or not re.match(r"^https?://", self.url):
            raise InvalidInput("HttpJudge.url must start with http:// or https://")
        if len(self.url) > 2000:
            raise InvalidInput("HttpJudge.url is longer than 2000 characters")
        _check_float(self, "timeout_s", lo=0.0, hi=600.0, open_lo=True)
        _check_int(self, "retries", 0, 10)
        if not isinstance(self.headers, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.headers.items()
        ):
            raise InvalidInput("HttpJudge.headers must map strings to strings")
        object.__setattr__(self, "headers", dict(self.headers))


RewardSpec = ExactMatch | Contains | Regex | Numeric | PythonTests | RewardModel | HttpJudge
"""One reward definition; ``kind`` tells which."""

SPEC_TYPES: dict[str, type[RewardSpec]] = {
    cls.KIND: cls
    for cls in (ExactMatch, Contains, Regex, Numeric, PythonTests, RewardModel, HttpJudge)
}

REWARD_NEEDS_LABEL: dict[str, bool] = {kind: cls.NEEDS_LABEL for kind, cls in SPEC_TYPES.items()}
"""Whether probes scored by a kind must carry a label (same table as the wire contract)."""


def reward_from_dict(d: Mapping[str, Any]) -> RewardSpec:
    """The engine spec for a wire spec dict (``RewardSpec.model_dump()``); checks every field."""
    if not isinstance(d, Mapping):
        raise InvalidInput(f"a reward spec must be a mapping, got {type(d).__name__}")
    kind = d.get("kind")
    cls = SPEC_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise InvalidInput(f"unknown reward kind {kind!r}; known: {sorted(SPEC_TYPES)}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(str(k) for k in set(d) - known)
    if unknown:
        raise InvalidInput(f"unknown field(s) {unknown} for reward kind {kind!r}")
    required = {
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    missing = sorted(required - set(d))
    if missing:
        raise InvalidInput(f"missing field(s) {missing} for reward kind {kind!r}")
    return cls(**d)


# --- scoring -----------------------------------------------------------------------------------


def compute_rewards(
    spec: RewardSpec, items: Sequence[RewardItem], *, outbound: OutboundPolicy | None = None
) -> list[float]:
    """One finite reward per item, in order. ``outbound`` is the operator's policy for the
    URLs an ``http_judge`` calls (default: public https only; see ``workers.outbound``).

    Raises InvalidInput for a label kind and an item without label (or a non-numeric label for
    ``numeric``), or missing ``test``/``entry_point`` metadata for ``python_tests``, naming the
    probe, or naming the judge URL the policy forbids (nothing is sent to it); EngineError
    when a reward model or judge fails.
    """
    if not isinstance(spec, _Spec):
        raise InvalidInput(f"not a reward spec: {type(spec).__name__}")
    items = list(items)
    for item in items:
        if not isinstance(item.prompt, str) or not isinstance(item.response, str):
            raise InvalidInput(f"probe {item.probe_id!r}: prompt and response must be strings")
        if item.label is None and spec.NEEDS_LABEL:
            raise InvalidInput(
                f"probe {item.probe_id!r} has no label; {spec.KIND} rewards need one"
            )
        if item.label is not None and not isinstance(item.label, str):
            raise InvalidInput(f"probe {item.probe_id!r}: the label must be a string or None")
    if isinstance(spec, ExactMatch):
        rewards = [_exact_match(spec, item.response, _label(item)) for item in items]
    elif isinstance(spec, Contains):
        rewards = [_contains(spec, item.response, _label(item)) for item in items]
    elif isinstance(spec, Regex):
        rewards = [_regex(spec, item.response, _label(item)) for item in items]
    elif isinstance(spec, Numeric):
        targets = [_numeric_label(item) for item in items]
        rewards = [_numeric(spec, i.response, t) for i, t in zip(items, targets, strict=True)]
    elif isinstance(spec, PythonTests):
        rewards = _python_tests(spec, items)
    elif isinstance(spec, RewardModel):
        rewards = _reward_model(spec, items)
    elif isinstance(spec, HttpJudge):
        rewards = _http_judge(spec, items, outbound or OutboundPolicy())
    else:  # pragma: no cover - every _Spec subclass is handled above
        raise InvalidInput(f"unsupported reward kind {spec.KIND!r}")
    for item, r in zip(items, rewards, strict=True):
        if not math.isfinite(r):
            raise EngineError(f"{spec.KIND} reward of probe {item.probe_id!r} is not finite: {r}")
    return [float(r) for r in rewards]


def _label(item: RewardItem) -> str:
    assert item.label is not None  # checked by compute_rewards
    return item.label


def _fold(text: str, *, strip: bool, ignore_case: bool) -> str:
    text = text.strip() if strip else text
    return text.casefold() if ignore_case else text


def _exact_match(spec: ExactMatch, response: str, label: str) -> float:
    fold = {"strip": spec.strip, "ignore_case": spec.ignore_case}
    return float(_fold(response, **fold) == _fold(label, **fold))


def _contains(spec: Contains, response: str, label: str) -> float:
    fold = {"strip": False, "ignore_case": spec.ignore_case}
    return float(_fold(label, **fold) in _fold(response, **fold))


REGEX_TIMEOUT_S = 1.0
"""Longest a user pattern may search one response: catastrophic backtracking (``(a+)+$``)
must not hang a worker; a search that runs out of time scores 0, like no match."""


def _regex(spec: Regex, response: str, label: str) -> float:
    try:
        match = spec.compiled.search(response, timeout=REGEX_TIMEOUT_S)
    except TimeoutError:
        return 0.0
    if match is None:
        return 0.0
    answer = match.group(1) if spec.compiled.groups else match.group(0)
    fold = {"strip": True, "ignore_case": spec.ignore_case}
    return float(_fold(answer or "", **fold) == _fold(label, **fold))


_NUMBER = re.compile(
    r"(?:(?<![\w.)\]])[-+])?"  # a sign, unless it is a hyphen/minus between terms ("10-20")
    r"(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|\.\d+)"  # 1,234  1234  12.5  12.  .5
    r"(?:[eE][-+]?\d+)?"  # 2e3  1.5E-4
)
"""A number in free text; thousands separators must group by three ("1,234,567")."""


def parse_last_number(text: str) -> float | None:
    """The last number written in ``text`` (None if there is none); "1,234.5" -> 1234.5."""
    found = _NUMBER.findall(text)  # the pattern has no capturing group: whole matches
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except (ValueError, OverflowError):
        return None


def _numeric_label(item: RewardItem) -> float:
    raw = _label(item).strip()
    value: float | None
    try:
        value = float(raw)
    except ValueError:
        full = _NUMBER.fullmatch(raw)
        value = float(full.group(0).replace(",", "")) if full else None
    if value is None or not math.isfinite(value):
        raise InvalidInput(f"probe {item.probe_id!r} has a non-numeric label {item.label!r}")
    return value


def _numeric(spec: Numeric, response: str, target: float) -> float:
    x = parse_last_number(response)
    if x is None:
        return 0.0
    return float(math.isclose(x, target, rel_tol=spec.rel_tol, abs_tol=spec.abs_tol))


# --- python_tests ------------------------------------------------------------------------------

_ENTRY_POINT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")


def build_program(spec: PythonTests, item: RewardItem) -> str:
    """The program one item runs: (prompt +) response, the probe's tests, ``check(entry)``."""
    test = item.metadata.get("test")
    entry = item.metadata.get("entry_point")
    if not isinstance(test, str) or not test.strip():
        raise InvalidInput(f"probe {item.probe_id!r} has no metadata.test for python_tests")
    if not isinstance(entry, str) or not _ENTRY_POINT.fullmatch(entry):
        raise InvalidInput(
            f"probe {item.probe_id!r} needs metadata.entry_point, a Python name, got {entry!r}"
        )
    body = item.prompt + item.response if spec.program == "prompt+response" else item.response
    return f"{body}\n\n{test}\n\ncheck({entry})\n"


def _python_tests(spec: PythonTests, items: list[RewardItem]) -> list[float]:
    programs = [build_program(spec, item) for item in items]  # validate all before running any

    def run(program: str) -> float:
        result = run_python(
            program,
            timeout_s=spec.timeout_s,
            cpu_time_s=spec.cpu_time_s,
            memory_mb=spec.memory_mb,
            max_processes=spec.max_processes,
            max_file_mb=spec.max_file_mb,
        )
        return 1.0 if result.passed else 0.0

    if not programs:
        return []
    workers = max(1, min(4, os.cpu_count() or 1, len(programs)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sift-sandbox") as pool:
        return list(pool.map(run, programs))


# --- reward_model ------------------------------------------------------------------------------

_RM_CACHE: dict[str, tuple[Any, Any]] = {}
"""The last loaded (model, tokenizer), keyed by path: at most one model stays in memory."""
_RM_LOCK = threading.Lock()


def _load_reward_model(path: str) -> tuple[Any, Any]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    with _RM_LOCK:
        cached = _RM_CACHE.get(path)
        if cached is not None:
            return cached
        if not os.path.isdir(path):
            raise InvalidInput(f"reward model path {path!r} is not a local directory")
        _RM_CACHE.clear()  # free the previous model before loading the next
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            model = AutoModelForSequenceClassification.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError, KeyError) as exc:
            raise InvalidInput(f"cannot load a reward model from {path!r}: {exc}") from exc
        if tokenizer.pad_token is None:
            if tokenizer.eos_token is None:
                raise InvalidInput(f"tokenizer of {path!r} has neither a pad nor an EOS token")
            tokenizer.pad_token = tokenizer.eos_token
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id  # lets batch > 1 find the last token
        import torch

        model.to("cuda" if torch.cuda.is_available() else "cpu")
        model.eval()
        _RM_CACHE[path] = (model, tokenizer)
        return model, tokenizer


def reward_model_text(tokenizer: Any, prompt: str, response: str) -> str:
    """What the reward model reads: its chat template over (user, assistant), else x + "\\n" + y."""
    if getattr(tokenizer, "chat_template", None):
        messages = [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": response},
        ]
        return str(tokenizer.apply_chat_template(messages, tokenize=False))
    return prompt + "\n" + response


def _reward_model(spec: RewardModel, items: list[RewardItem]) -> list[float]:
    import torch

    if not items:
        return []
    model, tokenizer = _load_reward_model(spec.model_path)
    num_labels = int(model.config.num_labels)
    index = 0 if num_labels == 1 else spec.label_index
    if index >= num_labels:
        raise InvalidInput(
            f"label_index {spec.label_index} out of range for a model with {num_labels} labels"
        )
    templated = bool(getattr(tokenizer, "chat_template", None))
    max_length = _max_length(model, tokenizer)
    device = next(model.parameters()).device
    scores: list[float] = []
    for start in range(0, len(items), spec.batch_size):
        batch = items[start : start + spec.batch_size]
        texts = [reward_model_text(tokenizer, i.prompt, i.response) for i in batch]
        enc = tokenizer(
            texts,
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=max_length,
            add_special_tokens=not templated,  # a chat template writes its own special tokens
        )
        enc = {k: v.to(device) for k, v in enc.items()}
        with torch.no_grad():
            logits = model(**enc).logits
        scores.extend(logits[:, index].float().cpu().tolist())
    return scores


def _max_length(model: Any, tokenizer: Any) -> int:
    limits = [int(tokenizer.model_max_length)] if tokenizer.model_max_length < 1e9 else []
    positions = getattr(model.config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        limits.append(positions)
    return min(limits) if limits else 4096


# --- http_judge --------------------------------------------------------------------------------


def _http_judge(spec: HttpJudge, items: list[RewardItem], outbound: OutboundPolicy) -> list[float]:
    import httpx

    where = http.redacted(spec.url)

    def judge(client: httpx.Client, item: RewardItem) -> float:
        payload = {
            "probe_id": item.probe_id,
            "prompt": item.prompt,
            "response": item.response,
            "label": item.label,
        }
        what = f"http judge {where} for probe {item.probe_id!r}"
        body = http.post_json(client, spec.url, payload, retries=spec.retries, what=what)
        return _judge_reward(body, where, item.probe_id)

    if not items:
        return []
    with guarded_client(outbound, timeout=spec.timeout_s, headers=spec.headers) as client:
        return http.map_parallel(lambda item: judge(client, item), items)


def _judge_reward(body: str, where: str, probe_id: str) -> float:
    """The reward in a judge's reply; errors describe the reply, never quote it (the URL is
    the client's: its body must not be readable through the job's error)."""
    try:
        data = json.loads(body)
    except ValueError:
        raise EngineError(
            f"http judge {where} answered with a body that is not valid JSON for probe "
            f'{probe_id!r} (expected {{"reward": number}})'
        ) from None
    reward = data.get("reward") if isinstance(data, dict) else None
    try:
        value = float(reward) if isinstance(reward, int | float) else math.nan
    except OverflowError:
        value = math.nan
    if isinstance(reward, bool) or not math.isfinite(value):
        raise EngineError(
            f'http judge {where} sent no finite {{"reward": number}} for probe {probe_id!r}'
        )
    return value
