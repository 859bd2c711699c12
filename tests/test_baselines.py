"""The memory baselines (agemem_jax.baselines) against what each published algorithm implies.

A canned LLM (fixed JSON replies, queued per pipeline step) stands in for the model in these
unit tests, so each store state can be stated exactly; Kuzu is the real graph database. The
harness tests at the end run each method through evaluate() on a tiny random model.
"""

from __future__ import annotations

import collections
import json
import math
from collections.abc import Mapping, Sequence

import numpy as np
import pytest

from agemem_jax import baselines, prompts
from agemem_jax.baselines import (
    AMem,
    AMemConfig,
    LangMem,
    LangMemConfig,
    LLMReply,
    LLMRequest,
    Mem0,
    Mem0g,
    parse_json,
)
from agemem_jax.baselines.mem0g import bm25_rank


class CannedLLM:
    """Replies from per-purpose queues, in order; records every batch it was asked."""

    def __init__(self, replies: dict[str, Sequence[object]] | None = None):
        self.queues = collections.defaultdict(collections.deque)
        self.batches: list[list[LLMRequest]] = []
        for purpose, items in (replies or {}).items():
            self.add(purpose, *items)

    def add(self, purpose: str, *items: object) -> None:
        for item in items:
            self.queues[purpose].append(item if isinstance(item, str) else json.dumps(item))

    def complete(self, requests: Sequence[LLMRequest]) -> list[LLMReply]:
        self.batches.append(list(requests))
        out = []
        for r in requests:
            if not self.queues[r.purpose]:
                raise AssertionError(f"unexpected {r.purpose!r} call")
            out.append(LLMReply(self.queues[r.purpose].popleft(), 10, 5))
        return out

    @property
    def requests(self) -> list[LLMRequest]:
        return [r for b in self.batches for r in b]

    def exhausted(self) -> bool:
        return not any(self.queues.values())


class KeyEncoder:
    """Fixed vectors for chosen key phrases (summed when a text holds several); other texts get
    a word-hash vector in separate dimensions, so they never match a key by accident."""

    def __init__(self, table: Mapping[str, Sequence[float]], dim: int = 8):
        self.table = {k: np.asarray(v, np.float32) for k, v in table.items()}
        self.dim = dim
        self.name = "key-test"

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, text in enumerate(texts):
            low = text.lower()
            hits = [v for k, v in self.table.items() if k in low]
            if hits:
                out[i, : len(hits[0])] = np.sum(hits, axis=0)
            else:
                for w in low.split():
                    out[i, 4 + (sum(map(ord, w)) % (self.dim - 4))] += 1.0
                if not low.split():
                    out[i, -1] = 1.0
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def drive_ingest(llm, system, *texts: str) -> None:
    for text in texts:
        baselines.ingest_all(llm, [system], [[("user", text)]])


def drive_search(llm, system, query: str):
    return baselines.search_all(llm, [system], [query])[0]


# ------------------------------------------------------------------------------------- parsing


def test_parse_json_finds_the_object_in_fences_and_prose():
    assert parse_json('```json\n{"facts": ["a"]}\n```') == {"facts": ["a"]}
    assert parse_json('Sure! {"facts": []} hope that helps') == {"facts": []}
    assert parse_json('{bad} then {"ok": 1}') == {"ok": 1}
    for junk in ("", "no json", "[1, 2]", '{"open": ', "```json\n{]\n```"):
        assert parse_json(junk) is None


def test_bm25_prefers_the_triple_with_the_rare_query_term():
    docs = ["curie born_in warsaw", "curie lives_in paris", "curie won nobel"]
    scores = bm25_rank(docs, "where was curie born in warsaw", 1.5, 0.75)
    assert int(np.argmax(scores)) == 0 and scores[1] == scores[2] > 0


def test_run_all_batches_the_calls_of_all_systems_in_lock_step():
    enc = KeyEncoder({})
    systems = [Mem0(enc), Mem0(enc), Mem0(enc)]
    llm = CannedLLM()
    for i in range(3):
        llm.add("extract", {"facts": [f"fact number {i}"]})
        llm.add("update", {"memory": [{"text": f"fact number {i}", "event": "ADD"}]})
    baselines.ingest_all(llm, systems, [[("user", f"message {i}")] for i in range(3)])
    assert [len(b) for b in llm.batches] == [3, 3]
    assert [s.memories() for s in systems] == [[f"fact number {i}"] for i in range(3)]
    for s in systems:
        assert s.stats.llm_calls == 2 and s.stats.prompt_tokens == 20
        assert len(s.stats.ingest_seconds) == 1


