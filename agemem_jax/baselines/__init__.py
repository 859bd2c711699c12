"""Published memory systems, re-implemented on our backbone: Mem0, Mem0g, A-Mem, LangMem.

Each module restates one pipeline with its published defaults as a config dataclass (the
`baselines` block: `--config.baselines.mem0.temperature=...`). Every LLM call goes through an
`LLM` (base.py), batched across the episodes of an evaluation; the encoder is the one the
harness uses everywhere (MiniLM). The episode runners (`episodes.py`, `env_episodes.py`) plug a
system in through `ingest` and `search`; methods.py names the four methods.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from agemem_jax import prompts
from agemem_jax.baselines.a_mem import AMem, AMemConfig
from agemem_jax.baselines.base import (
    LLM,
    LLMReply,
    LLMRequest,
    MemorySystem,
    Recall,
    SamplerLLM,
    SystemStats,
    ingest_all,
    parse_json,
    search_all,
    summarize_stats,
)
from agemem_jax.baselines.langmem import LangMem, LangMemConfig
from agemem_jax.baselines.mem0 import Mem0, Mem0Config
from agemem_jax.baselines.mem0g import Mem0g, Mem0gConfig
from agemem_jax.encoder import Encoder

SYSTEMS = ("mem0", "mem0g", "a_mem", "langmem")


@dataclasses.dataclass(frozen=True)
class BaselinesConfig:
    """The memory baselines (method = mem0 | mem0g | a_mem | langmem)."""

    mem0: Mem0Config = dataclasses.field(default_factory=Mem0Config)
    mem0g: Mem0gConfig = dataclasses.field(default_factory=Mem0gConfig)  # + the mem0 block
    a_mem: AMemConfig = dataclasses.field(default_factory=AMemConfig)
    langmem: LangMemConfig = dataclasses.field(default_factory=LangMemConfig)
    # Stage-2 distractors also reach the memory system (ours; off: the system ingests what
    # AgeMem's stage 1 sees, and the distractors stay in the agent's context).
    ingest_distractors: bool = False
    # Longest memory-management prompt; a longer one keeps its head and tail (ours).
    max_prompt_tokens: int = 4096

    def __post_init__(self):
        if self.max_prompt_tokens < 64:
            raise ValueError(
                f"baselines.max_prompt_tokens must be >= 64, got {self.max_prompt_tokens}"
            )


def make_system(
    name: str, config: BaselinesConfig, encoder: Encoder, domain: str, seed: int = 0
) -> MemorySystem:
    """A fresh, empty memory system for one episode."""
    if name == "mem0":
        return Mem0(encoder, config.mem0, domain, seed)
    if name == "mem0g":
        return Mem0g(encoder, config.mem0, config.mem0g, domain, seed)
    if name == "a_mem":
        return AMem(encoder, config.a_mem, domain, seed)
    if name == "langmem":
        return LangMem(encoder, config.langmem, domain, seed)
    raise ValueError(f"unknown memory system {name!r}; choose one of {', '.join(SYSTEMS)}")


class Harness:
    """What an episode runner needs of a baseline: fresh systems, and batched ingest and
    search over the systems of the episodes that run together."""

    def __init__(
        self, system: str, llm: LLM, config: BaselinesConfig, encoder: Encoder, seed: int = 0
    ):
        if system not in SYSTEMS:
            raise ValueError(
                f"unknown memory system {system!r}; choose one of {', '.join(SYSTEMS)}"
            )
        self.system, self.llm, self.config = system, llm, config
        self.encoder, self.seed = encoder, seed

    def new(self, domain: str) -> MemorySystem:
        return make_system(self.system, self.config, self.encoder, domain, self.seed)

    def ingest(
        self, systems: Sequence[MemorySystem], messages: Sequence[Sequence[tuple[str, str]]]
    ) -> None:
        if systems:
            ingest_all(self.llm, systems, messages)

    def recall(self, systems: Sequence[MemorySystem], queries: Sequence[str]) -> list[list[Recall]]:
        """Each system's search; a system that stores nothing yet is not searched (and its
        zero-cost search is not counted in the latency)."""
        out: list[list[Recall]] = [[] for _ in systems]
        rows = [i for i, s in enumerate(systems) if s.memories()]
        found = search_all(self.llm, [systems[i] for i in rows], [queries[i] for i in rows])
        for i, recalls in zip(rows, found, strict=True):
            out[i] = recalls
        return out


def recall_text(recalls: Sequence[Recall]) -> str:
    """The tool message that shows a system's recall to the agent."""
    if not recalls:
        return prompts.BASELINE_RECALL_EMPTY
    return prompts.BASELINE_RECALL.format(items="\n".join(f"- {r.text}" for r in recalls))


__all__ = [
    "LLM",
    "SYSTEMS",
    "AMem",
    "AMemConfig",
    "BaselinesConfig",
    "Harness",
    "LLMReply",
    "LLMRequest",
    "LangMem",
    "LangMemConfig",
    "Mem0",
    "Mem0Config",
    "Mem0g",
    "Mem0gConfig",
    "MemorySystem",
    "Recall",
    "SamplerLLM",
    "SystemStats",
    "ingest_all",
    "make_system",
    "parse_json",
    "recall_text",
    "search_all",
    "summarize_stats",
]
