"""Long-term memory: entries with exact cosine search, O(1) edits, cheap forks, atomic saves.

Vectors are L2-normalized, so cosine is an inner product. They live in one dense float32 table
whose row order carries no meaning: delete moves the last row into the hole, so add, update and
delete are O(1) and a search always scans one contiguous block.

Search stays exact but reads half the bytes. A float16 mirror of the table is scanned with faiss
(memory bandwidth is the cost of a brute-force scan), and the candidates within the float16
error bound of the k-th score are re-scored in float32. For unit vectors fp16 rounding moves an
inner product by at most 2^-11, so that window provably holds the true top k.

`metadata_filter` goes through an inverted index (field, value) -> rows, so a selective filter
scores only its candidate rows.

`snapshot()` is O(1): the store and the snapshot share state until the store's next write, which
copies it (copy-on-write). All K rollouts of a GRPO group restore the same snapshot.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import faiss
import numpy as np
from absl import logging

from agemem_jax.encoder import Encoder

FORMAT = "agemem-ltm"
VERSION = 1
# Bound on |q·x - q·fp16(x)| for unit q, x (2^-11 relative rounding, plus subnormal and f32
# accumulation slack), doubled for safety.
FP16_SCORE_ERROR = 2.0**-10


class LTMError(ValueError):
    """A long-term memory operation cannot be done as asked."""


class UnknownMemoryId(LTMError):
    pass


class StoreFull(LTMError):
    pass


class CorruptStore(LTMError):
    """A saved store is missing files, torn, or fails its checksums."""


@dataclasses.dataclass(frozen=True)
class MemoryEntry:
    """One memory. Its embedding lives in the store's table (`LongTermMemory.embedding`)."""

    id: str
    content: str
    metadata: dict[str, Any]
    memory_type: str
    created: float
    updated: float

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Hit(NamedTuple):
    entry: MemoryEntry
    score: float


