"""Each reward kind on small hand-computed cases; the judge against a real local HTTP server."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForSequenceClassification

from workers import contracts
from workers.engine import rewards
from workers.engine.errors import EngineError, InvalidInput
from workers.engine.models import SPECIAL_TOKENS, build_byte_tokenizer
from workers.engine.rewards import (
    Contains,
    ExactMatch,
    HttpJudge,
    Numeric,
    PythonTests,
    Regex,
    RewardItem,
    RewardModel,
    compute_rewards,
    parse_last_number,
    record_label,
    reward_from_dict,
    reward_model_text,
)
from workers.outbound import OutboundPolicy

LOOPBACK = OutboundPolicy.from_entries(["127.0.0.1/32"])  # the test judges listen there


def items(*pairs: tuple[str, str | None], prompt: str = "Q?") -> list[RewardItem]:
    """(response, label) pairs as items p0, p1, ..."""
    return [RewardItem(f"p{i}", prompt, resp, label, {}) for i, (resp, label) in enumerate(pairs)]


# --- specs and the wire contract ---------------------------------------------------------------

WIRE_EXAMPLES = [
    contracts.ExactMatchReward(),
    contracts.ContainsReward(ignore_case=False),
    contracts.RegexReward(pattern=r"answer is (\d+)", ignore_case=True),
    contracts.NumericReward(abs_tol=0.5),
    contracts.PythonTestsReward(program="response", timeout_s=2.5),
    contracts.RewardModelReward(model_path="/models/rm", label_index=1),
    contracts.HttpJudgeReward(url="http://judge.local/score", headers={"X-Key": "k"}),
]


@pytest.mark.parametrize("wire", WIRE_EXAMPLES, ids=lambda w: w.kind)
def test_wire_specs_map_one_to_one(wire: object) -> None:
    dumped = wire.model_dump()  # type: ignore[attr-defined]
    spec = reward_from_dict(dumped)
    assert dataclasses.asdict(spec) == dumped
    fields = {f.name: f for f in dataclasses.fields(spec)}
    assert set(fields) == set(type(wire).model_fields)  # type: ignore[attr-defined]
    for name, info in type(wire).model_fields.items():  # type: ignore[attr-defined]
        if not info.is_required():
            assert fields[name].default is not dataclasses.MISSING or name == "headers"
            default = (
                fields[name].default_factory()  # type: ignore[operator]
                if fields[name].default is dataclasses.MISSING
                else fields[name].default
            )
            assert default == info.get_default(call_default_factory=True), name


def test_needs_label_table_matches_the_contract() -> None:
    assert rewards.REWARD_NEEDS_LABEL == contracts.REWARD_NEEDS_LABEL


@pytest.mark.parametrize(
    ("d", "match"),
    [
        ({"kind": "bleu"}, "unknown reward kind"),
        ({}, "unknown reward kind"),
        ({"kind": "exact_match", "case": True}, "unknown field"),
        ({"kind": "regex"}, "missing field"),
        ({"kind": "regex", "pattern": "(unclosed"}, "invalid regex"),
        ({"kind": "numeric", "abs_tol": -1.0}, "abs_tol"),
        ({"kind": "python_tests", "timeout_s": 0}, "timeout_s"),
        ({"kind": "python_tests", "memory_mb": 10}, "memory_mb"),
        ({"kind": "python_tests", "program": "tests"}, "program"),
        ({"kind": "reward_model", "model_path": "x", "batch_size": 0}, "batch_size"),
        ({"kind": "http_judge", "url": "ftp://x"}, "url"),
        ({"kind": "http_judge", "url": "http://x", "retries": 11}, "retries"),
        ({"kind": "exact_match", "strip": "yes"}, "strip"),
    ],
)
def test_bad_specs_are_invalid_input(d: dict[str, object], match: str) -> None:
    with pytest.raises(InvalidInput, match=match):
        reward_from_dict(d)


def test_spec_kind_must_match_its_class() -> None:
    with pytest.raises(InvalidInput, match="kind"):
        ExactMatch(kind="contains")  # type: ignore[arg-type]


# --- string rewards ----------------------------------------------------------------------------


def test_exact_match() -> None:
    cases = items(
        ("  Paris \n", "paris"), ("Paris", "Lyon"), ("", ""), ("", "x"), ("PARIS", "Paris")
    )
    assert compute_rewards(ExactMatch(), cases) == [1.0, 0.0, 1.0, 0.0, 1.0]
    strict = ExactMatch(ignore_case=False, strip=False)
    assert compute_rewards(strict, cases) == [0.0, 0.0, 1.0, 0.0, 0.0]
    assert compute_rewards(ExactMatch(), items(("Straße", "STRASSE"))) == [1.0]  # casefold


def test_contains() -> None:
    cases = items(
        ("The capital is Paris.", "paris"), ("The capital is Lyon.", "Paris"), ("", "x"), ("", "")
    )
    assert compute_rewards(Contains(), cases) == [1.0, 0.0, 0.0, 1.0]
    assert compute_rewards(Contains(ignore_case=False), cases) == [0.0, 0.0, 0.0, 1.0]


def test_regex_groups_case_and_no_match() -> None:
    spec = Regex(pattern=r"answer is (-?\d+)")
    cases = items(
        ("so the answer is 42.", "42"),
        ("the answer is 41", "42"),
        ("The Answer is 42", "42"),  # case-sensitive: no match
        ("", "42"),
        ("answer is 7 and answer is 8", " 7 "),  # first match, label stripped
    )
    assert compute_rewards(spec, cases) == [1.0, 0.0, 0.0, 0.0, 1.0]
    loose = Regex(pattern=r"answer is (\w+)", ignore_case=True)
    assert compute_rewards(loose, items(("The ANSWER is Yes", "yes"))) == [1.0]
    whole = Regex(pattern=r"\d+")  # no group: the whole match
    assert compute_rewards(whole, items(("x 12 y", "12"), ("x 123", "12"))) == [1.0, 0.0]
    optional = Regex(pattern=r"a(b)?")  # group 1 did not take part: compares ""
    assert compute_rewards(optional, items(("a", ""), ("ab", "b"))) == [1.0, 1.0]


def test_catastrophic_regex_times_out_to_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first alternative backtracks exponentially before the second matches (about 1 s
    for 22 a's here, 4x per extra a); past the timeout the sample scores 0, not 1."""
    from workers.engine import rewards

    monkeypatch.setattr(rewards, "REGEX_TIMEOUT_S", 0.05)
    evil = Regex(pattern=r"^(a|a)+$|^a+b$")
    assert compute_rewards(evil, items(("a" * 22 + "b", ""), ("ab", ""))) == [0.0, 1.0]


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("The total is 1,234.5", 1234.5),
        ("-3", -3.0),
        ("x = 2e3", 2000.0),
        ("first 5 then 7", 7.0),
        ("pages 10-20", 20.0),
        ("it is -0.25.", -0.25),
        ("$1,234,567 in total", 1234567.0),
        ("1.5E-4", 1.5e-4),
        (".5", 0.5),
        ("no number here", None),
        ("", None),
    ],
)
def test_parse_last_number(text: str, value: float | None) -> None:
    assert parse_last_number(text) == value


