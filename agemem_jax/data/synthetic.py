"""A seeded procedural multi-hop QA generator in HotpotQA's record layout (all of it ours).

Each record is a small fictional world of people, firms and towns with attributes (birth year,
birthplace, employer, founder, headquarters, founding year, country, ...). A question needs two
facts from two gold paragraphs:

- bridge: the question names one entity, a fact about it names a second entity, and a fact about
  that one holds the answer ("In which country is the town where X was born?");
- comparison: two entities of one kind are compared and the answer is an attribute of the winner
  or their difference ("In what year was the older of firms A and B founded?"). Unlike many
  HotpotQA comparison questions, the answer is never one of the compared names, so it cannot be
  guessed from the question.

Distractor paragraphs are semantically close but irrelevant: entities of the same kinds whose
names are near misses of the gold ones (every word one letter off), linked to each other the way
the gold entities are, so each near-miss chain leads to a plausible wrong answer.

Why it cannot be solved without the stage-1 facts: every name word and every year is drawn fresh
per record and used once, so the answer's words occur in no question and in no distractor
(`generate_synthetic` checks this for every record), and answers are spread over a large space.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from agemem_jax.text import normalize_answer

ONSETS = "b d f g k l m n p r s t v z br dr gr kr st tr th sh pl".split()
VOWELS = "a e i o u".split()
CODAS = ["", "", "n", "r", "l", "s", "m", "k"]
TOWN_ENDS = ("mere", "ford", "holm", "wick", "stead", "port", "dale")
COUNTRY_ENDS = ("ia", "land", "ora", "esh", "avia")
FIRM_KINDS = ("Works", "Holdings", "Foundry", "Instruments", "Textiles", "Shipping", "Mills")
INDUSTRIES = ("shipbuilding", "textile", "printing", "glassmaking", "brewing", "clockmaking")
PRODUCTS = (
    "sturdy barges",
    "woven carpets",
    "pocket atlases",
    "stained glass",
    "dark ales",
    "tower clocks",
    "copper kettles",
)
JOBS = {
    "sculptor": "large bronze figures",
    "cartographer": "maps of remote coastlines",
    "botanist": "a catalogue of alpine mosses",
    "violinist": "recordings of forgotten folk tunes",
    "architect": "bridges with unusual arches",
    "chemist": "work on natural dyes",
}
HOBBIES = ("beekeeping", "chess problems", "long-distance swimming", "birdwatching", "pottery")
FEATURES = ("covered market", "old lighthouse", "spring fair", "stone bridge", "botanical garden")
YEARS = range(1650, 2000)

PERSON, FIRM, TOWN = "person", "firm", "town"


class _Names:
    """Fictional names for one record; every name word is used at most once in the record."""

    def __init__(self, rng: random.Random, reserved: set[str]):
        self.rng, self.used = rng, set(reserved)

    def _claim(self, word: str) -> bool:
        key = word.lower()
        if key in self.used or len(key) < 4:
            return False
        self.used.add(key)
        return True

    def word(self, syllables: int = 2, end: str = "") -> str:
        while True:
            w = "".join(
                self.rng.choice(ONSETS) + self.rng.choice(VOWELS) + self.rng.choice(CODAS)
                for _ in range(syllables)
            )
            w = (w + end).capitalize()
            if self._claim(w):
                return w

    def near(self, word: str) -> str:
        """`word` with one vowel of its stem changed: a near miss that is still a new word."""
        for _ in range(100):
            spots = [i for i, ch in enumerate(word[:-2] or word) if ch.lower() in VOWELS]
            i = self.rng.choice(spots) if spots else len(word) - 1
            repl = self.rng.choice([v for v in VOWELS if v != word[i].lower()])
            cand = word[:i] + (repl.upper() if word[i].isupper() else repl) + word[i + 1 :]
            if self._claim(cand):
                return cand
        return self.word()  # a word with no free near miss; never seen in practice


def _person(names: _Names, rng: random.Random) -> dict:
    return {
        "kind": PERSON,
        "name": f"{names.word(2)} {names.word(rng.choice((2, 3)))}",
        "job": rng.choice(list(JOBS)),
        "hobby": rng.choice(HOBBIES),
    }


def _firm(names: _Names, rng: random.Random) -> dict:
    return {
        "kind": FIRM,
        "name": f"{names.word(2)} {rng.choice(FIRM_KINDS)}",
        "industry": rng.choice(INDUSTRIES),
        "product": rng.choice(PRODUCTS),
    }


def _town(names: _Names, rng: random.Random) -> dict:
    return {
        "kind": TOWN,
        "name": names.word(2, rng.choice(TOWN_ENDS)),
        "feature": rng.choice(FEATURES),
    }


def _fill(e: dict, names: _Names, rng: random.Random, years: list[int]) -> dict:
    """Give entity `e` every attribute it lacks, with fresh names and unused years."""
    if e["kind"] == PERSON:
        e.setdefault("born", years.pop())
        e.setdefault("town", names.word(2, rng.choice(TOWN_ENDS)))
        e.setdefault("employer", f"{names.word(2)} {rng.choice(FIRM_KINDS)}")
    elif e["kind"] == FIRM:
        e.setdefault("founded", years.pop())
        e.setdefault("founder", f"{names.word(2)} {names.word(2)}")
        e.setdefault("hq", names.word(2, rng.choice(TOWN_ENDS)))
    else:
        e.setdefault("founded", years.pop())
        e.setdefault("country", names.word(2, rng.choice(COUNTRY_ENDS)))
        e.setdefault("river", names.word(2))
    return e


def _a(word: str) -> str:
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def paragraph(e: dict) -> list[str]:
    """The sentences of an entity's paragraph. Sentence ids are what supporting facts cite."""
    n = e["name"]
    if e["kind"] == PERSON:
        last = n.split()[-1]
        return [
            f"{n} is {_a(e['job'])} known for {JOBS[e['job']]}.",
            f"{last} was born in {e['born']} in the town of {e['town']}.",
            f"For most of their career, {last} worked for {e['employer']}.",
            f"In interviews, {last} often mentions a fondness for {e['hobby']}.",
        ]
    if e["kind"] == FIRM:
        return [
            f"{n} is {_a(e['industry'])} firm founded in {e['founded']}.",
            f"{n} was started by {e['founder']}.",
            f"The headquarters of {n} are in {e['hq']}.",
            f"{n} is best known for its {e['product']}.",
        ]
    return [
        f"{n} is a town in {e['country']}, on the banks of the {e['river']} river.",
        f"{n} was founded in {e['founded']}.",
        f"Visitors to {n} come mostly for its {e['feature']}.",
    ]