# ---------------------------------------------------------------------------------------- Mem0


def test_mem0_add_update_keeps_the_id_delete_and_none():
    enc = KeyEncoder({"alice": [1, 0, 0, 0], "bob": [0, 1, 0, 0]})
    m = Mem0(enc)
    llm = CannedLLM()
    llm.add("extract", {"facts": ["Alice lives in Paris.", "Bob plays chess."]})
    llm.add(
        "update",
        {
            "memory": [
                {"id": "0", "text": "Alice lives in Paris.", "event": "ADD"},
                {"text": "Bob plays chess.", "event": "ADD"},
            ]
        },
    )
    drive_ingest(llm, m, "user: I met Alice from Paris and Bob, who plays chess.")
    (alice,) = [e for e in m.store.entries() if "Alice" in e.content]
    (bob,) = [e for e in m.store.entries() if "Bob" in e.content]

    llm.add("extract", {"facts": ["Alice lives in Paris and works at a bakery."]})
    llm.add(
        "update",
        {
            "memory": [
                {
                    "id": "0",
                    "text": "Alice lives in Paris and works at a bakery.",
                    "event": "UPDATE",
                    "old_memory": "Alice lives in Paris.",
                },
                {"id": "1", "text": "Bob plays chess.", "event": "NONE"},
            ]
        },
    )
    drive_ingest(llm, m, "Alice works at a bakery.")
    shown = json.loads(llm.requests[-1].messages[1]["content"].split("\n")[1])
    # The update call sees integer labels only, nearest first; never a real id.
    assert [s["id"] for s in shown] == ["0", "1"] and shown[0]["text"] == "Alice lives in Paris."
    assert alice.id not in llm.requests[-1].messages[1]["content"]
    assert m.store.get(alice.id).content == "Alice lives in Paris and works at a bakery."
    assert m.store.get(bob.id).content == "Bob plays chess." and len(m.store) == 2
    assert m.history[-1] == {
        "id": alice.id,
        "event": "UPDATE",
        "old": "Alice lives in Paris.",
        "new": "Alice lives in Paris and works at a bakery.",
    }
    llm.add("extract", {"facts": ["Bob gave up chess."]})
    llm.add("update", {"memory": [{"id": "0", "text": "Bob plays chess.", "event": "DELETE"}]})
    drive_ingest(llm, m, "Bob gave up chess.")
    assert m.memories() == ["Alice lives in Paris and works at a bakery."]
    assert sum(m.stats.parse_failures.values()) == 0 and llm.exhausted()
    assert m.stats.calls_by_purpose == {"extract": 3, "update": 3}
    # Search: top-k by cosine, no LLM call.
    (hit,) = drive_search(llm, m, "where does alice work")
    assert hit.id == alice.id and len(llm.requests) == 6


def test_mem0_with_no_facts_makes_no_update_call():
    m = Mem0(KeyEncoder({}))
    llm = CannedLLM({"extract": [{"facts": []}]})
    drive_ingest(llm, m, "hi there!")
    assert m.memories() == [] and m.stats.llm_calls == 1 and not m.stats.parse_failures


@pytest.mark.parametrize(
    "extract, update, kinds",
    [
        ("I think the facts are: none", None, {"bad_json": 1}),
        ({"facts": "Alice"}, None, {"bad_schema": 1}),
        ({"facts": ["Alice moved."]}, "not json at all", {"bad_json": 1}),
        ({"facts": ["Alice moved."]}, {"memory": {"id": "0"}}, {"bad_schema": 1}),
        (
            {"facts": ["Alice moved."]},
            {
                "memory": [
                    {"id": "7", "text": "x", "event": "UPDATE"},  # invented label
                    {"id": "mem_00000000", "text": "x", "event": "DELETE"},  # a real-looking id
                    {"id": "0", "text": "", "event": "UPDATE"},  # no text
                    {"id": "0", "text": "x", "event": "MERGE"},  # no such event
                    "ADD everything",
                ]
            },
            {"unknown_id": 2, "bad_schema": 3},
        ),
    ],
)
def test_mem0_malformed_output_changes_nothing_and_is_counted(extract, update, kinds):
    enc = KeyEncoder({"alice": [1, 0, 0, 0]})
    m = Mem0(enc)
    llm = CannedLLM({"extract": [{"facts": ["Alice lives in Paris."]}]})
    llm.add("update", {"memory": [{"text": "Alice lives in Paris.", "event": "ADD"}]})
    drive_ingest(llm, m, "Alice lives in Paris.")
    before = [(e.id, e.content) for e in m.store.entries()]
    llm.add("extract", extract)
    if update is not None:
        llm.add("update", update)
    drive_ingest(llm, m, "Alice moved.")
    assert [(e.id, e.content) for e in m.store.entries()] == before
    assert dict(m.stats.parse_failures) == kinds and llm.exhausted()
    if "bad_json" in kinds:  # the unparseable reply is kept for inspection
        bad = extract if update is None else update
        assert m.stats.to_json()["bad_replies"] == [bad]


