"""Everything an experiment needs, built from its one `ml_collections` config.

The entry points in `experiments/` stay a few lines long: they call these builders with config
blocks, so a sweep or an ablation is a flag and never a code change.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

from agemem_jax import methods, summarizers
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
    method: str = "agemem",
) -> Callable[[], MemoryEnv]:
    d = as_dict(memory_cfg)
    d["enabled_tools"] = methods.method_spec(method).tools_within(d.get("enabled_tools"))
    cfg = MemoryEnvConfig.from_any(d)
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
    method = config.get("method", "agemem")
    make_env = env_factory(chat, config.memory, config.encoder, summarize, method)
    return EpisodeRunner(make_env, as_dict(config.episode), stop_id=chat.im_end, method=method)


def text_policy(name: str, config) -> Policy:
    if name == "scripted":
        spec = methods.method_spec(config.get("method", "agemem"))
        return ScriptedPolicy(
            top_k=config.memory.top_k,
            enabled_tools=spec.tools_within(tuple(config.memory.enabled_tools)),
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


def model(model_cfg: Mapping, seed: int = 0):
    """(model, tokenizer): a checkpoint, or a random decoder of `model_cfg.random` shape (tests).

    A random model takes its vocabulary from `model_cfg.tokenizer`, so it speaks ChatML and the
    protocol's tags are real tokens even though it knows nothing.
    """
    from flax import nnx

    from agemem_jax.models import Decoder, ModelConfig, load_checkpoint, load_tokenizer

    m = as_dict(model_cfg)
    layout = dict(
        param_dtype=m.get("param_dtype") or None,
        scan_layers=m.get("scan_layers", False),
        remat_policy=m.get("remat_policy", "none"),
    )
    if not m.get("random"):
        return load_checkpoint(m["checkpoint"], m.get("dtype", "float32"), **layout)
    tokenizer = load_tokenizer(m.get("tokenizer") or m["checkpoint"])
    shape = dict(m["random"])
    shape["vocab_size"] = shape.get("vocab_size") or len(tokenizer)
    shape.setdefault("eos_token_id", tokenizer.eos_token_id)
    cfg = ModelConfig(
        dtype=m.get("dtype", "float32"),
        param_dtype=layout["param_dtype"] or m.get("dtype", "float32"),
        scan_layers=layout["scan_layers"],
        remat_policy=layout["remat_policy"],
        **shape,
    )
    return Decoder(cfg, rngs=nnx.Rngs(seed)), tokenizer
