"""A chaotic judge endpoint: the HTTP judge never hangs, retries within bounds, and either raises
one clear error or counts its failures; a training step never turns them into a silent 0.

The peer is a real threaded HTTP server on loopback. Per request it draws (seeded) one of: a
good reply, HTTP 500, 429 with a Retry-After, garbage, truncated JSON, a body dripped one byte
at a time, a status line dripped, a reply that never comes, a dropped connection. A closed port
stands for an endpoint that is down.
"""

from __future__ import annotations

import json
import math
import random
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest

from agemem_jax import grpo
from agemem_jax.judges import HttpJudge, JudgeError, JudgeRequest, JudgeUnavailable

BEHAVIOURS = ("ok", "500", "429", "garbage", "truncated", "drip_body", "drip_status", "silent",
              "drop")  # fmt: skip
DEADLINE = 1.0


def _reply(question: str) -> bytes:
    score = (sum(map(ord, question)) % 11) / 10  # each question has its own expected score
    return json.dumps({"choices": [{"message": {"content": f"{score:.1f}"}}]}).encode()


def _expected(question: str) -> float:
    return (sum(map(ord, question)) % 11) / 10


class Chaos:
    def __init__(self, seed: int, plan: list[str] | None = None, weights=None):
        self.rng = random.Random(seed)
        self.plan = list(plan or [])
        self.weights = weights
        self.served: list[str] = []
        self.stop = threading.Event()
        chaos = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                question = body["messages"][1]["content"].split("Question: ")[1].split("\n")[0]
                with threading.Lock():
                    kind = chaos.plan.pop(0) if chaos.plan else chaos.rng.choices(
                        BEHAVIOURS, weights=chaos.weights)[0]  # fmt: skip
                    chaos.served.append(kind)
                try:
                    self._serve(kind, question)
                except OSError:  # the client gave up first: that is the point
                    pass

            def _send(self, status: int, payload: bytes, headers=()):
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _serve(self, kind: str, question: str):
                if kind == "ok":
                    self._send(200, _reply(question))
                elif kind == "500":
                    self._send(500, b'{"error": "overloaded"}')
                elif kind.startswith("429"):
                    after = kind.partition(":")[2] or chaos.rng.choice(["0", "0.2", "3600"])
                    self._send(429, b"slow down", [("Retry-After", after)])
                elif kind == "garbage":
                    self._send(200, b"\x00\xffnot json at all")
                elif kind == "truncated":
                    self._send(200, _reply(question)[:17])
                elif kind == "drip_body":  # a valid reply, one byte every 0.2 s: ~10 s in all
                    payload = _reply(question) + b" " * 20
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    for b in payload:
                        if chaos.stop.wait(0.2):
                            return
                        self.wfile.write(bytes([b]))
                        self.wfile.flush()
                elif kind == "drip_status":
                    for b in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"z" * 200:
                        if chaos.stop.wait(0.2):
                            return
                        self.wfile.write(bytes([b]))
                        self.wfile.flush()
                elif kind == "silent":
                    chaos.stop.wait(30)
                elif kind == "drop":
                    self.connection.shutdown(socket.SHUT_RDWR)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self):
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


def _judge(url: str, **kw) -> HttpJudge:
    kw = {"timeout": 0.5, "deadline": DEADLINE, "max_retries": 3, "backoff": 0.01,
          "max_backoff": 0.1, "concurrency": 4, **kw}  # fmt: skip
    return HttpJudge(url, "judge", api_key_env="", **kw)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(300)