# --------------------------------------------------------------------------------------- Mem0g

S75, S65 = math.sqrt(1 - 0.75**2), math.sqrt(1 - 0.65**2)
GRAPH_KEYS = {
    "marie curie": [1, 0, 0, 0],
    "curie": [0.75, S75, 0, 0],  # cosine 0.75 to "marie curie": merges
    "warsaw": [0, 0, 1, 0],
    "paris": [0, 0, 0.65, S65],  # cosine 0.65 to "warsaw": a node of its own
}


class GraphKeyEncoder(KeyEncoder):
    """Exact keys only (the entity names), so "marie curie" is not also "curie"."""

    def encode(self, texts):
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, t in enumerate(texts):
            if t.lower() in self.table:
                out[i, :4] = self.table[t.lower()]
            else:
                out[i] = super().encode([t])[0]
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def _graph(m: Mem0g):
    nodes = {i: name for i, name, _ in m.graph.nodes()}
    return sorted(nodes.values()), sorted(
        (t.source, t.relationship, t.destination) for t in m.graph.edges()
    )


def _entities(*names):
    return {"entities": [{"entity": n, "entity_type": "thing"} for n in names]}


def _rel(s, r, d):
    return {"source": s, "relationship": r, "destination": d}


def test_mem0g_merges_nodes_at_cosine_07_and_deletes_contradicted_edges():
    m = Mem0g(GraphKeyEncoder(GRAPH_KEYS))
    llm = CannedLLM()
    no_facts = {"facts": []}  # the vector pipeline runs first; it stores nothing here
    llm.add("extract", no_facts, no_facts, no_facts)
    llm.add("entities", _entities("Marie Curie", "Warsaw"))
    llm.add("relations", {"relations": [_rel("Marie Curie", "born in", "Warsaw")]})
    drive_ingest(llm, m, "Marie Curie was born in Warsaw.")
    assert _graph(m) == (["marie curie", "warsaw"], [("marie curie", "born_in", "warsaw")])
    assert m.stats.calls_by_purpose["delete"] == 0  # no existing edge, nothing to delete

    llm.add("entities", _entities("Curie", "Paris"))
    llm.add("relations", {"relations": [_rel("Curie", "lives_in", "Paris")]})
    llm.add("delete", {"delete": []})
    drive_ingest(llm, m, "Curie lives in Paris.")
    # "curie" (0.75) merged into "marie curie"; "paris" (0.65 to warsaw) is a new node.
    assert _graph(m) == (
        ["marie curie", "paris", "warsaw"],
        [("marie curie", "born_in", "warsaw"), ("marie curie", "lives_in", "paris")],
    )
    shown = llm.requests[-1].messages[1]["content"]
    assert "marie curie -- born_in -- warsaw" in shown  # the 1-hop edges of the matched node

    llm.add("entities", _entities("Marie Curie", "Warsaw"))
    llm.add(
        "relations",
        {
            "relations": [
                _rel("Marie Curie", "lives_in", "Warsaw"),
                _rel("Marie Curie", "friend_of", "Einstein"),  # Einstein was not extracted
            ]
        },
    )
    llm.add(
        "delete",
        {"delete": [_rel("Marie Curie", "lives_in", "Paris"), _rel("Paris", "is", "big")]},
    )
    drive_ingest(llm, m, "Marie Curie moved back to Warsaw.")
    assert _graph(m) == (
        ["marie curie", "paris", "warsaw"],
        [("marie curie", "born_in", "warsaw"), ("marie curie", "lives_in", "warsaw")],
    )
    assert dict(m.stats.parse_failures) == {"hallucinated_relation": 1, "unknown_relation": 1}

    llm.add("entities", _entities("Curie"))
    recalls = drive_search(llm, m, "Where was Curie born?")
    assert recalls[0].text == "marie curie -- born_in -- warsaw"
    assert len(recalls) == 2 and llm.exhausted()
    m.close()


