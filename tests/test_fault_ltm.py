"""Torn writes of the long-term store: a crash at every write point of `LongTermMemory.save`.

A driver process saves a store (state A), then for every write point of a second save (state B)
forks a child that dies with `os._exit` exactly there: before the call, halfway through a file
(half its bytes written, no fsync), or right after it. No cleanup code runs in the child, as in a
kill -9 or a power cut. After each crash the parent checks that:

- loading the store gives exactly A (the save never committed) or exactly B (it had), never a
  mix; every leftover directory that is not a complete save is refused with `CorruptStore`;
- the next save of B succeeds and loads back as B: no entry is lost between two good saves.

Run as a script (`python tests/test_fault_ltm.py DIR`) it is the driver and prints one JSON line.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CALLS = ("_write_synced", "_fsync_dir", "rename", "rmtree")


def _state(store) -> dict:
    import numpy as np

    return {
        "entries": [e.to_json() for e in store.entries()],
        "vectors": np.asarray([store.embedding(i) for i in store.ids()]).round(6).tolist(),
        "rng": store._rng.getstate(),
    }


def _clock():
    t = [1000.0]

    def tick():
        t[0] += 1
        return t[0]

    return tick


def _install(ltm, plan: tuple[int, str] | None, log: list[str]) -> None:
    """Wrap every write point of `save`; die at call number plan[0] in mode plan[1]."""
    real = {
        "_write_synced": ltm._write_synced,
        "_fsync_dir": ltm._fsync_dir,
        "rename": os.rename,
        "rmtree": shutil.rmtree,
    }

    def wrap(name):
        def call(*args, **kwargs):
            log.append(name)
            mode = plan[1] if plan is not None and plan[0] == len(log) - 1 else None
            if mode == "before":
                os._exit(137)
            if mode == "torn":
                path, blob = args
                with open(path, "wb") as f:
                    f.write(blob[: len(blob) // 2])
                os._exit(137)
            out = real[name](*args, **kwargs)
            if mode == "after":
                os._exit(137)
            return out

        return call

    ltm._write_synced = wrap("_write_synced")
    ltm._fsync_dir = wrap("_fsync_dir")
    os.rename = wrap("rename")
    ltm.shutil.rmtree = wrap("rmtree")


def driver(workdir: str) -> dict:
    from agemem_jax import ltm
    from agemem_jax.encoder import HashEncoder

    enc = HashEncoder(64)
    work = Path(workdir)
    store = ltm.LongTermMemory(enc, seed=3, clock=_clock())
    for i in range(20):
        store.add(f"fact {i} about paris and the river {i * 7}", {"source": "stage1", "i": i})
    pristine = work / "pristine"
    store.save(pristine / "store")
    state_a = _state(store)
    # B: adds, an update and a delete since A.
    for i in range(5):
        store.add(f"later fact {i} on the city", {"i": 100 + i})
    store.update(store.ids()[0], "rewritten first fact")
    store.delete(store.ids()[1])
    state_b = _state(store)

    def run(plan):
        log: list[str] = []
        pid = os.fork()
        if pid == 0:  # the child: one save, killed at the planned point
            _install(ltm, plan, log)
            store.save(case / "store")
            os._exit(0 if plan is None else 3)  # 3: the planned point was never reached
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status)

    # Count the write points with one uninterrupted save in a child.
    case = work / "count"
    shutil.copytree(pristine, case)
    log_child = work / "points.json"
    pid = os.fork()
    if pid == 0:
        log: list[str] = []
        _install(ltm, None, log)
        store.save(case / "store")
        log_child.write_text(json.dumps(log))
        os._exit(0)
    os.waitpid(pid, 0)
    points = json.loads(log_child.read_text())

    plans = [(i, m) for i, name in enumerate(points) for m in ("before", "after")]
    plans += [(i, "torn") for i, name in enumerate(points) if name == "_write_synced"]
    results = {"points": points, "crashes": 0, "detected": 0, "torn_dirs": 0, "outcomes": {}}
    for n, plan in enumerate(plans):
        case = work / f"case{n}"
        shutil.copytree(pristine, case)
        code = run(plan)
        assert code == 137, (plan, code)
        results["crashes"] += 1
        loaded = _state(ltm.LongTermMemory.load(case / "store", enc))
        outcome = "A" if loaded == state_a else "B" if loaded == state_b else "mixed"
        results["outcomes"][f"{plan[0]}:{points[plan[0]]}:{plan[1]}"] = outcome
        # Every leftover that is not a complete save must be refused, never half-read.
        ok = outcome != "mixed"
        for left in case.glob(".store.*"):
            try:
                got = _state(ltm.LongTermMemory.load(left, enc))
                ok &= got in (state_a, state_b)
            except ltm.CorruptStore:
                results["torn_dirs"] += 1
        # The next save heals the directory and keeps every entry.
        store.save(case / "store")
        ok &= _state(ltm.LongTermMemory.load(case / "store", enc)) == state_b
        ok &= not list(case.glob(".store.*"))
        results["detected"] += bool(ok)
        shutil.rmtree(case)
    return results


def test_every_torn_save_is_detected_and_the_previous_save_survives(tmp_path):
    proc = subprocess.run(
        [sys.executable, __file__, str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps({k: v for k, v in r.items() if k != "outcomes"}))
    assert set(r["points"]) == set(CALLS), r["points"]
    assert r["crashes"] == len(r["outcomes"]) >= 3 * r["points"].count("_write_synced")
    assert r["detected"] == r["crashes"], r["outcomes"]
    # Before the commit rename the store is still A; after it, B; both sides are exercised.
    assert set(r["outcomes"].values()) == {"A", "B"}, r["outcomes"]
    assert r["torn_dirs"] > 0


if __name__ == "__main__":
    print(json.dumps(driver(sys.argv[1])))
