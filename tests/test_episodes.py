"""Three-stage episodes end to end: the scripted expert, the random floor, hand-checked rewards."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA

from agemem_jax import summarizers
from agemem_jax import tools as T
from agemem_jax.chat import ChatFormat
from agemem_jax.data import Task, make_task, make_tasks
from agemem_jax.data.hotpotqa import load_hotpotqa
from agemem_jax.encoder import default_encoder
from agemem_jax.episodes import EpisodeConfig, EpisodeRunner, summarize
from agemem_jax.judges import RuleJudge
from agemem_jax.memory_env import MemoryEnv
from agemem_jax.models import load_tokenizer
from agemem_jax.policies import Action, JunkPolicy, LazyPolicy, ScriptedPolicy
from agemem_jax.protocol import format_turn
from agemem_jax.rewards import RewardConfig, score

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = SHARED_DATA / "hotpotqa" / "hotpot_dev_distractor_sample60.json"
COMPONENTS = ("compression", "preventive", "preservation", "storage", "maintenance", "relevance")


@pytest.fixture(scope="module")
def chat():
    return ChatFormat(load_tokenizer("smollm2-135m-instruct"))


def make_runner(chat, env_config=None, **episode):
    enc = default_encoder()

    def make_env():
        return MemoryEnv(chat, encoder=enc, summarizer=summarizers.extractive(), config=env_config)

    return EpisodeRunner(make_env, EpisodeConfig(**episode), stop_id=chat.im_end)


@pytest.fixture(scope="module")
def sample_tasks():
    if not SAMPLE.exists():
        pytest.skip(f"shared HotpotQA sample not found at {SAMPLE}")
    return make_tasks(load_hotpotqa(SAMPLE), t1=4, t2=4)


def test_scripted_expert_on_shared_sample(chat, sample_tasks):
    runner = make_runner(chat)
    trajs = runner.run(sample_tasks, ScriptedPolicy())
    score(trajs, RuleJudge(), runner.cfg, RewardConfig())
    m = summarize(trajs)
    assert m["episodes"] == 60 and m["answered_rate"] == 1.0
    assert m["judge_score"] >= 0.9 and m["memory_quality"] >= 0.8
    assert m["format_error_rate"] == 0.0
    used = {name for t in trajs for c in t.calls(ok=True) for name in [c.name]}
    assert used == set(T.TOOL_NAMES), f"tools never used: {set(T.TOOL_NAMES) - used}"
    for t in trajs:
        for k in COMPONENTS:
            assert 0.0 <= getattr(t.reward, k) <= 1.0, (k, t.task.id)
        assert t.reward.penalty == 0.0
        # Stage 2's distractors were filtered out of the context the answer was given in.
        assert not any(d in t.ledger.kept_text for d in t.task.distractors)
        # Every step is a training row: the prompt is exactly what the context rendered.
        assert all(len(s.prompt_ids) and len(s.action_ids) for s in t.steps)


def test_random_policy_never_crashes_and_scores_nothing(chat, sample_tasks):
    runner = make_runner(chat)
    trajs = runner.run(sample_tasks[:10], JunkPolicy(seed=3))
    score(trajs, RuleJudge(), runner.cfg, RewardConfig())
    m = summarize(trajs)
    assert m["format_error_rate"] >= 0.95
    assert m["judge_score"] == 0.0 and m["answered_rate"] == 0.0
    assert all(t.reward.no_answer == -1.0 and t.reward.task == -1.0 for t in trajs)


def _tiny_record(n_facts_same_title: int) -> dict:
    gold = ["Zorvian Lake", ["Zorvian Lake lies in Kestrel County.", "It was formed in 1821."]]
    other = ["Ambrel Hill", ["Ambrel Hill is a small hill near the coast."]]
    sf = [["Zorvian Lake", 0]] + ([["Zorvian Lake", 1]] if n_facts_same_title == 2 else [])
    return {
        "_id": f"tiny{n_facts_same_title}",
        "question": "In which county is Zorvian Lake?",
        "answer": "Kestrel County",
        "type": "bridge",
        "level": "hard",
        "supporting_facts": sf,
        "context": [gold, other],
    }


@pytest.mark.parametrize("n_facts, t2", [(1, 1), (2, 1), (2, 0)])
def test_hand_computed_rewards(chat, n_facts, t2):
    """R = 1/3 R_task + 1/3 (compression + preventive + preservation)/3 + 1/3 (storage +
    maintenance + relevance)/3, each part computed here by hand from what the episode did."""
    runner = make_runner(chat, t1=2, t2=t2, t3=4)
    task = make_task(_tiny_record(n_facts), t1=2, t2=t2)
    (traj,) = runner.run([task], ScriptedPolicy())
    score([traj], RuleJudge(), runner.cfg, RewardConfig())
    r = traj.reward
    # The expert answers exactly: F1 = 1.
    assert traj.answer == "Kestrel County" and r.task == 1.0
    # Compression: the answer was generated with the final context of the last step.
    t_used = traj.steps[-1].prompt_tokens
    assert r.compression == pytest.approx(1 - t_used / 8192, abs=1e-12)
    # Preventive: Filter/Summary ran in stage 2 exactly when there was a stage 2.
    assert r.preventive == (1.0 if t2 else 0.0)
    # Preservation: "Zorvian Lake" (the query's only key item) came back with the retrieval.
    assert r.preservation == 1.0 and "Zorvian Lake lies" in traj.ledger.kept_text
    assert "In which county" not in traj.ledger.kept_text  # the query does not vouch for itself
    # Storage: every stage-1 entry is a verbatim supporting fact.
    assert r.storage == 1.0
    # Maintenance: two same-subject facts are consolidated (Update + Delete); one is not.
    assert r.maintenance == (1.0 if n_facts == 2 else 0.0)
    # Relevance: the retrieved entries are the supporting facts themselves.
    assert r.relevance == 1.0
    context = (r.compression + r.preventive + r.preservation) / 3
    memory = (r.storage + r.maintenance + r.relevance) / 3
    assert r.total == pytest.approx((1.0 + context + memory) / 3, abs=1e-12)
    assert traj.memory_quality == 1.0
    calls = [c.name for c in traj.calls()]
    assert calls.count(T.ADD) == n_facts
    if n_facts == 2:
        assert calls.count(T.UPDATE) == 1 and calls.count(T.DELETE) == 1
        (entry,) = traj.env.ltm.entries()
        assert "Kestrel County" in entry.content and "1821" in entry.content


def test_k_rollouts_fork_one_memory(chat):
    runner = make_runner(chat, t1=2, t2=1, t3=3)
    task = make_task(_tiny_record(2), t1=2, t2=1)
    trajs = runner.run([task], ScriptedPolicy(), group_size=3)
    assert [t.rollout for t in trajs] == [0, 1, 2]
    assert len({id(t.env.ltm) for t in trajs}) == 3
    texts = [[s.text for s in t.steps] for t in trajs]
    assert texts[0] == texts[1] == texts[2]  # same snapshot + deterministic policy
    ids = [sorted(e.id for e in t.env.ltm.entries()) for t in trajs]
    assert ids[0] == ids[1] == ids[2]
    np.testing.assert_array_equal(trajs[0].steps[-1].prompt_ids, trajs[2].steps[-1].prompt_ids)


def test_eval_entry_point_writes_metrics(tmp_path):
    out = subprocess.run(
        [
            sys.executable, "experiments/eval.py", "--config=configs/hotpotqa.py:synthetic_cpu",
            f"--workdir={tmp_path}", "--config.data.limit=3", "--config.episode.t2=2",
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    for key in ("episodes", "judge_score", "memory_quality", "prompt_tokens", "tool_calls",
                "tool_calls_by_name", "reward", "reward_components", "format_error_rate",
                "answered_rate"):  # fmt: skip
        assert key in metrics
    assert metrics["episodes"] == 3 and set(metrics["tool_calls_by_name"]) == set(T.TOOL_NAMES)
    lines = (tmp_path / "eval" / "trajectories.jsonl").read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[0])["steps"]


def test_bad_config_is_one_clear_error(tmp_path):
    out = subprocess.run(
        [
            sys.executable, "experiments/eval.py", "--config=configs/hotpotqa.py:synthetic_cpu",
            f"--workdir={tmp_path}", "--config.episode.t1=0",
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 2
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ValueError") and "t1" in last
    assert "Traceback" not in out.stderr


# ---------------------------------------------------------------------------------------------
# Reward parts that used to be constant or paid for doing nothing (issue "method fidelity").


class Scripted:
    """A test policy: `plan[(stage, turn_step)](view)` gives the turn text, else it answers."""

    name = "test-script"

    def __init__(self, plan):
        self.plan = plan

    def act(self, views):
        out = []
        for v in views:
            make = self.plan.get((v.stage, v.turn_step))
            if make is not None:
                out.append(Action(make(v)))
            else:
                answer = v.task.answer if v.stage == 3 else "Noted."
                out.append(Action(format_turn("done", answer=answer)))
        return out


def _call(name, **arguments):
    return lambda v: format_turn("act", [{"name": name, "arguments": arguments}])


def _lake_task(conversation=("Zorvian Lake lies in Kestrel County.",), distractors=()):
    return Task(
        id="lake",
        question="In which county is Zorvian Lake?",
        answer="Kestrel County",
        type="bridge",
        conversation=tuple(conversation),
        distractors=tuple(distractors),
        supporting_facts=("Zorvian Lake lies in Kestrel County.",),
        fact_titles=("Zorvian Lake",),
        seed=0,
    )


def _reward(chat, policy, task, env_config=None, reward=None, **episode):
    episode = {"t1": len(task.conversation), "t2": len(task.distractors), "t3": 3} | episode
    runner = make_runner(chat, env_config, **episode)
    (traj,) = runner.run([task], policy)
    score([traj], RuleJudge(), runner.cfg, RewardConfig(**(reward or {})))
    return traj


def test_preservation_depends_on_context_management(chat):
    """Two trajectories of one task, alike but for how stage 2 is managed: summarizing keeps
    the query's key item, filtering drops it. Neither retrieves, so only the context counts."""
    task = _lake_task(distractors=["Zorvian Lake is popular with anglers. Its pike are large."])
    kept = ScriptedPolicy(enabled_tools=["Add_memory", "Summary_context"])
    dropped = ScriptedPolicy(enabled_tools=["Add_memory", "Filter_context"])
    a, b = _reward(chat, kept, task), _reward(chat, dropped, task)
    assert [c.name for c in a.calls()] == ["Add_memory", "Summary_context"]
    assert [c.name for c in b.calls()] == ["Add_memory", "Filter_context"]
    assert a.reward.preservation == 1.0 and "Summary of earlier context" in a.ledger.kept_text
    assert b.reward.preservation == 0.0
    # Lazy keeps the distractor itself, which names the lake; the expert retrieves the fact.
    assert _reward(chat, LazyPolicy(), task).reward.preservation == 1.0
    assert _reward(chat, ScriptedPolicy(), task).reward.preservation == 1.0
    # Nothing kept and nothing retrieved: the query alone does not preserve itself.
    assert _reward(chat, LazyPolicy(), _lake_task()).reward.preservation == 0.0


