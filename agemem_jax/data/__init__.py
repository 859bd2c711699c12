"""Episode data: HotpotQA records (local file or hub) and the built-in procedural generator.

Both give records in the official HotpotQA layout; `make_task` turns a record into the material
of a three-stage episode (stage-1 conversation, stage-2 distractors, stage-3 query).

    records = load_records("synthetic", limit=20, seed=0)
    tasks = make_tasks(records, t1=4, t2=4, seed=0)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from agemem_jax.data.hotpotqa import (
    SHARED_SAMPLE,
    DataError,
    Task,
    from_hub_layout,
    load_hotpotqa,
    make_task,
    make_tasks,
)
from agemem_jax.data.synthetic import answer_leaks, generate_synthetic

__all__ = [
    "SHARED_SAMPLE",
    "DataConfig",
    "DataError",
    "Task",
    "answer_leaks",
    "from_hub_layout",
    "generate_synthetic",
    "load_hotpotqa",
    "load_records",
    "make_task",
    "make_tasks",
]


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where episodes come from: the `data` config block."""

    source: str = "synthetic"  # synthetic (procedural multi-hop, offline) | hotpotqa
    path: str = ""  # hotpotqa: a local JSON file; empty = the hub
    split: str = "validation"  # hotpotqa split
    limit: int = 20  # records; 0 = all of a file (synthetic: 100)
    seed: int = 0  # generator, distractor choice and task order
    n_distractors: int = 8  # synthetic: distractor paragraphs per record
    comparison_fraction: float = 0.2  # synthetic: share of comparison questions

    def __post_init__(self):
        if self.source not in ("synthetic", "hotpotqa"):
            raise ValueError(f"data.source={self.source!r}; choose 'synthetic' or 'hotpotqa'")
        if self.limit < 0:
            raise ValueError(f"data.limit must be >= 0, got {self.limit}")


def load_records(
    source: str = "synthetic",
    *,
    path: str | Path | None = None,
    limit: int | None = None,
    seed: int = 0,
    split: str = "validation",
    n_distractors: int = 8,
    comparison_fraction: float = 0.2,
) -> list[dict]:
    """Records from `source`: "hotpotqa" (file at `path`, else the hub) or "synthetic".

    For "synthetic", `limit` is the number of records (default 100, **ours**).
    """
    if source == "hotpotqa":
        return load_hotpotqa(path, split=split, limit=limit)
    if source == "synthetic":
        return generate_synthetic(
            100 if limit is None else limit,
            seed=seed,
            n_distractors=n_distractors,
            comparison_fraction=comparison_fraction,
        )
    raise DataError(f"unknown data source {source!r}; choose 'hotpotqa' or 'synthetic'")
