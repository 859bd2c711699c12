"""Evaluation environments behind one text interface (see `base.TextEnv`).

    from agemem_jax import envs
    for spec in envs.tasks("pddl", source="generated", num_per_domain=2):
        with envs.make("pddl", **spec) as env:
            print(envs.play(env, envs.RandomPolicy(seed=0)))

Benchmark modules are imported on first use, so a missing optional dependency (the `envs`
extra) only matters for the benchmark that needs it.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from agemem_jax.envs.base import (
    DEFAULT_MAX_STEPS,
    InvalidAction,
    RandomPolicy,
    StepResult,
    TextEnv,
    oracle_policy,
    play,
)

# name -> "module:class"; each class is a TextEnv with a `tasks(**kwargs)` classmethod.
REGISTRY: dict[str, str] = {
    "pddl": "agemem_jax.envs.pddl:PddlEnv",
    "babyai": "agemem_jax.envs.babyai:BabyAIEnv",
    "sciworld": "agemem_jax.envs.sciworld:SciWorldEnv",
    "alfworld": "agemem_jax.envs.alfworld:AlfWorldEnv",
}


def env_class(name: str) -> type[TextEnv]:
    if name not in REGISTRY:
        raise ValueError(f"unknown environment {name!r}; available: {sorted(REGISTRY)}")
    module, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)


def _kwargs(config: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    if config is None:
        return kwargs
    base = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return {**base, **kwargs}


def make(name: str, config: Mapping[str, Any] | None = None, /, **kwargs: Any) -> TextEnv:
    """Build one task's environment from a spec of `tasks(name)` (a dict or a ConfigDict)."""
    return env_class(name)(**_kwargs(config, kwargs))


def tasks(name: str, config: Mapping[str, Any] | None = None, /, **kwargs: Any) -> list[dict]:
    """The constructor kwargs of each task of a benchmark's task list."""
    return env_class(name).tasks(**_kwargs(config, kwargs))


__all__ = [
    "DEFAULT_MAX_STEPS",
    "REGISTRY",
    "InvalidAction",
    "RandomPolicy",
    "StepResult",
    "TextEnv",
    "env_class",
    "make",
    "oracle_policy",
    "play",
    "tasks",
]
