"""Who acts in an episode, all in one place: the scripted expert, the lazy baseline, the junk
floor, a benchmark's oracle, and the model (`policy=` in the config; `builders.policy` builds it).

The model policy samples each rollout as one sampler row. Before each action it compares the
row's cached ids with the context the environment rendered: when the cache is a prefix (an
observation or the next message was appended) only the new ids are prefilled at the row's own
offset; when a tool or a stage reset edited the context, that row alone is re-prefilled.
Nothing the model produced is ever re-tokenized.

The episode runner shows every rollout an `AgentView` per step and gets back one `Action`. The
view carries what a policy may use: the stage, the injected message, the tool results of the
turn so far and, for the model, the exact context token ids. The scripted expert also reads the
task's supporting facts and answer: it is privileged, which is what makes it an expert (its
trajectories are the cold-start SFT data and the ceiling for the reward).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from typing import Any, Protocol

from agemem_jax.data import Task
from agemem_jax.protocol import format_turn
from agemem_jax.sampler import SamplerSession, SamplingConfig


@dataclasses.dataclass(frozen=True)
class AgentView:
    """What one rollout's policy sees at one step."""

    row: int  # index of the rollout in the runner's batch (B x K rows)
    rollout: int  # index within its task's group
    task: Task | None  # None in interactive benchmarks (see `env`)
    stage: int  # 1, 2 or 3
    turn: int  # index of the turn within its stage
    turn_step: int  # actions already taken in this turn
    incoming: str  # the message this turn injected (stage 3: the query)
    last_turn_of_stage: bool
    # Entries that retrieval surfaced this turn (introspective or Retrieve_memory), newest last:
    # dicts with "id", "content", "metadata".
    retrieved: tuple[dict[str, Any], ...] = ()
    last_error: str | None = None  # error observation of the previous action, if any
    prompt_ids: tuple[int, ...] = ()  # the context as the model would see it
    context_tokens: int = 0
    env: Any = None  # the interactive benchmark's TextEnv, for its oracle


@dataclasses.dataclass
class Action:
    """One policy step. `token_ids`/`logprobs` are set by the model policy (token-in/token-out)."""

    text: str
    token_ids: list[int] | None = None
    logprobs: list[float] | None = None  # raw-model log-probs of token_ids (π_old)
    sampler_logprobs: list[float] | None = None  # log μ under non-default sampling, else None
    finish_reason: str = "stop"


class Policy(Protocol):
    """`act` answers one view per active rollout. A policy may also define `begin(n_rows, seed)`,
    which the runner calls before a batch of episodes (the model policy sizes its sampler); a
    host running its share of a split batch also passes `row_offset`, its first row."""

    name: str

    def act(self, views: Sequence[AgentView]) -> list[Action]: ...


def _task(v: AgentView) -> Task:
    """The view's task; the scripted policies read it, so they only run three-stage episodes."""
    if v.task is None:
        raise ValueError("this scripted policy plays three-stage episodes (the view has no task)")
    return v.task


def _facts_in(task: Task, text: str) -> list[tuple[str, str]]:
    return [
        (title, fact)
        for fact, title in zip(task.supporting_facts, task.fact_titles, strict=True)
        if fact and fact in text
    ]


def _first_sentences(text: str, n: int) -> str:
    parts = text.split(". ")
    return ". ".join(parts[:n]).strip()