def test_chaotic_endpoint_never_hangs_and_never_scores_a_failure_as_zero():
    chaos = Chaos(seed=0)
    stats = {"calls": 0, "scored": 0, "failed_counted": 0, "raised": 0, "longest_s": 0.0}
    try:
        counting = _judge(chaos.url, on_failure="count")
        for i in range(24):
            req = JudgeRequest("task", f"Question number {i}?", "gold", "pred")
            t0 = time.monotonic()
            (score,) = counting.score([req])
            stats["longest_s"] = max(stats["longest_s"], time.monotonic() - t0)
            stats["calls"] += 1
            if score is None:
                stats["failed_counted"] += 1
            else:  # a reply that got through is the right one, never a placeholder
                assert score == _expected(req.question)
                stats["scored"] += 1
        assert counting.stats["failures"] == stats["failed_counted"]
        assert counting.stats["unavailable"] == stats["failed_counted"]
        for i in range(8):  # raise: each failing call is one JudgeUnavailable, in bounded time
            req = JudgeRequest("task", f"Raise case {i}?", "gold", "pred")
            t0 = time.monotonic()
            try:
                (score,) = _judge(chaos.url, on_failure="raise").score([req])
                assert score == _expected(req.question)
            except JudgeUnavailable as e:
                assert "unreachable after" in str(e) and "last error" in str(e)
                stats["raised"] += 1
            stats["longest_s"] = max(stats["longest_s"], time.monotonic() - t0)
            stats["calls"] += 1
    finally:
        chaos.close()
    stats["served"] = {k: chaos.served.count(k) for k in sorted(set(chaos.served))}
    print(json.dumps(stats))
    assert stats["longest_s"] < DEADLINE + 1.0  # the deadline holds against every behaviour
    assert stats["scored"] and stats["failed_counted"] and stats["raised"]
    assert {"drip_body", "drip_status", "silent", "429", "garbage", "truncated"} <= set(
        stats["served"]
    )


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["drip_body", "drip_status", "silent"])
def test_slow_replies_cannot_stretch_the_deadline(kind):
    chaos = Chaos(seed=1, weights=[1 if k == kind else 0 for k in BEHAVIOURS])
    try:
        judge = _judge(chaos.url, timeout=5.0, deadline=1.0, max_retries=5)
        t0 = time.monotonic()
        with pytest.raises(JudgeUnavailable, match="TimeoutError"):
            judge.score([JudgeRequest("task", "Slow?", "a", "b")])
        assert time.monotonic() - t0 < 1.8
    finally:
        chaos.close()


@pytest.mark.timeout(60)
def test_retry_after_is_honoured_and_bounded():
    chaos = Chaos(seed=2, plan=["429:0.6", "ok"])
    try:
        judge = _judge(chaos.url, deadline=5.0)
        t0 = time.monotonic()
        assert judge.score([JudgeRequest("task", "Wait?", "a", "b")]) == [_expected("Wait?")]
        assert 0.6 <= time.monotonic() - t0 < 2.0 and judge.stats["retries"] == 1
        # A Retry-After past the deadline is not waited out: the call fails at once.
        chaos.plan = ["429:3600"]
        t0 = time.monotonic()
        with pytest.raises(JudgeUnavailable, match="no time left to retry"):
            judge.score([JudgeRequest("task", "Later?", "a", "b")])
        assert time.monotonic() - t0 < 1.0
    finally:
        chaos.close()


@pytest.mark.timeout(60)
def test_garbage_and_truncated_replies_are_retried():
    chaos = Chaos(seed=3, plan=["garbage", "truncated", "drop", "ok"])
    try:
        judge = _judge(chaos.url)
        assert judge.score([JudgeRequest("task", "Mend?", "a", "b")]) == [_expected("Mend?")]
        assert judge.stats["retries"] == 3 and judge.stats["bad_replies"] == 2
    finally:
        chaos.close()


@pytest.mark.timeout(60)
def test_closed_port():
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    t0 = time.monotonic()
    assert _judge(url, on_failure="count").score([JudgeRequest("task", "q", "a", "b")]) == [None]
    with pytest.raises(JudgeUnavailable, match="ConnectionRefusedError"):
        _judge(url).score([JudgeRequest("task", "q", "a", "b")])
    assert time.monotonic() - t0 < 2.0


