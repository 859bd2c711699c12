"""LangMem's memory store manager: search with the last message, then one extraction pass.

Per ingest: the last message is the query for the `query_limit` closest memories; one call
(`max_steps` = 1) sees those memories with their ids and the messages, and answers a set of
actions: insert new memories, patch shown ones (new content, same id), and, only when
`enable_deletes` is on (off by default, as published), delete shown ones. Search returns the
`recall_top_k` closest memories by cosine.

Malformed output changes nothing and is counted: no JSON, the wrong shape, an id that was not
shown (`unknown_id`), a delete while deletes are off (`delete_disabled`), an unknown action.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence

from agemem_jax import prompts
from agemem_jax.baselines.base import Call, MemorySystem, Recall, transcript
from agemem_jax.encoder import Encoder
from agemem_jax.ltm import LongTermMemory


@dataclasses.dataclass(frozen=True)
class LangMemConfig:
    """LangMem's published defaults (baselines.md); temperature and budget are ours."""

    query_limit: int = 5  # memories the extraction pass sees
    enable_deletes: bool = False  # LangMem's default: no deletions
    recall_top_k: int = 10  # memories at answer time (the hot-path search limit)
    temperature: float = 0.0  # LangMem leaves it to the model's client; greedy here (ours)
    max_new_tokens: int = 384  # budget of the reply (ours)

    def __post_init__(self):
        if min(self.query_limit, self.recall_top_k, self.max_new_tokens) < 1:
            raise ValueError("langmem: query_limit, recall_top_k, max_new_tokens must be >= 1")


class LangMem(MemorySystem):
    name = "langmem"

    def __init__(
        self,
        encoder: Encoder,
        config: LangMemConfig | None = None,
        domain: str = "conversation",
        seed: int = 0,
    ):
        super().__init__(domain)
        self.cfg = config or LangMemConfig()
        self.store = LongTermMemory(encoder, seed=seed)

    def ingest(self, messages: Sequence[tuple[str, str]]) -> Call[None]:
        if not messages:
            return
        shown = []
        if len(self.store):
            shown = [h.entry for h in self.store.search(messages[-1][1], self.cfg.query_limit)]
        listing = json.dumps(
            [{"id": e.id, "content": e.content} for e in shown], ensure_ascii=False
        )
        system = prompts.LANGMEM_EXTRACT
        if self.cfg.enable_deletes:
            system += prompts.LANGMEM_DELETE_RULE
        user = prompts.LANGMEM_EXTRACT_USER.format(
            memories=listing, transcript=transcript(messages)
        )
        reply = yield from self.ask_json(
            "extract", system, user, self.cfg.temperature, self.cfg.max_new_tokens
        )
        if reply is None:
            return
        actions = reply.get("actions")
        if not isinstance(actions, list):
            self.fail("bad_schema")
            return
        self.apply(actions, [e.id for e in shown])

    def apply(self, actions: Sequence, shown: Sequence[str]) -> None:
        live = set(shown)
        for a in actions:
            kind = a.get("action") if isinstance(a, dict) else None
            content = a.get("content") if isinstance(a, dict) else None
            content = content.strip() if isinstance(content, str) else ""
            if kind == "insert":
                if content:
                    self.store.add(content)
                else:
                    self.fail("bad_schema")
                continue
            if kind not in ("patch", "delete"):
                self.fail("bad_schema")
                continue
            if kind == "delete" and not self.cfg.enable_deletes:
                self.fail("delete_disabled")
                continue
            mid = a.get("id") if isinstance(a, dict) else None
            if not isinstance(mid, str) or mid not in live:
                self.fail("unknown_id")
                continue
            if kind == "delete":
                self.store.delete(mid)
                live.discard(mid)
            elif content:
                self.store.update(mid, content)
            else:
                self.fail("bad_schema")

    def search(self, query: str) -> Call[list[Recall]]:
        if not len(self.store):
            return []
        yield from ()
        return [
            Recall(h.entry.id, h.entry.content)
            for h in self.store.search(query, self.cfg.recall_top_k)
        ]

    def memories(self) -> list[str]:
        return [e.content for e in self.store.entries()]
