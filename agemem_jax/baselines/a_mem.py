"""A-Mem: Zettelkasten-style notes that analyze themselves, evolve their neighbours and link.

Per ingest the messages become one note. (1) An analyze call gives keywords, a one-sentence
context and tags. (2) Unless the store is empty, the `evolve_k` nearest notes are shown to an
evolve call under labels 0..k-1, and its decision applies **by id**: label i is the i-th
neighbour of this very search, never the i-th note of the store (the rank-position mistake of
some public versions). "strengthen" links the new note to the chosen neighbours and retags it;
"update_neighbor" rewrites the neighbours' context and tags (never their content). (3) The note
is stored with its embedding of content + context + keywords + tags. A neighbour's rewritten
context takes effect in the index when it is rebuilt, every `rebuild_every` evolutions.

Search: one call turns the query into keywords, whose embedding retrieves the `recall_top_k`
nearest notes; the notes they link to are appended.

A failed analyze leaves the note's keywords, context and tags empty; the note (the message
itself, not model output) is still stored. Every malformed reply is counted; an evolve reply
that is not usable changes no note.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from agemem_jax import prompts
from agemem_jax.baselines.base import Call, MemorySystem, Recall, str_list
from agemem_jax.encoder import Encoder
from agemem_jax.ltm import LongTermMemory

ACTIONS = ("strengthen", "update_neighbor")


@dataclasses.dataclass(frozen=True)
class AMemConfig:
    """A-Mem's published defaults (baselines.md); the reply budget is ours."""

    temperature: float = 0.7  # A-Mem's LLM temperature
    evolve_k: int = 5  # nearest notes shown to the evolve call
    recall_top_k: int = 10  # notes retrieved at answer time (the paper's evaluation)
    rebuild_every: int = 100  # evolutions between rebuilds of the embedding index
    max_new_tokens: int = 384  # budget of each reply (ours)

    def __post_init__(self):
        if min(self.evolve_k, self.recall_top_k, self.rebuild_every, self.max_new_tokens) < 1:
            raise ValueError("a_mem: evolve_k, recall_top_k, rebuild_every, max_new_tokens >= 1")
        if self.temperature < 0:
            raise ValueError(f"a_mem: temperature must be >= 0, got {self.temperature}")


def _embed_text(content: str, meta: dict[str, Any]) -> str:
    return " ".join(
        [
            content,
            meta.get("context", ""),
            " ".join(meta.get("keywords", ())),
            " ".join(meta.get("tags", ())),
        ]
    ).strip()


