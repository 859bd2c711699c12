"""Long-term store: ids, edits, exact and filtered search, copy-on-write forks, atomic saves."""

import itertools
import json
import re
import shutil

import numpy as np
import pytest

from agemem_jax import ltm as L
from agemem_jax.encoder import HashEncoder

DIM = 384
ENC = HashEncoder(DIM)


def _clock():
    ticks = itertools.count(1000)
    return lambda: float(next(ticks))


def _unit_rows(n, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _store(**kw):
    return L.LongTermMemory(ENC, clock=_clock(), **kw)


def test_add_get_update_delete():
    m = _store()
    a = m.add("Alice lives in Paris", {"tags": ["bio"]}, "fact")
    assert re.fullmatch(r"mem_[0-9a-f]{8}", a.id)
    assert (a.content, a.metadata, a.memory_type, a.created, a.updated) == (
        "Alice lives in Paris",
        {"tags": ["bio"]},
        "fact",
        1000.0,
        1000.0,
    )
    assert m.get(a.id) is a and a.id in m and len(m) == 1
    np.testing.assert_allclose(
        m.embedding(a.id), ENC.encode(["Alice lives in Paris"])[0], atol=1e-6
    )
    b = m.add("Bob likes tea")
    assert b.memory_type == "general" and b.id != a.id

    u = m.update(a.id, "Alice moved to Rome", {"city": "Rome"})
    assert (u.content, u.created, u.updated) == ("Alice moved to Rome", 1000.0, 1002.0)
    assert u.metadata == {"tags": ["bio"], "city": "Rome"}  # merged
    np.testing.assert_allclose(m.embedding(a.id), ENC.encode(["Alice moved to Rome"])[0], atol=1e-6)
    assert m.search("Alice moved to Rome", 1)[0].entry.id == a.id

    assert m.delete(a.id).id == a.id
    assert a.id not in m and m.ids() == [b.id]
    assert [h.entry.id for h in m.search("Alice moved to Rome", 3)] == [b.id]


def test_unknown_ids_raise_and_change_nothing():
    m = _store()
    a = m.add("x")
    for op in (lambda: m.update("mem_00000000", "y"), lambda: m.delete("mem_00000000")):
        with pytest.raises(L.UnknownMemoryId, match="mem_00000000"):
            op()
    with pytest.raises(L.UnknownMemoryId):
        m.get(["not", "hashable"])  # type: ignore[arg-type]
    assert m.ids() == [a.id] and m.get(a.id).content == "x"


def test_bad_inputs():
    m = _store(max_entries=1)
    with pytest.raises(L.LTMError, match="JSON"):
        m.add("x", {"when": object()})
    with pytest.raises(L.LTMError, match="shape"):
        m.add("x", embedding=np.ones(3))
    with pytest.raises(L.LTMError, match="finite"):
        m.add("x", embedding=np.full(DIM, np.nan))
    m.add("x")
    with pytest.raises(L.StoreFull):
        m.add("y")
    with pytest.raises(L.LTMError, match="top_k"):
        m.search("x", 0)
    assert len(m) == 1


def _brute(x, live, q, k, keep=lambda i: True):
    cand = [i for i in live if keep(i)]
    s = x[cand] @ q
    return [cand[j] for j in np.argsort(-s, kind="stable")[:k]]


@pytest.mark.parametrize("exact_below", [0, 10**9], ids=["fp16-coarse", "exact"])
def test_search_is_exact_after_edits(exact_below):
    n = 3000
    x = _unit_rows(n + 200)
    m = _store(exact_below=exact_below)
    meta = lambda i: {"tags": [f"t{i % 7}", "all"], "group": i % 3, "score": i % 2 * 1.0}
    ids = [m.add(f"c{i}", meta(i), ["fact", "event"][i % 2], embedding=x[i]).id for i in range(n)]
    for i in range(0, n, 3):
        m.delete(ids[i])
    edited = [i for i in range(1, n, 10) if i % 3]
    for j, i in enumerate(edited):  # re-embed some entries with fresh vectors
        m.update(ids[i], f"c{i}", embedding=x[n + j])
        x[i] = x[n + j]
    live = [i for i in range(n) if i % 3]
    rng = np.random.default_rng(1)
    filters = [
        (None, lambda i: True),
        ({"tags": "t3"}, lambda i: i % 7 == 3),
        ({"tags": "t3", "group": [1, 2]}, lambda i: i % 7 == 3 and i % 3 in (1, 2)),
        ({"memory_type": "event"}, lambda i: i % 2 == 1),
        ({"score": 1}, lambda i: i % 2 == 1),  # 1 matches the stored 1.0
        ({"tags": ["t1", "t2"]}, lambda i: i % 7 in (1, 2)),
        ({"tags": "all", "memory_type": "fact"}, lambda i: i % 2 == 0),
    ]
    for _ in range(10):
        q = rng.standard_normal(DIM).astype(np.float32)
        q /= np.linalg.norm(q)
        for flt, keep in filters:
            hits = m.search(None, 5, flt, embedding=q)
            assert [h.entry.content for h in hits] == [f"c{i}" for i in _brute(x, live, q, 5, keep)]
            np.testing.assert_allclose(
                [h.score for h in hits],
                sorted(x[[int(h.entry.content[1:]) for h in hits]] @ q, reverse=True),
                atol=1e-6,
            )
    assert m.search(None, 3, {"tags": "t99"}, embedding=x[1]) == []
    assert m.search(None, 3, {"tags": []}, embedding=x[1]) == []
    assert m.search(None, 3, {"nope": 1, "tags": "t1"}, embedding=x[1]) == []


def test_default_top_k_is_three_and_near_ties_resolve_exactly():
    m = _store(exact_below=0)
    base = _unit_rows(1)[0]
    # Target cosines 1e-5 apart: float16 cannot tell them apart, the float32 re-scoring must.
    cosines = np.random.default_rng(4).permutation(0.9 - 1e-5 * np.arange(40))
    perp = _unit_rows(40, seed=3)
    perp -= np.outer(perp @ base, base)
    perp /= np.linalg.norm(perp, axis=1, keepdims=True)
    rows = cosines[:, None] * base + np.sqrt(1 - cosines**2)[:, None] * perp
    fp16_order = np.argsort(-(rows.astype(np.float16).astype(np.float32) @ base))
    assert list(fp16_order[:3]) != list(np.argsort(-cosines)[:3])  # the case is hard
    for i, v in enumerate(rows):
        m.add(f"n{i}", embedding=v)
    hits = m.search(None, embedding=base)
    assert [h.entry.content for h in hits] == [f"n{i}" for i in np.argsort(-cosines)[:3]]
    np.testing.assert_allclose([h.score for h in hits], np.sort(cosines)[::-1][:3], atol=1e-6)


def test_snapshot_is_copy_on_write_and_forks_are_independent():
    m = _store()
    a = m.add("alpha fact")
    snap = m.snapshot()
    assert snap.table is m._table  # O(1): nothing was copied
    b = m.add("beta fact")
    assert snap.table is not m._table and len(snap) == 1 and len(m) == 2

    f1, f2 = m.fork(), m.fork()
    f1.delete(a.id)
    c = f2.add("gamma fact")
    assert m.ids() == [a.id, b.id]
    assert f1.ids() == [b.id] and f2.ids() == [a.id, b.id, c.id]

    m.restore(snap)
    assert m.ids() == [a.id] and m.search("beta fact", 3)[0].entry.id == a.id
    m.update(a.id, "alpha changed")
    m.restore(snap)
    assert m.get(a.id).content == "alpha fact"  # the snapshot itself never changes


def test_replay_from_a_snapshot_gives_the_same_ids():
    m = _store(seed=7)
    m.add("one")
    snap = m.snapshot()
    first = [m.add(t).id for t in ("two", "three")]
    m.restore(snap)
    assert [m.add(t).id for t in ("two", "three")] == first
    other = _store(seed=8)
    assert other.add("one").id != m.ids()[0]


def test_restore_refuses_a_snapshot_from_another_encoder():
    snap = L.LongTermMemory(HashEncoder(DIM)).snapshot()
    other = L.LongTermMemory(HashEncoder(64))
    with pytest.raises(L.LTMError, match="encoder"):
        other.restore(snap)


def _filled(n=50):
    m = _store(seed=3)
    for i in range(n):
        m.add(f"entry number {i}", {"tags": [f"t{i % 4}"]}, "fact")
    for i in range(0, n, 7):
        m.delete(m.ids()[i % len(m)])
    return m


def test_save_load_round_trip(tmp_path):
    m = _filled()
    path = m.save(tmp_path / "store")
    r = L.LongTermMemory.load(path, ENC, clock=_clock())
    assert r.ids() == m.ids() and r.entries() == m.entries()
    for q in ("entry number 3", "entry number 40"):
        for flt in (None, {"tags": "t1"}):
            assert r.search(q, 4, flt) == m.search(q, 4, flt)
    assert r.add("next").id == m.add("next").id  # the id stream continues
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]


