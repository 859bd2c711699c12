"""Every experiment config starts here (`configs/*.py` call `base_config()` or `grpo_config()`).

Each block is generated from the dataclass that reads it (`agemem_jax.dataclass_config`), so a
setting is written once, with its default and comment, in the module that uses it, and every
one is a `--config.<block>.<field>` flag. The method's numbers are those defaults; a preset
changes only what it names. `describe(config)` prints the resolved config with the comments.
"""

import importlib.util
from pathlib import Path
from typing import Any

import ml_collections as mlc

from agemem_jax import dataclass_config
from agemem_jax.baselines import BaselinesConfig
from agemem_jax.data import DataConfig
from agemem_jax.episodes import EpisodeConfig
from agemem_jax.evaluate import EvalConfig
from agemem_jax.grpo import GRPOConfig, SFTConfig, TrainConfig
from agemem_jax.judges import JudgeConfig
from agemem_jax.memory_env import MemoryEnvConfig
from agemem_jax.models import LoadConfig
from agemem_jax.optim import OptimConfig
from agemem_jax.packing import PackingConfig
from agemem_jax.rewards import RewardConfig
from agemem_jax.sampler import SamplingConfig
from agemem_jax.sharding import MeshConfig
from agemem_jax.train_step import UpdateConfig

ROOT = Path(__file__).resolve().parents[1]  # the project root, where configs/ lives


def from_file(path: str | Path, arg: str | None = None) -> mlc.ConfigDict:
    """`get_config(arg)` of a config file, as `--config=<path>:<arg>` gives it, for code that
    builds a config outside absl flags (benchmarks, tests, one config file reusing another).
    A relative path is taken from the project root."""
    return load_python(path, "config file").get_config(arg)


def load_python(path: str | Path, kind: str):
    """The module a Python definition file defines (`kind` names it in errors: "config file",
    "sweep definition"); a relative path is taken from the project root."""
    path = Path(path)
    path = path if path.is_absolute() else ROOT / path
    if not path.is_file():
        raise FileNotFoundError(f"no {kind} {path}")
    spec = importlib.util.spec_from_file_location(f"{kind.split()[0]}_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ValueError(f"{path} is not a Python {kind}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Every config block and the dataclass that reads it. The block is generated from the dataclass,
# so each setting is written once (with its default and comment) and is a `--config.` flag.
BASE_BLOCKS: dict[str, type] = {
    "model": LoadConfig,
    "mesh": MeshConfig,
    "sampling": SamplingConfig,
    "data": DataConfig,
    "episode": EpisodeConfig,
    "memory": MemoryEnvConfig,
    "reward": RewardConfig,
    "judge": JudgeConfig,
    "eval": EvalConfig,
    "baselines": BaselinesConfig,
}
GRPO_BLOCKS: dict[str, type] = {
    "grpo": GRPOConfig,
    "optim": OptimConfig,
    "packing": PackingConfig,
    "trainer": UpdateConfig,
    "train": TrainConfig,
    "sft": SFTConfig,
}
# The settings that are not a block: what runs, on what, with which helpers.
TOP_LEVEL_COMMENTS = {
    "seed": "the run's seed (model init, sampler, data order)",
    "multihost": "None: follow the environment (SLURM, TPU pod); True/False forces it",
    "policy": "model | scripted | lazy | junk (malformed output) | oracle (interactive benchmarks)",
    "method": "agemem | agemem_rag | agemem_lt | no_memory | rag | mem0 | mem0g | a_mem | "
    "langmem (agemem_jax.methods)",
    "bench": "hotpotqa | alfworld | sciworld | babyai | pddl",
    "env": "the benchmark's task-list settings (envs.tasks(bench, **env))",
    "encoder": "minilm (all-MiniLM-L6-v2, everywhere) | hash (unit tests only)",
    "summarizer": "policy (the model summarizes) | extractive (deterministic)",
}


def base_config() -> mlc.ConfigDict:
    """Every block an AgeMem experiment reads, at the method's defaults."""
    c = mlc.ConfigDict()
    c.seed = 0
    c.multihost = mlc.FieldReference(None, field_type=bool)
    c.policy = "scripted"
    c.method = "agemem"
    c.bench = "hotpotqa"
    c.env = mlc.ConfigDict()
    c.encoder = "minilm"
    c.summarizer = "extractive"
    for name, cls in BASE_BLOCKS.items():
        c[name] = dataclass_config.block(cls)
    return c


def grpo_config() -> mlc.ConfigDict:
    """`base_config()` plus the training blocks (GRPO, optimizer, packing, update, loop, SFT)."""
    c = base_config()
    c.policy = "model"
    for name, cls in GRPO_BLOCKS.items():
        c[name] = dataclass_config.block(cls)
    return c


def blocks_of(config: mlc.ConfigDict) -> dict[str, type]:
    """The dataclass of each block present in `config`."""
    return {k: v for k, v in (BASE_BLOCKS | GRPO_BLOCKS).items() if k in config}


def describe(config: mlc.ConfigDict) -> str:
    """The resolved config, one `key = value  # comment` line per setting (`--print_config`)."""
    lines = []
    for key in TOP_LEVEL_COMMENTS:
        if key in config:
            lines.append(_line(key, config[key], TOP_LEVEL_COMMENTS[key]))
    for key, value in config.items():
        if key not in TOP_LEVEL_COMMENTS and key not in blocks_of(config):
            lines.append(_line(key, value, ""))
    for name, cls in blocks_of(config).items():
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        lines.append(f"\n# {name}: {doc}")
        comments = dataclass_config.comments(cls)
        for path, _, _ in dataclass_config.walk(cls):
            value: Any = config[name]
            for part in path.split("."):
                value = value[part]
            lines.append(_line(f"{name}.{path}", value, comments.get(path, "")))
    return "\n".join(lines)


def _line(key: str, value, comment: str) -> str:
    if isinstance(value, mlc.ConfigDict):
        value = value.to_dict()
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{key} = {text}" + (f"  # {comment}" if comment else "")


def env_eval_config(bench: str, env: dict, preset: str | None) -> mlc.ConfigDict:
    """Evaluation on an interactive benchmark (`configs/eval/<bench>.py`).

    Presets: oracle (the benchmark's expert through our protocol), junk (the robustness
    floor), smollm2_cpu (the embedded model on 3 tasks).
    """
    c: Any = base_config()  # ConfigDict attributes are dynamic; its stubs type them as values
    c.bench = bench
    c.env.update(env)
    c.data.limit = 10
    c.memory.prompt_style = "compact"
    c.sampling.update(temperature=0.0, max_new_tokens=256)  # greedy evaluation
    c.episode.max_actions_per_turn = 2  # memory turns allowed before each environment action
    preset = preset or "oracle"
    if preset in ("oracle", "junk"):
        c.policy = preset
        c.encoder = "hash" if preset == "junk" else "minilm"
    elif preset == "smollm2_cpu":
        c.policy = "model"
        c.data.limit = 3
        c.sampling.max_new_tokens = 64
    else:
        raise ValueError(f"unknown preset {preset!r}: oracle, junk, smollm2_cpu")
    return c