def test_numeric() -> None:
    cases = items(
        ("The answer is 1,234.5", "1234.5"),
        ("-3", "-3"),
        ("2e3", "2000"),
        ("no number", "1"),
        ("", "0"),
        ("3.0000001", "3"),
        ("3.1", "3"),
        ("answer: 1e999", "5"),  # overflows to inf: not close, and no NaN
        ("1234.5", "1,234.5"),  # labels may use thousands separators too
    )
    assert compute_rewards(Numeric(), cases) == [1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0]
    assert compute_rewards(Numeric(abs_tol=0.0, rel_tol=0.05), items(("104", "100"))) == [1.0]
    assert compute_rewards(Numeric(abs_tol=0.0), items(("3.0000001", "3"))) == [0.0]


def test_numeric_label_must_be_a_finite_number() -> None:
    for bad in ("seven", "nan", "inf", ""):
        with pytest.raises(InvalidInput, match="'p1'"):
            compute_rewards(Numeric(), items(("1", "1"), ("1", bad)))


@pytest.mark.parametrize(
    "spec", [ExactMatch(), Contains(), Regex(pattern="x"), Numeric()], ids=lambda s: s.kind
)
def test_label_kinds_need_labels(spec: rewards.RewardSpec) -> None:
    with pytest.raises(InvalidInput, match="'p1'.*no label"):
        compute_rewards(spec, items(("a", "a"), ("b", None)))