class ScriptedPolicy:
    """A deterministic expert that uses every tool the way the method intends.

    Stage 1: stores each supporting fact it hears as its own entry (Add_memory), and nothing from
    small talk. Stage 2: filters each distractor out of the context (Filter_context) and
    summarizes the stage once at its end (Summary_context). Stage 3: retrieves with the query,
    consolidates entries about the same subject (Update_memory the first, Delete_memory the
    rest), then answers. It calls only `enabled_tools` (the method's, see methods.py): without
    Retrieve_memory it consolidates what automatic retrieval showed, and without tools it only
    answers.
    """

    name = "scripted"

    def __init__(
        self,
        top_k: int = 3,
        filter_sentences: int = 2,
        summarize_stage2: bool = True,
        enabled_tools: Sequence[str] | None = None,
    ):
        self.top_k = top_k
        self.filter_sentences = filter_sentences
        self.summarize_stage2 = summarize_stage2
        self.enabled = set(enabled_tools) if enabled_tools is not None else None

    def _ok(self, tool: str) -> bool:
        return self.enabled is None or tool in self.enabled

    def act(self, views: Sequence[AgentView]) -> list[Action]:
        return [Action(self._step(v)) for v in views]

    def _step(self, v: AgentView) -> str:
        if v.stage == 1:
            return self._stage1(v)
        if v.stage == 2:
            return self._stage2(v)
        return self._stage3(v)

    def _stage1(self, v: AgentView) -> str:
        facts = _facts_in(_task(v), v.incoming)
        if v.turn_step == 0 and facts and self._ok("Add_memory"):
            calls = [
                {
                    "name": "Add_memory",
                    "arguments": {
                        "content": fact,
                        "metadata": {"title": title, "source": "conversation"},
                        "memory_type": "fact",
                    },
                }
                for title, fact in facts
            ]
            return format_turn(f"This message has {len(calls)} fact(s) worth keeping.", calls)
        think = "Stored." if facts else "Small talk; nothing to keep."
        return format_turn(think, answer="Noted.")

    def _stage2(self, v: AgentView) -> str:
        plan = []
        if self._ok("Filter_context"):
            plan.append(("Filter_context", {"criteria": _first_sentences(v.incoming, 2)}))
        if v.last_turn_of_stage and self.summarize_stage2 and self._ok("Summary_context"):
            plan.append(("Summary_context", {"span": "all"}))
        if v.turn_step < len(plan):
            name, args = plan[v.turn_step]
            why = {
                "Filter_context": "This is unrelated to what I stored; drop it from the context.",
                "Summary_context": "Compress what is left of this conversation.",
            }[name]
            return format_turn(why, [{"name": name, "arguments": args}])
        return format_turn("Nothing here to keep.", answer="Noted.")

    def _stage3(self, v: AgentView) -> str:
        retrieve = self._ok("Retrieve_memory")
        if v.turn_step == 0 and retrieve:
            call = {
                "name": "Retrieve_memory",
                "arguments": {"query": v.incoming, "top_k": self.top_k},
            }
            return format_turn("Look up what I stored about this question.", [call])
        if v.turn_step == int(retrieve):  # right after the lookup, or first if hits were shown
            calls = self._consolidate(v.retrieved)
            if calls:
                return format_turn("Two entries describe the same subject; merge them.", calls)
        return format_turn("The retrieved facts answer the question.", answer=_task(v).answer)

    def _consolidate(self, retrieved: Sequence[dict]) -> list[dict]:
        if not (self._ok("Update_memory") and self._ok("Delete_memory")):
            return []
        by_title: dict[str, list[dict]] = {}
        for entry in retrieved:
            title = (entry.get("metadata") or {}).get("title")
            if title is not None and all(e["id"] != entry["id"] for e in by_title.get(title, [])):
                by_title.setdefault(title, []).append(entry)
        calls: list[dict] = []
        for title, entries in by_title.items():
            if len(entries) < 2:
                continue
            keep, *rest = entries
            merged = " ".join(e["content"] for e in entries)
            calls.append(
                {
                    "name": "Update_memory",
                    "arguments": {
                        "memory_id": keep["id"],
                        "content": merged,
                        "metadata": {"title": title, "source": "consolidated"},
                    },
                }
            )
            calls += [
                {"name": "Delete_memory", "arguments": {"memory_id": e["id"], "confirmation": True}}
                for e in rest
            ]
        return calls


class LazyPolicy:
    """The scripted baseline that answers and manages nothing.

    Stage 1: acknowledges every message without storing. Stage 2: acknowledges every distractor
    without Filter/Summary. Stage 3: gives the gold answer without retrieving, so its task score
    equals the expert's and every other reward part shows what memory management adds.
    """

    name = "lazy"

    def act(self, views: Sequence[AgentView]) -> list[Action]:
        out = []
        for v in views:
            if v.stage == 3:
                out.append(Action(format_turn("I can answer directly.", answer=_task(v).answer)))
            else:
                out.append(Action(format_turn("Nothing to do.", answer="Noted.")))
        return out


JUNK = (
    "I think the answer is probably somewhere",
    "<think>hmm",
    "<tool_call>{not json}</tool_call>",
    '<think>x</think><tool_call>[{"name": "Forget_everything", "arguments": {}}]</tool_call>',
    '<think>x</think><tool_call>[{"name": "Add_memory", "arguments": {}}]</tool_call>',
    "<answer>42</answer> trailing text",
    "<think>a</think><answer>b</answer><tool_call>[]</tool_call>",
    "",
)