def test_mem0g_malformed_output_leaves_the_graph_alone():
    m = Mem0g(GraphKeyEncoder(GRAPH_KEYS))
    llm = CannedLLM({"extract": [{"facts": []}] * 6})
    llm.add("entities", _entities("Marie Curie", "Warsaw"))
    llm.add("relations", {"relations": [_rel("Marie Curie", "born_in", "Warsaw")]})
    drive_ingest(llm, m, "Marie Curie was born in Warsaw.")
    before = _graph(m)
    llm.add("entities", "entities: Marie Curie")  # no JSON: nothing else is asked
    llm.add("entities", {"entities": [{"name": "x"}]})  # wrong shape
    llm.add("entities", *[_entities("Marie Curie")] * 3)
    llm.add("relations", {"relations": "born_in"})  # wrong shape
    llm.add("relations", {"relations": [_rel("Marie Curie", "born_in", "Paris")]})  # invented
    llm.add("relations", {"relations": []})
    llm.add("delete", "{not json", {"delete": [{"source": "x"}]})
    for text in ("a", "b", "c", "d", "e"):
        drive_ingest(llm, m, text)
    assert _graph(m) == before and llm.exhausted()
    assert dict(m.stats.parse_failures) == {
        "bad_json": 2,
        "bad_schema": 3,
        "hallucinated_relation": 1,
    }
    m.close()


# --------------------------------------------------------------------------------------- A-Mem

FRUIT = {"apple": [1, 0, 0, 0], "banana": [0, 1, 0, 0], "cherry": [0, 0, 1, 0]}


def _analysis(word):
    return {"keywords": [word], "context": f"About {word}.", "tags": [word]}


def test_a_mem_evolves_the_neighbours_it_showed_by_id_not_by_store_position():
    m = AMem(KeyEncoder(FRUIT))
    llm = CannedLLM()
    llm.add("analyze", _analysis("apple"), _analysis("banana"), _analysis("banana"))
    llm.add("evolve", {"should_evolve": False, "actions": []})
    drive_ingest(llm, m, "apple pie", "banana bread")
    apple, banana = m.store.ids()
    # The new note is nearest to the banana note: label 0 is banana, label 1 is apple, the
    # reverse of their store positions.
    llm.add(
        "evolve",
        {
            "should_evolve": True,
            "actions": ["strengthen", "update_neighbor"],
            "suggested_connections": [0, 7],
            "tags_to_update": ["dessert", "banana"],
            "new_context_neighborhood": ["Banana baking.", "Apple baking."],
            "new_tags_neighborhood": [["banana", "baking"], ["apple", "baking"]],
        },
    )
    drive_ingest(llm, m, "banana cherry split")
    prompt = llm.requests[-1].messages[1]["content"]
    assert prompt.index("0: content: banana bread") < prompt.index("1: content: apple pie")
    new = m.store.ids()[-1]
    assert m.note(new)["links"] == [banana] and m.note(new)["tags"] == ["dessert", "banana"]
    assert m.note(banana)["context"] == "Banana baking."
    assert m.note(apple)["context"] == "Apple baking."
    assert m.note(banana)["tags"] == ["banana", "baking"]
    assert [m.note(i)["content"] for i in (apple, banana, new)] == [
        "apple pie",
        "banana bread",
        "banana cherry split",
    ]  # content is never rewritten
    assert dict(m.stats.parse_failures) == {"unknown_id": 1} and m.evolutions == 1

    # Retrieval: keywords from the question, top-k, then the linked notes.
    llm.add("query", {"keywords": ["cherry"]})
    m.cfg = AMemConfig(recall_top_k=1)
    recalls = drive_search(llm, m, "Which dessert has bananas?")
    assert [r.id for r in recalls] == [new, banana] and llm.exhausted()


