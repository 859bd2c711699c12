"""Mem0g: Mem0's graph memory beside its vector pipeline, the graph held in an embedded Kuzu
database (one in-memory database per episode).

Per ingest, after Mem0's vector steps: (1) an entity-extraction call; (2) a relation-extraction
call over those entities, explicit relations only; (3) every extracted entity is matched to
existing nodes whose embedding (MiniLM) has cosine >= `node_threshold` and their 1-hop edges
are fetched; (4) a deletion call lists the fetched edges that the new text contradicts or
outdates, and those edges are removed; (5) each relation's endpoints are merged into the best
node at >= `node_threshold` or created, and the edge is added unless it exists.

Search: entities of the query (one call), nodes matched at >= `node_threshold`, their 1-hop
edges, ranked by BM25 against the query; the `graph_top_k` best triples join Mem0's vector hits.

Malformed output changes nothing and is counted: a relation whose endpoint is not among the
extracted entities (`hallucinated_relation`), a deletion of an edge that was not shown
(`unknown_relation`), replies without JSON or of the wrong shape. Step (4) is skipped when no
edge was fetched, as nothing could be deleted **(ours)**.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from agemem_jax import prompts
from agemem_jax.baselines.base import Call, Recall, transcript
from agemem_jax.baselines.mem0 import Mem0, Mem0Config
from agemem_jax.encoder import Encoder

_TOKEN = re.compile(r"\w+")


@dataclasses.dataclass(frozen=True)
class Mem0gConfig:
    """Mem0g's graph settings (its vector part reads the `mem0` block)."""

    node_threshold: float = 0.7  # cosine at which an entity matches (merges into) a node
    graph_top_k: int = 5  # triples BM25 keeps at search
    bm25_k1: float = 1.5  # BM25 term saturation
    bm25_b: float = 0.75  # BM25 length normalization
    max_new_tokens: int = 384  # budget of each graph call's reply (ours)
    buffer_pool_mb: int = 64  # the Kuzu database's buffer pool (ours: small graphs)

    def __post_init__(self):
        if not 0.0 < self.node_threshold <= 1.0:
            raise ValueError(f"mem0g: node_threshold must be in (0, 1], got {self.node_threshold}")
        if min(self.graph_top_k, self.max_new_tokens, self.buffer_pool_mb) < 1:
            raise ValueError("mem0g: graph_top_k, max_new_tokens, buffer_pool_mb must be >= 1")


class Triple(NamedTuple):
    source: str
    relationship: str
    destination: str
    source_id: int
    destination_id: int

    @property
    def text(self) -> str:
        return f"{self.source} {self.relationship} {self.destination}"


def norm_name(name: str) -> str:
    return " ".join(name.lower().split())


def norm_relation(rel: str) -> str:
    return "_".join(re.sub(r"[^\w\s]", " ", rel.lower()).split())


def as_triple(item: Any) -> tuple[str, str, str] | None:
    """A {source, relationship, destination} item, normalized; None when malformed."""
    if not isinstance(item, dict):
        return None
    src, rel, dst = (item.get(k) for k in ("source", "relationship", "destination"))
    if not (isinstance(src, str) and isinstance(rel, str) and isinstance(dst, str)):
        return None
    triple = (norm_name(src), norm_relation(rel), norm_name(dst))
    return triple if all(triple) else None