class JunkPolicy:
    """Malformed or irrelevant output only: the robustness floor (never a valid answer)."""

    name = "junk"

    def __init__(self, seed: int = 0):
        self.rng = random.Random(seed)

    def act(self, views: Sequence[AgentView]) -> list[Action]:
        out = []
        for _ in views:
            text = self.rng.choice(JUNK)
            if self.rng.random() < 0.5:
                words = "memory store answer the of tool think json".split()
                text += " " + " ".join(self.rng.choices(words, k=self.rng.randint(1, 12)))
            out.append(Action(text))
        return out


class OraclePolicy:
    """The benchmark's own expert (gold path, bot, plan, walkthrough) speaking our protocol."""

    name = "oracle"

    def act(self, views: Sequence[AgentView]) -> list[Action]:
        out = []
        for v in views:
            action = v.env.oracle_action()
            out.append(Action(format_turn("Following the expert plan.", answer=action)))
        return out


class ModelPolicy:
    """Samples each rollout's next turn with a `SamplerSession`, one row per rollout."""

    name = "model"

    def __init__(
        self,
        model,
        tokenizer,
        sampling: SamplingConfig | None = None,
        *,
        max_len: int = 8192,
        mesh=None,
        rules="sample",
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.sampling = sampling or SamplingConfig()
        self.max_len = max_len
        self.mesh, self.rules = mesh, rules
        self.session: SamplerSession | None = None
        self._cached: list[tuple[int, ...]] = []
        self.stats: dict[str, float] = {
            "prefilled_tokens": 0,
            "row_resets": 0,
            "generated_tokens": 0,
            # Decode row-steps (every row of the batch, each loop step) and the kept tokens
            # among them; their ratio is the step's `decode_utilization` metric (grpo.py).
            "decode_row_steps": 0,
            "decode_kept_tokens": 0,
        }

    def begin(self, n_rows: int, seed: int = 0, row_offset: int = 0) -> None:
        """A fresh session for a batch of episodes; it reads the model's current weights.
        `row_offset` is where these rows start in a batch split over hosts (sampler draws)."""
        self.session = SamplerSession(
            self.model,
            self.tokenizer,
            batch_size=n_rows,
            max_len=self.max_len,
            stop=self.sampling.stop,
            seed=seed,
            row_offset=row_offset,
            mesh=self.mesh,
            rules=self.rules,
            unroll_layers=self.sampling.unroll_layers,
            compact_rows=self.sampling.compact_rows,
            slot_step=self.sampling.cache_slot_step,
        )
        self._cached = [()] * n_rows
        self.stats = dict.fromkeys(self.stats, 0)  # per batch of episodes

    def act(self, views: Sequence[AgentView]) -> list[Action]:
        if self.session is None:
            raise RuntimeError("ModelPolicy.act before begin(): the runner calls begin()")
        appends: dict[int, list[int]] = {}
        resets: dict[int, list[int]] = {}
        for v in views:
            ids, cached = v.prompt_ids, self._cached[v.row]
            if cached and len(cached) < len(ids) and ids[: len(cached)] == cached:
                appends[v.row] = list(ids[len(cached) :])
                self.stats["prefilled_tokens"] += len(ids) - len(cached)
            else:
                resets[v.row] = list(ids)
                self.stats["prefilled_tokens"] += len(ids)
        self.stats["row_resets"] += len(resets)
        if len(resets) == self.session.num_rows:
            # A stage reset edits every row at once: a fresh start.
            self.session.start([resets[r] for r in range(self.session.num_rows)])
        elif resets or appends:
            # One prefill for every edited and every extended row: a prefill program runs the
            # whole batch, so a call per reset row would cost the batch size over again.
            self.session.feed(append=appends, reset=resets)
        rows = [v.row for v in views]
        before = dict(self.session.stats)
        outs = self.session.decode(self.sampling.max_new_tokens, self.sampling.params, rows=rows)
        for key, value in self.session.stats.items():
            self.stats[key] += value - before[key]
        actions = []
        for v in views:
            c = outs[v.row]
            if c is None:  # cannot happen: every view's row was asked to decode
                raise RuntimeError(f"the sampler returned nothing for row {v.row}")
            self._cached[v.row] = tuple(v.prompt_ids) + tuple(c.tokens)
            self.stats["generated_tokens"] += len(c.tokens)
            actions.append(
                Action(
                    text=c.text or "",
                    token_ids=list(c.tokens),
                    logprobs=list(c.model_logprobs),
                    # μ differs from π_old only away from 1/1/0; there rl_loss reweights by μ.
                    sampler_logprobs=None if self.sampling.samples_pi_old else list(c.logprobs),
                    finish_reason=c.finish_reason,
                )
            )
        return actions