def test_save_replaces_atomically_and_a_failed_save_keeps_the_old_one(tmp_path, monkeypatch):
    m = _filled()
    path = tmp_path / "store"
    m.save(path)
    m.add("newer")
    m.save(path)
    assert len(L.LongTermMemory.load(path, ENC)) == len(m)

    calls = []

    def failing(p, blob):
        calls.append(p.name)
        if p.name == "entries.json":
            raise OSError("disk full")
        p.write_bytes(blob)

    monkeypatch.setattr(L, "_write_synced", failing)
    m.add("lost")
    with pytest.raises(OSError, match="disk full"):
        m.save(path)
    assert calls == ["vectors.npy", "entries.json"]
    assert len(L.LongTermMemory.load(path, ENC)) == len(m) - 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]  # no temp dir left


@pytest.mark.parametrize(
    "damage, match",
    [
        (lambda p: (p / "manifest.json").unlink(), "no manifest"),
        (lambda p: (p / "entries.json").unlink(), "unreadable"),
        (lambda p: (p / "manifest.json").write_text("{"), "unreadable"),
        (
            lambda p: (p / "entries.json").write_bytes((p / "entries.json").read_bytes()[:-9]),
            "checksum",
        ),
        (lambda p: _flip_byte(p / "vectors.npy"), "checksum"),
    ],
    ids=["torn", "missing-file", "bad-manifest", "truncated", "bit-flip"],
)
def test_corruption_is_detected(tmp_path, damage, match):
    path = _filled().save(tmp_path / "store")
    damage(path)
    with pytest.raises(L.CorruptStore, match=match):
        L.LongTermMemory.load(path, ENC)