class AMem(MemorySystem):
    name = "a_mem"

    def __init__(
        self,
        encoder: Encoder,
        config: AMemConfig | None = None,
        domain: str = "conversation",
        seed: int = 0,
    ):
        super().__init__(domain)
        self.cfg = config or AMemConfig()
        self.encoder = encoder
        self.store = LongTermMemory(encoder, seed=seed)
        self.evolutions = 0
        self.rebuilds = 0

    def _ask(self, purpose: str, system: str, user: str) -> Call[dict | None]:
        cfg = self.cfg
        return (
            yield from self.ask_json(purpose, system, user, cfg.temperature, cfg.max_new_tokens)
        )

    def note(self, memory_id: str) -> dict[str, Any]:
        e = self.store.get(memory_id)
        return {"id": e.id, "content": e.content, **e.metadata}

    # -- ingest ---------------------------------------------------------------------------
    def ingest(self, messages: Sequence[tuple[str, str]]) -> Call[None]:
        content = " ".join(c for _, c in messages).strip()
        if not content:
            return
        meta = yield from self.analyze(content)
        emb = self._vec(_embed_text(content, meta))
        if len(self.store):
            neighbours = [
                h.entry.id for h in self.store.search(None, self.cfg.evolve_k, embedding=emb)
            ]
            yield from self.evolve(content, meta, neighbours)
        self.store.add(content, meta, "note", embedding=self._vec(_embed_text(content, meta)))

    def _vec(self, text: str) -> np.ndarray:
        return np.asarray(self.encoder.encode([text])[0], np.float32)

    def analyze(self, content: str) -> Call[dict[str, Any]]:
        meta: dict[str, Any] = {"keywords": [], "context": "", "tags": [], "links": []}
        reply = yield from self._ask("analyze", prompts.AMEM_ANALYZE, content)
        if reply is None:
            return meta
        keywords, tags = str_list(reply.get("keywords")), str_list(reply.get("tags"))
        context = reply.get("context")
        if keywords is None or tags is None or not isinstance(context, str):
            self.fail("bad_schema")
            return meta
        return meta | {"keywords": keywords, "context": context.strip(), "tags": tags}

    def evolve(self, content: str, meta: dict[str, Any], neighbours: Sequence[str]) -> Call[None]:
        """The evolve call over `neighbours` (real ids, label i = neighbours[i]); edits `meta`
        (the new note) and the neighbours in place."""
        listing = "\n".join(
            prompts.AMEM_NOTE.format(
                label=i,
                content=n["content"],
                context=n.get("context", ""),
                keywords=", ".join(n.get("keywords", ())),
                tags=", ".join(n.get("tags", ())),
            )
            for i, n in enumerate(self.note(mid) for mid in neighbours)
        )
        user = prompts.AMEM_EVOLVE_USER.format(
            content=content,
            context=meta["context"],
            keywords=", ".join(meta["keywords"]),
            neighbours=listing,
        )
        reply = yield from self._ask("evolve", prompts.AMEM_EVOLVE, user)
        if reply is None:
            return
        should = reply.get("should_evolve")
        actions = reply.get("actions", [])
        if not isinstance(should, bool) or not isinstance(actions, list):
            self.fail("bad_schema")
            return
        if not should:
            return
        unknown = [a for a in actions if a not in ACTIONS]
        if unknown:
            self.fail("unknown_action", len(unknown))
        if "strengthen" in actions:
            self._strengthen(reply, meta, neighbours)
        if "update_neighbor" in actions:
            self._update_neighbours(reply, neighbours)
        self.evolutions += 1
        if self.evolutions % self.cfg.rebuild_every == 0:
            self.rebuild()

    def _label(self, value: Any, neighbours: Sequence[str]) -> str | None:
        """The neighbour a label names: its index in this search, or its own id."""
        if isinstance(value, str) and value in neighbours:
            return value
        if isinstance(value, bool):
            return None
        if isinstance(value, int | str):
            try:
                i = int(value)
            except ValueError:
                return None
            if 0 <= i < len(neighbours):
                return neighbours[i]
        return None

    def _strengthen(self, reply: dict, meta: dict[str, Any], neighbours: Sequence[str]) -> None:
        links = reply.get("suggested_connections", [])
        if not isinstance(links, list):
            self.fail("bad_schema")
            links = []
        for value in links:
            mid = self._label(value, neighbours)
            if mid is None:
                self.fail("unknown_id")
            elif mid not in meta["links"]:
                meta["links"].append(mid)
        tags = str_list(reply.get("tags_to_update", meta["tags"]))
        if tags is None:
            self.fail("bad_schema")
        elif tags:
            meta["tags"] = tags

    def _update_neighbours(self, reply: dict, neighbours: Sequence[str]) -> None:
        contexts = reply.get("new_context_neighborhood", [])
        tag_lists = reply.get("new_tags_neighborhood", [])
        if not isinstance(contexts, list) or not isinstance(tag_lists, list):
            self.fail("bad_schema")
            return
        if len(contexts) > len(neighbours) or len(tag_lists) > len(neighbours):
            self.fail("unknown_id")  # entries for neighbours that were not shown
        for i, mid in enumerate(neighbours):
            change: dict[str, Any] = {}
            if i < len(contexts):
                if isinstance(contexts[i], str) and contexts[i].strip():
                    change["context"] = contexts[i].strip()
                else:
                    self.fail("bad_schema")
            if i < len(tag_lists):
                tags = str_list(tag_lists[i])
                if tags:
                    change["tags"] = tags
                else:
                    self.fail("bad_schema")
            if change:
                # The index keeps the old embedding until the next rebuild.
                e = self.store.get(mid)
                self.store.update(mid, e.content, change, embedding=self.store.embedding(mid))

    def rebuild(self) -> None:
        """Re-embed every note from its current content and metadata."""
        for e in self.store.entries():
            self.store.update(
                e.id, e.content, embedding=self._vec(_embed_text(e.content, e.metadata))
            )
        self.rebuilds += 1

    # -- search ---------------------------------------------------------------------------
    def search(self, query: str) -> Call[list[Recall]]:
        if not len(self.store):
            return []
        reply = yield from self._ask("query", prompts.AMEM_QUERY, query)
        keywords = str_list(reply.get("keywords")) if reply is not None else []
        if keywords is None:
            self.fail("bad_schema")
        text = ", ".join(keywords) if keywords else query  # no keywords: the question itself
        hits = [h.entry.id for h in self.store.search(text, self.cfg.recall_top_k)]
        ids = list(hits)
        for mid in hits:
            ids += [
                link
                for link in self.store.get(mid).metadata.get("links", ())
                if link in self.store and link not in ids
            ]
        return [Recall(mid, self._render(mid)) for mid in ids]

    def _render(self, mid: str) -> str:
        n = self.note(mid)
        extra = "; ".join(x for x in (n.get("context", ""), ", ".join(n.get("tags", ()))) if x)
        return f"{n['content']} ({extra})" if extra else n["content"]

    def memories(self) -> list[str]:
        return [e.content for e in self.store.entries()]
