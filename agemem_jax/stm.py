"""Short-term memory: the message list that forms the prompt, kept as token ids.

Token-in/token-out: every message stores the exact ids it occupies in the prompt. Injected
messages (system, user, tool) are rendered once with `ChatFormat.message`. Assistant messages
keep the ids the sampler produced, never re-tokenized. Rendering the context is a concatenation,
and it carries a per-token loss mask (sampled tokens only) and role ids for training rows.

The context is held to a token budget `t_max` (the prompt including the generation header).
When an addition pushes it over, the oldest removable messages are evicted, and the overflow is
recorded (`overflows`, `peak_tokens`) for the reward's penalty instead of crashing. These
counters describe the context's whole life: the environment carries them across stage resets, so
the reward sees the episode's token usage, not the last stage's.
System messages and `protected` ones (the current task query) are never evicted, summarized or
filtered.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from agemem_jax import prompts
from agemem_jax.chat import ChatFormat
from agemem_jax.encoder import Encoder

ROLE_IDS = {"system": 0, "user": 1, "assistant": 2, "tool": 3}


class ContextError(ValueError):
    """A context operation cannot be done as asked."""


@dataclasses.dataclass(frozen=True, eq=False)
class Message:
    """One message: its text and the exact ids it occupies in the prompt (header to footer).

    `generated` is the half-open range of `ids` the policy sampled (loss-bearing); it is empty for
    everything the environment injected. `kind` marks what the environment made it from
    ("summary", "retrieval", or "" for anything else) and `data` holds the structured payload of
    an observation (a retrieval's results), so readers never parse `text` back. Compared and
    hashed by identity.
    """

    role: str
    text: str
    ids: np.ndarray
    stage: str = ""
    protected: bool = False
    generated: tuple[int, int] = (0, 0)
    kind: str = ""
    data: Mapping[str, Any] | None = None

    @property
    def num_tokens(self) -> int:
        return len(self.ids)


class Rendered(NamedTuple):
    ids: np.ndarray  # int32 [T]
    loss_mask: np.ndarray  # bool [T]: True on tokens the policy sampled
    role_ids: np.ndarray  # int8 [T]: ROLE_IDS of the message each token belongs to


def _frozen_ids(ids: Sequence[int] | np.ndarray) -> np.ndarray:
    a = np.array(ids, dtype=np.int32).reshape(-1)
    a.flags.writeable = False
    return a


def summary_request(messages: Sequence[Message]) -> list[dict[str, str]]:
    """Chat messages asking an LLM to summarize `messages` (what the default summarizer sends)."""
    transcript = "\n\n".join(f"[{m.role}] {m.text}" for m in messages)
    return [
        {"role": "system", "content": prompts.SUMMARY_SYSTEM_PROMPT},
        {"role": "user", "content": prompts.SUMMARY_REQUEST.format(transcript=transcript)},
    ]


Summarizer = Callable[[Sequence[Message]], str]


class ShortTermContext:
    """The prompt as a list of `Message`s, with a token budget and context-editing operations.

    `encoder` is needed by `filter` only; `theta` is its cosine threshold. Summary messages get
    role `summary_role` and start with `summary_prefix`.
    """

    def __init__(
        self,
        chat: ChatFormat,
        *,
        t_max: int = 8192,
        encoder: Encoder | None = None,
        theta: float = 0.6,
        summary_role: str = "user",
        summary_prefix: str = prompts.SUMMARY_PREFIX,
    ):
        if summary_role not in ROLE_IDS:
            raise ValueError(f"summary_role={summary_role!r}; choose one of {list(ROLE_IDS)}")
        self.chat = chat
        self.t_max = t_max
        self.encoder = encoder
        self.theta = theta
        self.summary_role = summary_role
        self.summary_prefix = summary_prefix
        self.stage = ""
        self.messages: list[Message] = []
        self._tokens = 0
        self._generation_prompt = _frozen_ids(chat.header("assistant"))
        # Overflow accounting for the reward: how far and how often the budget was exceeded.
        self.peak_tokens = 0
        self.overflows = 0
        self.evicted = 0

    # -- size ---------------------------------------------------------------------------------

    @property
    def num_tokens(self) -> int:
        """Tokens of all messages."""
        return self._tokens

    @property
    def prompt_tokens(self) -> int:
        """Tokens of the rendered prompt, including the assistant generation header."""
        return self._tokens + len(self._generation_prompt)

    @property
    def over_budget(self) -> bool:
        return self.prompt_tokens > self.t_max

    def __len__(self) -> int:
        return len(self.messages)

    # -- adding -------------------------------------------------------------------------------

    def add(
        self,
        role: str,
        text: str,
        *,
        stage: str | None = None,
        protected: bool = False,
        kind: str = "",
        data: Mapping[str, Any] | None = None,
    ) -> Message:
        """Append an injected message, tokenized once here."""
        if role not in ROLE_IDS:
            raise ContextError(f"unknown role {role!r}; choose one of {list(ROLE_IDS)}")
        ids = self.chat.message(role, text)
        msg = Message(
            role, text, _frozen_ids(ids), self._stage(stage), protected, kind=kind, data=data
        )
        self._append(msg)
        return msg

    def add_generated(
        self,
        response_ids: Sequence[int] | np.ndarray,
        text: str | None = None,
        *,
        stage: str | None = None,
    ) -> Message:
        """Append an assistant turn from the ids the sampler produced after the generation header.

        The ids are kept as they are. Only the ChatML footer the model did not emit (the
        `<|im_end|>` if it stopped on a stop string, and the newline after it) is appended, and
        it carries no loss.
        """
        response = np.asarray(response_ids, dtype=np.int32).reshape(-1)
        if text is None:
            # Decode everything but the trailing stop ids, so no special token the model emitted
            # mid-turn silently disappears from what the parser sees.
            end = len(response)
            while end and int(response[end - 1]) in self.chat.stop_ids:
                end -= 1
            text = self.chat.decode(response[:end].tolist(), skip_special_tokens=False)
        footer = self.chat.footer()
        if len(response) and int(response[-1]) == self.chat.im_end:
            footer = footer[1:]
        head = self._generation_prompt
        ids = np.concatenate([head, response, np.asarray(footer, np.int32)])
        span = (len(head), len(head) + len(response))
        msg = Message("assistant", text, _frozen_ids(ids), self._stage(stage), False, span)
        self._append(msg)
        return msg

    def _stage(self, stage: str | None) -> str:
        return self.stage if stage is None else str(stage)

    def _append(self, msg: Message) -> None:
        self.messages.append(msg)
        self._tokens += msg.num_tokens
        self._fit()

    def _fit(self) -> None:
        """Evict the oldest removable messages (never the newest) while over budget."""
        self.peak_tokens = max(self.peak_tokens, self.prompt_tokens)
        if not self.over_budget:
            return
        self.overflows += 1
        i = 0
        while self.over_budget and i < len(self.messages) - 1:
            m = self.messages[i]
            if m.role == "system" or m.protected:
                i += 1
                continue
            del self.messages[i]
            self._tokens -= m.num_tokens
            self.evicted += 1

    # -- rendering ----------------------------------------------------------------------------

    def render(self, add_generation_prompt: bool = True) -> Rendered:
        """The prompt as one id array, with the loss mask and role ids of every token."""
        parts = [m.ids for m in self.messages]
        roles = [np.full(m.num_tokens, ROLE_IDS[m.role], np.int8) for m in self.messages]
        masks = []
        for m in self.messages:
            mask = np.zeros(m.num_tokens, bool)
            mask[m.generated[0] : m.generated[1]] = True
            masks.append(mask)
        if add_generation_prompt:
            n = len(self._generation_prompt)
            parts.append(self._generation_prompt)
            roles.append(np.full(n, ROLE_IDS["assistant"], np.int8))
            masks.append(np.zeros(n, bool))
        if not parts:
            return Rendered(np.zeros(0, np.int32), np.zeros(0, bool), np.zeros(0, np.int8))
        return Rendered(np.concatenate(parts), np.concatenate(masks), np.concatenate(roles))

    def as_chat(self) -> list[dict[str, str]]:
        """role/content dicts, for logging and reference checks (never for training ids)."""
        return [{"role": m.role, "content": m.text} for m in self.messages]

    # -- editing ------------------------------------------------------------------------------

    def _removable(self, m: Message, keep: Collection[Message]) -> bool:
        return m.role != "system" and not m.protected and m not in keep

    def _remove(self, doomed: Collection[Message]) -> None:
        self.messages = [m for m in self.messages if m not in doomed]
        self._tokens = sum(m.num_tokens for m in self.messages)

    def summarize(
        self, span: str, summarizer: Summarizer, keep: Collection[Message] = ()
    ) -> tuple[list[Message], Message | None]:
        """Replace a span with one summary message; returns (removed, summary).

        `span` is "all" (every message except system ones) or "N" (the last N messages). `keep`
        (the current turn) is outside every span. System and protected messages inside the span
        stay where they are. The summary takes the place of the first removed message.
        """
        keep = set(keep)
        pool = [m for m in self.messages if m not in keep]
        if span == "all":
            window = pool
        elif isinstance(span, str) and span.isdigit() and int(span) > 0:
            window = pool[-int(span) :]
        else:
            raise ContextError(f'span must be "all" or a positive integer string, got {span!r}')
        doomed = [m for m in window if self._removable(m, keep)]
        if not doomed:
            return [], None
        text = summarizer(doomed)
        if not isinstance(text, str) or not text.strip():
            raise ContextError("the summarizer returned no text; the context is unchanged")
        content = self.summary_prefix + text.strip()
        summary = Message(
            self.summary_role,
            content,
            _frozen_ids(self.chat.message(self.summary_role, content)),
            self.stage,
            kind="summary",
        )
        at = self.messages.index(doomed[0])
        gone = set(doomed)
        self.messages[at] = summary
        self._remove(gone)
        self._fit()
        return doomed, summary

    def filter(self, criteria: str, keep: Collection[Message] = ()) -> list[Message]:
        """Remove every removable message with cos(enc(text), enc(criteria)) >= theta."""
        if self.encoder is None:
            raise ContextError("filtering needs an encoder")
        keep = set(keep)
        pool = [m for m in self.messages if self._removable(m, keep)]
        if not pool:
            return []
        vecs = self.encoder.encode([criteria, *(m.text for m in pool)])
        sims = vecs[1:] @ vecs[0]
        doomed = [m for m, s in zip(pool, sims, strict=True) if s >= self.theta]
        self._remove(set(doomed))
        return doomed

    def reset(self, keep_system: bool = True) -> None:
        """Clear the context between stages (the system prompt stays unless told otherwise)."""
        self._remove({m for m in self.messages if not (keep_system and m.role == "system")})

    def carry_usage(self, other: ShortTermContext) -> None:
        """Continue `other`'s overflow accounting (a new stage of the same episode)."""
        self.peak_tokens = max(self.peak_tokens, other.peak_tokens)
        self.overflows += other.overflows
        self.evicted += other.evicted

    def copy(self) -> ShortTermContext:
        """An independent context with the same messages (messages are immutable, so shared)."""
        other = object.__new__(ShortTermContext)
        other.__dict__.update(self.__dict__)
        other.messages = list(self.messages)
        return other

    def stats(self) -> dict[str, int]:
        return {
            "messages": len(self.messages),
            "prompt_tokens": self.prompt_tokens,
            "peak_tokens": self.peak_tokens,
            "overflows": self.overflows,
            "evicted": self.evicted,
        }