def test_preventive_needs_a_call_that_shortened_the_context(chat):
    task = _lake_task(distractors=["Football scores from the weekend league were high."])
    noop = Scripted({(2, 0): _call("Filter_context", criteria="quantum chromodynamics")})
    real = Scripted({(2, 0): _call("Filter_context", criteria=task.distractors[0])})
    t_noop, t_real = _reward(chat, noop, task), _reward(chat, real, task)
    (filt,) = t_noop.steps[1].calls
    assert filt.result["removed_messages"] == 0 and "unchanged" in filt.result["note"]
    assert t_noop.reward.preventive == 0.0 and t_real.reward.preventive == 1.0
    # Stage 3 without a stage 2 holds only the system prompt and the protected query.
    empty = _reward(chat, Scripted({(3, 0): _call("Summary_context", span="all")}), _lake_task())
    (summ,) = empty.steps[1].calls
    assert summ.result["summarized_messages"] == 0 and empty.reward.preventive == 0.0
    # A summary longer than the message it replaces does not shorten the context either.
    longer = _reward(chat, Scripted({(1, 0): _call("Summary_context", span="all")}), _lake_task())
    (summ,) = longer.steps[0].calls
    assert summ.result["summarized_messages"] == 1 and "not shorter" in summ.result["note"]
    assert longer.reward.preventive == 0.0


