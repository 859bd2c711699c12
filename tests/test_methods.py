"""Each method's contract in the shared harness (methods.py), and every method through eval."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agemem_jax import builders, methods, summarizers
from agemem_jax import tools as T
from agemem_jax.chat import ChatFormat
from agemem_jax.config_lib import base_config, from_file
from agemem_jax.data import SHARED_SAMPLE
from agemem_jax.encoder import HashEncoder
from agemem_jax.env_episodes import EnvEpisodeRunner
from agemem_jax.episodes import EpisodeConfig, EpisodeRunner
from agemem_jax.evaluate import evaluate
from agemem_jax.memory_env import MemoryEnv
from agemem_jax.models import load_tokenizer
from agemem_jax.policies import OraclePolicy

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("agemem", "agemem_rag", "agemem_lt", "no_memory", "rag")
BENCHES = ("alfworld", "sciworld", "babyai", "pddl")


@pytest.fixture(scope="module")
def chat():
    return ChatFormat(load_tokenizer("smollm2-135m-instruct"))


class SpyEnv(MemoryEnv):
    """A memory environment that logs environment-driven retrievals (stage, k, hits, store
    size) and, per
    injected message, whether a retrieval came right before it and the store was non-empty."""

    def __init__(self, *args, log: list, injections: list, raw: bool, **kwargs):
        super().__init__(*args, **kwargs)
        self.log, self.injections, self.raw = log, injections, raw
        self._just_retrieved = False

    def retrieve_into_context(self, query, top_k=None):
        msg = super().retrieve_into_context(query, top_k)
        hits = len(json.loads(msg.text)["results"])
        self.log.append((self.stage, top_k, hits, len(self.ltm)))
        self._just_retrieved = True
        return msg

    def add_message(self, role, text, *, protected=False):
        stored_before = len(self.ltm) - int(self.raw)  # a raw store adds this very message
        self.injections.append((self.stage, self._just_retrieved, stored_before > 0))
        self._just_retrieved = False
        return super().add_message(role, text, protected=protected)


def _no_llm(_messages):
    raise AssertionError("the summarizer (an LLM call) must not run")


def run_hotpotqa(chat, method: str, n_tasks: int = 2, t_max: int = 8192, sample=False, **episode):
    """Scripted episodes under `method`; returns (trajectories, retrieval log, injections)."""
    config = base_config()
    config.method = method
    config.encoder = "hash"
    config.data.limit = n_tasks
    if sample:  # the shared HotpotQA sample: subjects with several supporting facts
        config.data.source, config.data.path = "hotpotqa", str(SHARED_SAMPLE)
    log: list = []
    injections: list = []
    spec = methods.method_spec(method)
    enc = HashEncoder()
    summarizer = summarizers.extractive() if T.SUMMARY in spec.tools else _no_llm

    def make_env():
        return SpyEnv(
            chat,
            log=log,
            injections=injections,
            raw=spec.raw_store,
            encoder=enc,
            summarizer=summarizer,
            enabled_tools=spec.tools_within(),
            t_max=t_max,
        )

    cfg = EpisodeConfig(**episode)
    runner = EpisodeRunner(make_env, cfg, stop_id=chat.im_end, method=method)
    tasks = builders.tasks(config.data, cfg)
    return runner.run(tasks, builders.policy(config, name="scripted")), log, injections


# ------------------------------------------------------------------------------ the table


def test_unknown_method_is_one_clear_error(chat, tmp_path):
    with pytest.raises(ValueError, match=r"unknown method 'memgpt'; choose one of agemem, "):
        methods.method_spec("memgpt")
    with pytest.raises(ValueError, match="unknown method 'memgpt'"):
        EpisodeRunner(lambda: None, method="memgpt")
    with pytest.raises(ValueError, match="unknown method 'memgpt'"):
        EnvEpisodeRunner("pddl", lambda: None, method="memgpt")
    config = base_config()
    config.method = "memgpt"
    with pytest.raises(ValueError, match="unknown method 'memgpt'"):
        evaluate(config, tmp_path)
    out = subprocess.run(
        [
            sys.executable, "experiments/eval.py", "--config=configs/hotpotqa.py",
            f"--workdir={tmp_path}", "--config.method=memgpt",
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("error: ValueError: unknown method")
    assert "Traceback" not in out.stderr


def test_training_refuses_prompted_baselines():
    from agemem_jax import grpo

    for name in ("no_memory", "rag", "mem0", "mem0g", "a_mem", "langmem"):
        config = from_file("configs/hotpotqa_grpo.py", "tiny_cpu")
        config.method = name
        with pytest.raises(ValueError, match=f"method '{name}' is a prompted baseline"):
            grpo.build(config)  # refused before a model is built
        with pytest.raises(ValueError, match="prompted baseline"):
            grpo.sft(config, "/nonexistent")
    for name in ("agemem", "agemem_rag", "agemem_lt"):
        assert methods.require_trainable(name).trainable


def test_rag_variant_trains_with_only_its_tools(tmp_path):
    """`agemem_rag` runs through GRPO: rollouts see the LTM tools only, the update runs."""
    import numpy as np
    from conftest import make_tiny_tokenizer

    from agemem_jax import grpo

    make_tiny_tokenizer(128).save_pretrained(tmp_path / "tok")
    config = from_file("configs/hotpotqa_grpo.py", "tiny_cpu")
    config.method = "agemem_rag"
    config.model.update(tokenizer=str(tmp_path / "tok"), vocab_size=128)
    config.data.limit = 1
    config.train.update(steps=1, export=False)
    setup = grpo.build(config)
    assert tuple(setup.runner.make_env().tools) == T.LTM_TOOLS
    (metrics,) = grpo.train(config, tmp_path / "run", progress=False)
    assert np.isfinite(metrics["loss"]) and metrics["step_rows"] > 0


def test_tool_grouping_follows_the_spec_table():
    assert T.LTM_TOOLS == (T.ADD, T.UPDATE, T.DELETE)
    assert T.STM_TOOLS == (T.RETRIEVE, T.SUMMARY, T.FILTER)
    rag_like = [methods.method_spec(m) for m in ("agemem_rag", "agemem_lt")]
    assert all(m.tools == T.LTM_TOOLS and m.auto_retrieve_k == 5 for m in rag_like)
    # +LT and AgeMem-RAG share one harness; only training (which checkpoint) tells them apart.
    fields = ("tools", "auto_retrieve_k", "introspection", "raw_store", "reset_context")
    rag, lt = ([getattr(m, f) for f in fields] for m in rag_like)
    assert rag == lt


@pytest.mark.parametrize("method", METHODS)
def test_system_prompt_offers_exactly_the_methods_tools(chat, method):
    config = base_config()
    config.method = method
    config.encoder = "hash"
    env = builders.env_factory(
        chat, config.memory, "hash", summarizers.extractive(), config.method
    )()
    expected = methods.method_spec(method).tools_within()
    assert tuple(env.tools) == expected
    prompt = env.system_prompt("task")
    for name in T.TOOL_NAMES:
        assert (name in prompt) == (name in expected), name
    assert ("<tool_call>" in prompt) == bool(expected)
    # memory.enabled_tools ablates within a method and never adds a tool it lacks.
    config.memory.enabled_tools = (T.ADD, T.FILTER)
    env = builders.env_factory(chat, config.memory, "hash", None, config.method)()
    assert tuple(env.tools) == tuple(t for t in (T.ADD, T.FILTER) if t in expected)
    policy = builders.policy(config, name="scripted")
    assert policy.enabled == set(env.tools)


# ------------------------------------------------------------------------------ the hooks


def test_agemem_keeps_stage1_introspection_only(chat):
    _, log, _ = run_hotpotqa(chat, "agemem")
    assert log and all(stage == "1" and k == 3 for stage, k, _, _ in log)


@pytest.mark.parametrize("method", ["agemem_rag", "agemem_lt"])
def test_rag_variants_retrieve_top5_at_every_step_and_maintain_seen_ids(chat, method):
    trajs, log, injections = run_hotpotqa(chat, method, n_tasks=3, sample=True)
    cfg = EpisodeConfig()
    # Every injected message (the question included) is one step; each step that meets a
    # non-empty store is preceded by a top-5 retrieval, in every stage.
    assert len(injections) == 3 * (cfg.t1 + cfg.t2 + 1)
    assert all(retrieved == stored for _, retrieved, stored in injections)
    assert {k for _, k, _, _ in log} == {5} and {s for s, *_ in log} == {"1", "2", "3"}
    assert all(hits == min(5, size) for _, _, hits, size in log)
    assert sum(stored for _, _, stored in injections) == len(log) >= 3 * (cfg.t2 + 1)
    for t in trajs:
        names = {c.name for c in t.calls()}
        assert names <= set(T.LTM_TOOLS) and T.ADD in names
        assert t.env.stats.calls[T.RETRIEVE] == 0  # environment retrieval is not a tool call
        # The context was reset for stage 2: no stage-1 message survives.
        assert all(m.stage != "1" for m in t.env.stm.messages)
    # The expert consolidates entries that only automatic retrieval showed it (seen ids).
    maint = [c for t in trajs for c in t.calls() if c.name in (T.UPDATE, T.DELETE)]
    assert maint and all(c.ok for c in maint)


def test_rag_stores_every_message_raw_without_llm_calls(chat):
    trajs, log, injections = run_hotpotqa(chat, "rag")
    for t in trajs:
        injected = [*t.task.conversation, *t.task.distractors, t.task.question]
        entries = t.env.ltm.entries()
        assert [e.content for e in entries] == injected
        assert all(e.memory_type == "raw" and e.metadata["raw"] for e in entries)
        assert not list(t.calls()) and t.answer == t.task.answer
        # The prompt never offers a tool; every step only answered.
        assert all(s.answer is not None for s in t.steps)
    # Every injected message but the very first met a non-empty store: one retrieval each.
    n = len(trajs) * (len(injected) - 1)
    assert all(retrieved == stored for _, retrieved, stored in injections)
    assert len(log) == n and {k for _, k, _, _ in log} == {5}
    assert all(hits == min(5, size) for _, _, hits, size in log)
    assert max(hits for _, _, hits, _ in log) == 5


def test_no_memory_never_resets_and_truncates_to_t_max(chat):
    trajs, log, _ = run_hotpotqa(chat, "no_memory")
    assert not log
    for t in trajs:
        assert len(t.env.ltm) == 0 and not list(t.calls())
        texts = [m.text for m in t.env.stm.messages]
        # One context across the stages: the stage-1 conversation is there at question time.
        assert all(msg in texts for msg in t.task.conversation)
        assert t.answer == t.task.answer
    assert all(t.env.stm.evicted == 0 for t in trajs)
    small = min(t.env.stm.peak_tokens for t in trajs) * 3 // 4  # the same episodes must overflow
    trajs, _, _ = run_hotpotqa(chat, "no_memory", t_max=small)
    for t in trajs:
        stm = t.env.stm
        assert stm.evicted > 0 and stm.prompt_tokens <= small
        assert stm.messages[0].role == "system"
        assert any(m.text == t.task.question for m in stm.messages)  # protected
        assert all(s.prompt_tokens <= small for s in t.steps)


def test_env_runner_applies_the_method_to_observations(chat):
    from agemem_jax.envs import tasks

    specs = tasks("pddl", source="generated", num_per_domain=1, seed=0)[:2]
    enc = HashEncoder()
    for method in METHODS:
        spec = methods.method_spec(method)

        def make_memory(spec=spec):
            return MemoryEnv(
                chat,
                encoder=enc,
                summarizer=summarizers.extractive(),
                enabled_tools=spec.tools_within(),
            )

        runner = EnvEpisodeRunner("pddl", make_memory, stop_id=chat.im_end, method=method)
        for t in runner.run(specs, OraclePolicy()):
            assert t.metrics["progress_rate"] >= 0.9
            raw = [e.content for e in t.memory.ltm.entries()]
            shown = [m for m in t.memory.stm.messages if m.role == "tool"]
            if spec.raw_store:  # the first observation and one per environment step
                assert len(raw) == 1 + len(t.steps)
                assert raw[1:] == [s["observation"] for s in t.steps]
            else:
                assert raw == []
            assert bool(shown) == spec.raw_store  # nothing to retrieve without a store
            system = t.memory.stm.messages[0].text
            assert (T.ADD in system) == (T.ADD in spec.tools)


# ------------------------------------------------------------------------------ eval runs


def _eval_config(method: str, bench: str, encoder: str):
    if bench == "hotpotqa":
        config = from_file("configs/eval/hotpotqa.py", "hotpotqa_cpu")
    else:
        config = from_file(f"configs/eval/{bench}.py", "oracle")
        if bench in ("pddl", "alfworld"):
            config.env.source = "generated"
    config.method = method
    config.encoder = encoder
    config.data.limit = 3
    return config


def _check(metrics: dict, method: str, bench: str) -> None:
    assert metrics["episodes"] == 3 and metrics["method"] == method
    assert metrics["format_error_rate"] == 0.0
    allowed = methods.method_spec(method).tools_within()
    assert all(n == 0 for name, n in metrics["tool_calls_by_name"].items() if name not in allowed)
    if bench == "hotpotqa":
        assert metrics["answered_rate"] == 1.0 and metrics["judge_score"] >= 0.9
    else:
        key = "progress_rate" if bench == "pddl" else "success_rate"
        assert metrics[key] >= 0.9


@pytest.mark.parametrize(
    "method, bench", [*((m, "hotpotqa") for m in METHODS), ("rag", "pddl"), ("no_memory", "pddl")]
)
def test_every_method_evaluates_fast_benches(method, bench, tmp_path):
    """The fast subset: every method on HotpotQA, the interactive path through `evaluate` once
    per memory-less baseline (the runner-level test above covers each method on PDDL)."""
    metrics = evaluate(_eval_config(method, bench, "hash"), tmp_path, progress=False)
    _check(metrics, method, bench)


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("bench", ["hotpotqa", *BENCHES])
def test_every_method_evaluates_every_bench_with_minilm(method, bench, tmp_path):
    metrics = evaluate(_eval_config(method, bench, "minilm"), tmp_path, progress=False)
    _check(metrics, method, bench)


@pytest.mark.parametrize("method, bench", [("agemem", "hotpotqa"), ("rag", "pddl")])
def test_episodes_travel_between_hosts_as_data(method, bench, tmp_path, monkeypatch):
    """What a multi-host evaluation gathers (episodes as tagged JSON, live memory replaced by its
    end state) summarizes and writes exactly like the episodes themselves."""
    import json

    from agemem_jax import evaluate as ev

    direct = evaluate(_eval_config(method, bench, "hash"), tmp_path / "a", progress=False)
    travel = lambda ts: [
        ev._decode(json.loads(json.dumps(ev._encode(ev._detached(t))))) for t in ts
    ]
    monkeypatch.setattr(ev, "_gather", travel)
    sent = evaluate(_eval_config(method, bench, "hash"), tmp_path / "b", progress=False)
    direct.pop("seconds"), sent.pop("seconds")
    assert sent == direct
    read = lambda d: (d / "eval" / "trajectories.jsonl").read_text()
    assert read(tmp_path / "b") == read(tmp_path / "a")
