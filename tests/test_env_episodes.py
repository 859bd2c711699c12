"""Interactive benchmarks through the agent protocol, with memory tools available."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_tiny_tokenizer

from agemem_jax import summarizers
from agemem_jax import tools as T
from agemem_jax.chat import ChatFormat
from agemem_jax.encoder import HashEncoder
from agemem_jax.env_episodes import EnvEpisodeRunner, summarize
from agemem_jax.envs import tasks
from agemem_jax.memory_env import MemoryEnv
from agemem_jax.policies import Action, JunkPolicy, OraclePolicy
from agemem_jax.protocol import format_turn

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def chat():
    return ChatFormat(make_tiny_tokenizer())


def runner(chat, bench="pddl", **kw):
    enc = HashEncoder()

    def make_memory():
        return MemoryEnv(chat, encoder=enc, summarizer=summarizers.extractive())

    return EnvEpisodeRunner(bench, make_memory, stop_id=chat.im_end, **kw)


SPECS = tasks("pddl", source="generated", num_per_domain=2, seed=0)


def test_oracle_through_the_protocol(chat):
    trajs = runner(chat).run(SPECS, OraclePolicy())
    m = summarize(trajs)
    assert m["episodes"] == 8 and m["success"] >= 0.9 and m["format_error_rate"] == 0.0
    t = trajs[0]
    # Each action became an <answer> turn, the observation a user message in the context.
    assert all(s["env_action"] for s in t.steps)
    assert t.memory.stm.messages[-1].text == t.steps[-1]["observation"]


def test_step_limit_is_configurable(chat):
    """`max_steps` caps environment actions per episode (memory turns do not count)."""
    trajs = runner(chat, max_steps=2).run(SPECS[:2], JunkPolicy(seed=0))
    assert all(t.env.steps == 2 and t.env.done for t in trajs)
    with pytest.raises(ValueError, match="max_steps"):
        runner(chat, max_steps=0)


class MemoryFirst:
    """Stores each observation, then acts as the oracle: memory turns interleave with actions."""

    name = "memory_first"

    def __init__(self):
        self.stored: set[tuple[int, int]] = set()

    def act(self, views):
        out = []
        for v in views:
            key = (v.row, v.env.steps)  # one memory turn per environment step
            if key not in self.stored:
                self.stored.add(key)
                call = {"name": "Add_memory", "arguments": {"content": v.incoming[:200]}}
                out.append(Action(format_turn("Keep this.", [call])))
            else:
                out.append(Action(format_turn("Act.", answer=v.env.oracle_action())))
        return out


def test_memory_tools_work_between_actions(chat):
    trajs = runner(chat).run(SPECS[:2], MemoryFirst())
    for t in trajs:
        assert t.metrics["success"] == 1.0
        adds = [s for s in t.steps if s["calls"] == [T.ADD]]
        acts = [s for s in t.steps if s["env_action"]]
        assert len(adds) == len(acts) == t.metrics["steps"]
        assert len(t.memory.ltm) == len(adds)


def test_random_policy_is_bounded_and_never_crashes(chat):
    trajs = runner(chat, max_tool_turns=1).run(SPECS, JunkPolicy(seed=0))
    m = summarize(trajs)
    assert m["success"] == 0.0 and m["format_error_rate"] > 0.9
    for t in trajs:
        # Every environment step costs at most max_tool_turns + 1 policy turns.
        assert t.metrics["policy_turns"] <= 2 * t.metrics["steps"]
        assert t.env.done


def test_unknown_benchmark_is_a_clear_error(chat):
    with pytest.raises(ValueError, match="unknown benchmark 'chess'"):
        runner(chat, bench="chess")


@pytest.mark.parametrize("bench", ["pddl", "babyai"])
def test_eval_entry_point_on_a_benchmark(bench, tmp_path):
    out = subprocess.run(
        [
            sys.executable, "experiments/eval.py", f"--config=configs/eval/{bench}.py:oracle",
            f"--workdir={tmp_path}", "--config.data.limit=3", "--config.encoder=hash",
            *(["--config.env.source=generated"] if bench == "pddl" else []),
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    metric = "progress_rate" if bench == "pddl" else "success_rate"
    assert metrics["episodes"] == 3 and metrics[metric] >= 0.9
    assert set(metrics["tool_calls_by_name"]) == set(T.TOOL_NAMES)
    assert len((tmp_path / "eval" / "trajectories.jsonl").read_text().splitlines()) == 3


@pytest.mark.slow
@pytest.mark.parametrize("bench", ["pddl", "babyai", "alfworld", "sciworld"])
def test_embedded_model_plays_each_benchmark(bench, tmp_path):
    out = subprocess.run(
        [
            sys.executable, "experiments/eval.py", f"--config=configs/eval/{bench}.py:smollm2_cpu",
            f"--workdir={tmp_path}",
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=3600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["episodes"] == 3 and metrics["policy"] == "model"