def test_preventive_min_fill_pays_only_a_reduction_under_pressure(chat):
    """The same shortening Filter call, in a roomy context and in one near its budget: with
    `preventive_min_fill` only the second is preventive; as the spec writes it, both are."""
    task = _lake_task(distractors=["Football scores from the weekend league were high."])
    real = Scripted({(2, 0): _call("Filter_context", criteria=task.distractors[0])})
    gate = {"preventive_min_fill": 0.5}
    roomy = _reward(chat, real, task, {"t_max": 8192}, gate)
    tight = _reward(chat, real, task, {"t_max": 2000}, gate)
    for traj, t_max in ((roomy, 8192), (tight, 2000)):
        (filt,) = traj.steps[1].calls
        assert filt.reduced and filt.before_limit
        assert traj.ledger.reduction_fill == pytest.approx(filt.tokens_before / t_max)
    assert roomy.ledger.reduction_fill < 0.5 <= tight.ledger.reduction_fill
    assert roomy.reward.preventive == 0.0 and tight.reward.preventive == 1.0
    assert _reward(chat, real, task, {"t_max": 8192}).reward.preventive == 1.0  # spec: no gate


def _overflowing_task():
    """Stage 1 overflows a 1600-token budget (the system prompt alone is about 1130 tokens);
    stages 2 and 3 fit."""
    return _lake_task(
        conversation=["Zorvian Lake lies in Kestrel County. " + "It is very calm. " * 120],
        distractors=["Football scores from the weekend league were high."],
    )


