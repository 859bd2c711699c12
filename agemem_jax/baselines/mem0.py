"""Mem0 (the 1.0.x pipeline): fact extraction, nearest memories per fact, one update decision.

Per ingest: (1) an extraction call turns the messages into a list of facts (only the user's
messages in a conversation; in an environment, the step's action and observation with a
task-oriented prompt); (2) every fact retrieves its `search_per_fact` nearest memories by cosine;
(3) one update call sees those memories under integer labels "0", "1", ... (so it cannot name a
real id) and the facts, and answers ADD/UPDATE/DELETE/NONE per item; (4) the events apply: ADD
embeds and inserts, UPDATE rewrites the entry under the same id and logs a history row, DELETE
removes. Search embeds the query and returns the top `recall_top_k` by cosine, no recency.

Malformed output is counted in `stats.parse_failures` and changes nothing: a reply without JSON
or with the wrong shape stops the ingest before any write; an item with an unknown label, an
unknown event or no text is skipped on its own.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

from agemem_jax import prompts
from agemem_jax.baselines.base import Call, MemorySystem, Recall, str_list, transcript
from agemem_jax.encoder import Encoder
from agemem_jax.ltm import LongTermMemory

EVENTS = ("ADD", "UPDATE", "DELETE", "NONE")


@dataclasses.dataclass(frozen=True)
class Mem0Config:
    """Mem0's published defaults (baselines.md); `recall_top_k` and the caps are ours."""

    temperature: float = 0.1  # Mem0's LLM temperature
    search_per_fact: int = 5  # nearest memories retrieved for every new fact
    recall_top_k: int = 10  # memories shown to the agent at answer time (ours)
    max_new_tokens: int = 384  # budget of each extraction/update reply (ours)
    max_facts: int = 16  # facts kept from one extraction, bounding the update prompt (ours)

    def __post_init__(self):
        if min(self.search_per_fact, self.recall_top_k, self.max_new_tokens, self.max_facts) < 1:
            raise ValueError("mem0: search_per_fact, recall_top_k, max_new_tokens, max_facts >= 1")
        if self.temperature < 0:
            raise ValueError(f"mem0: temperature must be >= 0, got {self.temperature}")


class Mem0(MemorySystem):
    name = "mem0"

    def __init__(
        self,
        encoder: Encoder,
        config: Mem0Config | None = None,
        domain: str = "conversation",
        seed: int = 0,
    ):
        super().__init__(domain)
        self.cfg = config or Mem0Config()
        self.store = LongTermMemory(encoder, seed=seed)
        self.history: list[dict[str, Any]] = []  # (id, event, old, new) rows, as Mem0 keeps

    # -- ingest ---------------------------------------------------------------------------
    def ingest(self, messages: Sequence[tuple[str, str]]) -> Call[None]:
        yield from self._ingest_vector(messages)

    def _ingest_vector(self, messages: Sequence[tuple[str, str]]) -> Call[None]:
        facts = yield from self.extract_facts(messages)
        if facts:
            yield from self.update(facts)

    def extract_facts(self, messages: Sequence[tuple[str, str]]) -> Call[list[str]]:
        if self.domain == "conversation":
            system = prompts.MEM0_EXTRACT_CONVERSATION
            messages = [m for m in messages if m[0] == "user"]  # only what the user says
        else:
            system = prompts.MEM0_EXTRACT_ENVIRONMENT
        if not messages:
            return []
        user = prompts.MEM0_EXTRACT_USER.format(transcript=transcript(messages))
        cfg = self.cfg
        reply = yield from self.ask_json(
            "extract", system, user, cfg.temperature, cfg.max_new_tokens
        )
        if reply is None:
            return []
        facts = str_list(reply.get("facts"))
        if facts is None:
            self.fail("bad_schema")
            return []
        return facts[: cfg.max_facts]

    def update(self, facts: Sequence[str]) -> Call[None]:
        """Steps 2-4: the nearest memories under labels, one update call, apply the events."""
        shown: dict[str, str] = {}  # real id -> content, in first-seen order
        if len(self.store):
            for fact in facts:
                for hit in self.store.search(fact, self.cfg.search_per_fact):
                    shown.setdefault(hit.entry.id, hit.entry.content)
        labels = list(shown)  # label i -> real id
        memories = json.dumps(
            [{"id": str(i), "text": shown[mid]} for i, mid in enumerate(labels)],
            ensure_ascii=False,
        )
        user = prompts.MEM0_UPDATE_USER.format(
            memories=memories, facts=json.dumps(list(facts), ensure_ascii=False)
        )
        reply = yield from self.ask_json(
            "update", prompts.MEM0_UPDATE, user, self.cfg.temperature, self.cfg.max_new_tokens
        )
        if reply is None:
            return
        items = reply.get("memory")
        if not isinstance(items, list):
            self.fail("bad_schema")
            return
        self.apply(items, labels)

    def apply(self, items: Sequence[Any], labels: Sequence[str]) -> None:
        """Apply update events; `labels[i]` is the real id shown as label `str(i)`."""
        by_label = {str(i): mid for i, mid in enumerate(labels)}
        gone: set[str] = set()
        for item in items:
            if not isinstance(item, dict):
                self.fail("bad_schema")
                continue
            event = str(item.get("event", "")).strip().upper()
            text = item.get("text")
            text = text.strip() if isinstance(text, str) else ""
            if event not in EVENTS:
                self.fail("bad_schema")
                continue
            if event == "NONE":
                continue
            if event == "ADD":
                if not text:
                    self.fail("bad_schema")
                    continue
                entry = self.store.add(text)
                self.history.append({"id": entry.id, "event": "ADD", "old": None, "new": text})
                continue
            mid = by_label.get(str(item.get("id", "")).strip())
            if mid is None or mid in gone:
                self.fail("unknown_id")  # invented, real (never shown) or already deleted
                continue
            old = self.store.get(mid).content
            if event == "UPDATE":
                if not text:
                    self.fail("bad_schema")
                    continue
                self.store.update(mid, text)  # same id, new text and embedding
                self.history.append({"id": mid, "event": "UPDATE", "old": old, "new": text})
            else:
                self.store.delete(mid)
                gone.add(mid)
                self.history.append({"id": mid, "event": "DELETE", "old": old, "new": None})

    # -- search ---------------------------------------------------------------------------
    def search(self, query: str) -> Call[list[Recall]]:
        return (yield from self._search_vector(query))

    def _search_vector(self, query: str) -> Call[list[Recall]]:
        if not len(self.store):
            return []
        yield from ()
        hits = self.store.search(query, self.cfg.recall_top_k)
        return [Recall(h.entry.id, h.entry.content) for h in hits]

    def memories(self) -> list[str]:
        return [e.content for e in self.store.entries()]