def _canon(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _index_keys(entry: MemoryEntry) -> set[tuple[str, str]]:
    """(field, value) pairs a filter can match: metadata values, list items, memory_type."""
    keys = {("memory_type", _canon(entry.memory_type))}
    for field, value in entry.metadata.items():
        keys.add((field, _canon(value)))
        if isinstance(value, list):
            keys.update((field, _canon(v)) for v in value)
    return keys


def _json_copy(obj: Any, what: str) -> Any:
    try:
        return json.loads(json.dumps(obj, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise LTMError(f"{what} must be JSON-serializable: {e}") from None


def _unit(vec: np.ndarray, dim: int) -> np.ndarray:
    v = np.asarray(vec, np.float32).reshape(-1)
    if v.shape != (dim,):
        raise LTMError(f"embedding has shape {v.shape}; expected ({dim},)")
    norm = float(np.linalg.norm(v))
    if not np.isfinite(norm):
        raise LTMError("embedding is not finite")
    return v / max(norm, 1e-12)


class VectorTable:
    """Unit rows in float32 plus their float16 mirror inside a faiss scalar-quantizer index."""

    def __init__(self, dim: int, capacity: int = 0):
        self.dim = dim
        self.n = 0
        self.f32 = np.zeros((capacity, dim), np.float32)
        self._index = faiss.IndexScalarQuantizer(
            dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT
        )
        self._index.codes.resize(max(capacity, 1) * self._index.code_size)
        # A numpy view onto the index's own code buffer, so rows are written in place; valid
        # until the buffer is resized, which only `__init__` does.
        codes = faiss.rev_swig_ptr(self._index.codes.data(), self._index.codes.size())
        self.f16 = codes.view(np.float16).reshape(-1, dim)[:capacity]

    @property
    def capacity(self) -> int:
        return self.f32.shape[0]

    def copy(self, capacity: int | None = None) -> VectorTable:
        out = VectorTable(self.dim, max(capacity or self.capacity, self.n))
        out.f32[: self.n] = self.f32[: self.n]
        out.f16[: self.n] = self.f16[: self.n]
        out._set_n(self.n)
        return out

    def _set_n(self, n: int) -> None:
        self.n = n
        self._index.ntotal = n

    def set(self, slot: int, vec: np.ndarray) -> None:
        self.f32[slot] = vec
        self.f16[slot] = vec

    def append(self, vec: np.ndarray) -> tuple[VectorTable, int]:
        """Returns the table to use from now on (a grown copy when full) and the new slot."""
        table = self if self.n < self.capacity else self.copy(max(64, 2 * self.capacity))
        table.set(table.n, vec)
        table._set_n(table.n + 1)
        return table, table.n - 1

    def pop_into(self, slot: int) -> int:
        """Delete `slot` by moving the last row into it; returns the moved row's old slot."""
        last = self.n - 1
        if slot != last:
            self.f32[slot] = self.f32[last]
            self.f16[slot] = self.f16[last]
        self._set_n(last)
        return last

    def search(
        self,
        q: np.ndarray,
        k: int,
        rows: np.ndarray | None = None,
        exact_below: int = 2048,
        threads: int | None = 1,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k rows by inner product with unit `q` (among `rows` if given): (rows, scores)."""
        m = self.n if rows is None else len(rows)
        k = min(k, m)
        if k <= 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        if m > exact_below:
            if threads is not None:
                faiss.omp_set_num_threads(threads)
            cand = self._coarse(q, k, m, rows)
            scores = self.f32[cand] @ q
        elif rows is None:
            cand, scores = np.arange(self.n), self.f32[: self.n] @ q
        else:
            cand, scores = rows, self.f32[rows] @ q
        best = np.lexsort((cand, -scores))[:k]
        return cand[best], scores[best]

    def _coarse(self, q: np.ndarray, k: int, m: int, rows: np.ndarray | None) -> np.ndarray:
        params = None
        if rows is not None:
            mask = np.zeros(self.n, bool)
            mask[rows] = True
            bitmap = np.packbits(mask, bitorder="little")
            selector = faiss.IDSelectorBitmap(self.n, faiss.swig_ptr(bitmap))
            # faiss's Python layer replaces SWIG's no-argument __init__ with one taking fields.
            params = faiss.SearchParameters(sel=selector)  # pyright: ignore[reportCallIssue]
        kk = min(m, k + 32)
        while True:
            dist, idx = self._index.search(q[None], kk, params=params)
            keep = idx[0] >= 0
            dist, idx = dist[0][keep], idx[0][keep]
            floor = dist[k - 1] - 2 * FP16_SCORE_ERROR
            if kk >= m or dist[-1] < floor:
                return idx[dist >= floor]
            kk = min(m, kk * 4)


@dataclasses.dataclass(frozen=True)
class LTMSnapshot:
    """Frozen store state. Never mutated: stores holding it copy before writing."""

    table: VectorTable
    records: dict[str, MemoryEntry]
    slot_of: dict[str, int]
    ids: list[str]
    postings: dict[tuple[str, str], set[int]]
    rng_state: Any
    encoder_name: str

    def __len__(self) -> int:
        return len(self.ids)


class LongTermMemory:
    """The agent's long-term store.

    `encoder` embeds content and queries. Ids are `mem_` + 8 hex digits from a seeded RNG, so an
    episode replays exactly; `clock` stamps created/updated times (inject one for replay).
    Raises `UnknownMemoryId`, `StoreFull` or `LTMError`; the environment turns these into
    observations.

    Below `exact_below` candidate rows, search scores every row in float32 directly.
    `search_threads` is faiss's OpenMP thread count for the scan, set before each scan (None
    leaves it alone): a one-query scan is memory-bound, and on a busy host extra threads mostly
    wait on each other (measured 40x slower at 10k entries with 2 threads on 2 loaded cores).
    """

    def __init__(
        self,
        encoder: Encoder,
        *,
        seed: int = 0,
        clock: Callable[[], float] = time.time,
        max_entries: int | None = None,
        default_memory_type: str = "general",
        exact_below: int = 2048,
        search_threads: int | None = 1,
    ):
        self.encoder = encoder
        self.dim = int(encoder.dim)
        self.clock = clock
        self.max_entries = max_entries
        self.default_memory_type = default_memory_type
        self.exact_below = exact_below
        self.search_threads = search_threads
        self._rng = random.Random(seed)
        self._table = VectorTable(self.dim)
        self._records: dict[str, MemoryEntry] = {}
        self._slot_of: dict[str, int] = {}
        self._ids: list[str] = []  # slot -> id
        self._postings: dict[tuple[str, str], set[int]] = {}
        self._shared = False

    # -- reading ------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, memory_id: object) -> bool:
        return memory_id in self._records

    def ids(self) -> list[str]:
        return list(self._ids)

    def get(self, memory_id: str) -> MemoryEntry:
        try:
            return self._records[memory_id]
        except (KeyError, TypeError):
            raise UnknownMemoryId(f"no memory with id {memory_id!r}") from None

    def entries(self) -> list[MemoryEntry]:
        return [self._records[i] for i in self._ids]

    def embedding(self, memory_id: str) -> np.ndarray:
        self.get(memory_id)
        return self._table.f32[self._slot_of[memory_id]].copy()

    def search(
        self,
        query: str | None,
        top_k: int = 3,
        metadata_filter: Mapping[str, Any] | None = None,
        *,
        embedding: np.ndarray | None = None,
    ) -> list[Hit]:
        """Top-k entries by cosine to enc(query) (or `embedding`), best first.

        `metadata_filter` maps fields to wanted values: a metadata key or `memory_type`; an entry
        matches when every field equals the value, contains it (list fields), or, for a list of
        wanted values, matches any of them.
        """
        if top_k < 1:
            raise LTMError(f"top_k must be at least 1, got {top_k}")
        rows = None
        if metadata_filter:
            rows = self._filter_rows(metadata_filter)
            if len(rows) == 0:
                return []
        q = self._embed(query, embedding)
        slots, scores = self._table.search(q, top_k, rows, self.exact_below, self.search_threads)
        return [
            Hit(self._records[self._ids[s]], float(x)) for s, x in zip(slots, scores, strict=True)
        ]

    def _filter_rows(self, flt: Mapping[str, Any]) -> np.ndarray:
        sets = []
        for field, want in flt.items():
            wants = want if isinstance(want, list) else [want]
            found = [self._postings.get((str(field), _canon(w)), set()) for w in wants]
            sets.append(found[0] if len(found) == 1 else set().union(set(), *found))
        sets.sort(key=len)
        rows = sets[0].intersection(*sets[1:]) if len(sets) > 1 else sets[0]
        return np.fromiter(rows, np.int64, len(rows))

    def _embed(self, text: str | None, embedding: np.ndarray | None) -> np.ndarray:
        if embedding is None:
            if not isinstance(text, str):
                raise LTMError("give a text or an embedding")
            return _unit(self.encoder.encode([text])[0], self.dim)
        return _unit(embedding, self.dim)

    # -- writing ------------------------------------------------------------------------------

    def _own(self) -> None:
        """Copy shared state before the first write after a snapshot or restore."""
        if self._shared:
            self._table = self._table.copy()
            self._records = dict(self._records)
            self._slot_of = dict(self._slot_of)
            self._ids = list(self._ids)
            self._postings = {k: set(v) for k, v in self._postings.items()}
            self._shared = False

    def _new_id(self) -> str:
        while True:
            memory_id = f"mem_{self._rng.getrandbits(32):08x}"
            if memory_id not in self._records:
                return memory_id

    def _post(self, entry: MemoryEntry, slot: int, add: bool) -> None:
        for key in _index_keys(entry):
            if add:
                self._postings.setdefault(key, set()).add(slot)
            else:
                rows = self._postings[key]
                rows.discard(slot)
                if not rows:
                    del self._postings[key]

    def add(
        self,
        content: str,
        metadata: Mapping[str, Any] | None = None,
        memory_type: str | None = None,
        *,
        embedding: np.ndarray | None = None,
    ) -> MemoryEntry:
        if self.max_entries is not None and len(self) >= self.max_entries:
            raise StoreFull(f"long-term memory is full ({self.max_entries} entries)")
        vec = self._embed(content, embedding)
        meta: dict[str, Any] = _json_copy(dict(metadata or {}), "metadata")
        self._own()
        now = float(self.clock())
        entry = MemoryEntry(
            self._new_id(),
            str(content),
            meta,
            str(memory_type or self.default_memory_type),
            now,
            now,
        )
        self._table, slot = self._table.append(vec)
        self._records[entry.id] = entry
        self._slot_of[entry.id] = slot
        self._ids.append(entry.id)
        self._post(entry, slot, add=True)
        return entry

    def update(
        self,
        memory_id: str,
        content: str,
        metadata: Mapping[str, Any] | None = None,
        *,
        embedding: np.ndarray | None = None,
    ) -> MemoryEntry:
        """New content (re-embedded) and modification time; given metadata keys are merged."""
        old = self.get(memory_id)
        vec = self._embed(content, embedding)
        merged = {**old.metadata, **_json_copy(dict(metadata or {}), "metadata")}
        self._own()
        entry = dataclasses.replace(
            old, content=str(content), metadata=merged, updated=float(self.clock())
        )
        slot = self._slot_of[memory_id]
        self._post(old, slot, add=False)
        self._table.set(slot, vec)
        self._records[memory_id] = entry
        self._post(entry, slot, add=True)
        return entry

    def delete(self, memory_id: str) -> MemoryEntry:
        entry = self.get(memory_id)
        self._own()
        slot = self._slot_of.pop(memory_id)
        self._post(entry, slot, add=False)
        moved = self._table.pop_into(slot)
        last_id = self._ids.pop()
        if moved != slot:
            mover = self._records[last_id]
            self._post(mover, moved, add=False)
            self._ids[slot] = last_id
            self._slot_of[last_id] = slot
            self._post(mover, slot, add=True)
        del self._records[memory_id]
        return entry

    # -- forking ------------------------------------------------------------------------------

    def snapshot(self) -> LTMSnapshot:
        """O(1): shares state with the store until the store's next write."""
        self._shared = True
        return LTMSnapshot(
            self._table,
            self._records,
            self._slot_of,
            self._ids,
            self._postings,
            self._rng.getstate(),
            self.encoder.name,
        )

    def restore(self, snap: LTMSnapshot) -> None:
        """O(1): the store becomes `snap`; the first write afterwards copies."""
        if snap.encoder_name != self.encoder.name:
            raise LTMError(
                f"snapshot was made with encoder {snap.encoder_name!r}, not {self.encoder.name!r}"
            )
        self._table, self._records, self._slot_of = snap.table, snap.records, snap.slot_of
        self._ids, self._postings = snap.ids, snap.postings
        self._rng.setstate(snap.rng_state)
        self._shared = True

    def fork(self) -> LongTermMemory:
        """A new store with the same contents and settings, sharing state copy-on-write."""
        other = LongTermMemory(
            self.encoder,
            clock=self.clock,
            max_entries=self.max_entries,
            default_memory_type=self.default_memory_type,
            exact_below=self.exact_below,
            search_threads=self.search_threads,
        )
        other.restore(self.snapshot())
        return other

    # -- persistence --------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> Path:
        """Write to `path` atomically: a complete, checksummed temp dir is renamed into place.

        A crash at any instant leaves `path` either at the previous save or at this one. The one
        non-atomic window, between moving the previous save aside and renaming the new one in,
        is healed by `load` and by the next `save`: the set-aside previous save is used.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        _recover(path)
        tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            files = {
                "vectors.npy": _npy_bytes(self._table.f32[: len(self)]),
                "entries.json": json.dumps([e.to_json() for e in self.entries()]).encode(),
            }
            for name, blob in files.items():
                _write_synced(tmp / name, blob)
            manifest = {
                "format": FORMAT,
                "version": VERSION,
                "encoder": self.encoder.name,
                "dim": self.dim,
                "count": len(self),
                "rng_state": _rng_to_json(self._rng.getstate()),
                "sha256": {n: hashlib.sha256(b).hexdigest() for n, b in files.items()},
            }
            # The manifest goes last: a directory without it is a torn write.
            _write_synced(tmp / "manifest.json", json.dumps(manifest, indent=1).encode())
            _fsync_dir(tmp)
            old = None
            if path.exists():
                old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
                os.rename(path, old)
            os.rename(tmp, path)
            _fsync_dir(path.parent)
            if old is not None:
                shutil.rmtree(old)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, encoder: Encoder, **kwargs) -> LongTermMemory:
        """Read a saved store; any missing, torn or corrupted part raises `CorruptStore`."""
        path = Path(path)
        if not (path / "manifest.json").is_file():
            previous = _set_aside(path)
            if previous is None:
                raise CorruptStore(f"{path}: no manifest.json, so not a complete store")
            logging.warning("%s: a save was interrupted; loading the previous save", path)
            path = previous
        manifest_file = path / "manifest.json"
        try:
            manifest = json.loads(manifest_file.read_text())
            if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
                raise CorruptStore(f"{path}: not an {FORMAT} v{VERSION} store")
            blobs = {}
            for name, digest in manifest["sha256"].items():
                blob = (path / name).read_bytes()
                if hashlib.sha256(blob).hexdigest() != digest:
                    raise CorruptStore(f"{path}/{name}: checksum mismatch, the file is corrupt")
                blobs[name] = blob
            vectors = _npy_load(blobs["vectors.npy"])
            raw = json.loads(blobs["entries.json"])
            entries = [MemoryEntry(**e) for e in raw]
            rng_state = _rng_from_json(manifest["rng_state"])
            count, dim = int(manifest["count"]), int(manifest["dim"])
        except CorruptStore:
            raise
        except (OSError, KeyError, TypeError, ValueError) as e:
            raise CorruptStore(f"{path}: unreadable store ({type(e).__name__}: {e})") from None
        if vectors.shape != (count, dim) or len(entries) != count:
            raise CorruptStore(
                f"{path}: manifest says {count}x{dim}, found vectors {vectors.shape} "
                f"and {len(entries)} entries"
            )
        if len({e.id for e in entries}) != count:
            raise CorruptStore(f"{path}: duplicate memory ids")
        if manifest["encoder"] != encoder.name or dim != encoder.dim:
            raise LTMError(
                f"{path} was built with encoder {manifest['encoder']!r} ({dim}-d); "
                f"got {encoder.name!r} ({encoder.dim}-d)"
            )
        store = cls(encoder, **kwargs)
        store._rng.setstate(rng_state)
        store._table = VectorTable(dim, max(64, count))
        for e, vec in zip(entries, vectors, strict=True):
            store._table, slot = store._table.append(vec)
            store._records[e.id] = e
            store._slot_of[e.id] = slot
            store._ids.append(e.id)
            store._post(e, slot, add=True)
        return store


def _set_aside(path: Path) -> Path | None:
    """The previous save an interrupted `save` moved aside, when `path` itself is missing.

    `save` clears stale leftovers before it moves `path` aside, so at most one exists.
    """
    if path.exists():
        return None
    olds = [p for p in path.parent.glob(f".{path.name}.old-*") if (p / "manifest.json").is_file()]
    return olds[0] if len(olds) == 1 else None


def _recover(path: Path) -> None:
    """Before a save: put back a previous save an interrupted one moved aside, then drop the
    leftovers of interrupted saves (torn temp dirs, half-deleted old copies)."""
    previous = _set_aside(path)
    if previous is not None:
        os.rename(previous, path)
        _fsync_dir(path.parent)
    for stale in (
        *path.parent.glob(f".{path.name}.tmp-*"),
        *path.parent.glob(f".{path.name}.old-*"),
    ):
        shutil.rmtree(stale, ignore_errors=True)


def _npy_bytes(a: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def _npy_load(blob: bytes) -> np.ndarray:
    import io

    return np.load(io.BytesIO(blob), allow_pickle=False)


def _write_synced(path: Path, blob: bytes) -> None:
    with open(path, "wb") as f:
        f.write(blob)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _rng_to_json(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _rng_from_json(state: Iterable) -> tuple:
    version, internal, gauss = state
    return (int(version), tuple(int(x) for x in internal), gauss)
