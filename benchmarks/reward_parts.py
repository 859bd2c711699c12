"""Every reward part for the scripted expert and the lazy baseline on the shared HotpotQA sample.

    python benchmarks/reward_parts.py [--limit 60] [--encoder minilm|hash]

GRPO learns whatever pays, so a reward part that does not move when behaviour changes teaches
nothing, and one that pays for doing nothing teaches a shortcut. This plays each question once
with the scripted expert (stores the supporting facts, filters and summarizes distractors,
retrieves and consolidates) and once with `LazyPolicy` (answers the same gold answer without
managing context or memory), scores both with the rule judge, and prints one JSON line per
reward part:
  part     component of `rewards.Reward` (the nine parts, then the totals)
  expert   its mean over the questions for the expert
  lazy     its mean for the lazy baseline
  differ   questions on which the two values differ
  of       questions played
Episodes use the `EpisodeConfig` and `MemoryEnvConfig` defaults, the SmolLM2 tokenizer and the
extractive summarizer. The rounds and overflow penalties stay 0 for both here (neither policy
exceeds N_max or T_max); `tests/test_episodes.py` makes each fire on purpose.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from agemem_jax import summarizers
from agemem_jax.chat import ChatFormat
from agemem_jax.data import SHARED_SAMPLE, load_hotpotqa, make_tasks
from agemem_jax.encoder import HashEncoder, default_encoder
from agemem_jax.episodes import EpisodeConfig, EpisodeRunner
from agemem_jax.judges import RuleJudge
from agemem_jax.memory_env import MemoryEnv
from agemem_jax.models import load_tokenizer
from agemem_jax.policies import LazyPolicy, ScriptedPolicy
from agemem_jax.rewards import RewardConfig, score

PARTS = (
    "task", "compression", "preventive", "preservation", "storage", "maintenance", "relevance",
    "rounds_penalty", "overflow_penalty", "context", "memory", "penalty", "total",
)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--limit", type=int, default=60, help="questions from the shared sample")
    ap.add_argument("--encoder", choices=("minilm", "hash"), default="minilm")
    args = ap.parse_args()

    chat = ChatFormat(load_tokenizer("smollm2-135m-instruct"))
    encoder = default_encoder() if args.encoder == "minilm" else HashEncoder()
    cfg = EpisodeConfig()

    def make_env() -> MemoryEnv:
        return MemoryEnv(chat, encoder=encoder, summarizer=summarizers.extractive())

    runner = EpisodeRunner(make_env, cfg, stop_id=chat.im_end)
    tasks = make_tasks(load_hotpotqa(SHARED_SAMPLE)[: args.limit], t1=cfg.t1, t2=cfg.t2)
    values = {}
    for name, policy in (("expert", ScriptedPolicy()), ("lazy", LazyPolicy())):
        trajs = runner.run(tasks, policy)
        score(trajs, RuleJudge(), cfg, RewardConfig())
        values[name] = {p: np.array([getattr(t.reward, p) for t in trajs]) for p in PARTS}
    for part in PARTS:
        e, lazy = values["expert"][part], values["lazy"][part]
        row = {
            "part": part,
            "expert": round(float(e.mean()), 4),
            "lazy": round(float(lazy.mean()), 4),
            "differ": int(np.sum(~np.isclose(e, lazy))),
            "of": len(tasks),
        }
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
