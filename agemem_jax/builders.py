"""Everything an experiment needs, built from its one `ml_collections` config.

The entry points in `experiments/` stay a few lines long: they call these builders with config
blocks, so a sweep or an ablation is a flag and never a code change.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax

from agemem_jax import baselines, distributed, methods, summarizers
from agemem_jax import sharding as shd
from agemem_jax.chat import ChatFormat
from agemem_jax.data import DataConfig, Task, load_records, make_tasks
from agemem_jax.dataclass_config import build
from agemem_jax.encoder import HashEncoder, default_encoder
from agemem_jax.episodes import EpisodeConfig, EpisodeRunner
from agemem_jax.judges import Judge, JudgeConfig, make_judge
from agemem_jax.memory_env import MemoryEnv, MemoryEnvConfig
from agemem_jax.policies import JunkPolicy, LazyPolicy, OraclePolicy, Policy, ScriptedPolicy
from agemem_jax.rewards import RewardConfig
from agemem_jax.rollout import ModelStack
from agemem_jax.sampler import SamplingConfig
from agemem_jax.sharding import MeshConfig


def encoder(name: str):
    """`minilm` (all-MiniLM-L6-v2, the default everywhere) or `hash` (unit tests only)."""
    if name == "minilm":
        return default_encoder()
    if name == "hash":
        return HashEncoder()
    raise ValueError(f"unknown encoder {name!r}; choose 'minilm' or 'hash'")


def tasks(data_cfg, episode_cfg: EpisodeConfig) -> list[Task]:
    d = build(DataConfig, data_cfg)
    records = load_records(
        d.source,
        path=d.path or None,
        limit=d.limit or None,
        seed=d.seed,
        split=d.split,
        n_distractors=d.n_distractors,
        comparison_fraction=d.comparison_fraction,
    )
    return make_tasks(records, t1=episode_cfg.t1, t2=episode_cfg.t2, seed=d.seed)


def env_factory(
    chat: ChatFormat,
    memory_cfg,
    encoder_name: str,
    summarizer: Callable | None,
    method: str,
) -> Callable[[], MemoryEnv]:
    cfg = build(MemoryEnvConfig, memory_cfg)
    cfg = dataclasses.replace(
        cfg, enabled_tools=methods.method_spec(method).tools_within(cfg.enabled_tools)
    )
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


def runner(
    chat: ChatFormat,
    config,
    summarize: Callable | None,
    baseline: baselines.Harness | None = None,
) -> EpisodeRunner:
    make_env = env_factory(chat, config.memory, config.encoder, summarize, config.method)
    return EpisodeRunner(
        make_env,
        build(EpisodeConfig, config.episode),
        stop_id=chat.im_end,
        method=config.method,
        baseline=baseline,
    )


def baseline(config, stack: ModelStack | None) -> baselines.Harness | None:
    """The memory system of a baseline method (None for other methods). Its LLM calls run our
    sampler on the policy's backbone (`stack`), so every method shares one model."""
    spec = methods.method_spec(config.method)
    if spec.memory_system is None:
        return None
    if stack is None:
        raise ValueError(f"method {spec.name!r} runs its memory system on the model: load it")
    cfg = build(baselines.BaselinesConfig, config.baselines)
    llm = baselines.SamplerLLM(
        stack.model, stack.tokenizer, max_prompt_tokens=cfg.max_prompt_tokens, seed=config.seed
    )
    return baselines.Harness(spec.memory_system, llm, cfg, encoder(config.encoder), config.seed)


POLICIES = ("model", "scripted", "lazy", "junk", "oracle")


def policy(config, stack: ModelStack | None = None, name: str | None = None) -> Policy:
    """The acting policy `config.policy` names (or `name`); `model` samples from `stack`."""
    name = config.policy if name is None else name
    if name == "model":
        if stack is None:
            raise ValueError("policy='model' needs the model stack (builders.model_stack)")
        return stack.policy
    if name == "scripted":
        spec = methods.method_spec(config.method)
        return ScriptedPolicy(
            top_k=config.memory.top_k,
            enabled_tools=spec.tools_within(tuple(config.memory.enabled_tools)),
        )
    if name == "lazy":
        return LazyPolicy()
    if name == "junk":
        return JunkPolicy(seed=config.seed)
    if name == "oracle":
        return OraclePolicy()
    raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(POLICIES)}")


def reward_config(cfg) -> RewardConfig:
    return build(RewardConfig, cfg)


def judge(cfg) -> Judge:
    """The judge of the `judge` block. `local` loads its own frozen `judge.checkpoint`; it is
    never handed the policy, so its scores cannot drift with training."""
    return make_judge(build(JudgeConfig, cfg))


def mesh(mesh_cfg) -> jax.sharding.Mesh:
    return shd.make_mesh(build(MeshConfig, mesh_cfg).shape)


def model_stack(config) -> ModelStack:
    """The model of `config.model` with its sampler, summarizer and chat format (evaluation).

    Training builds its stack around the trainer's own copy of the weights instead.
    """
    from agemem_jax import models

    sampling = build(SamplingConfig, config.sampling)
    # Several processes evaluate their own tasks, each on its own devices.
    if jax.process_count() > 1:
        m = distributed.local_mesh(build(MeshConfig, config.mesh).shape)
    else:
        m = mesh(config.mesh)
    m = m if m.size > 1 else None
    model, tokenizer = models.load(
        config.model, mesh=m, rules=config.mesh.sample_rules, seed=config.seed
    )
    max_len = config.memory.t_max + sampling.max_new_tokens
    return ModelStack(model, tokenizer, sampling, max_len=max_len, mesh=m)
