"""Text helpers shared by the judges, the reward and the data code.

- HotpotQA answer metrics: the official answer normalization, exact match and token F1.
- Lexical overlap **(ours)**: what the rule judge uses in place of an LLM for memory quality,
  storage and relevance.
- Key items of a query **(ours)**: how the spec's "named entities, dates/times, places,
  numbers" are found without an NER model, and how they are matched in a context
  (`key_text`, `contains_items`).
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence

# ---------------------------------------------------------------------------------------------
# HotpotQA answer metrics (the official evaluation's normalization, EM and F1).

_PUNCT = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """Lower-case, drop ASCII punctuation, drop the articles a/an/the, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1_precision_recall(prediction: str, gold: str) -> tuple[float, float, float]:
    """HotpotQA token F1. A yes/no/noanswer on either side must match exactly or scores 0."""
    pred, ref = normalize_answer(prediction), normalize_answer(gold)
    special = ("yes", "no", "noanswer")
    if (pred in special or ref in special) and pred != ref:
        return 0.0, 0.0, 0.0
    pred_tokens, ref_tokens = pred.split(), ref.split()
    same = sum((Counter(pred_tokens) & Counter(ref_tokens)).values())
    if same == 0:
        return 0.0, 0.0, 0.0
    precision, recall = same / len(pred_tokens), same / len(ref_tokens)
    return 2 * precision * recall / (precision + recall), precision, recall


def f1_score(prediction: str, gold: str) -> float:
    return f1_precision_recall(prediction, gold)[0]


# ---------------------------------------------------------------------------------------------
# Lexical overlap (ours): what the rule judge uses in place of an LLM for MQ/storage/relevance.

# Function words carry no fact; without dropping them every sentence overlaps every other.
STOPWORDS = frozenset(
    """i me my we our you your he him his she her it its they them their this that these those
    is are was were be been being am do does did has have had having will would can could shall
    should may might must of in on at to for from by with about as into onto over under after
    before between through during and or but nor so if then than also too very not no yes
    who whom whose which what when where why how there here such some any all each both more
    most other just only own same again once""".split()
)


def content_tokens(text: str) -> frozenset[str]:
    """Distinct normalized tokens of `text`, function words removed."""
    return frozenset(t for t in normalize_answer(text).split() if t not in STOPWORDS)


def _frac(part: frozenset[str], whole: frozenset[str]) -> float:
    return len(part & whole) / len(part) if part else 0.0


def _harmonic(a: float, b: float) -> float:
    return 2 * a * b / (a + b) if a + b > 0 else 0.0


def entry_fact_overlap(entry: str, facts: Sequence[str]) -> float:
    """How well one memory entry holds supporting facts, in [0, 1] **(ours)**.

    Harmonic mean of precision (share of the entry's content tokens that occur in some fact) and
    recall (the best share of one fact's content tokens found in the entry). A fact stored
    verbatim scores 1; padding it with unrelated text lowers precision; a distractor scores ~0.
    """
    e = content_tokens(entry)
    fact_sets = [content_tokens(f) for f in facts]
    union = frozenset().union(*fact_sets) if fact_sets else frozenset()
    if not e or not union:
        return 0.0
    recall = max(_frac(f, e) for f in fact_sets)
    return _harmonic(_frac(e, union), recall)


def lexical_memory_quality(entries: Sequence[str], facts: Sequence[str]) -> float:
    """MQ by overlap **(ours)**: harmonic mean of coverage and precision.

    coverage = mean over facts of the best share of the fact's content tokens held by one entry;
    precision = mean over entries of the share of their content tokens found in the facts, so
    irrelevant entries pull the score down as the spec's MQ rubric asks.
    """
    ents = [content_tokens(e) for e in entries]
    fact_sets = [s for s in (content_tokens(f) for f in facts) if s]
    ents = [e for e in ents if e]
    if not ents or not fact_sets:
        return 0.0
    union = frozenset().union(*fact_sets)
    coverage = sum(max(_frac(f, e) for e in ents) for f in fact_sets) / len(fact_sets)
    precision = sum(_frac(e, union) for e in ents) / len(ents)
    return _harmonic(coverage, precision)


# ---------------------------------------------------------------------------------------------
# Key items of a query (ours).

