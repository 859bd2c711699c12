"""parse_turn: the accepted grammar, every rejection with its code, limits, and fuzzing."""

import json
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agemem_jax.dataclass_config import build
from agemem_jax.prompts import FORMAT_HINT
from agemem_jax.protocol import ProtocolLimits, Turn, format_turn, parse_turn

ADD = {"name": "Add_memory", "arguments": {"content": "Paris is in France"}}


def _is_consistent(t: Turn) -> bool:
    """Exactly one of: an error, a non-empty call list, an answer."""
    states = [t.error is not None, bool(t.tool_calls), t.answer is not None]
    return sum(states) == 1 and (t.error is None) == (t.violation is None)


def test_tool_call_list():
    t = parse_turn(format_turn("store it", [ADD, {"name": "Filter_context", "arguments": {}}]))
    assert t.error is None and t.kind == "tool_call"
    assert t.think == "store it"
    assert t.tool_calls == [ADD, {"name": "Filter_context", "arguments": {}}]
    assert t.answer is None


def test_bare_object_is_a_violation_unless_accepted():
    """The spec's <tool_call> holds a JSON list; a bare object is counted, not silently wrapped."""
    text = f"<think>x</think><tool_call>{json.dumps(ADD)}</tool_call>"
    t = parse_turn(text)
    assert t.violation == "not_a_list" and not t.tool_calls and "JSON list" in t.error
    lenient = ProtocolLimits(accept_bare_object=True)
    assert parse_turn(text, lenient).tool_calls == [ADD]
    t = parse_turn('<think>x</think><tool_call>{"name": "Summary_context"}</tool_call>', lenient)
    assert t.tool_calls == [{"name": "Summary_context", "arguments": {}}]


def test_missing_arguments_are_empty():
    t = parse_turn('<think>x</think><tool_call>[{"name": "Summary_context"}]</tool_call>')
    assert t.tool_calls == [{"name": "Summary_context", "arguments": {}}]


def test_answer_whitespace_and_end_markers():
    text = "\n  <think> plan </think>\n\n<answer>\n42 </answer>\n<|im_end|>"
    t = parse_turn(text)
    assert (t.think, t.answer, t.error, t.kind) == ("plan", "42", None, "answer")


def test_think_may_mention_tags():
    t = parse_turn("<think>I could <answer> now or <tool_call> later</think><answer>ok</answer>")
    assert t.answer == "ok" and "<tool_call>" in t.think


@pytest.mark.parametrize(
    "text, violation",
    [
        ("", "empty_turn"),
        ("   \n", "empty_turn"),
        ("<answer>hi</answer>", "no_think"),
        ("Sure! <think>x</think><answer>a</answer>", "text_outside_tags"),
        ("<think>x</think> so: <answer>a</answer>", "text_outside_tags"),
        ("<think>x</think><answer>a</answer> bye", "text_outside_tags"),
        ("<think>x</think>", "no_action"),
        ("<think>x", "unclosed_tag"),
        ("<think>x</think><answer>a", "unclosed_tag"),
        ("<think>x</think><answer>a</answer><answer>b</answer>", "multiple_actions"),
        (
            f"<think>x</think><tool_call>[{json.dumps(ADD)}]</tool_call><answer>a</answer>",
            "multiple_actions",
        ),
        ("<think>x</think><think>y</think><answer>a</answer>", "multiple_think"),
        ("<think>x</think><tool_call>[{'name': 1}]</tool_call>", "bad_json"),
        ('<think>x</think><tool_call>[{"name": "A", </tool_call>', "bad_json"),
        (
            '<think>x</think><tool_call>[{"name": "A", "arguments": {"x": NaN}}]</tool_call>',
            "bad_json",
        ),
        (
            '<think>x</think><tool_call>[{"name": "A", "arguments": {"x": 1e999}}]</tool_call>',
            "bad_json",
        ),
        ("<think>x</think><tool_call>[]</tool_call>", "bad_call"),
        ('<think>x</think><tool_call>"Add_memory"</tool_call>', "bad_call"),
        ("<think>x</think><tool_call>[1]</tool_call>", "bad_call"),
        ('<think>x</think><tool_call>[{"arguments": {}}]</tool_call>', "bad_call"),
        ('<think>x</think><tool_call>[{"name": ""}]</tool_call>', "bad_call"),
        ('<think>x</think><tool_call>[{"name": "A", "parameters": {}}]</tool_call>', "bad_call"),
        ('<think>x</think><tool_call>[{"name": "A", "arguments": [1]}]</tool_call>', "bad_call"),
    ],
)
def test_rejections(text, violation):
    t = parse_turn(text)
    assert t.violation == violation, t
    assert t.error and t.error.endswith(FORMAT_HINT)
    assert t.tool_calls == [] and t.answer is None and t.kind == "invalid"