def _expert_trajectories(tmp_path):
    """Scripted-expert episodes (they answer and store, so the judge is asked)."""
    from conftest import make_tiny_tokenizer

    from agemem_jax import builders
    from agemem_jax.chat import ChatFormat
    from agemem_jax.config_lib import from_file

    c: Any = from_file("configs/hotpotqa_grpo.py", "tiny_cpu")
    c.data.limit = 2
    runner = builders.runner(
        ChatFormat(make_tiny_tokenizer(128)), c, builders.summarizer("extractive")
    )
    tasks = builders.tasks(c.data, runner.cfg)
    return runner, runner.run(tasks, builders.policy(c, name="scripted"), group_size=2), c


@pytest.mark.timeout(120)
def test_a_step_scored_by_a_failing_judge_counts_every_failure(tmp_path):
    """on_failure=count: the step goes on, its metrics count the failures, the unknown parts
    are NaN (never 0), and those rollouts get a zero advantage rather than a fake reward.
    on_failure=raise: scoring stops with one JudgeError."""
    from agemem_jax import builders, rl_loss
    from agemem_jax.rewards import score

    runner, trajs, c = _expert_trajectories(tmp_path)
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    judge = _judge(url, on_failure="count", max_retries=1)
    score(trajs, judge, runner.cfg, builders.reward_config(c.reward))
    m = grpo.rollout_metrics(trajs, group_size=2)
    assert judge.stats["failures"] > 0 and m["judge_failures"] == judge.stats["failures"]
    assert m["unscored_episodes"] == len(trajs)
    rewards = [t.reward for t in trajs]
    assert all(r is not None for r in rewards)
    assert all(
        math.isnan(r.task)
        for r, t in zip(rewards, trajs, strict=True)
        if r and t.answer is not None
    )
    assert all(t.memory_quality is None for t in trajs)
    totals = np.asarray([r.total for r in rewards if r is not None]).reshape(-1, 2)
    assert np.isnan(totals).all()
    adv = rl_loss.group_advantages(totals, eps=1e-6, unknown="zero")
    assert (adv == 0).all()
    with pytest.raises(JudgeError):
        score(trajs, _judge(url, on_failure="raise", max_retries=1), runner.cfg,
              builders.reward_config(c.reward))  # fmt: skip


@pytest.mark.slow  # two tiny training runs: minutes on a loaded 2-core machine
@pytest.mark.timeout(1800)
def test_training_stopped_by_the_judge_leaves_a_resumable_checkpoint(tmp_path, monkeypatch):
    """A judge error in step 2 ends `train` with that error; checkpoint 1 is complete, the
    metrics hold step 1 only, and the next run resumes at step 2 and finishes."""
    from conftest import make_tiny_tokenizer

    from agemem_jax.checkpointing import Checkpointer
    from agemem_jax.config_lib import from_file
    from agemem_jax.metrics_log import read_jsonl

    tok = tmp_path / "tok"
    make_tiny_tokenizer(128).save_pretrained(tok)
    c: Any = from_file("configs/hotpotqa_grpo.py", "tiny_cpu")
    c.model.update(tokenizer=str(tok), vocab_size=128)
    c.train.update(steps=2, save_every=1)
    real, calls = grpo.score, []

    def judge_down_at_step_2(trajs, judge, *args):
        calls.append(1)
        if len(calls) == 2:  # what HttpJudge raises when the endpoint stays down
            dead = _judge(f"http://127.0.0.1:{_closed_port()}/v1", max_retries=0)
            dead.score([JudgeRequest("task", "q", "a", "b")])
        return real(trajs, judge, *args)

    monkeypatch.setattr(grpo, "score", judge_down_at_step_2)
    with pytest.raises(JudgeUnavailable):
        grpo.train(c, tmp_path / "run", progress=False)
    assert Checkpointer(tmp_path / "run").latest_step() == 1
    assert [r["step"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl")] == [1]
    rest = grpo.train(c, tmp_path / "run", progress=False)
    assert [m["step"] for m in rest] == [2]
    assert [r["step"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl")] == [1, 2]