# Sentence ids inside `paragraph` for each attribute.
SENT = {
    (PERSON, "born"): 1,
    (PERSON, "town"): 1,
    (PERSON, "employer"): 2,
    (FIRM, "founded"): 0,
    (FIRM, "founder"): 1,
    (FIRM, "hq"): 2,
    (TOWN, "country"): 0,
    (TOWN, "founded"): 1,
}

# Bridge: (kind of the named entity, linking attribute, kind of the bridge entity, answer
# attribute, question template).
BRIDGES = [
    (PERSON, "town", TOWN, "country", "In which country is the town where {a} was born?"),
    (
        PERSON,
        "employer",
        FIRM,
        "founded",
        "In what year was the company that {a} worked for founded?",
    ),
    (FIRM, "founder", PERSON, "born", "In what year was the founder of {a} born?"),
    (FIRM, "hq", TOWN, "founded", "When was the town that hosts the headquarters of {a} founded?"),
    (
        PERSON,
        "employer",
        FIRM,
        "hq",
        "In which town are the headquarters of the company that {a} worked for?",
    ),
    (FIRM, "founder", PERSON, "town", "In which town was the founder of {a} born?"),
]

# Comparison: (kind, compared attribute, pick, answer attribute or None for the difference,
# question template). pick = min or max over the compared attribute.
COMPARISONS = [
    (
        FIRM,
        "founded",
        min,
        "founded",
        "In what year was the older of the firms {a} and {b} founded?",
    ),
    (PERSON, "born", max, "town", "In which town was the younger of {a} and {b} born?"),
    (TOWN, "founded", None, None, "How many years apart were the towns {a} and {b} founded?"),
    (FIRM, "founded", min, "founder", "Who started whichever of {a} and {b} was founded first?"),
]

MAKERS: dict[str, Callable] = {PERSON: _person, FIRM: _firm, TOWN: _town}


def _reserved_words() -> set[str]:
    """Every word of our templates, so no fictional name collides with one."""
    blank = {
        k: "x"
        for k in (
            "name",
            "born",
            "town",
            "employer",
            "founded",
            "founder",
            "hq",
            "country",
            "river",
            "hobby",
            "industry",
            "product",
            "feature",
        )
    }
    text = " ".join(
        [
            *JOBS,
            *JOBS.values(),
            *HOBBIES,
            *FEATURES,
            *INDUSTRIES,
            *PRODUCTS,
            *FIRM_KINDS,
            *(q for *_, q in BRIDGES),
            *(q for *_, q in COMPARISONS),
            *(s for kind in MAKERS for s in paragraph({**blank, "kind": kind, "job": "sculptor"})),
        ]
    )
    return set(normalize_answer(text).split())


_RESERVED = _reserved_words()
_LINKS = {PERSON: ("town", "employer"), FIRM: ("founder", "hq"), TOWN: ()}


