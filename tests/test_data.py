"""HotpotQA loading, the procedural generator, and the three-stage split of a record."""

from __future__ import annotations

import json
import re
import sys
import types
from collections import Counter
from pathlib import Path

import pytest

from agemem_jax.data import (
    DataError,
    answer_leaks,
    from_hub_layout,
    generate_synthetic,
    load_hotpotqa,
    load_records,
    make_task,
    make_tasks,
)
from agemem_jax.data.hotpotqa import FILLER, SHARED_SAMPLE
from agemem_jax.text import normalize_answer

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SAMPLE = SHARED / "hotpotqa" / "hotpot_dev_distractor_sample60.json"
needs_sample = pytest.mark.skipif(not SAMPLE.is_file(), reason=f"shared sample {SAMPLE} absent")

TINY = {
    "_id": "t1",
    "question": "Where was  the founder of Acme born?",
    "answer": "Springfield",
    "type": "bridge",
    "level": "easy",
    "supporting_facts": [["Acme", 1], ["Jane Roe", 0]],
    "context": [
        ["Other A", ["Other A is a river.", " It is long."]],
        ["Acme", ["Acme is a firm.", " Acme was founded by Jane Roe.", " It sells anvils."]],
        ["Other B", ["Other B is a mountain."]],
        ["Jane Roe", ["Jane Roe was born in Springfield.", " She liked birds."]],
        ["Other C", ["Other C is a lake."]],
    ],
}


def words(text: str) -> list[str]:
    return normalize_answer(text).split()


def contains(hay: str, needle: str) -> bool:
    return f" {normalize_answer(needle)} " in f" {normalize_answer(hay)} "


# ---------------------------------------------------------------------------------------------
# Loading.


def test_shared_sample_constant_points_at_shared_data():
    assert SHARED_SAMPLE == SAMPLE


@needs_sample
def test_load_shared_sample():
    records = load_hotpotqa(SAMPLE)
    assert len(records) == 60
    assert Counter(r["type"] for r in records) == {"bridge": 51, "comparison": 9}
    assert len(load_hotpotqa(SAMPLE, limit=7)) == 7
    assert load_records("hotpotqa", path=SAMPLE, limit=2) == records[:2]


def test_load_json_and_jsonl(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([TINY, {**TINY, "_id": "t2"}]))
    (tmp_path / "a.jsonl").write_text(json.dumps(TINY) + "\n\n" + json.dumps(TINY) + "\n")
    assert [r["_id"] for r in load_hotpotqa(tmp_path / "a.json")] == ["t1", "t2"]
    assert len(load_hotpotqa(tmp_path / "a.jsonl", limit=1)) == 1


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r.pop("answer"), "missing"),
        (lambda r: r.update(supporting_facts=[["Nope", 0]]), "not a sentence"),
        (lambda r: r.update(supporting_facts=[["Acme", 9]]), "not a sentence"),
        (lambda r: r.update(supporting_facts=[]), "no supporting facts"),
        (lambda r: r.update(context=[["Acme"]]), "context"),
    ],
)
def test_bad_records_give_one_clear_error(tmp_path, mutate, message):
    bad = json.loads(json.dumps(TINY))
    mutate(bad)
    (tmp_path / "bad.json").write_text(json.dumps([TINY, bad]))
    with pytest.raises(DataError, match=message) as err:
        load_hotpotqa(tmp_path / "bad.json")
    assert "record 1" in str(err.value)


