"""Evaluation: run a policy on episodes, score them, write `metrics.json` and trajectories.

On several processes each host runs a contiguous share of the tasks on its own devices; the
scored episodes are gathered in process order and the first process writes the files, so the
files are those one process would write (greedy evaluation gives the same episodes).

Writes, under `workdir/eval/`:
  metrics.json        J, MQ, TN, TC (+ per tool), reward and every component, rates;
  trajectories.jsonl  one readable episode per line (steps, calls, memory, reward);
  config.json         the resolved config, so reports know the method, benchmark and model.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import json
import os
import time
import types
from pathlib import Path
from typing import Any

import jax
import numpy as np
from absl import logging
from tqdm import tqdm

from agemem_jax import builders, distributed, methods
from agemem_jax.baselines import SystemStats
from agemem_jax.chat import ChatFormat
from agemem_jax.data.hotpotqa import Task
from agemem_jax.env_episodes import EnvTrajectory
from agemem_jax.episodes import Ledger, Step, Trajectory, summarize
from agemem_jax.memory_env import CallRecord
from agemem_jax.metrics_log import write_config
from agemem_jax.rewards import Reward, score


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """How an evaluation batches its episodes: the `eval` config block."""

    batch_tasks: int = 8  # tasks whose episodes run together (one sampler batch)
    group_size: int = 1  # rollouts per task


def load_policy_stack(config):
    """(policy, chat, summarize, stack) for `config`; loads the model only if something uses
    it (the policy, the summarizer, or a memory baseline's LLM calls); stack is None without."""
    needs_model = (
        config.policy == "model"
        or config.summarizer == "policy"
        or methods.method_spec(config.method).memory_system is not None
    )
    if not needs_model:
        from agemem_jax.models import load_tokenizer

        chat = ChatFormat(load_tokenizer(config.model.checkpoint))
        return builders.policy(config), chat, None, None
    stack = builders.model_stack(config)
    return builders.policy(config, stack), stack.chat, stack.complete, stack


def evaluate(config, workdir: str | os.PathLike, progress: bool = True) -> dict[str, Any]:
    """Dispatch on `config.bench`: three-stage HotpotQA episodes or an interactive benchmark."""
    methods.method_spec(config.method)  # a bad name fails before any loading
    if config.bench != "hotpotqa":
        return evaluate_env(config, workdir, progress)
    return evaluate_hotpotqa(config, workdir, progress)


def _host_tasks(items: list) -> list:
    """This process's contiguous share of the evaluation tasks (shares differ by at most one)."""
    hosts, i = jax.process_count(), jax.process_index()
    n = len(items)
    return items[n * i // hosts : n * (i + 1) // hosts]


class _EndState:
    """A finished episode's memory as summaries and reports read it: its entries and tool
    metrics. The live environment (an encoder, an index, callbacks) stays on its host."""

    def __init__(self, entries: list[str], metrics: dict):
        self._entries = [types.SimpleNamespace(content=c) for c in entries]
        self._metrics = metrics

    @property
    def ltm(self) -> _EndState:
        return self

    def entries(self) -> list:
        return self._entries

    def metrics(self) -> dict:
        return self._metrics


def _detached(t: Any) -> Any:
    """A copy of a finished trajectory holding data only: live objects become their end state."""
    out: Any = copy.copy(t)
    if isinstance(t, EnvTrajectory):
        out.env, out.spec = None, {k: str(v) for k, v in t.spec.items()}
        out.memory = _EndState([e.content for e in t.memory.ltm.entries()], t.memory.metrics())
        if t.system is not None:
            out.system = types.SimpleNamespace(stats=t.system.stats)
    else:
        out.env = _EndState([e.content for e in t.env.ltm.entries()], t.env.metrics())
    return out


# The record types an episode is made of: what travels between hosts, as tagged JSON (the
# hosts' own data; no pickle, whose loads can run code).
_TYPES: dict[str, type[Any]] = {
    c.__name__: c
    for c in (
        Trajectory,
        EnvTrajectory,
        Step,
        Ledger,
        CallRecord,
        Task,
        Reward,
        SystemStats,
        _EndState,
        types.SimpleNamespace,
    )
}


def _encode(x: Any) -> Any:
    if isinstance(x, str | int | float | bool) or x is None:
        return x
    if isinstance(x, np.ndarray | np.generic):
        return {"__np__": x.tolist(), "dtype": str(x.dtype)}
    if isinstance(x, collections.Counter):
        return {"__counter__": [[_encode(k), v] for k, v in x.items()]}
    if isinstance(x, dict):
        return {"__dict__": [[_encode(k), _encode(v)] for k, v in x.items()]}
    if isinstance(x, tuple | list):
        return {"__tuple__" if isinstance(x, tuple) else "__list__": [_encode(v) for v in x]}
    name = type(x).__name__
    if _TYPES.get(name) is not type(x):
        raise TypeError(f"cannot send a {type(x).__qualname__} between hosts")
    return {"__obj__": name, "fields": {k: _encode(v) for k, v in vars(x).items()}}


def _decode(x: Any) -> Any:
    if not isinstance(x, dict):
        return x
    if "__np__" in x:
        return np.asarray(x["__np__"], dtype=x["dtype"])
    if "__counter__" in x:
        return collections.Counter({_decode(k): v for k, v in x["__counter__"]})
    if "__dict__" in x:
        return {_decode(k): _decode(v) for k, v in x["__dict__"]}
    if "__tuple__" in x:
        return tuple(_decode(v) for v in x["__tuple__"])
    if "__list__" in x:
        return [_decode(v) for v in x["__list__"]]
    cls = _TYPES[x["__obj__"]]
    obj = types.SimpleNamespace() if cls is types.SimpleNamespace else object.__new__(cls)
    for k, v in x["fields"].items():
        object.__setattr__(obj, k, _decode(v))
    return obj


def _gather(trajectories: list) -> list:
    """Every host's scored episodes, in process order."""
    if jax.process_count() == 1:
        return trajectories
    mine = [_encode(_detached(t)) for t in trajectories]
    return [_decode(t) for host in distributed.allgather_json(mine) for t in host]


def _write(out_dir: Path, trajectories, metrics: dict[str, Any], config) -> None:
    if not distributed.is_main():
        return
    write_config(out_dir, config)
    with open(out_dir / "trajectories.jsonl.tmp", "w") as f:
        for t in trajectories:
            f.write(json.dumps(t.to_json(), ensure_ascii=False, default=str) + "\n")
    os.replace(out_dir / "trajectories.jsonl.tmp", out_dir / "trajectories.jsonl")
    tmp = out_dir / "metrics.json.tmp"
    tmp.write_text(json.dumps(metrics, indent=2))
    os.replace(tmp, out_dir / "metrics.json")


def evaluate_env(config, workdir: str | os.PathLike, progress: bool = True) -> dict[str, Any]:
    """An interactive benchmark, played through the protocol with the memory tools available."""
    from agemem_jax import envs
    from agemem_jax.env_episodes import EnvEpisodeRunner
    from agemem_jax.env_episodes import summarize as env_summarize

    out_dir = Path(workdir) / "eval"
    t0 = time.time()
    policy, chat, complete, stack = load_policy_stack(config)
    out_dir.mkdir(parents=True, exist_ok=True)  # after loading: a bad checkpoint writes nothing
    summarize_fn = builders.summarizer(config.summarizer, complete)
    make_memory = builders.env_factory(
        chat, config.memory, config.encoder, summarize_fn, config.method
    )
    runner = EnvEpisodeRunner(
        config.bench, make_memory, max_tool_turns=config.episode.max_actions_per_turn,
        max_steps=config.episode.max_env_steps, stop_id=chat.im_end, method=config.method,
        baseline=builders.baseline(config, stack),
    )  # fmt: skip
    specs = envs.tasks(config.bench, config.env)
    if config.data.limit:
        specs = specs[: config.data.limit]
    specs = _host_tasks(specs)
    trajectories = []
    batch = max(1, int(config.eval.batch_tasks))
    cap = getattr(envs.env_class(config.bench), "max_concurrent", None)
    if cap is not None:  # e.g. one JVM per open ScienceWorld episode, from a bounded pool
        batch = min(batch, cap())
    bar = tqdm(total=len(specs), desc=f"{config.bench} {policy.name}", disable=not progress)
    for i in range(0, len(specs), batch):
        trajectories += runner.run(specs[i : i + batch], policy, seed=config.seed)
        bar.update(len(specs[i : i + batch]))
    bar.close()
    trajectories = _gather(trajectories)
    metrics = env_summarize(trajectories) | {
        "policy": policy.name,
        "method": runner.method.name,
        "seconds": round(time.time() - t0, 2),
    }
    _write(out_dir, trajectories, metrics, config)
    logging.info("eval %s %s: %s", config.bench, policy.name, json.dumps(metrics))
    return metrics


def evaluate_hotpotqa(config, workdir: str | os.PathLike, progress: bool = True) -> dict[str, Any]:
    out_dir = Path(workdir) / "eval"
    t0 = time.time()
    judge = builders.judge(config.judge)  # first: a bad judge config fails before the model loads
    policy, chat, complete, stack = load_policy_stack(config)
    out_dir.mkdir(parents=True, exist_ok=True)  # after loading: a bad checkpoint writes nothing
    summarize_fn = builders.summarizer(config.summarizer, complete)
    runner = builders.runner(chat, config, summarize_fn, builders.baseline(config, stack))
    tasks = _host_tasks(builders.tasks(config.data, runner.cfg))
    reward_cfg = builders.reward_config(config.reward)
    trajectories: list[Trajectory] = []
    batch = max(1, int(config.eval.batch_tasks))
    bar = tqdm(total=len(tasks), desc=f"eval {policy.name}", disable=not progress, unit="task")
    for i in range(0, len(tasks), batch):
        chunk = runner.run(tasks[i : i + batch], policy, group_size=config.eval.group_size)
        score(chunk, judge, runner.cfg, reward_cfg)
        trajectories += chunk
        bar.update(len(tasks[i : i + batch]))
        bar.set_postfix(J=f"{summarize(trajectories)['judge_score']:.3f}")
    bar.close()
    trajectories = _gather(trajectories)
    metrics = summarize(trajectories, judge.name)
    metrics |= {
        "policy": policy.name,
        "method": runner.method.name,
        "seconds": round(time.time() - t0, 2),
    }
    stats = collections.Counter()
    for host in distributed.allgather_json(dict(judge.stats)):
        stats.update(host)
    metrics["judge_stats"] = dict(stats)
    _write(out_dir, trajectories, metrics, config)
    logging.info("eval %s: %s", policy.name, json.dumps(metrics))
    return metrics
