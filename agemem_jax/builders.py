"""Everything an experiment needs, built from its one `ml_collections` config.

The entry points in `experiments/` stay a few lines long: they call these builders with config
blocks, so a sweep or an ablation is a flag and never a code change.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

from agemem_jax import summarizers
from agemem_jax.chat import ChatFormat
from agemem_jax.data import load_records, make_tasks
from agemem_jax.encoder import HashEncoder, default_encoder
from agemem_jax.episodes import EpisodeConfig, EpisodeRunner
from agemem_jax.judges import Judge, make_judge
from agemem_jax.memory_env import MemoryEnv, MemoryEnvConfig
from agemem_jax.policies import Policy, RandomPolicy, ScriptedPolicy
from agemem_jax.rewards import RewardConfig


def as_dict(cfg: Any) -> dict[str, Any]:
    if cfg is None:
        return {}
    return dict(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg)


def encoder(name: str):
    """`minilm` (all-MiniLM-L6-v2, the default everywhere) or `hash` (unit tests only)."""
    if name == "minilm":
        return default_encoder()
    if name == "hash":
        return HashEncoder()
    raise ValueError(f"unknown encoder {name!r}; choose 'minilm' or 'hash'")


def tasks(data_cfg: Mapping, episode_cfg: EpisodeConfig):
    d = as_dict(data_cfg)
    records = load_records(
        d.get("source", "synthetic"),
        path=d.get("path") or None,
        limit=d.get("limit") or None,
        seed=d.get("seed", 0),
        split=d.get("split", "validation"),
    )
    return make_tasks(records, t1=episode_cfg.t1, t2=episode_cfg.t2, seed=d.get("seed", 0))


def env_factory(
    chat: ChatFormat,
    memory_cfg: Mapping,
    encoder_name: str,
    summarizer: Callable | None,
) -> Callable[[], MemoryEnv]:
    cfg = MemoryEnvConfig.from_any(as_dict(memory_cfg))
    enc = encoder(encoder_name)
    return functools.partial(MemoryEnv, chat, encoder=enc, summarizer=summarizer, config=cfg)


def summarizer(name: str, complete: Callable | None = None) -> Callable:
    """`extractive` (deterministic) or `policy` (the policy model prompted to summarize)."""
    if name == "extractive":
        return summarizers.extractive()
    if name == "policy":
        if complete is None:
            raise ValueError("summarizer='policy' needs a model; use 'extractive' without one")
        return summarizers.from_chat_model(complete)
    raise ValueError(f"unknown summarizer {name!r}; choose 'extractive' or 'policy'")


def runner(chat: ChatFormat, config, summarize: Callable | None) -> EpisodeRunner:
    make_env = env_factory(chat, config.memory, config.encoder, summarize)
    return EpisodeRunner(make_env, as_dict(config.episode), stop_id=chat.im_end)


def text_policy(name: str, config) -> Policy:
    if name == "scripted":
        return ScriptedPolicy(
            top_k=config.memory.top_k, enabled_tools=tuple(config.memory.enabled_tools)
        )
    if name == "random":
        return RandomPolicy(seed=config.seed)
    raise ValueError(f"unknown policy {name!r}; choose 'model', 'scripted' or 'random'")


def reward_config(cfg: Mapping) -> RewardConfig:
    return RewardConfig.from_config(as_dict(cfg))


def judge(cfg: Mapping, generate: Callable | None = None) -> Judge:
    d = as_dict(cfg)
    if d.get("kind") == "local":
        if generate is None:
            raise ValueError("judge.kind='local' needs a model; the experiment passes the sampler")
        d["generate"] = generate
    return make_judge(d)