def test_items_must_carry_strings() -> None:
    with pytest.raises(InvalidInput, match="'p9'"):
        compute_rewards(Contains(), [RewardItem("p9", "Q", None, "x", {})])  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="'p9'.*label"):
        compute_rewards(Numeric(), [RewardItem("p9", "Q", "3", 3, {})])  # type: ignore[arg-type]


def test_empty_input() -> None:
    for spec in (ExactMatch(), PythonTests(), HttpJudge(url="http://127.0.0.1:9/")):
        assert compute_rewards(spec, []) == []


# --- python_tests ------------------------------------------------------------------------------

ADD_PROMPT = 'def add(a, b):\n    """Add."""\n'
ADD_TEST = "def check(candidate):\n    assert candidate(2, 3) == 5\n"
ADD_META = {"test": ADD_TEST, "entry_point": "add"}
FAST = PythonTests(timeout_s=2.0, cpu_time_s=1, memory_mb=256)


def add_item(probe_id: str, response: str, meta: dict[str, object] | None = None) -> RewardItem:
    return RewardItem(probe_id, ADD_PROMPT, response, None, ADD_META if meta is None else meta)


def test_python_tests_humaneval_probe() -> None:
    cases = [
        add_item("right", "    return a + b\n"),
        add_item("wrong", "    return a - b\n"),
        add_item("loops", "    while True:\n        pass\n"),
        add_item("empty", ""),
        add_item("syntax", "    return a +\n"),
        add_item("forks", "    import os\n    os.fork()\n    return a + b\n"),
    ]
    start = time.monotonic()
    assert compute_rewards(FAST, cases) == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert time.monotonic() - start < 10


def test_python_tests_response_only_program() -> None:
    spec = dataclasses.replace(FAST, program="response")
    full = "def add(a, b):\n    return a + b\n"
    assert compute_rewards(spec, [add_item("a", full), add_item("b", "    return a + b\n")]) == [
        1.0,
        0.0,
    ]
    program = rewards.build_program(FAST, add_item("x", "    return a + b\n"))
    assert program.startswith(ADD_PROMPT + "    return a + b\n")
    assert program.rstrip().endswith("check(add)")


def test_python_tests_order_is_kept_across_the_pool() -> None:
    bodies = ["    return a + b\n" if i % 3 else "    return 0\n" for i in range(9)]
    cases = [add_item(f"p{i}", body) for i, body in enumerate(bodies)]
    assert compute_rewards(FAST, cases) == [0.0 if i % 3 == 0 else 1.0 for i in range(9)]


@pytest.mark.parametrize(
    "meta",
    [{}, {"test": ADD_TEST}, {"entry_point": "add"}, {"test": ADD_TEST, "entry_point": "1; x"}],
)
def test_python_tests_need_test_and_entry_point(meta: dict[str, object]) -> None:
    cases = [add_item("ok", "    return a + b\n"), add_item("broken", "", meta)]
    with pytest.raises(InvalidInput, match="'broken'"):
        compute_rewards(FAST, cases)