def _near_twin(e: dict, names: _Names) -> dict:
    """A near-miss copy of `e`: a new name (every word one letter off, firm kinds kept) and the
    same flavour attributes; facts and links are left for the caller."""
    words = e["name"].split()
    if e["kind"] == FIRM:
        new = f"{names.near(words[0])} {' '.join(words[1:])}"
    else:
        new = " ".join(names.near(w) for w in words)
    twin = {k: e[k] for k in ("kind", "job", "hobby", "industry", "product", "feature") if k in e}
    twin["name"] = new
    return twin


def _record(rng: random.Random, rid: str, comparison: bool, n_distractors: int) -> dict:
    names = _Names(rng, _RESERVED)
    years = rng.sample(YEARS, len(YEARS))  # popped: every year in a record is distinct
    if comparison:
        kind, attr, pick, ans_attr, template = rng.choice(COMPARISONS)
        gold = [_fill(MAKERS[kind](names, rng), names, rng, years) for _ in range(2)]
        a, b = gold
        question = template.format(a=a["name"], b=b["name"])
        facts = [[a["name"], SENT[kind, attr]], [b["name"], SENT[kind, attr]]]
        if pick is None:
            answer = str(abs(a[attr] - b[attr]))
        else:
            winner = pick(gold, key=lambda e: e[attr])
            answer = str(winner[ans_attr])
            if SENT[kind, ans_attr] != SENT[kind, attr]:
                facts.append([winner["name"], SENT[kind, ans_attr]])
        qtype = "comparison"
    else:
        kind, link, bridge_kind, ans_attr, template = rng.choice(BRIDGES)
        bridge = _fill(MAKERS[bridge_kind](names, rng), names, rng, years)
        head = MAKERS[kind](names, rng)
        head[link] = bridge["name"]
        head = _fill(head, names, rng, years)
        gold = [head, bridge]
        question = template.format(a=head["name"])
        answer = str(bridge[ans_attr])
        facts = [[head["name"], SENT[kind, link]], [bridge["name"], SENT[bridge_kind, ans_attr]]]
        qtype = "bridge"

    # Two near-miss chains first: the twins link to each other as the gold entities do, so each
    # chain leads somewhere plausible but wrong. Then fresh entities of the gold kinds.
    distractors: list[dict] = []
    for _ in range(2):
        if len(distractors) >= n_distractors:
            break
        twins = [_near_twin(g, names) for g in gold]
        renamed = {g["name"]: t["name"] for g, t in zip(gold, twins, strict=True)}
        for g, twin in zip(gold, twins, strict=True):
            for attr in _LINKS[g["kind"]]:
                if g.get(attr) in renamed:
                    twin[attr] = renamed[g[attr]]
        distractors += [_fill(t, names, rng, years) for t in twins]
    i = 0
    while len(distractors) < n_distractors:
        distractors.append(_fill(MAKERS[gold[i % 2]["kind"]](names, rng), names, rng, years))
        i += 1
    distractors = distractors[:n_distractors]

    context = [[e["name"], paragraph(e)] for e in gold + distractors]
    rng.shuffle(context)
    return {
        "_id": rid,
        "question": question,
        "answer": answer,
        "type": qtype,
        "level": "synthetic",
        "supporting_facts": facts,
        "context": context,
    }


def answer_leaks(record: dict) -> bool:
    """True if a word of the answer occurs in the question or in a non-gold paragraph."""
    gold = {t for t, _ in record["supporting_facts"]}
    seen = normalize_answer(record["question"]).split()
    for title, sentences in record["context"]:
        if title not in gold:
            seen += normalize_answer(" ".join([title, *sentences])).split()
    return bool(set(normalize_answer(record["answer"]).split()) & set(seen))


def generate_synthetic(
    n: int,
    *,
    seed: int = 0,
    n_distractors: int = 8,
    comparison_fraction: float = 0.2,
) -> list[dict]:
    """`n` records in the official HotpotQA layout, each with 2 gold and `n_distractors` others.

    Record i depends only on (seed, i), so `generate_synthetic(10)` starts like
    `generate_synthetic(100)`. Defaults mirror HotpotQA's distractor setting (8 others) and its
    roughly 80/20 bridge/comparison mix **(ours)**.
    """
    if n < 0 or n_distractors < 0 or not 0.0 <= comparison_fraction <= 1.0:
        raise ValueError("need n >= 0, n_distractors >= 0 and 0 <= comparison_fraction <= 1")
    out = []
    for i in range(n):
        rid = f"synth-{seed}-{i:06d}"
        for attempt in range(100):
            rng = random.Random(f"agemem-synthetic:{seed}:{i}:{attempt}")
            comparison = rng.random() < comparison_fraction
            record = _record(rng, rid, comparison, n_distractors)
            if not answer_leaks(record):
                break
        else:  # pragma: no cover - would need 100 leaking draws in a row
            raise RuntimeError(f"could not generate a leak-free record {rid}")
        out.append(record)
    return out
