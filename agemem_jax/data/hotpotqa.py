"""HotpotQA records and their three-stage episode material (spec section 4).

A record is a dict in the official HotpotQA JSON layout:
`{"_id", "question", "answer", "type", "level", "supporting_facts": [[title, sent_id], ...],
"context": [[title, [sentence, ...]], ...]}`. `load_hotpotqa` reads it from a local file (JSON
list or JSONL), or from the hub dataset `hotpotqa/hotpot_qa` (config `distractor`) when no path
is given and the hub is reachable. The procedural generator (`synthetic.py`) emits the same layout,
so one code path serves both.

`make_task` splits a record into what each stage shows the agent:
- stage 1, I_q: every sentence of the gold paragraphs (those named by `supporting_facts`, so the
  supporting facts are all included verbatim) told as a casual conversation of exactly T1 user
  messages;
- stage 2: T2 distractor messages, one per turn, made from the non-gold paragraphs;
- stage 3: the question q.
The casual wording, the paragraph sampling and the filler are drawn from a generator seeded by
(seed, record id), so a task is the same every time it is built: the K rollouts of a GRPO group
share their distractors, and an episode can be replayed.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

REQUIRED = ("_id", "question", "answer", "supporting_facts", "context")

# Shared data lives beside the repository (../shared/data), never inside it.
SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
SHARED_SAMPLE = SHARED_DATA / "hotpotqa" / "hotpot_dev_distractor_sample60.json"

# Casual wording (ours). Intros open a paragraph, follow-ups continue one across messages; the
# stage-2 distractors use the same intros, so wording alone does not give them away.
INTROS = (
    "Hey, I was reading about {title} earlier.",
    "Random thing, but I looked up {title} today.",
    "So, {title}.",
    "Did you know this about {title}?",
    "A friend was telling me about {title}.",
    "I went down a rabbit hole on {title} last night.",
    "Okay, quick one about {title}.",
)
FOLLOW_UPS = (
    "More on {title}:",
    "Oh, and about {title} again:",
    "Still on {title}:",
    "One more thing about {title}:",
)
CLOSERS = ("", "", "", "Pretty interesting, right?", "Just thought I'd share.", "Anyway.")
FILLER = (
    "How's your day going?",
    "I might grab a coffee in a bit.",
    "Sorry, got distracted for a second.",
    "Anyway, where was I?",
    "It's been a long week, honestly.",
    "Hold on, my phone just buzzed.",
)


class DataError(ValueError):
    """A dataset cannot be found, read or understood."""


def _check(record: object, where: str) -> dict:
    """One clear error for a record that does not follow the official layout."""
    if not isinstance(record, Mapping):
        raise DataError(f"{where}: a record must be a JSON object, got {type(record).__name__}")
    missing = [k for k in REQUIRED if k not in record]
    if missing:
        raise DataError(f"{where}: record is missing {missing} (HotpotQA layout needs {REQUIRED})")
    try:
        paragraphs = {str(t): list(s) for t, s in record["context"]}
        facts = [(str(t), int(i)) for t, i in record["supporting_facts"]]
    except (TypeError, ValueError) as e:
        raise DataError(
            f"{where}: `context` must be [[title, [sentences]]] and `supporting_facts` "
            f"[[title, sent_id]] ({e})"
        ) from e
    if not facts:
        raise DataError(f"{where}: record {record['_id']!r} has no supporting facts")
    for title, i in facts:
        if title not in paragraphs or not 0 <= i < len(paragraphs[title]):
            raise DataError(
                f"{where}: supporting fact [{title!r}, {i}] of record {record['_id']!r} is not "
                "a sentence of its context"
            )
    return dict(record)


def from_hub_layout(row: Mapping) -> dict:
    """A `datasets` row (columns of lists) -> the official record layout."""
    sf, ctx = row["supporting_facts"], row["context"]
    return {
        "_id": row.get("id", row.get("_id")),
        "question": row["question"],
        "answer": row["answer"],
        "type": row.get("type", ""),
        "level": row.get("level", ""),
        "supporting_facts": [[t, int(i)] for t, i in zip(sf["title"], sf["sent_id"], strict=True)],
        "context": [[t, list(s)] for t, s in zip(ctx["title"], ctx["sentences"], strict=True)],
    }


def _read_file(path: Path) -> list:
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of HotpotQA records")
    return data


def load_hotpotqa(
    path: str | Path | None = None,
    *,
    split: str = "validation",
    limit: int | None = None,
    hub: bool = True,
) -> list[dict]:
    """HotpotQA records in the official layout, validated.

    `path`: a `.json` list or `.jsonl` file in the official layout. Without it, the hub's
    `hotpotqa/hotpot_qa` (`distractor`) `split` is loaded through `datasets` (only when `hub`).
    `limit` keeps the first records.
    """
    if limit is not None and limit < 0:
        raise DataError(f"limit must be >= 0, got {limit}")
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise DataError(f"HotpotQA file {p} does not exist")
        rows = _read_file(p)[:limit]
        return [_check(r, f"{p} record {i}") for i, r in enumerate(rows)]
    if not hub:
        raise DataError("no HotpotQA path given and hub loading is off; set data.path")
    try:
        import datasets

        ds = datasets.load_dataset("hotpotqa/hotpot_qa", "distractor", split=split)
        if limit is not None:
            ds = ds.select(range(min(limit, len(ds))))
        # Dataset.__iter__ is unannotated; with no format set, its rows are dicts.
        rows = [from_hub_layout(cast(Mapping, r)) for r in ds]
    except Exception as e:  # no package, no network, offline mode, unknown split, ...
        raise DataError(
            "no HotpotQA path given and the hub dataset hotpotqa/hotpot_qa (distractor) could "
            f"not be loaded ({type(e).__name__}: {e}); pass a local file in the official "
            f"layout, e.g. {SHARED_SAMPLE}"
        ) from e
    return [_check(r, f"hub record {i}") for i, r in enumerate(rows)]


# ---------------------------------------------------------------------------------------------
# Episode material.


@dataclass(frozen=True)
class Task:
    """One question made into three-stage episode material (see the module docstring).

    conversation: stage-1 user messages (len T1). distractors: stage-2 messages (len T2).
    question: the stage-3 query q. supporting_facts: the supporting sentences, stripped, in the
    record's order, with their paragraph titles in `fact_titles`.
    """

    id: str
    question: str
    answer: str
    type: str
    conversation: tuple[str, ...]
    distractors: tuple[str, ...]
    supporting_facts: tuple[str, ...]
    fact_titles: tuple[str, ...]
    seed: int

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def _sentences(paragraph: Sequence[str]) -> list[str]:
    return [s.strip() for s in paragraph if s.strip()]


def _spread(n: int, parts: int) -> list[int]:
    """Sizes of `parts` contiguous groups of n items, as equal as possible (larger first)."""
    return [n // parts + (i < n % parts) for i in range(parts)]


def _conversation(items: list[tuple[str, str]], t1: int, rng: random.Random) -> list[str]:
    """(title, sentence) pairs -> exactly t1 casual messages, facts in order.

    With more sentences than messages, consecutive sentences share a message. With fewer, each
    gets its own and the remaining messages are small talk at seeded positions **(ours)**.
    """
    groups, start = [], 0
    for size in _spread(len(items), min(t1, len(items))):
        groups.append(items[start : start + size])
        start += size
    texts, seen = [], set()
    for group in groups:
        parts, prev = [], None
        for title, sentence in group:
            if title != prev:
                template = rng.choice(FOLLOW_UPS if title in seen else INTROS)
                parts.append(template.format(title=title))
                seen.add(title)
                prev = title
            parts.append(sentence)
        closer = rng.choice(CLOSERS)
        texts.append(" ".join([*parts, closer]).strip())
    if len(texts) < t1:
        slots = sorted(rng.sample(range(t1), len(texts)))
        out = [rng.choice(FILLER) for _ in range(t1)]
        for slot, text in zip(slots, texts, strict=True):
            out[slot] = text
        texts = out
    return texts


def _distractors(paragraphs: list[tuple[str, list[str]]], t2: int, rng: random.Random) -> list[str]:
    """t2 messages, one non-gold paragraph each, in a seeded order.

    When T2 exceeds the paragraphs available, the order is reshuffled and repeated **(ours)**.
    """
    if t2 and not paragraphs:
        raise DataError("the record has no non-gold paragraph to use as a stage-2 distractor")
    out: list[str] = []
    while len(out) < t2:
        order = rng.sample(paragraphs, len(paragraphs))
        for title, sentences in order[: t2 - len(out)]:
            intro = rng.choice(INTROS).format(title=title)
            out.append(" ".join([intro, *sentences]))
    return out


def make_task(record: Mapping, *, t1: int, t2: int, seed: int = 0) -> Task:
    """Stage material for one record; identical for identical (record, t1, t2, seed)."""
    if t1 < 1 or t2 < 0:
        raise DataError(f"need t1 >= 1 and t2 >= 0, got t1={t1}, t2={t2}")
    rec = _check(record, "make_task")
    paragraphs = [(str(t), _sentences(s)) for t, s in rec["context"]]
    by_title = {str(t): list(s) for t, s in rec["context"]}
    facts = [(str(t), int(i)) for t, i in rec["supporting_facts"]]
    gold = list(dict.fromkeys(t for t, _ in facts))  # order of first mention
    # String seeds hash deterministically (unlike hash()), across processes and runs.
    rng = random.Random(f"agemem-task:{seed}:{rec['_id']}")
    items = [(t, s) for t in gold for s in _sentences(by_title[t])]
    others = [(t, s) for t, s in paragraphs if t not in gold and s]
    return Task(
        id=str(rec["_id"]),
        question=" ".join(str(rec["question"]).split()),
        answer=str(rec["answer"]),
        type=str(rec.get("type", "")),
        conversation=tuple(_conversation(items, t1, rng)),
        distractors=tuple(_distractors(others, t2, rng)),
        supporting_facts=tuple(by_title[t][i].strip() for t, i in facts),
        fact_titles=tuple(t for t, _ in facts),
        seed=seed,
    )


def make_tasks(records: Iterable[Mapping], *, t1: int, t2: int, seed: int = 0) -> list[Task]:
    return [make_task(r, t1=t1, t2=t2, seed=seed) for r in records]
