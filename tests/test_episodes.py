"""Three-stage episodes end to end: the scripted expert, the random floor, hand-checked rewards."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA

from agemem_jax import summarizers
from agemem_jax import tools as T
from agemem_jax.chat import ChatFormat
from agemem_jax.data import make_task, make_tasks
from agemem_jax.data.hotpotqa import load_hotpotqa
from agemem_jax.encoder import default_encoder
from agemem_jax.episodes import EpisodeConfig, EpisodeRunner, score, summarize
from agemem_jax.judges import RuleJudge
from agemem_jax.memory_env import MemoryEnv
from agemem_jax.models import load_tokenizer
from agemem_jax.policies import RandomPolicy, ScriptedPolicy
from agemem_jax.rewards import RewardConfig

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = SHARED_DATA / "hotpotqa" / "hotpot_dev_distractor_sample60.json"
COMPONENTS = ("compression", "preventive", "preservation", "storage", "maintenance", "relevance")


@pytest.fixture(scope="module")
def chat():
    return ChatFormat(load_tokenizer("smollm2-135m-instruct"))


def make_runner(chat, **episode):
    enc = default_encoder()

    def make_env():
        return MemoryEnv(chat, encoder=enc, summarizer=summarizers.extractive())

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
        assert not any(d in t.answer_context_text for d in t.task.distractors)
        # Every step is a training row: the prompt is exactly what the context rendered.
        assert all(len(s.prompt_ids) and len(s.action_ids) for s in t.steps)


def test_random_policy_never_crashes_and_scores_nothing(chat, sample_tasks):
    runner = make_runner(chat)
    trajs = runner.run(sample_tasks[:10], RandomPolicy(seed=3))
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
    # Preservation: "Zorvian Lake" (the query's only key item) is in the final context.
    assert r.preservation == 1.0
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
