"""Per-step metrics: one JSON line per step in `metrics.jsonl`, plus TensorBoard events; and
the resolved config of a run (`config.json`).

Only process 0 writes. Values that are not numbers (nested dicts are flattened with '/') are
kept in the JSON line and skipped for TensorBoard.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from agemem_jax.distributed import is_main


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "/"))
        else:
            out[key] = v
    return out


def read_jsonl(path: str | Path, skip_torn: bool = False) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file; with `skip_torn`, lines a killed writer left half-written
    are dropped instead of raising."""
    p = Path(path)
    if not p.exists():
        return []
    rows = []
    for line in p.read_text().splitlines():
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if not skip_torn:
                raise
    return rows


def write_config(out_dir: str | Path, config) -> None:
    """`out_dir/config.json`: the resolved config of a run, so reports can tell who ran what
    (method, benchmark, model, reward weights) without the command line. Process 0 only."""
    if not is_main():
        return
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    tmp = Path(out_dir) / "config.json.tmp"
    tmp.write_text(json.dumps(config.to_dict(), indent=2, default=str))
    os.replace(tmp, Path(out_dir) / "config.json")


class MetricsWriter:
    def __init__(self, workdir: str | Path, name: str = "metrics.jsonl", tensorboard: bool = True):
        self.enabled = is_main()
        self.path = Path(workdir) / name
        self._tb = None
        if self.enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(str(Path(workdir) / "tensorboard"))

    def truncate_after(self, step: int) -> None:
        """On (re)start, keep one line per step up to `step`, the restored one: later lines and a
        torn last line are from a killed run and will be redone. Replaced atomically, so a kill
        here loses nothing either."""
        if not self.enabled or not self.path.exists():
            return
        rows: dict[int, dict[str, Any]] = {}
        for r in read_jsonl(self.path, skip_torn=True):
            if isinstance(r.get("step"), int) and r["step"] <= step:
                rows[r["step"]] = r
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w") as f:
            f.write("".join(json.dumps(rows[k]) + "\n" for k in sorted(rows)))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"step": step, **flatten(metrics)}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for k, v in row.items():
                if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
                    self._tb.add_scalar(k, v, step)
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