def test_missing_file_and_bad_json(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_hotpotqa(tmp_path / "nope.json")
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        load_hotpotqa(tmp_path / "x.json")
    (tmp_path / "y.json").write_text(json.dumps(TINY))
    with pytest.raises(DataError, match="JSON list"):
        load_hotpotqa(tmp_path / "y.json")


def hub_row(rec: dict) -> dict:
    """What `datasets` yields for the distractor config: columns of lists."""
    return {
        "id": rec["_id"],
        "question": rec["question"],
        "answer": rec["answer"],
        "type": rec["type"],
        "level": rec["level"],
        "supporting_facts": {
            "title": [t for t, _ in rec["supporting_facts"]],
            "sent_id": [i for _, i in rec["supporting_facts"]],
        },
        "context": {
            "title": [t for t, _ in rec["context"]],
            "sentences": [s for _, s in rec["context"]],
        },
    }


def test_hub_layout_round_trips_to_the_official_one():
    assert from_hub_layout(hub_row(TINY)) == TINY


def fake_datasets(monkeypatch, load):
    module = types.ModuleType("datasets")
    module.load_dataset = load
    monkeypatch.setitem(sys.modules, "datasets", module)


def test_hub_loading_without_a_path(monkeypatch):
    """No network in tests: `datasets` is replaced, and we check what we ask of it."""
    calls = []

    class FakeSplit(list):
        def select(self, idx):
            return FakeSplit(self[i] for i in idx)

    def load(name, config, split):
        calls.append((name, config, split))
        return FakeSplit([hub_row(TINY), hub_row({**TINY, "_id": "t2"})])

    fake_datasets(monkeypatch, load)
    records = load_hotpotqa(split="validation", limit=1)
    assert calls == [("hotpotqa/hotpot_qa", "distractor", "validation")]
    assert records == [TINY]


def test_unreachable_hub_gives_one_clear_error(monkeypatch):
    def load(*a, **k):
        raise ConnectionError("offline")

    fake_datasets(monkeypatch, load)
    with pytest.raises(DataError, match=r"hub dataset .* could not be loaded .*offline"):
        load_hotpotqa()
    with pytest.raises(DataError, match="hub loading is off"):
        load_hotpotqa(hub=False)
    with pytest.raises(DataError, match="unknown data source"):
        load_records("squad")


# ---------------------------------------------------------------------------------------------
# The three-stage split.


def gold_and_other(record):
    gold = {t for t, _ in record["supporting_facts"]}
    sents = {t: [x.strip() for x in s if x.strip()] for t, s in record["context"]}
    return gold, sents


def check_task(record, task, t1, t2):
    gold, sents = gold_and_other(record)
    assert len(task.conversation) == t1 and len(task.distractors) == t2
    stage1 = " ".join(task.conversation)
    # Every supporting fact, verbatim, and every other sentence of the gold paragraphs.
    for title, i in record["supporting_facts"]:
        assert sents[title][i] in stage1
    for title in gold:
        for s in sents[title]:
            assert s in stage1
    # Nothing of the non-gold paragraphs in stage 1; only non-gold paragraphs in stage 2.
    # (HotpotQA repeats a few sentences across paragraphs; those prove nothing either way.)
    gold_text = " ".join(" ".join(sents[t]) for t in gold)
    others = [" ".join(ss) for t, ss in sents.items() if t not in gold]
    for title, ss in sents.items():
        if title not in gold:
            assert all(s not in stage1 for s in ss if len(s) > 20 and s not in gold_text)
    for d in task.distractors:
        assert any(o in d for o in others)
        for title in gold:
            assert all(
                s not in d for s in sents[title] if len(s) > 20 and s not in " ".join(others)
            )
    # Supporting facts in the record's order, sentence-exact.
    assert task.supporting_facts == tuple(sents[t][i] for t, i in record["supporting_facts"])
    assert task.fact_titles == tuple(t for t, _ in record["supporting_facts"])
    assert task.question == " ".join(record["question"].split())


@needs_sample
@pytest.mark.parametrize(("t1", "t2"), [(1, 1), (4, 6), (8, 8), (20, 12)])
def test_split_of_every_shared_record(t1, t2):
    records = load_hotpotqa(SAMPLE)
    for record, task in zip(records, make_tasks(records, t1=t1, t2=t2, seed=3), strict=True):
        check_task(record, task, t1, t2)


def test_split_of_a_tiny_record_is_exact():
    task = make_task(TINY, t1=2, t2=3, seed=0)
    check_task(TINY, task, 2, 3)
    # 5 gold sentences over 2 messages: 3 then 2, in order, facts before their paragraph's next.
    first, second = task.conversation
    assert "Acme is a firm." in first and "It sells anvils." in first
    assert "Jane Roe was born in Springfield." in second and "She liked birds." in second
    assert first.index("Acme") < first.index("Acme is a firm.")  # the title introduces it
    assert second.index("Jane Roe") < second.index("Jane Roe was born")
    # Three non-gold paragraphs for three turns: each used once.
    used = [next(t for t in ("Other A", "Other B", "Other C") if t in d) for d in task.distractors]
    assert sorted(used) == ["Other A", "Other B", "Other C"]


def test_short_records_get_filler_and_repeated_distractors():
    task = make_task(TINY, t1=9, t2=7, seed=1)
    check_task(TINY, task, 9, 7)
    fact_msgs = [m for m in task.conversation if m not in FILLER]
    assert len(fact_msgs) == 5  # one sentence per message, the rest small talk
    # 7 distractors from 3 paragraphs: each paragraph appears 2 or 3 times.
    counts = Counter(
        next(t for t in ("Other A", "Other B", "Other C") if t in d) for d in task.distractors
    )
    assert sorted(counts.values()) == [2, 2, 3]


def test_split_is_deterministic_per_seed_and_record():
    """K rollouts of a group build the same task; another seed changes wording and order."""
    a = make_task(TINY, t1=3, t2=3, seed=5)
    assert make_task(json.loads(json.dumps(TINY)), t1=3, t2=3, seed=5) == a
    others = {make_task(TINY, t1=3, t2=3, seed=s) for s in range(6, 12)}
    assert any(o.distractors != a.distractors or o.conversation != a.conversation for o in others)
    assert make_task({**TINY, "_id": "t9"}, t1=3, t2=3, seed=5).conversation != a.conversation


def test_split_rejects_bad_turn_counts():
    with pytest.raises(DataError, match="t1 >= 1"):
        make_task(TINY, t1=0, t2=1)
    only_gold = {**TINY, "context": [c for c in TINY["context"] if not c[0].startswith("Other")]}
    with pytest.raises(DataError, match="non-gold paragraph"):
        make_task(only_gold, t1=1, t2=1)
    assert make_task(only_gold, t1=1, t2=0).distractors == ()


# ---------------------------------------------------------------------------------------------
# The procedural generator.


@pytest.fixture(scope="module")
def synthetic():
    return generate_synthetic(300, seed=7)


def test_synthetic_records_follow_the_official_layout(synthetic, tmp_path):
    (tmp_path / "s.json").write_text(json.dumps(synthetic))
    assert load_hotpotqa(tmp_path / "s.json") == synthetic  # validates every record
    for r in synthetic:
        assert len(r["context"]) == 10 and len({t for t, _ in r["context"]}) == 10
        assert 2 <= len(r["supporting_facts"]) <= 3
        assert len({t for t, _ in r["supporting_facts"]}) == 2  # two hops, two paragraphs


def test_synthetic_mixes_bridge_and_comparison(synthetic):
    kinds = Counter(r["type"] for r in synthetic)
    assert set(kinds) == {"bridge", "comparison"}
    assert 0.1 < kinds["comparison"] / len(synthetic) < 0.3  # default fraction 0.2
    templates = Counter(re.sub(r"[A-Z][a-z]+", "X", r["question"]) for r in synthetic)
    assert len(templates) == 10  # all six bridge and four comparison templates occur


def test_synthetic_is_seeded_and_prefix_stable(synthetic):
    assert generate_synthetic(20, seed=7) == synthetic[:20]
    other = generate_synthetic(20, seed=8)
    assert all(a["question"] != b["question"] for a, b in zip(other, synthetic, strict=False))


def test_synthetic_answer_needs_the_gold_facts(synthetic):
    """The answer occurs in the supporting facts, never in the question or the distractors."""
    for r in synthetic:
        assert not answer_leaks(r)
        gold, sents = gold_and_other(r)
        answer = set(words(r["answer"]))
        outside = set(words(r["question"]))
        for title, ss in sents.items():
            if title not in gold:
                outside |= set(words(" ".join([title, *ss])))
        assert not answer & outside, r["_id"]
        facts = " ".join(sents[t][i] for t, i in r["supporting_facts"])
        if r["question"].startswith("How many years apart"):  # the difference of two years
            years = [int(y) for y in re.findall(r"\b\d{4}\b", facts)]
            assert int(r["answer"]) == abs(years[0] - years[1])
        else:
            assert contains(facts, r["answer"]), r["_id"]
        # And through the stage split: in the stage-1 conversation, not in stage 2 or the query.
        task = make_task(r, t1=3, t2=8, seed=0)
        assert not answer & set(words(" ".join(task.distractors) + " " + task.question))


def test_synthetic_answers_cannot_be_guessed(synthetic):
    counts = Counter(normalize_answer(r["answer"]) for r in synthetic)
    assert counts.most_common(1)[0][1] <= 0.03 * len(synthetic)


def test_synthetic_distractors_are_near_misses(synthetic):
    """Each gold paragraph has distractor paragraphs of its kind whose name is one letter off."""

    def one_letter_off(a: str, b: str) -> bool:
        wa, wb = a.split(), b.split()
        return (
            len(wa) == len(wb)
            and all(
                len(x) == len(y) and sum(c != d for c, d in zip(x, y, strict=True)) <= 1
                for x, y in zip(wa, wb, strict=True)
            )
            and a != b
        )

    for r in synthetic:
        gold, sents = gold_and_other(r)
        for g in gold:
            twins = [t for t in sents if t not in gold and one_letter_off(g, t)]
            assert len(twins) == 2, (r["_id"], g)
            for t in twins:  # same kind: the same sentence shapes with the name swapped
                assert len(sents[t]) == len(sents[g])


def test_synthetic_bad_arguments():
    with pytest.raises(ValueError):
        generate_synthetic(2, comparison_fraction=1.5)
    assert len(generate_synthetic(3, n_distractors=1)[0]["context"]) == 3
    assert all(r["type"] == "comparison" for r in generate_synthetic(10, comparison_fraction=1))
