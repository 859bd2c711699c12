"""The methods one harness runs (spec sections 8-9): AgeMem, its RAG variants, two baselines.

One config key, `method`, picks a `MethodSpec`. The episode runners (three-stage HotpotQA in
`episodes.py`, interactive benchmarks in `env_episodes.py`) consult it through two hooks:
`inject` for every message the environment brings in, and `reset_context` at the stage-1 to
stage-2 boundary. The tool set reaches the memory environment and the scripted expert through
`MethodSpec.tools_within`, so a disabled tool is absent from the prompt, unknown to the
environment and never called by the expert.

| method       | agent tools               | short-term memory                | auto-retrieval | reset |
|--------------|---------------------------|----------------------------------|----------------|-------|
| `agemem`     | all six                   | Retrieve/Summary/Filter (agent)  | stage 1, k=3   | yes   |
| `agemem_rag` | Add, Update, Delete       | top-5 retrieval before each step | every step, 5  | yes   |
| `agemem_lt`  | Add, Update, Delete       | as `agemem_rag`                  | every step, 5  | yes   |
| `no_memory`  | none                      | the context only, cut to T_max   | none           | no    |
| `rag`        | none (raw store, no LLM)  | top-5 retrieval before each step | every step, 5  | yes   |
| `mem0`, `mem0g`, `a_mem`, `langmem` | none | the system's recall (see below) | stage 3 / every observation | yes |

The four memory baselines (agemem_jax.baselines) run the same episodes with a published memory
system in place of the agent's tools: in HotpotQA the system ingests every stage-1 message (the
material AgeMem's stage 1 sees), the stage-2 distractors enter the reset context as for every
method, and the system's search with the question is shown right before it. In the interactive
benchmarks the system ingests the task with the first observation and then every action with
its observation, and its search with each new observation is shown right before it.

Tool grouping: the spec's tool table targets `Retrieve_memory`, `Summary_context` and
`Filter_context` at STM (retrieval writes into the context) and Add/Update/Delete at LTM;
`tools.LTM_TOOLS`/`STM_TOOLS` follow that table. "LTM tools only, RAG for STM" (the +LT
ablation) therefore keeps Add/Update/Delete and replaces all three STM tools with automatic
retrieval, which is also how the spec defines the RAG variants. So **(ours)** `agemem_lt` and
`agemem_rag` run the same harness; the name records which row a run belongs to. The spec's
rows differ in training only: +LT (no RL) is the prompted base under `agemem_lt`, +LT/RL a
policy trained with GRPO under `agemem_lt`, +LT/ST/RL the full `agemem`; AgeMem-RAG and
AgeMem-noRL-RAG are the GRPO-trained and prompted AgeMem policies evaluated under `agemem_rag`.

Choices where the spec is silent, all **(ours)**:
- A "step" of the automatic retrieval is one injected message (a conversation message, a
  distractor, the question, an environment observation): the spec's step t, whose stage-1
  introspective retrieval has the same shape. The query is that message (the spec allows "the
  current context or the last message"; the encoder reads only its first 256 word pieces, so
  the whole context would be matched by its system prompt). Hits go in before the message, as
  in stage-1 introspection. Retrieving again before each chained tool turn would repeat the
  same hits with the same query.
- Automatic retrieval is the environment's doing, not the agent's: it is not a tool call (TC),
  it earns no reward component, and it is not judged for R_relevance. The ids it shows count as
  seen, so Update/Delete may use them; without Retrieve_memory that is how the RAG variants'
  agent finds ids to maintain.
- `rag` stores each injected message verbatim (encoder only, no LLM), after retrieving with it,
  so a message never retrieves itself. The agent's own turns are not stored: in HotpotQA they
  are acknowledgements, and in the benchmarks the action's effect is in the next observation.
  A full store (`memory.max_entries`) stops raw storage rather than failing the episode.
- `no_memory` keeps one context across the three stages; the context's own budget (T_max,
  oldest messages evicted first) is the truncation. Without a reset or tools, the stage-1
  conversation is available at question time exactly as long as it fits.
- `no_memory` and `rag` are prompted baselines (spec section 9): `train.py` refuses them.
- Methods other than `agemem` bring their own task instructions, so no prompt asks the agent
  for a tool it does not have; `agemem` keeps the runners' (configurable) instructions.
"""

from __future__ import annotations

import dataclasses

from agemem_jax import prompts
from agemem_jax import tools as T
from agemem_jax.ltm import StoreFull
from agemem_jax.memory_env import MemoryEnv
from agemem_jax.stm import Message