_MONTH = (
    r"(?:January|February|March|April|May|June|July|August|September|October|November|December"
    r"|Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec)\.?"
)
_DATE = re.compile(
    rf"\b(?:\d{{1,2}}\s+{_MONTH}(?:,?\s+\d{{3,4}})?"  # 2 March 1972
    rf"|{_MONTH}\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{3,4}}"  # March 2, 1972
    rf"|{_MONTH}\s+\d{{3,4}})\b"  # March 1972
)
# A word may hold hyphens, slashes and dashes ("Jean-Paul", "A/S", "CD/DVD"), so a name stays
# one span; `key_text` later splits them the same way on both sides of a match.
_WORD = re.compile(r"[\w'’.&/\-‐-―]*\w[\w'’&/\-‐-―]*\.?")
# Lower-case words allowed inside a name between two capitalized ones ("Bank of America").
# "and" is not one: "Jonny Craig and Pete Doherty" are two names.
_CONNECT = frozenset("of the de du da del della di von van der den la le for on upon".split())
# Capitalized only because they start the question: dropped from the front of a span.
_LEADING = frozenset(
    """which what who whom whose when where why how is are was were do does did has have had
    can could would should will shall may might the a an in on at of for and or but by from to
    with as if this that these those it its he she they his her their there name identify
    during after before since while although though between among about according despite
    under over within without into onto upon not""".split()
)
_NUM = re.compile(r"\d+(?:[.,:]\d+)*")
# Dashes, hyphens, minus signs and slashes separate parts ("2014–15", "1564-1616", "A/S").
_SEPARATORS = re.compile(r"[\-‐-―−/⁄∕]")


def key_text(text: str) -> str:
    """The form key items are matched in **(ours)**.

    Unicode-normalized (NFKC) and lower-cased; dashes, hyphens and slashes become spaces, so
    "2014–15", "2014-15" and "2014 15" agree; every other punctuation mark is dropped, so "A.S."
    and "AS" agree; whitespace is collapsed. Articles are kept: unlike in answer F1, "A" in
    "A/S" is part of a name.
    """
    text = _SEPARATORS.sub(" ", unicodedata.normalize("NFKC", text).lower())
    text = "".join(ch for ch in text if not unicodedata.category(ch).startswith("P"))
    return " ".join(text.split())


def _capitalized_spans(text: str) -> list[tuple[int, int, str]]:
    """(start, end, span) for each run of capitalized words, joined by short connectors.

    Words of a run are separated by whitespace only, so a comma or quote ends it.
    """
    words = list(_WORD.finditer(text))

    def joined(a: int, b: int) -> bool:
        return not text[words[a].end() : words[b].start()].strip()

    spans, i = [], 0
    while i < len(words):
        if not words[i].group(0)[0].isupper():
            i += 1
            continue
        k = i  # words[i..k] is the run so far; look past connectors for its next word
        while True:
            nxt = k + 1
            while (
                nxt < len(words)
                and words[nxt].group(0).lower() in _CONNECT
                and joined(nxt - 1, nxt)
            ):
                nxt += 1
            if nxt < len(words) and words[nxt].group(0)[0].isupper() and joined(nxt - 1, nxt):
                k = nxt
            else:
                break
        run = [w.group(0) for w in words[i : k + 1]]
        spans.append((words[i].start(), words[k].end(), run))
        i = k + 1
    out = []
    for start, end, run in spans:
        while run and run[0].lower().strip(".'’") in _LEADING:
            run.pop(0)
        if run:
            out.append((start, end, " ".join(run)))
    return out


def key_items(query: str) -> list[str]:
    """Dates, capitalized spans (names, places, titles) and numbers of a query, in that order.

    Our reading of the spec's "named entities, dates/times, places, numbers": a date is taken
    whole so its day and year are not required again as bare numbers; a span loses leading
    question and function words ("Which", "The", ...); numbers are the digits outside both, and
    a range such as "1564-1616" gives both ends. Items equal under `key_text` are kept once.
    """
    items = [m.group(0) for m in _DATE.finditer(query)]
    rest = _DATE.sub(lambda m: " " * len(m.group(0)), query)
    spans = _capitalized_spans(rest)
    items += [span for _, _, span in spans]
    for start, end, _ in spans:
        rest = rest[:start] + " " * (end - start) + rest[end:]
    items += _NUM.findall(rest)
    seen, out = set(), []
    for item in items:
        norm = key_text(item)
        if norm and norm not in seen:
            seen.add(norm)
            out.append(item)
    return out


def contains_items(items: Iterable[str], text: str) -> bool:
    """True if every item occurs in `text` as whole words, both sides read through `key_text`."""
    hay = f" {key_text(text)} "
    return all(f" {key_text(item)} " in hay for item in items)