def test_limits_are_config_and_overruns_are_errors():
    limits = ProtocolLimits(max_turn_chars=200, max_calls_per_turn=2, max_argument_chars=30)
    three = format_turn("x", [{"name": "A", "arguments": {}}] * 3)
    assert parse_turn(three).error is None
    assert parse_turn(three, limits).violation == "too_many_calls"
    big = format_turn("x", [{"name": "A", "arguments": {"content": "y" * 40}}])
    assert parse_turn(big).error is None
    assert parse_turn(big, limits).violation == "arguments_too_large"
    long = format_turn("x" * 300, answer="a")
    assert parse_turn(long).error is None
    assert parse_turn(long, limits).violation == "turn_too_long"
    deep = format_turn("x", [{"name": "A", "arguments": {"m": json.loads("[" * 20 + "]" * 20)}}])
    assert parse_turn(deep).violation == "arguments_too_large"
    assert parse_turn(deep, ProtocolLimits(max_json_depth=40)).error is None


def test_require_think_can_be_turned_off():
    assert parse_turn("<answer>a</answer>", ProtocolLimits(require_think=False)).answer == "a"
    t = parse_turn("<answer>a</answer><think>x</think>", ProtocolLimits(require_think=False))
    assert t.violation == "think_after_action"


def test_limits_from_a_mapping():
    limits = build(ProtocolLimits, {"max_calls_per_turn": 1, "ignore_suffixes": ["<eos>"]})
    assert limits.max_calls_per_turn == 1 and limits.ignore_suffixes == ("<eos>",)
    assert parse_turn("<think>x</think><answer>a</answer><eos>", limits).answer == "a"


def test_not_text():
    assert parse_turn(None).violation == "not_text"  # type: ignore[arg-type]
    assert parse_turn(b"<answer>a</answer>").violation == "not_text"  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "text",
    [
        "[" * 30_000,
        "<think>" * 4_000,
        "<think>x</think><tool_call>" + "[" * 30_000 + "</tool_call>",
        "<think>x</think><tool_call>" + '{"a":' * 5_000 + "</tool_call>",
        "<think>x</think><tool_call>[" + "9" * 30_000 + "]</tool_call>",
        "<think></think>" * 2_000 + "<answer></answer>",
    ],
)
def test_adversarial_inputs_are_fast(text):
    start = time.perf_counter()
    t = parse_turn(text)
    assert time.perf_counter() - start < 0.5
    assert t.error is not None and _is_consistent(t)


FRAGMENTS = [
    "<think>",
    "</think>",
    "<tool_call>",
    "</tool_call>",
    "<answer>",
    "</answer>",
    "<|im_end|>",
    "[",
    "]",
    "{",
    "}",
    '"name"',
    '"arguments"',
    ":",
    ",",
    '"Add_memory"',
    "null",
    "1",
    "\n",
    " ",
    "x",
    "NaN",
    '"',
    "\\",
]
_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda kids: (
        st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=5), kids, max_size=3)
    ),
    max_leaves=10,
)


@settings(max_examples=400, deadline=1000, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(st.text(max_size=300), st.lists(st.sampled_from(FRAGMENTS), max_size=60).map("".join))
)
def test_fuzz_never_raises(text):
    t = parse_turn(text)
    assert isinstance(t, Turn) and _is_consistent(t)


@settings(max_examples=150, deadline=1000)
@given(
    st.text(max_size=50).filter(lambda s: "</think>" not in s),
    st.lists(
        st.fixed_dictionaries(
            {
                "name": st.text(min_size=1, max_size=12),
                "arguments": st.dictionaries(st.text(max_size=8), _json, max_size=4),
            }
        ),
        min_size=1,
        max_size=8,
    ),
)
def test_fuzz_round_trip(think, calls):
    t = parse_turn(format_turn(think, calls))
    if t.violation == "arguments_too_large":  # nested deeper than the default limit
        return
    assert t.error is None, t.error
    assert t.tool_calls == calls and t.think == think.strip()
