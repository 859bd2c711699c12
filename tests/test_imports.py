"""The import graph of agemem_jax has no cycles and points downward (every import counts, lazy
ones inside functions included)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "agemem_jax"
LEARNER = {"grpo", "train_step", "rl_loss", "packing", "optim", "checkpointing"}
MEMORY = {"ltm", "stm", "memory_env", "tools", "protocol", "methods", "summarizers", "baselines"}
EPISODES = {"episodes", "env_episodes", "evaluate", "builders", "config_lib"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _imports(path: Path) -> set[str]:
    """Every agemem_jax module `path` imports, at any depth of its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.module.startswith("agemem_jax")
        ):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in MODULES else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("agemem_jax"))
    return found & set(MODULES)


GRAPH = {name: _imports(path) - {name} for name, path in MODULES.items()}


def _short(name: str) -> str:
    return name.removeprefix("agemem_jax.")


def test_no_cycles():
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(GRAPH[node]):
            if state.get(dep) == 1:
                cycles.append(" -> ".join(map(_short, [*stack[stack.index(dep) :], dep])))
            elif dep not in state:
                visit(dep, stack)
        stack.pop()
        state[node] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [])
    assert not cycles, cycles


@pytest.mark.parametrize(
    ("layer", "forbidden"),
    [
        ("models", LEARNER | MEMORY | EPISODES | {"sampler", "policies", "judges", "rewards"}),
        ("sampler", LEARNER | MEMORY | EPISODES | {"policies", "judges", "rewards"}),
        ("envs", LEARNER | MEMORY | EPISODES | {"policies", "judges", "rewards", "sampler"}),
        ("memory_env", LEARNER | EPISODES | {"policies", "judges", "rewards"}),
        ("rewards", LEARNER | EPISODES | {"policies", "memory_env"}),
        ("judges", LEARNER | EPISODES | {"rewards", "memory_env", "policies"}),
        # A memory baseline drives the sampler and its own stores; it knows no episode.
        ("baselines", LEARNER | EPISODES | {"policies", "judges", "rewards", "memory_env"}),
        # The server sits above the sampler and knows no memory, environments or training.
        (
            "serving",
            LEARNER
            | MEMORY
            | EPISODES
            | {"policies", "judges", "rewards", "envs", "baselines", "crosscheck"},
        ),
    ],
)
def test_layers_point_downward(layer, forbidden):
    """The backbone knows no training, the sampler no memory, environments no learner; the
    episode runners are the ones that drive them all."""
    wrong = {
        f"{_short(name)} -> {_short(dep)}"
        for name, deps in GRAPH.items()
        if _short(name) == layer or _short(name).startswith(f"{layer}.")
        for dep in deps
        if _short(dep).split(".")[0] in forbidden
    }
    assert not wrong, sorted(wrong)