def test_a_mem_rebuilds_its_index_every_n_evolutions():
    m = AMem(KeyEncoder(FRUIT), AMemConfig(rebuild_every=2))
    evolve = {"should_evolve": True, "actions": ["strengthen"], "suggested_connections": [0]}
    llm = CannedLLM({"analyze": [_analysis("apple")] * 3, "evolve": [evolve] * 2})
    drive_ingest(llm, m, "apple one", "apple two")
    assert (m.evolutions, m.rebuilds) == (1, 0)
    drive_ingest(llm, m, "apple three")
    assert (m.evolutions, m.rebuilds) == (2, 1)


@pytest.mark.parametrize(
    "evolve, kinds",
    [
        ("sure, evolve it", {"bad_json": 1}),
        ({"should_evolve": "yes", "actions": ["strengthen"]}, {"bad_schema": 1}),
        (
            {"should_evolve": True, "actions": ["merge"], "suggested_connections": [0]},
            {"unknown_action": 1},
        ),
        (
            {
                "should_evolve": True,
                "actions": ["strengthen", "update_neighbor"],
                "suggested_connections": [3, "mem_x", -1],
                "tags_to_update": "fruit",
                "new_context_neighborhood": [5, "", "c"],
                "new_tags_neighborhood": "fruit",
            },
            {"unknown_id": 3, "bad_schema": 2},
        ),
    ],
)
def test_a_mem_malformed_evolution_changes_no_note(evolve, kinds):
    m = AMem(KeyEncoder(FRUIT))
    llm = CannedLLM({"analyze": [_analysis("apple"), "garbage"], "evolve": [evolve]})
    drive_ingest(llm, m, "apple pie")
    (first,) = m.store.ids()
    before = m.note(first)
    drive_ingest(llm, m, "apple tart")
    assert m.note(first) == before
    new = m.store.ids()[-1]
    # The failed analysis leaves the new note bare; the note itself (the message) is kept.
    assert m.note(new) | {"id": None} == {
        "id": None,
        "content": "apple tart",
        "keywords": [],
        "context": "",
        "tags": [],
        "links": [],
    }
    assert dict(m.stats.parse_failures) == {"bad_json": 1} | {
        k: v + (kinds.get("bad_json", 0) if k == "bad_json" else 0) for k, v in kinds.items()
    }


# ------------------------------------------------------------------------------------- LangMem


def test_langmem_inserts_patches_by_id_and_never_deletes_by_default():
    enc = KeyEncoder({"alice": [1, 0, 0, 0], "bob": [0, 1, 0, 0], "carol": [0, 0, 1, 0]})
    m = LangMem(enc, LangMemConfig(query_limit=2))
    llm = CannedLLM()
    llm.add(
        "extract",
        {
            "actions": [
                {"action": "insert", "content": "Alice lives in Paris."},
                {"action": "insert", "content": "Bob plays chess."},
                {"action": "insert", "content": "Carol sings."},
            ]
        },
    )
    drive_ingest(llm, m, "Alice lives in Paris, Bob plays chess, Carol sings.")
    alice, bob, carol = m.store.ids()
    llm.add(
        "extract",
        {
            "actions": [
                {"action": "patch", "id": alice, "content": "Alice lives in Lyon."},
                {"action": "delete", "id": bob},
                {"action": "patch", "id": carol, "content": "Carol dances."},  # not shown
                {"action": "patch", "id": "mem_invented", "content": "x"},
                {"action": "insert", "content": "Alice moved in 2020."},
                {"action": "forget"},
            ]
        },
    )
    drive_ingest(llm, m, "Oh, and Bob said Alice moved to Lyon.")
    user = llm.requests[-1].messages[1]["content"]
    shown = json.loads(user.split("\n")[1])
    assert {s["id"] for s in shown} == {alice, bob}  # query_limit=2 by the last message
    assert carol not in user
    assert m.store.get(alice).content == "Alice lives in Lyon."
    assert m.store.get(bob).content == "Bob plays chess."
    assert m.store.get(carol).content == "Carol sings."
    assert len(m.store) == 4
    assert dict(m.stats.parse_failures) == {"delete_disabled": 1, "unknown_id": 2, "bad_schema": 1}
    assert "delete" not in llm.requests[-1].messages[0]["content"]


