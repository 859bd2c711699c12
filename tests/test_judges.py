"""Judges: HotpotQA answer metrics, lexical judging, reply parsing, local and HTTP LLM judges.

The HTTP judge talks to a real server on 127.0.0.1 started here; every test that waits on the
network carries a timeout, so a hang fails instead of stalling CI.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from agemem_jax.dataclass_config import block, build
from agemem_jax.judges import (
    HttpJudge,
    JudgeConfig,
    JudgeError,
    JudgeRequest,
    JudgeUnavailable,
    LocalJudge,
    RuleJudge,
    judge_messages,
    make_judge,
    parse_score,
)
from agemem_jax.text import (
    entry_fact_overlap,
    exact_match,
    f1_precision_recall,
    f1_score,
    lexical_memory_quality,
    normalize_answer,
)

# ---------------------------------------------------------------------------------------------
# HotpotQA answer metrics.


def test_normalize_answer():
    assert normalize_answer("The  Beatles' (band)!") == "beatles band"
    assert normalize_answer("An apple a day") == "apple day"
    assert normalize_answer("Theatre") == "theatre"  # articles only as whole words


def test_exact_match_and_f1_hand_values():
    assert exact_match("An apple", "apple.") == 1.0
    assert exact_match("apples", "apple") == 0.0
    # pred {eiffel, tower}, gold {eiffel, tower, in, paris}: P = 1, R = 1/2, F1 = 2/3.
    assert f1_precision_recall("the Eiffel Tower", "Eiffel Tower in Paris") == pytest.approx(
        (2 / 3, 1.0, 0.5), abs=1e-15
    )
    # Repeated tokens count with multiplicity: pred [new, new, york], gold [new, york].
    assert f1_score("New New York", "New York") == pytest.approx(2 * (2 / 3) / (5 / 3))
    assert f1_score("Paris", "London") == 0.0


def test_yes_no_answers_must_match_exactly():
    assert f1_score("Yes.", "yes") == 1.0
    assert f1_score("yes", "no") == 0.0
    assert f1_score("yes it is", "yes") == 0.0  # the official rule, even with token overlap
    assert f1_score("no", "no way") == 0.0


# ---------------------------------------------------------------------------------------------
# Lexical judging (rule judge).

FACTS = ["Alice was born in Paris.", "Paris is the capital of France."]
# Content tokens: {alice, born, paris} and {paris, capital, france}.


def test_lexical_memory_quality_hand_value():
    # coverage = (1 + 1/3) / 2 = 2/3, precision = (1 + 0) / 2 = 1/2, MQ = 4/7.
    mq = lexical_memory_quality(["Alice born Paris", "Bananas are yellow"], FACTS)
    assert mq == pytest.approx(4 / 7, abs=1e-15)
    assert lexical_memory_quality(FACTS, FACTS) == 1.0
    assert lexical_memory_quality([], FACTS) == 0.0
    assert lexical_memory_quality(["Bananas are yellow"], FACTS) == 0.0


def test_entry_overlap_hand_values():
    assert entry_fact_overlap("Alice born Paris", FACTS) == 1.0
    # {alice, born, paris, liked, cats}: precision 3/5, recall 1, harmonic 3/4.
    assert entry_fact_overlap("Alice was born in Paris; she liked cats.", FACTS) == pytest.approx(
        0.75, abs=1e-15
    )
    assert entry_fact_overlap("Bananas are yellow", FACTS) == 0.0
    assert entry_fact_overlap("the of and", FACTS) == 0.0  # nothing but function words


def test_rule_judge_every_kind():
    judge = RuleJudge()
    q = "Where was Alice born?"
    reqs = [
        JudgeRequest("task", q, "Paris", "the Paris"),
        JudgeRequest("task", q, "Paris", ""),
        JudgeRequest("memory", q, "Paris", entries=("Alice born Paris", "Bananas"), facts=FACTS),
        JudgeRequest("storage", q, "Paris", entries=("Alice born Paris",), facts=FACTS),
        JudgeRequest("relevance", q, entries=("Alice born Paris", "Bananas"), facts=FACTS),
        JudgeRequest("relevance", q, entries=(), facts=FACTS),
    ]
    assert judge.score(reqs) == pytest.approx([1.0, 0.0, 4 / 7, 1.0, 0.5, 0.0], abs=1e-15)
    assert judge.storage_quality(q, "Paris", ["Alice born Paris", "Bananas"], FACTS) == [1.0, 0.0]
    assert judge.task_score(q, "Eiffel Tower", "Eiffel Tower in Paris") == pytest.approx(2 / 3)
    assert judge.stats["task"] == 3


def test_requests_are_validated():
    with pytest.raises(ValueError, match="kind"):
        JudgeRequest("bogus", "q")
    with pytest.raises(ValueError, match="exactly one entry"):
        JudgeRequest("storage", "q", entries=("a", "b"))


# ---------------------------------------------------------------------------------------------
# LLM reply parsing and prompts.


@pytest.mark.parametrize(
    ("reply", "value"),
    [
        ("0.8", 0.8),
        ("  1\n", 1.0),
        ("Score: 0.25", 0.25),
        (".5", 0.5),
        ("70%", 0.7),
        ("7/10", 0.7),
        ("0.8-0.9", 0.8),
        ("<think>maybe 7 or 0.4</think>0.9", 0.9),
        ("great answer", None),
        ("", None),
        ("8", None),  # a 0-10 scale is not guessed at
        ("-0.2", None),
        ("1.5", None),
        ("3/0", None),
        ("<think>unfinished 0.5", None),
    ],
)
def test_parse_score(reply, value):
    got = parse_score(reply)
    assert got == (None if value is None else pytest.approx(value))


def test_prompts_carry_the_material_and_the_scale():
    req = JudgeRequest("task", "Who wrote Emma?", "Jane Austen", "Austen")
    system, user = judge_messages(req)
    assert system["role"] == "system" and "single number between 0 and 1" in system["content"]
    for text in ("Who wrote Emma?", "Jane Austen", "Austen", "0.8-0.9", "0.0-0.1"):
        assert text in user["content"]
    mem = judge_messages(JudgeRequest("memory", "q", entries=("E1",), facts=("F1", "F2")))
    assert "- F1\n- F2" in mem[1]["content"] and "- E1" in mem[1]["content"]
    rel = judge_messages(JudgeRequest("relevance", "q?", entries=("R1", "R2")))[1]["content"]
    assert "- R1\n- R2" in rel and "Reference answer" not in rel  # relevance is to q only


def test_local_judge_batches_and_counts_unparseable_as_failures():
    seen = []

    def generate(prompts):
        seen.append(prompts)
        return ["0.6", "no idea", "Score: 1"]

    judge = LocalJudge(generate)
    reqs = [
        JudgeRequest("task", "q1", "a", "pred"),
        JudgeRequest("task", "q2", "a", "   "),  # empty answer: 0 without a prompt
        JudgeRequest("storage", "q3", "a", entries=("an entry",)),
        JudgeRequest("relevance", "q4", entries=("hit",)),
    ]
    # "no idea" is no score: None (a failure), never a 0 that would read as a wrong answer.
    assert judge.score(reqs) == [0.6, 0.0, None, 1.0]
    assert len(seen) == 1 and len(seen[0]) == 3  # one batched call, empties skipped
    assert "q3" in seen[0][1][1]["content"]
    assert judge.stats["unparseable"] == 1 and judge.stats["replies"] == 3
    assert judge.stats["failures"] == 1

    single = LocalJudge(lambda p: "0.3", batched=False)
    assert single.score(reqs[:1]) == [0.3]
    with pytest.raises(JudgeError, match="returned 1 replies for 2"):
        LocalJudge(lambda p: ["0.1"]).score([reqs[0], reqs[2]])


# ---------------------------------------------------------------------------------------------
# HTTP judge against a real loopback server.


class FakeEndpoint:
    """An OpenAI-style /v1/chat/completions server whose behaviour each test scripts.

    `plan` is consumed one entry per request: ("ok", content), ("status", code), ("sleep", s)
    or ("garbage", bytes); when it runs out, `default` answers.
    """

    def __init__(self, default=("ok", "0.5")):
        self.plan, self.default = [], default
        self.requests: list[tuple[str, dict, dict]] = []
        self.inflight = self.max_inflight = 0
        self.lock, self.release = threading.Lock(), threading.Event()
        self.delay = 0.0
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with endpoint.lock:
                    endpoint.requests.append((self.path, dict(self.headers), body))
                    action = endpoint.plan.pop(0) if endpoint.plan else endpoint.default
                    endpoint.inflight += 1
                    endpoint.max_inflight = max(endpoint.max_inflight, endpoint.inflight)
                try:
                    if endpoint.delay:
                        endpoint.release.wait(endpoint.delay)
                    kind, arg = action
                    if callable(arg):
                        arg = arg(body)
                    if kind == "sleep":
                        endpoint.release.wait(arg)
                        return
                    if kind == "status":
                        self.send_response(arg)
                        self.end_headers()
                        self.wfile.write(b'{"error": "boom"}')
                        return
                    payload = (
                        arg
                        if kind == "garbage"
                        else json.dumps({"choices": [{"message": {"content": arg}}]}).encode()
                    )
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                finally:
                    with endpoint.lock:
                        endpoint.inflight -= 1

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoint():
    ep = FakeEndpoint()
    yield ep
    ep.close()


def http_judge(url, **kw):
    kw = {"timeout": 2.0, "max_retries": 2, "backoff": 0.01, **kw}
    return HttpJudge(url, "judge-model", api_key_env="AGEMEM_TEST_JUDGE_KEY", **kw)


TASK = JudgeRequest("task", "Who wrote Emma?", "Jane Austen", "Austen")


@pytest.mark.timeout(30)
def test_http_request_shape_key_and_score(endpoint, monkeypatch):
    monkeypatch.setenv("AGEMEM_TEST_JUDGE_KEY", "sekret")
    endpoint.default = ("ok", "0.75")
    judge = http_judge(endpoint.url, max_tokens=8)
    assert judge.score([TASK]) == [0.75]
    path, headers, body = endpoint.requests[0]
    assert path == "/v1/chat/completions"
    assert headers["Authorization"] == "Bearer sekret"
    assert body["model"] == "judge-model" and body["temperature"] == 0.0
    assert body["max_tokens"] == 8
    assert body["messages"] == judge_messages(TASK)


@pytest.mark.timeout(30)
def test_http_without_key_sends_no_auth(endpoint, monkeypatch):
    monkeypatch.delenv("AGEMEM_TEST_JUDGE_KEY", raising=False)
    http_judge(endpoint.url).score([TASK])
    assert "Authorization" not in endpoint.requests[0][1]


@pytest.mark.timeout(30)
def test_http_cache_in_memory_and_on_disk(endpoint, tmp_path):
    cache = tmp_path / "judge_cache.jsonl"
    judge = http_judge(endpoint.url, cache_path=cache)
    other = JudgeRequest("task", "Who wrote Ulysses?", "James Joyce", "Joyce")
    # Duplicates inside one batch are sent once.
    assert judge.score([TASK, TASK, other]) == [0.5, 0.5, 0.5]
    assert len(endpoint.requests) == 2
    assert judge.score([TASK]) == [0.5] and len(endpoint.requests) == 2
    assert judge.stats["cache_hits"] == 2
    # A fresh judge (a later run) reads the file, tolerating a torn last line.
    with cache.open("a") as f:
        f.write('{"key": "tor')
    again = http_judge(endpoint.url, cache_path=cache)
    assert again.score([other, TASK]) == [0.5, 0.5] and len(endpoint.requests) == 2
    # A different model is a different cache key.
    HttpJudge(endpoint.url, "other-model", cache_path=cache).score([TASK])
    assert len(endpoint.requests) == 3


@pytest.mark.timeout(30)
def test_http_retries_a_500_then_succeeds(endpoint):
    endpoint.plan = [("status", 500), ("status", 503)]
    endpoint.default = ("ok", "0.9")
    judge = http_judge(endpoint.url, max_retries=2)
    assert judge.score([TASK]) == [0.9]
    assert len(endpoint.requests) == 3 and judge.stats["retries"] == 2


@pytest.mark.timeout(30)
def test_http_persistent_500_fails_once_and_then_fast(endpoint):
    endpoint.default = ("status", 500)
    judge = http_judge(endpoint.url, max_retries=2)
    start = time.monotonic()
    with pytest.raises(JudgeError, match=r"unreachable after 3 attempts.*HTTP 500"):
        judge.score([TASK])
    assert time.monotonic() - start < 5
    assert len(endpoint.requests) == 3
    with pytest.raises(JudgeError, match="HTTP 500"):  # the same message, no new requests
        judge.score([JudgeRequest("task", "q", "a", "b")])
    assert len(endpoint.requests) == 3


@pytest.mark.timeout(30)
def test_http_timeout_is_bounded(endpoint):
    endpoint.default = ("sleep", 20.0)
    judge = http_judge(endpoint.url, timeout=0.3, max_retries=1)
    start = time.monotonic()
    with pytest.raises(JudgeError, match=r"unreachable after 2 attempts \(timeout 0.3s each\)"):
        judge.score([TASK])
    assert time.monotonic() - start < 3
    assert len(endpoint.requests) == 2


@pytest.mark.timeout(30)
def test_http_client_error_is_not_retried(endpoint):
    endpoint.default = ("status", 401)
    judge = http_judge(endpoint.url, max_retries=3)
    with pytest.raises(JudgeError, match="rejected the request: HTTP 401"):
        judge.score([TASK])
    assert len(endpoint.requests) == 1


@pytest.mark.timeout(30)
def test_http_garbage_and_unparseable_replies(endpoint):
    endpoint.default = ("ok", "it is quite good")
    judge = http_judge(endpoint.url)
    # Counted as a failure and scored None, not 0, under either failure policy.
    assert judge.score([TASK]) == [None] and judge.stats["unparseable"] == 1
    assert judge.stats["failures"] == 1
    assert http_judge(endpoint.url, on_failure="count").score([TASK]) == [None]
    endpoint.default = ("garbage", b"<html>not json</html>")
    with pytest.raises(JudgeUnavailable, match="no chat completion"):
        http_judge(endpoint.url).score([TASK])
    counting = http_judge(endpoint.url, on_failure="count")
    assert counting.score([TASK]) == [None] and counting.stats["unavailable"] == 1


@pytest.mark.timeout(30)
def test_http_unreachable_endpoint_fails_fast():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    judge = http_judge(f"http://127.0.0.1:{port}/v1", max_retries=2)
    start = time.monotonic()
    with pytest.raises(JudgeError, match=r"127\.0\.0\.1.*unreachable after 3 attempts"):
        judge.score([TASK, JudgeRequest("task", "q", "a", "b")])
    assert time.monotonic() - start < 5


@pytest.mark.timeout(30)
def test_http_count_policy_scores_none_and_recovers(endpoint):
    """on_failure="count": a batch the endpoint cannot answer comes back as counted Nones in
    bounded time, the answered part of a batch keeps its scores, and the next batch retries."""
    other = JudgeRequest("task", "Who wrote Ulysses?", "James Joyce", "Joyce")
    endpoint.default = (
        "ok",
        lambda body: "0.8" if "Emma" in str(body["messages"]) else "0.3",
    )
    judge = http_judge(endpoint.url, on_failure="count", max_retries=1, concurrency=1)
    endpoint.plan = [("ok", "0.8"), ("status", 500), ("status", 500)]
    assert judge.score([TASK, other]) == [0.8, None]  # Emma answered, Ulysses got two 500s
    assert judge.stats["failures"] == 1 and judge.stats["unavailable"] == 1
    assert judge.score([other]) == [0.3]  # a new batch: the endpoint is tried again
    # A refused request (4xx) is a config error: it raises even when counting.
    endpoint.default = ("status", 403)
    with pytest.raises(JudgeError, match="rejected the request: HTTP 403"):
        judge.score([JudgeRequest("task", "q", "a", "b")])


@pytest.mark.timeout(30)
def test_http_count_policy_on_a_closed_port_is_bounded():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    judge = http_judge(f"http://127.0.0.1:{port}/v1", on_failure="count", max_retries=1)
    start = time.monotonic()
    assert judge.score([TASK, JudgeRequest("task", "q", "a", "b")]) == [None, None]
    assert time.monotonic() - start < 5
    assert judge.stats["failures"] == 2


@pytest.mark.timeout(30)
def test_http_concurrency_limit(endpoint):
    endpoint.delay = 0.2
    endpoint.default = ("ok", lambda body: "0.4" if "Q3" in str(body["messages"]) else "0.2")
    judge = http_judge(endpoint.url, concurrency=2)
    reqs = [JudgeRequest("task", f"Q{i}", "a", "b") for i in range(6)]
    start = time.monotonic()
    assert judge.score(reqs) == [0.2, 0.2, 0.2, 0.4, 0.2, 0.2]  # replies land in request order
    assert endpoint.max_inflight == 2  # parallel, but never above the limit
    assert time.monotonic() - start >= 3 * 0.2


# ---------------------------------------------------------------------------------------------


def test_make_judge():
    assert isinstance(make_judge(), RuleJudge) and isinstance(make_judge(None), RuleJudge)
    judge = make_judge(
        {"kind": "http", "base_url": "http://127.0.0.1:1/v1", "model": "m", "timeout": 5},
        concurrency=3,
    )
    assert isinstance(judge, HttpJudge)
    assert (judge.url, judge.timeout, judge.concurrency) == (
        "http://127.0.0.1:1/v1/chat/completions",
        5.0,
        3,
    )
    # One config block carries every judge's settings; each kind takes its own.
    assert isinstance(make_judge({"kind": "rule", "base_url": "x", "timeout": 1}), RuleJudge)
    assert isinstance(make_judge("local", generate=lambda p: ["1"] * len(p)), LocalJudge)
    assert make_judge(
        JudgeConfig("http", base_url="http://judge.internal/v1", model="m", on_failure="count")
    ).on_failure
    with pytest.raises(JudgeError, match="unknown judge 'gpt'"):
        make_judge("gpt")
    with pytest.raises(JudgeError, match=r"unknown setting\(s\) \['timout'\]"):
        make_judge({"kind": "http", "base_url": "u", "model": "m", "timout": 3})
    with pytest.raises(JudgeError, match=r"needs judge\.checkpoint"):
        make_judge("local")
    with pytest.raises(JudgeError, match="base_url"):
        make_judge("http")
    with pytest.raises(JudgeError, match="on_failure"):
        make_judge({"kind": "rule", "on_failure": "ignore"})
    with pytest.raises(JudgeError, match="concurrency"):
        JudgeConfig(concurrency=0)


def test_judge_config_defaults_cover_every_setting():
    """JudgeConfig is the block's single source: every field has a default and the block
    round-trips it, so a config generated from it is complete."""
    default = JudgeConfig()
    assert default.kind == "rule" and default.on_failure == "raise"
    assert build(JudgeConfig, dataclasses.asdict(default)) == default
    assert build(JudgeConfig, block(JudgeConfig)) == default


# ---------------------------------------------------------------------------------------------
# The local judge: its own frozen checkpoint, never the policy.


@pytest.fixture(scope="module")
def tiny_judge_checkpoint(tmp_path_factory):
    from conftest import save_tiny_hf

    out = tmp_path_factory.mktemp("judge_ckpt")
    save_tiny_hf("qwen3", out)
    return out


@pytest.mark.timeout(300)
def test_local_judge_loads_its_own_frozen_checkpoint(tiny_judge_checkpoint):
    """kind=local decodes with a model loaded from judge.checkpoint: a random tiny model's
    replies hold no score, so each comes back as a counted failure (None), never as 0."""
    judge = make_judge({"kind": "local", "checkpoint": str(tiny_judge_checkpoint),
                        "max_tokens": 4, "concurrency": 2})  # fmt: skip
    assert isinstance(judge, LocalJudge)
    reqs = [TASK, JudgeRequest("task", "q", "a", "b"), JudgeRequest("task", "q", "a", "")]
    scores = judge.score(reqs)
    assert scores[2] == 0.0  # empty answer: no model call
    assert judge.stats["replies"] == 2
    for s in scores[:2]:
        assert s is None or 0.0 <= s <= 1.0
    assert judge.stats["failures"] == sum(s is None for s in scores[:2])
    # Same inputs, same scores: a frozen model decoded greedily.
    assert (
        make_judge(
            {"kind": "local", "checkpoint": str(tiny_judge_checkpoint), "max_tokens": 4}
        ).score(reqs)
        == scores
    )


def test_local_judge_bad_checkpoint_is_one_clear_error(tmp_path):
    with pytest.raises(JudgeError, match=r"judge\.checkpoint .*cannot be loaded"):
        make_judge({"kind": "local", "checkpoint": str(tmp_path / "nope")})
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(JudgeError, match=r"judge\.checkpoint .*cannot be loaded"):
        make_judge({"kind": "local", "checkpoint": str(broken)})


def test_make_judge_from_config_dict():
    ml_collections = pytest.importorskip("ml_collections")
    cfg = ml_collections.ConfigDict(
        {
            "kind": "http",
            "base_url": "http://h/v1",
            "model": "m",
            "api_key_env": "KEY",
            "cache_path": None,
        }
    )
    judge = make_judge(cfg)
    assert isinstance(judge, HttpJudge) and judge.api_key_env == "KEY" and judge.cache_path is None