class KuzuGraph:
    """Entity nodes (name, type, embedding) and relationship edges in an in-memory Kuzu
    database; node matching is a cosine query inside the database."""

    def __init__(self, dim: int, buffer_pool_mb: int = 64):
        import kuzu

        self.dim = dim
        self.db = kuzu.Database(
            ":memory:", buffer_pool_size=buffer_pool_mb * 2**20, max_num_threads=1
        )
        self.conn = kuzu.Connection(self.db)
        self.conn.execute(
            "CREATE NODE TABLE Entity(id INT64, name STRING, type STRING, "
            f"emb FLOAT[{dim}], PRIMARY KEY(id))"
        )
        self.conn.execute("CREATE REL TABLE Rel(FROM Entity TO Entity, name STRING)")
        self._next_id = 0

    def _rows(self, query: str, params: dict[str, Any] | None = None) -> list[list[Any]]:
        result = self.conn.execute(query, params or {})
        result = result[0] if isinstance(result, list) else result
        rows = []
        while result.has_next():
            rows.append(list(result.get_next()))  # type: ignore[arg-type]
        return rows

    def match(self, emb: np.ndarray, threshold: float) -> list[tuple[int, str, float]]:
        """Nodes with cosine >= threshold to `emb`, best first: (id, name, cosine)."""
        return [
            (int(i), str(n), float(s))
            for i, n, s in self._rows(
                "MATCH (n:Entity) WITH n, array_cosine_similarity(n.emb, "
                f"CAST($q AS FLOAT[{self.dim}])) AS s WHERE s >= $t "
                "RETURN n.id, n.name, s ORDER BY s DESC, n.id",
                {"q": [float(x) for x in emb], "t": float(threshold)},
            )
        ]

    def add_node(self, name: str, entity_type: str, emb: np.ndarray) -> int:
        node_id = self._next_id
        self._next_id += 1
        self.conn.execute(
            "CREATE (:Entity {id: $id, name: $name, type: $type, emb: $emb})",
            {"id": node_id, "name": name, "type": entity_type, "emb": [float(x) for x in emb]},
        )
        return node_id

    def nodes(self) -> list[tuple[int, str, str]]:
        return [
            (int(i), str(n), str(t))
            for i, n, t in self._rows("MATCH (n:Entity) RETURN n.id, n.name, n.type ORDER BY n.id")
        ]

    def edges(self, node_ids: Sequence[int] | None = None) -> list[Triple]:
        """Every edge, or the edges touching `node_ids` (their 1-hop neighbourhood)."""
        query = "MATCH (a:Entity)-[e:Rel]->(b:Entity) "
        params: dict[str, Any] = {}
        if node_ids is not None:
            query += "WHERE a.id IN $ids OR b.id IN $ids "
            params["ids"] = [int(i) for i in node_ids]
        query += "RETURN a.name, e.name, b.name, a.id, b.id ORDER BY a.id, e.name, b.id"
        return [
            Triple(str(a), str(r), str(b), int(x), int(y))
            for a, r, b, x, y in self._rows(query, params)
        ]

    def has_edge(self, src: int, rel: str, dst: int) -> bool:
        return bool(
            self._rows(
                "MATCH (a:Entity {id: $a})-[e:Rel {name: $r}]->(b:Entity {id: $b}) RETURN count(e)",
                {"a": src, "r": rel, "b": dst},
            )[0][0]
        )

    def add_edge(self, src: int, rel: str, dst: int) -> None:
        self.conn.execute(
            "MATCH (a:Entity {id: $a}), (b:Entity {id: $b}) CREATE (a)-[:Rel {name: $r}]->(b)",
            {"a": src, "b": dst, "r": rel},
        )

    def delete_edge(self, src: int, rel: str, dst: int) -> None:
        self.conn.execute(
            "MATCH (a:Entity {id: $a})-[e:Rel {name: $r}]->(b:Entity {id: $b}) DELETE e",
            {"a": src, "r": rel, "b": dst},
        )

    def close(self) -> None:
        self.conn.close()
        self.db.close()


def bm25_rank(docs: Sequence[str], query: str, k1: float, b: float) -> list[float]:
    """Okapi BM25 of each doc for the query (word tokens, lowercased; the non-negative idf
    log(1 + (N - n + 0.5) / (n + 0.5)))."""
    toks = [_TOKEN.findall(d.lower()) for d in docs]
    if not toks:
        return []
    avg = sum(map(len, toks)) / len(toks) or 1.0
    df = Counter(t for d in toks for t in set(d))
    n = len(toks)
    scores = []
    for d in toks:
        tf = Counter(d)
        s = 0.0
        for q in _TOKEN.findall(query.lower()):
            if q not in tf:
                continue
            idf = math.log(1.0 + (n - df[q] + 0.5) / (df[q] + 0.5))
            s += idf * tf[q] * (k1 + 1) / (tf[q] + k1 * (1 - b + b * len(d) / avg))
        scores.append(s)
    return scores