# --- reward_model ------------------------------------------------------------------------------


def save_tiny_reward_model(path: Path, *, num_labels: int, chat_template: bool) -> Path:
    config = LlamaConfig(
        vocab_size=len(SPECIAL_TOKENS) + 256,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=64,
        max_position_embeddings=256,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        num_labels=num_labels,  # type: ignore[call-arg]  # a PretrainedConfig kwarg
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForSequenceClassification(config)
    model.save_pretrained(path)
    tokenizer = build_byte_tokenizer()
    if not chat_template:
        tokenizer.chat_template = None
    tokenizer.save_pretrained(path)
    return path


RM_ITEMS = [
    RewardItem("a", "2+2?", "4", None, {}),
    RewardItem("b", "Capital of France?", "Paris, of course.", None, {}),
    RewardItem("c", "Say nothing.", "", None, {}),
    RewardItem("d", "A longer prompt " * 5, "and a longer answer " * 4, None, {}),
    RewardItem("e", "", "x", None, {}),
]


def direct_scores(path: Path, label_index: int) -> list[float]:
    """The reference: one forward pass per item, no padding, no cache."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    templated = tokenizer.chat_template is not None
    out = []
    for item in RM_ITEMS:
        text = reward_model_text(tokenizer, item.prompt, item.response)
        enc = tokenizer(text, return_tensors="pt", add_special_tokens=not templated)
        with torch.no_grad():
            out.append(float(model(**enc).logits[0, label_index]))
    return out


def test_reward_model_batches_match_single_passes(tmp_path: Path) -> None:
    path = save_tiny_reward_model(tmp_path / "rm", num_labels=3, chat_template=True)
    expected = direct_scores(path, 2)
    one = compute_rewards(RewardModel(model_path=str(path), label_index=2, batch_size=1), RM_ITEMS)
    two = compute_rewards(RewardModel(model_path=str(path), label_index=2, batch_size=2), RM_ITEMS)
    assert one == pytest.approx(expected, abs=1e-5)
    assert two == pytest.approx(expected, abs=1e-5)
    assert len(set(one)) == len(one)  # the items really get different scores
    other = compute_rewards(RewardModel(model_path=str(path), label_index=0), RM_ITEMS)
    assert other != pytest.approx(one)
    with pytest.raises(InvalidInput, match="label_index"):
        compute_rewards(RewardModel(model_path=str(path), label_index=3), RM_ITEMS)


def test_reward_model_single_logit_without_chat_template(tmp_path: Path) -> None:
    path = save_tiny_reward_model(tmp_path / "rm1", num_labels=1, chat_template=False)
    scores = compute_rewards(
        RewardModel(model_path=str(path), label_index=5, batch_size=4), RM_ITEMS
    )
    assert scores == pytest.approx(direct_scores(path, 0), abs=1e-5)
    from transformers import AutoTokenizer

    assert reward_model_text(AutoTokenizer.from_pretrained(path), "x", "y") == "x\ny"


def test_reward_model_cache_holds_one_model(tmp_path: Path) -> None:
    first = save_tiny_reward_model(tmp_path / "m1", num_labels=1, chat_template=True)
    second = save_tiny_reward_model(tmp_path / "m2", num_labels=1, chat_template=True)
    compute_rewards(RewardModel(model_path=str(first)), RM_ITEMS[:1])
    assert list(rewards._RM_CACHE) == [str(first)]
    compute_rewards(RewardModel(model_path=str(second)), RM_ITEMS[:1])
    assert list(rewards._RM_CACHE) == [str(second)]


def test_reward_model_path_must_be_local(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="local directory"):
        compute_rewards(RewardModel(model_path="org/some-hub-model"), RM_ITEMS)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInput, match="cannot load"):
        compute_rewards(RewardModel(model_path=str(tmp_path / "empty")), RM_ITEMS)


# --- http_judge --------------------------------------------------------------------------------


class Judge:
    """A local judge whose behaviour depends on the request path; records what it received."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, object], dict[str, str]]] = []
        self.lock = threading.Lock()
        judge = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with judge.lock:
                    judge.requests.append((self.path, body, dict(self.headers)))
                    seen = sum(1 for p, _, _ in judge.requests if p == self.path)
                route = self.path.split("?")[0]
                if route == "/ok":
                    self.reply(200, {"reward": len(body["response"]) / 10})
                elif route == "/flaky":
                    if seen <= 2:
                        self.reply(500, {"error": "warming up"})
                    else:
                        self.reply(200, {"reward": 0.5})
                elif route == "/down":
                    self.reply(503, {"error": "down"})
                elif route == "/slow":
                    time.sleep(1.0)
                    self.reply(200, {"reward": 1})
                elif route == "/forbidden":
                    self.reply(403, {"error": "bad key"})
                elif route == "/secret500":
                    self.reply(500, b"SECRET-INTERNAL-TOKEN root:x:0:0")
                elif route == "/secret400":
                    self.reply(400, b"SECRET-INTERNAL-TOKEN root:x:0:0")
                elif route == "/secret200":
                    self.reply(200, b"SECRET-INTERNAL-TOKEN root:x:0:0")
                elif route == "/huge":
                    self.reply(200, b'{"reward": 1, "pad": "' + b"x" * 300_000 + b'"}')
                elif route == "/garbage":
                    self.reply(200, b"<html>not json</html>")
                elif route == "/nokey":
                    self.reply(200, {"score": 1})
                elif route == "/nan":
                    self.reply(200, b'{"reward": NaN}')
                else:
                    self.reply(404, {"error": "no route"})

            def reply(self, status: int, payload: object) -> None:
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"

    def count(self, route: str) -> int:
        return sum(1 for p, _, _ in self.requests if p.split("?")[0] == route)


@pytest.fixture
def judge() -> Iterator[Judge]:
    j = Judge()
    thread = threading.Thread(target=j.server.serve_forever, daemon=True)
    thread.start()
    yield j
    j.server.shutdown()
    j.server.server_close()


JUDGE_ITEMS = [
    RewardItem("p0", "Q0", "short", "gold", {}),
    RewardItem("p1", "Q1", "a longer one", None, {}),
    RewardItem("p2", "Q2", "", None, {}),
]


def test_http_judge_success_and_payload(judge: Judge) -> None:
    spec = HttpJudge(url=judge.base + "/ok", headers={"Authorization": "Bearer t0ken"})
    assert compute_rewards(spec, JUDGE_ITEMS, outbound=LOOPBACK) == [0.5, 1.2, 0.0]
    bodies = sorted((body for _, body, _ in judge.requests), key=lambda b: str(b["probe_id"]))
    assert bodies[0] == {"probe_id": "p0", "prompt": "Q0", "response": "short", "label": "gold"}
    assert bodies[1]["label"] is None
    assert all(h["Authorization"] == "Bearer t0ken" for _, _, h in judge.requests)


def test_http_judge_retries_server_errors(judge: Judge) -> None:
    spec = HttpJudge(url=judge.base + "/flaky", retries=2)
    assert compute_rewards(spec, JUDGE_ITEMS[:1], outbound=LOOPBACK) == [0.5]
    assert judge.count("/flaky") == 3


def test_http_judge_gives_up_after_retries(judge: Judge) -> None:
    spec = HttpJudge(url=judge.base + "/down?token=s3cr3t", retries=2)
    with pytest.raises(EngineError, match=r"/down.*'p0'.*3 attempt.*503") as info:
        compute_rewards(spec, JUDGE_ITEMS[:1], outbound=LOOPBACK)
    assert "s3cr3t" not in str(info.value)  # query strings may hold credentials
    assert judge.count("/down") == 3


def test_http_judge_timeout(judge: Judge) -> None:
    spec = HttpJudge(url=judge.base + "/slow", timeout_s=0.2, retries=1)
    start = time.monotonic()
    with pytest.raises(EngineError, match="Timeout"):
        compute_rewards(spec, JUDGE_ITEMS[:1], outbound=LOOPBACK)
    assert time.monotonic() - start < 2.0
    assert judge.count("/slow") == 2


def test_http_judge_client_errors_are_not_retried(judge: Judge) -> None:
    spec = HttpJudge(url=judge.base + "/forbidden", retries=3)
    with pytest.raises(EngineError, match="status 403") as info:
        compute_rewards(spec, JUDGE_ITEMS[:1], outbound=LOOPBACK)
    assert "bad key" not in str(info.value)  # the judge's body is never quoted
    assert judge.count("/forbidden") == 1


@pytest.mark.parametrize(
    ("route", "expected"),
    [("/secret500", "status 500"), ("/secret400", "status 400"), ("/secret200", "not valid JSON")],
)
def test_http_judge_bodies_never_reach_the_error(judge: Judge, route: str, expected: str) -> None:
    spec = HttpJudge(url=judge.base + route, retries=1)
    with pytest.raises(EngineError, match=expected) as info:
        compute_rewards(spec, JUDGE_ITEMS[:1], outbound=LOOPBACK)
    assert "SECRET" not in str(info.value) and "root:" not in str(info.value)


def test_http_judge_on_loopback_needs_the_operator_allowlist(judge: Judge) -> None:
    with pytest.raises(InvalidInput, match="http judge .*/ok.*refused: .*loopback"):
        compute_rewards(HttpJudge(url=judge.base + "/ok"), JUDGE_ITEMS[:1])
    assert judge.requests == []


@pytest.mark.parametrize("route", ["/garbage", "/nokey", "/nan"])
def test_http_judge_malformed_bodies(judge: Judge, route: str) -> None:
    with pytest.raises(EngineError, match=route):
        compute_rewards(HttpJudge(url=judge.base + route), JUDGE_ITEMS[:1], outbound=LOOPBACK)
    assert judge.count(route) == 1


def test_http_judge_connection_refused() -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    spec = HttpJudge(url=f"http://127.0.0.1:{port}/score", retries=1, timeout_s=1.0)
    with pytest.raises(EngineError, match="ConnectError"):
        compute_rewards(spec, JUDGE_ITEMS[:1], outbound=LOOPBACK)


def test_http_judge_reply_size_is_bounded(judge: Judge, monkeypatch: pytest.MonkeyPatch) -> None:
    """A huge (or endless) answer fails the call instead of filling the worker's memory."""
    from workers.engine import http

    spec = HttpJudge(url=judge.base + "/huge", retries=0)
    assert compute_rewards(spec, JUDGE_ITEMS[:1], outbound=LOOPBACK) == [1.0]
    monkeypatch.setattr(http, "MAX_REPLY_BYTES", 100_000)
    with pytest.raises(EngineError, match="reply over 100000 bytes"):
        compute_rewards(spec, JUDGE_ITEMS[:1], outbound=LOOPBACK)


def test_a_records_label_is_its_metadata_label_else_its_response() -> None:
    """NICE probes and evaluation targets alike: a multiple-choice record answers "B. text"
    but its label is the letter a regex reads from a sampled answer."""
    user = {"role": "user", "content": "Which? A. x B. y"}
    answered = [user, {"role": "assistant", "content": "B. y"}]
    assert record_label(answered, {"label": "B"}) == "B"
    assert record_label(answered, {"label": ""}) == "B. y"
    assert record_label(answered, {"label": 3}) == "B. y"
    assert record_label([user], {}) is None
    regex = Regex(pattern=r"^\W*([A-E])\b")
    items = [RewardItem("p", "Which?", "B. y", label=record_label(answered, {"label": "B"}))]
    assert compute_rewards(regex, items) == [1.0]