def test_inconsistent_but_checksummed_store_is_rejected(tmp_path):
    path = _filled().save(tmp_path / "store")
    entries = json.loads((path / "entries.json").read_text())
    _rewrite(path, "entries.json", json.dumps(entries[:-1]).encode())
    with pytest.raises(L.CorruptStore, match="entries"):
        L.LongTermMemory.load(path, ENC)


def test_interrupted_replace_loads_the_previous_save(tmp_path):
    store = _filled()
    path = store.save(tmp_path / "store")
    shutil.move(path, tmp_path / ".store.old-1234abcd")  # crash between the two renames
    (tmp_path / ".store.tmp-5678abcd").mkdir()  # the torn new save, never renamed in
    back = L.LongTermMemory.load(path, ENC)
    assert [e.to_json() for e in back.entries()] == [e.to_json() for e in store.entries()]
    # The next save puts the previous one back first, then replaces it and clears leftovers.
    store.add("one more")
    store.save(path)
    assert len(L.LongTermMemory.load(path, ENC)) == len(store)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]
    shutil.rmtree(path)
    with pytest.raises(L.CorruptStore, match="no manifest"):
        L.LongTermMemory.load(path, ENC)


def test_load_with_another_encoder_is_refused(tmp_path):
    path = _filled().save(tmp_path / "store")
    with pytest.raises(L.LTMError, match="encoder"):
        L.LongTermMemory.load(path, HashEncoder(64))


def _flip_byte(f):
    blob = bytearray(f.read_bytes())
    blob[len(blob) // 2] ^= 0x40
    f.write_bytes(bytes(blob))


def _rewrite(path, name, blob):
    import hashlib

    (path / name).write_bytes(blob)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["sha256"][name] = hashlib.sha256(blob).hexdigest()
    (path / "manifest.json").write_text(json.dumps(manifest))