class Mem0g(Mem0):
    name = "mem0g"

    def __init__(
        self,
        encoder: Encoder,
        config: Mem0Config | None = None,
        graph_config: Mem0gConfig | None = None,
        domain: str = "conversation",
        seed: int = 0,
    ):
        super().__init__(encoder, config, domain, seed)
        self.gcfg = graph_config or Mem0gConfig()
        self.encoder = encoder
        self.graph = KuzuGraph(int(encoder.dim), self.gcfg.buffer_pool_mb)

    def _embed(self, names: Sequence[str]) -> np.ndarray:
        vecs = np.asarray(self.encoder.encode(list(names)), np.float32)
        return vecs / np.maximum(np.linalg.norm(vecs, axis=-1, keepdims=True), 1e-12)

    def _ask_graph(self, purpose: str, system: str, user: str) -> Call[dict | None]:
        return (
            yield from self.ask_json(
                purpose, system, user, self.cfg.temperature, self.gcfg.max_new_tokens
            )
        )

    def extract_entities(self, text: str) -> Call[dict[str, str]]:
        """name -> type, names normalized; {} when the reply is unusable (counted)."""
        reply = yield from self._ask_graph("entities", prompts.MEM0G_ENTITIES, text)
        if reply is None:
            return {}
        items = reply.get("entities")
        if not isinstance(items, list):
            self.fail("bad_schema")
            return {}
        out: dict[str, str] = {}
        for item in items:
            name = item.get("entity") if isinstance(item, dict) else None
            if not isinstance(name, str) or not norm_name(name):
                self.fail("bad_schema")
                continue
            kind = item.get("entity_type")
            out[norm_name(name)] = norm_name(kind) if isinstance(kind, str) else "entity"
        return out

    # -- ingest ---------------------------------------------------------------------------
    def ingest(self, messages: Sequence[tuple[str, str]]) -> Call[None]:
        yield from self._ingest_vector(messages)
        if self.domain == "conversation":
            messages = [m for m in messages if m[0] == "user"]
        if messages:
            yield from self.ingest_graph(transcript(messages))

    def ingest_graph(self, text: str) -> Call[None]:
        entities = yield from self.extract_entities(text)
        if not entities:
            return
        user = prompts.MEM0G_RELATIONS_USER.format(text=text, entities=", ".join(entities))
        reply = yield from self._ask_graph("relations", prompts.MEM0G_RELATIONS, user)
        if reply is None:
            return
        items = reply.get("relations")
        if not isinstance(items, list):
            self.fail("bad_schema")
            return
        relations: list[tuple[str, str, str]] = []
        for item in items:
            triple = as_triple(item)
            if triple is None:
                self.fail("bad_schema")
                continue
            src, rel, dst = triple
            if src not in entities or dst not in entities or not rel:
                self.fail("hallucinated_relation")  # an endpoint the text did not name
                continue
            relations.append((src, rel, dst))

        names = list(entities)
        vecs = dict(zip(names, self._embed(names), strict=True))
        matched = {
            i for n in names for i, _, _ in self.graph.match(vecs[n], self.gcfg.node_threshold)
        }
        nearby = self.graph.edges(sorted(matched)) if matched else []
        if nearby:
            yield from self._delete_outdated(nearby, text)
        for src, rel, dst in relations:
            a = self._node(src, entities[src], vecs[src])
            b = self._node(dst, entities[dst], vecs[dst])
            if not self.graph.has_edge(a, rel, b):
                self.graph.add_edge(a, rel, b)

    def _delete_outdated(self, nearby: Sequence[Triple], text: str) -> Call[None]:
        listing = "\n".join(f"{t.source} -- {t.relationship} -- {t.destination}" for t in nearby)
        user = prompts.MEM0G_DELETE_USER.format(relations=listing, text=text)
        reply = yield from self._ask_graph("delete", prompts.MEM0G_DELETE, user)
        if reply is None:
            return
        items = reply.get("delete")
        if not isinstance(items, list):
            self.fail("bad_schema")
            return
        shown = {(t.source, t.relationship, t.destination): t for t in nearby}
        for item in items:
            key = as_triple(item)
            if key is None:
                self.fail("bad_schema")
                continue
            t = shown.pop(key, None)
            if t is None:
                self.fail("unknown_relation")  # not an edge it was shown (or already deleted)
                continue
            self.graph.delete_edge(t.source_id, t.relationship, t.destination_id)

    def _node(self, name: str, entity_type: str, emb: np.ndarray) -> int:
        """The best node at >= node_threshold (merge), else a new one."""
        hits = self.graph.match(emb, self.gcfg.node_threshold)
        return hits[0][0] if hits else self.graph.add_node(name, entity_type, emb)

    # -- search ---------------------------------------------------------------------------
    def search(self, query: str) -> Call[list[Recall]]:
        found = yield from self._search_vector(query)
        return found + (yield from self.search_graph(query))

    def search_graph(self, query: str) -> Call[list[Recall]]:
        if not self.graph.nodes():
            return []
        entities = yield from self.extract_entities(query)
        if not entities:
            return []
        vecs = self._embed(list(entities))
        matched = {i for v in vecs for i, _, _ in self.graph.match(v, self.gcfg.node_threshold)}
        triples = self.graph.edges(sorted(matched)) if matched else []
        scores = bm25_rank([t.text for t in triples], query, self.gcfg.bm25_k1, self.gcfg.bm25_b)
        order = sorted(range(len(triples)), key=lambda i: -scores[i])[: self.gcfg.graph_top_k]
        return [
            Recall(
                f"edge:{triples[i].source_id}:{triples[i].relationship}:{triples[i].destination_id}",
                f"{triples[i].source} -- {triples[i].relationship} -- {triples[i].destination}",
            )
            for i in order
        ]

    def memories(self) -> list[str]:
        edges = [f"{t.source} -- {t.relationship} -- {t.destination}" for t in self.graph.edges()]
        return super().memories() + edges

    def close(self) -> None:
        self.graph.close()