def test_langmem_deletes_when_enabled():
    m = LangMem(KeyEncoder({"bob": [0, 1, 0, 0]}), LangMemConfig(enable_deletes=True))
    llm = CannedLLM({"extract": [{"actions": [{"action": "insert", "content": "Bob chess."}]}]})
    drive_ingest(llm, m, "Bob plays chess.")
    (bob,) = m.store.ids()
    llm.add("extract", {"actions": [{"action": "delete", "id": bob}]})
    drive_ingest(llm, m, "Bob quit.")
    assert len(m.store) == 0
    assert prompts.LANGMEM_DELETE_RULE in llm.requests[-1].messages[0]["content"]


@pytest.mark.parametrize("reply", ["nope", "{}", '{"actions": {"insert": "x"}}', "```json\n[]```"])
def test_langmem_malformed_output_changes_nothing(reply):
    m = LangMem(KeyEncoder({}))
    llm = CannedLLM({"extract": [{"actions": [{"action": "insert", "content": "A fact."}]}]})
    drive_ingest(llm, m, "A fact.")
    before = [(e.id, e.content) for e in m.store.entries()]
    llm.add("extract", reply)
    drive_ingest(llm, m, "More.")
    assert [(e.id, e.content) for e in m.store.entries()] == before
    assert sum(m.stats.parse_failures.values()) == 1


# ------------------------------------------------------------------------------------- harness


class EchoLLM:
    """Valid replies for every pipeline step, storing the user's text as one fact/note (the
    harness tests need well-formed output from every system, not a particular decision)."""

    def __init__(self):
        self.batches: list[int] = []

    def complete(self, requests):
        self.batches.append(len(requests))
        out = []
        for r in requests:
            text = r.messages[1]["content"].splitlines()[-1][:80]
            reply = {
                "extract": {"facts": [text], "actions": [{"action": "insert", "content": text}]},
                "update": {"memory": [{"text": text, "event": "ADD"}]},
                "entities": {"entities": []},
                "analyze": {"keywords": ["k"], "context": "c", "tags": ["t"]},
                "evolve": {"should_evolve": False, "actions": []},
                "query": {"keywords": ["k"]},
            }[r.purpose]
            out.append(LLMReply(json.dumps(reply), 1, 1))
        return out


@pytest.fixture(scope="module")
def chat():
    from agemem_jax.chat import ChatFormat
    from agemem_jax.models import load_tokenizer

    return ChatFormat(load_tokenizer("smollm2-135m-instruct"))


def _harness(system: str) -> tuple[baselines.Harness, EchoLLM]:
    from agemem_jax.encoder import HashEncoder

    llm = EchoLLM()
    return baselines.Harness(system, llm, baselines.BaselinesConfig(), HashEncoder()), llm


@pytest.mark.parametrize("system", baselines.SYSTEMS)
def test_hotpotqa_episode_ingests_stage1_and_shows_recall_before_the_question(chat, system):
    from agemem_jax import builders
    from agemem_jax.config_lib import base_config
    from agemem_jax.encoder import HashEncoder
    from agemem_jax.episodes import EpisodeConfig, EpisodeRunner, summarize
    from agemem_jax.memory_env import MemoryEnv

    config = base_config()
    config.data.limit = 2
    config.method = system  # the scripted policy then calls no tool: it only answers
    cfg = EpisodeConfig(t1=3, t2=2, t3=1)
    harness, llm = _harness(system)
    runner = EpisodeRunner(
        lambda: MemoryEnv(chat, encoder=HashEncoder(), enabled_tools=()),
        cfg,
        stop_id=chat.im_end,
        method=system,
        baseline=harness,
    )
    tasks = builders.tasks(config.data, cfg)
    trajs = runner.run(tasks, builders.policy(config, name="scripted"))
    ingests = {"mem0": 2, "mem0g": 3, "a_mem": 2, "langmem": 1}[system]  # rounds per ingest
    assert llm.batches[: ingests * 3] == [2] * (ingests * 3)  # both episodes in lock-step
    for t in trajs:
        assert t.answer == t.task.answer
        stats = t.memory_stats
        assert stats is not None and len(stats.ingest_seconds) == 3  # stage 1 only
        assert len(stats.search_seconds) == 1 and not stats.parse_failures
        assert t.memory_entries and t.to_json()["memory"] == list(t.memory_entries)
        assert len(t.env.ltm) == 0  # the agent's own store is unused
        msgs = t.env.stm.messages
        q = next(i for i, m in enumerate(msgs) if m.text == t.task.question)
        assert msgs[q - 1].kind == "retrieval" and msgs[q - 1].text.startswith("Recalled")
        assert t.to_json()["memory_system"]["llm_calls"] == stats.llm_calls
    metrics = summarize(trajs)
    assert metrics["llm_calls_per_episode"] == stats.llm_calls
    assert metrics["json_parse_failures"] == 0 and metrics["ingest_p50_s"] > 0