RAG_TOP_K = 5  # the RAG variant's k (baselines.md, "RAG variant")


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """What distinguishes a method inside the shared harness."""

    name: str
    label: str  # the spec's name for the row
    tools: tuple[str, ...]  # agent tools, in canonical order
    auto_retrieve_k: int = 0  # >0: retrieve this many entries before every injected message
    introspection: bool = False  # stage-1 introspective retrieval of the three-stage protocol
    raw_store: bool = False  # store every injected message verbatim in long-term memory
    reset_context: bool = True  # reset the context between stage 1 and stage 2
    trainable: bool = True  # GRPO applies (False: a prompted baseline)
    hotpotqa_instructions: str | None = None  # None: the runner's configured instructions
    env_instructions: str | None = None  # None: the interactive runner's instructions
    # A published memory system (agemem_jax.baselines) that ingests what arrives and whose
    # search is shown before the question (HotpotQA) or before each observation (benchmarks).
    memory_system: str | None = None

    def __post_init__(self):
        T.select_tools(self.tools)  # an unknown tool name is a definition error
        if self.auto_retrieve_k < 0:
            raise ValueError(f"{self.name}: auto_retrieve_k must be >= 0")

    def tools_within(
        self, configured: tuple[str, ...] | list[str] | None = None
    ) -> tuple[str, ...]:
        """The method's tools that the configuration also enables (`memory.enabled_tools` ablates
        within a method and never adds a tool the method lacks)."""
        allowed = set(T.TOOL_NAMES if configured is None else configured)
        T.select_tools(allowed)
        return tuple(name for name in T.TOOL_NAMES if name in self.tools and name in allowed)


_LT_TOOLS = T.LTM_TOOLS

METHODS: dict[str, MethodSpec] = {
    m.name: m
    for m in (
        MethodSpec("agemem", "AgeMem (+LT/ST)", T.TOOL_NAMES, introspection=True),
        MethodSpec(
            "agemem_rag",
            "AgeMem-RAG",
            _LT_TOOLS,
            auto_retrieve_k=RAG_TOP_K,
            hotpotqa_instructions=prompts.LT_HOTPOTQA_INSTRUCTIONS,
            env_instructions=prompts.LT_ENV_INSTRUCTIONS,
        ),
        MethodSpec(
            "agemem_lt",
            "+LT",
            _LT_TOOLS,
            auto_retrieve_k=RAG_TOP_K,
            hotpotqa_instructions=prompts.LT_HOTPOTQA_INSTRUCTIONS,
            env_instructions=prompts.LT_ENV_INSTRUCTIONS,
        ),
        MethodSpec(
            "no_memory",
            "No-Memory",
            (),
            reset_context=False,
            trainable=False,
            hotpotqa_instructions=prompts.NO_MEMORY_HOTPOTQA_INSTRUCTIONS,
            env_instructions=prompts.ENV_BASE,
        ),
        MethodSpec(
            "rag",
            "RAG",
            (),
            auto_retrieve_k=RAG_TOP_K,
            raw_store=True,
            trainable=False,
            hotpotqa_instructions=prompts.RAG_HOTPOTQA_INSTRUCTIONS,
            env_instructions=prompts.RAG_ENV_INSTRUCTIONS,
        ),
        *(
            MethodSpec(
                name,
                label,
                (),
                trainable=False,
                memory_system=name,
                hotpotqa_instructions=prompts.BASELINE_HOTPOTQA_INSTRUCTIONS,
                env_instructions=prompts.BASELINE_ENV_INSTRUCTIONS,
            )
            for name, label in (
                ("mem0", "Mem0"),
                ("mem0g", "Mem0g"),
                ("a_mem", "A-Mem"),
                ("langmem", "LangMem"),
            )
        ),
    )
}


def method_spec(method: str | MethodSpec) -> MethodSpec:
    """The spec of a method name; an unknown name is one clear error."""
    if isinstance(method, MethodSpec):
        return method
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    return METHODS[method]


def require_trainable(method: str | MethodSpec) -> MethodSpec:
    spec = method_spec(method)
    if not spec.trainable:
        raise ValueError(
            f"method {spec.name!r} is a prompted baseline with no agent memory actions to "
            "train; evaluate it with experiments/eval.py, or train one of "
            f"{', '.join(m.name for m in METHODS.values() if m.trainable)}"
        )
    return spec


def inject(
    env: MemoryEnv,
    method: MethodSpec,
    text: str,
    *,
    protected: bool = False,
    introspect_k: int = 0,
) -> Message | None:
    """Bring one environment message into the context, the method's way.

    Before it: automatic retrieval with the message as query (`auto_retrieve_k`), or, when the
    runner asks for it (`introspect_k`, stage 1) and the method keeps it, introspective
    retrieval. After retrieving, `raw_store` methods store the message verbatim. Returns the
    retrieval's tool message, or None when nothing was retrieved (an empty store is not
    queried: an empty result would only cost tokens).
    """
    k = method.auto_retrieve_k or (introspect_k if method.introspection else 0)
    shown = env.retrieve_into_context(text, k) if k and len(env.ltm) else None
    if method.raw_store:
        try:
            env.ltm.add(text, {"source": env.stage, "raw": True}, "raw")
        except StoreFull:
            pass  # (ours) a bounded store keeps what it has; the episode goes on
    env.add_message("user", text, protected=protected)
    return shown