def test_reduction_after_the_limit_is_not_preventive(chat):
    real = Scripted({(2, 0): _call("Filter_context", criteria="Football scores weekend league")})
    traj = _reward(chat, real, _overflowing_task(), {"t_max": 1600})
    (filt,) = traj.steps[1].calls
    assert filt.reduced and not filt.before_limit
    assert traj.ledger.limit_round == 1  # the stage-1 message overflowed before the first action
    assert traj.reward.preventive == 0.0


def test_overflow_penalty_counts_stage_1(chat):
    traj = _reward(chat, LazyPolicy(), _overflowing_task(), {"t_max": 1600})
    assert all(s.prompt_tokens <= 1600 for s in traj.steps if s.stage > 1)
    assert traj.ledger.peak_tokens > 1600
    assert traj.reward.overflow_penalty == -0.5
    # The same task with room to spare: no penalty.
    assert _reward(chat, LazyPolicy(), _overflowing_task()).reward.overflow_penalty == 0.0


def test_round_penalty_can_fire_with_the_default_caps(chat):
    cfg = EpisodeConfig()
    assert cfg.max_rounds == 28 and cfg.n_max < cfg.max_rounds
    busy = Scripted(
        {
            (stage, k): _call("Retrieve_memory", query="lake")
            for stage in (1, 2, 3)
            for k in range(4)
        }
    )
    task = _lake_task(conversation=["hello"] * 4, distractors=["football"] * 4)
    runner = make_runner(chat)
    (traj,) = runner.run([task], busy)
    score([traj], RuleJudge(), runner.cfg, RewardConfig())
    assert len(traj.steps) == cfg.max_rounds and traj.reward.rounds_penalty == -1.0
    (lazy,) = runner.run([task], LazyPolicy())
    score([lazy], RuleJudge(), runner.cfg, RewardConfig())
    assert len(lazy.steps) == 9 and lazy.reward.rounds_penalty == 0.0


_ID = re.compile(r"mem_[0-9a-f]{8}")


def test_maintenance_needs_an_id_from_a_retrieval(chat):
    """Add then Update an id read from Add_memory's observation: no retrieval, no maintenance."""

    def update_added(v):
        (mid,) = _ID.findall(chat.decode(v.prompt_ids))
        return format_turn("fix", [{"name": "Update_memory",
                                    "arguments": {"memory_id": mid, "content": "Kestrel"}}])  # fmt: skip

    policy = Scripted(
        {(1, 0): _call("Add_memory", content="Zorvian Lake lies in Kestrel County."),
         (1, 1): update_added}
    )  # fmt: skip
    strict = _reward(chat, policy, _lake_task())
    (update,) = [c for c in strict.calls() if c.name == "Update_memory"]
    assert update.code == "unseen_id" and strict.reward.maintenance == 0.0
    lenient = _reward(chat, policy, _lake_task(), {"added_ids_are_seen": True})
    assert lenient.reward.maintenance == 1.0


def test_bare_call_object_is_a_format_error(chat):
    bare = '<think>x</think><tool_call>{"name": "Retrieve_memory", "arguments": {"query": "lake"}}'
    policy = Scripted({(3, 0): lambda v: bare + "</tool_call>"})
    traj = _reward(chat, policy, _lake_task())
    assert traj.steps[1].format_error and "JSON list" in traj.steps[1].error
    assert not traj.steps[1].calls and summarize([traj])["format_error_rate"] > 0
    lenient = _reward(chat, policy, _lake_task(), {"limits": {"accept_bare_object": True}})
    assert not lenient.steps[1].format_error
    assert [(c.name, c.ok) for c in lenient.steps[1].calls] == [("Retrieve_memory", True)]


def test_reward_reads_only_what_the_episode_recorded(chat):
    """Scoring after the environment was wiped gives the same reward: nothing is read back."""
    task = _lake_task(distractors=["Football scores from the weekend league were high."])
    runner = make_runner(chat, t1=1, t2=1, t3=3)
    (a,) = runner.run([task], ScriptedPolicy())
    (b,) = runner.run([task], ScriptedPolicy())
    score([a], RuleJudge(), runner.cfg, RewardConfig())
    b.env.restore(runner.make_env().snapshot())  # an empty store, context and statistics
    score([b], RuleJudge(), runner.cfg, RewardConfig())
    assert a.reward == b.reward and a.memory_quality == b.memory_quality
    assert a.reward.preventive == 1.0 and a.reward.maintenance == 0.0