@pytest.mark.parametrize("system", baselines.SYSTEMS)
def test_env_episode_ingests_every_step_and_recalls_before_each_observation(chat, system):
    from agemem_jax.encoder import HashEncoder
    from agemem_jax.env_episodes import EnvEpisodeRunner
    from agemem_jax.envs import tasks
    from agemem_jax.memory_env import MemoryEnv
    from agemem_jax.policies import OraclePolicy

    specs = tasks("pddl", source="generated", num_per_domain=1, seed=0)[:2]
    harness, _ = _harness(system)
    runner = EnvEpisodeRunner(
        "pddl",
        lambda: MemoryEnv(chat, encoder=HashEncoder(), enabled_tools=()),
        stop_id=chat.im_end,
        method=system,
        baseline=harness,
    )
    for t in runner.run(specs, OraclePolicy()):
        assert t.metrics["progress_rate"] >= 0.9
        assert t.system is not None
        stats = t.system.stats
        # The start, then every step but the last (the episode has ended: nothing to keep).
        assert len(stats.ingest_seconds) == len(t.steps)
        assert len(stats.search_seconds) == len(t.steps)  # the store is empty only at the start
        msgs = t.memory.stm.messages  # (the budget may have evicted early ones)
        recalls = [i for i, m in enumerate(msgs) if m.kind == "retrieval"]
        assert recalls and all(msgs[i + 1].role == "user" for i in recalls)
        assert t.to_json()["memory"] == list(t.memory_entries) != []


def test_baseline_methods_need_their_harness(chat):
    from agemem_jax.env_episodes import EnvEpisodeRunner
    from agemem_jax.episodes import EpisodeRunner

    def make():
        raise AssertionError("no environment is built")

    for system in baselines.SYSTEMS:
        with pytest.raises(ValueError, match="runs a memory system: pass baseline="):
            EpisodeRunner(make, method=system)
        with pytest.raises(ValueError, match="runs a memory system: pass baseline="):
            EnvEpisodeRunner("pddl", make, method=system)


def _tiny_config(method: str, bench: str):
    from agemem_jax.config_lib import from_file

    if bench == "hotpotqa":
        c = from_file("configs/eval/hotpotqa.py", "synthetic_cpu")
        c.episode.update(t1=1, t2=1, t3=1, max_actions_per_turn=1)
    else:
        c = from_file(f"configs/eval/{bench}.py", "oracle")
        c.env.source = "generated"
        c.episode.update(max_env_steps=2, max_actions_per_turn=0)
    c.update(method=method, encoder="hash", policy="model")
    c.model.update(random="tiny", tokenizer="smollm2-135m-instruct")
    c.data.limit = 1
    c.sampling.max_new_tokens = 8
    for s in baselines.SYSTEMS:
        c.baselines[s].max_new_tokens = 8
    return c


@pytest.mark.parametrize("bench", ["hotpotqa", pytest.param("pddl", marks=pytest.mark.slow)])
# CI runs Mem0 end to end; the canned-LLM tests cover every system's pipeline.
@pytest.mark.parametrize(
    "method",
    [s if s == "mem0" else pytest.param(s, marks=pytest.mark.slow) for s in baselines.SYSTEMS],
)
def test_every_baseline_runs_a_tiny_model_episode_through_eval(method, bench, tmp_path):
    """The harness end to end: the random model's output is junk JSON, which every system
    counts and survives; the metrics carry the baseline's statistics."""
    from agemem_jax.evaluate import evaluate

    metrics = evaluate(_tiny_config(method, bench), tmp_path, progress=False)
    assert metrics["method"] == method and metrics["episodes"] == 1
    assert metrics["llm_calls_per_episode"] >= 1 and metrics["llm_tokens_per_episode"] > 0
    assert metrics["json_parse_failures"] >= 1 and metrics["ingest_p50_s"] > 0
    line = json.loads((tmp_path / "eval" / "trajectories.jsonl").read_text().splitlines()[0])
    assert line["memory_system"]["llm_calls"] == metrics["llm_calls_per_episode"]
