"""Key items of a query and the form they are matched in (the answer metrics are tested in
test_judges.py, where the judge that uses them is)."""

from __future__ import annotations

import pytest

from agemem_jax.text import contains_items, key_items, key_text


@pytest.mark.parametrize(
    ("query", "items"),
    [
        ("Where was Alice born?", ["Alice"]),
        (
            "Which of Jonny Craig and Pete Doherty has been a member of more bands?",
            ["Jonny Craig", "Pete Doherty"],
        ),
        (
            "Where was the first governor after the The Missouri Compromise from?",
            ["Missouri Compromise"],
        ),
        (
            "Who was born on 2 March 1972 in Rosario, Argentina?",
            ["2 March 1972", "Rosario", "Argentina"],
        ),
        (
            "Which battle was fought on October 28, 1776 near White Plains, New York?",
            ["October 28, 1776", "White Plains", "New York"],
        ),
        (
            "The trophy of the University of Idaho Vandals dates from 1903.",
            ["University of Idaho Vandals", "1903"],
        ),
        ("the chicken is a dance of what kind?", []),
        # Ranges give both ends; slashes and hyphens stay inside a name.
        ("Who played in the 2014–15 season?", ["2014", "15"]),
        ("a playwright who lived from 1564-1616", ["1564", "1616"]),
        ("What do Rock Nominees Ltd and ISS A/S share?", ["Rock Nominees Ltd", "ISS A/S"]),
        ("the name of the CD/DVD", ["CD/DVD"]),
        ("Russia-United Kingdom relations", ["Russia-United Kingdom"]),
    ],
)
def test_key_items(query, items):
    assert key_items(query) == items


def test_key_text_treats_dashes_and_slashes_as_spaces():
    assert key_text("2014–15") == key_text("2014-15") == key_text("2014 15") == "2014 15"
    assert key_text("ISS A/S") == "iss a s"  # the article-like "A" stays: it is a name here
    assert key_text("Southampton F.C.") == "southampton fc"
    assert key_text("Ｆｕｌｌ—width") == "full width"  # NFKC, em dash


def test_contains_items_whole_words_only():
    assert contains_items(["ISS A/S"], "the Danish firm ISS A/S, founded 1901")
    assert contains_items(["1564", "1616"], "lived 1564–1616")
    assert not contains_items(["1564"], "lived 15641616")
    assert not contains_items(["Rosario"], "Rosarios of Argentina")
    assert contains_items([], "")
