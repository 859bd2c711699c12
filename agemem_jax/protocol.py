"""The turn protocol: split one model turn into think, tool calls and answer.

A turn is `<think>…</think>` followed by exactly one of `<tool_call>[{"name": …, "arguments":
{…}}, …]</tool_call>` or `<answer>…</answer>`, with nothing but whitespace outside the tags.
`parse_turn` never raises on model output. A malformed turn comes back with `.error` (a short
reason the model can read in its next observation) and `.violation` (a stable code for
statistics). Work is linear in the text and bounded by `ProtocolLimits`, so a runaway generation
cannot stall the host.
"""

from __future__ import annotations

import dataclasses
import json
import re
import typing
from typing import Any

from agemem_jax import prompts

TAGS = ("think", "tool_call", "answer")
ACTIONS = ("tool_call", "answer")
# Violations that are limit overruns rather than format mistakes.
LIMIT_VIOLATIONS = frozenset({"turn_too_long", "too_many_calls", "arguments_too_large"})
_SPACE = re.compile(r"\s*")
# A UTF-16 surrogate alone is a valid Python str character but no valid UTF-8: tokenizers and
# JSON writers downstream reject it, so it never leaves the parser.
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclasses.dataclass(frozen=True)
class ProtocolLimits:
    """Bounds on what one turn may contain; each overrun is an error observation."""

    max_turn_chars: int = 32_768  # longest turn text parsed at all
    max_calls_per_turn: int = 8  # calls in one <tool_call> list
    max_argument_chars: int = 8_192  # one call's arguments, serialized as JSON
    max_json_depth: int = 16  # nesting of the whole <tool_call> payload
    require_think: bool = True  # a turn must open with <think>…</think> (spec)
    # The spec's <tool_call> holds a JSON list. A bare call object is a violation ("not_a_list")
    # unless this lenient reading (ours, off by default) is switched on.
    accept_bare_object: bool = False
    # End-of-turn markers a decoder may leave on the text; they are not "text outside tags".
    ignore_suffixes: tuple[str, ...] = ("<|im_end|>", "<|endoftext|>")


@dataclasses.dataclass(frozen=True)
class Turn:
    """One parsed model turn. Exactly one of `tool_calls` (non-empty), `answer`, `error` is set."""

    think: str = ""
    tool_calls: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    answer: str | None = None
    error: str | None = None
    violation: str | None = None  # stable code for statistics, e.g. "bad_json"

    @property
    def kind(self) -> str:
        if self.error is not None:
            return "invalid"
        return "answer" if self.answer is not None else "tool_call"


def _invalid(violation: str, message: str, think: str = "") -> Turn:
    return Turn(think=think, error=f"{message}. {prompts.FORMAT_HINT}", violation=violation)


def _snippet(s: str, n: int = 40) -> str:
    s = s.strip()
    return json.dumps(s[:n] + ("…" if len(s) > n else ""), ensure_ascii=False)


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    x = float(text)
    if x in (float("inf"), float("-inf")):
        raise ValueError(f"{text} overflows a float")
    return x


def _depth(obj: Any, limit: int) -> int:
    """Nesting depth of parsed JSON, iteratively and stopping past `limit`."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        node, d = stack.pop()
        if isinstance(node, dict | list):
            deepest = max(deepest, d)
            if deepest > limit:
                break
            children = node.values() if isinstance(node, dict) else node
            stack.extend((c, d + 1) for c in children)
    return deepest


def _without_surrogates(obj: Any) -> Any:
    """`obj` with lone surrogates in its strings (keys included) replaced by U+FFFD."""
    if isinstance(obj, str):
        return _SURROGATE.sub("\ufffd", obj)
    if isinstance(obj, list):
        return [_without_surrogates(x) for x in obj]
    if isinstance(obj, dict):
        return {_without_surrogates(k): _without_surrogates(v) for k, v in obj.items()}
    return obj


def parse_turn(text: str, limits: ProtocolLimits | None = None) -> Turn:
    """Parse one model turn. Never raises on any string; see `Turn` for the result."""
    limits = limits or ProtocolLimits()
    if not isinstance(text, str):
        return _invalid("not_text", f"expected text, got {type(text).__name__}")
    if len(text) > limits.max_turn_chars:
        return _invalid(
            "turn_too_long",
            f"the turn has {len(text)} characters; the limit is {limits.max_turn_chars}",
        )
    s = _SURROGATE.sub("\ufffd", text).strip()
    stripped = True
    while stripped:
        stripped = False
        for suffix in limits.ignore_suffixes:
            if suffix and s.endswith(suffix):
                s, stripped = s[: -len(suffix)].rstrip(), True

    # Scan top-level blocks. Inside a block everything up to its own closing tag is content, so
    # reasoning may mention tags freely.
    blocks: list[tuple[str, str]] = []
    pos = 0
    while True:
        pos = typing.cast(re.Match[str], _SPACE.match(s, pos)).end()  # \s* always matches
        if pos >= len(s):
            break
        tag = next((t for t in TAGS if s.startswith(f"<{t}>", pos)), None)
        if tag is None:
            return _invalid("text_outside_tags", f"text outside tags at {_snippet(s[pos:])}")
        start = pos + len(tag) + 2
        end = s.find(f"</{tag}>", start)
        if end < 0:
            return _invalid("unclosed_tag", f"<{tag}> is never closed with </{tag}>")
        blocks.append((tag, s[start:end]))
        pos = end + len(tag) + 3

    if not blocks:
        return _invalid("empty_turn", "the turn is empty")
    tags = [t for t, _ in blocks]
    thinks = [c for t, c in blocks if t == "think"]
    think = thinks[0].strip() if thinks else ""
    if len(thinks) > 1:
        return _invalid("multiple_think", "one <think> block per turn", think)
    if limits.require_think and tags[0] != "think":
        return _invalid("no_think", "the turn must begin with <think>…</think>", think)
    actions = [(t, c) for t, c in blocks if t in ACTIONS]
    if not actions:
        return _invalid("no_action", "after </think> give a <tool_call> or an <answer>", think)
    if len(actions) > 1:
        names = ", ".join(f"<{t}>" for t, _ in actions)
        return _invalid("multiple_actions", f"exactly one action per turn, got {names}", think)
    if tags[-1] == "think":
        return _invalid("think_after_action", "<think> must come before the action", think)

    tag, content = actions[0]
    if tag == "answer":
        return Turn(think=think, answer=content.strip())
    return _parse_calls(content, limits, think)


def _parse_calls(payload: str, limits: ProtocolLimits, think: str) -> Turn:
    try:
        calls = json.loads(payload, parse_constant=_reject_constant, parse_float=_finite_float)
    except json.JSONDecodeError as e:
        return _invalid(
            "bad_json", f"<tool_call> is not valid JSON ({e.msg} at char {e.pos})", think
        )
    except (ValueError, RecursionError) as e:
        return _invalid("bad_json", f"<tool_call> is not valid JSON ({e})", think)
    if _depth(calls, limits.max_json_depth) > limits.max_json_depth:
        return _invalid(
            "arguments_too_large",
            f"<tool_call> JSON is nested deeper than {limits.max_json_depth} levels",
            think,
        )
    if "\\u" in payload:  # an escape may have decoded to a lone surrogate
        calls = _without_surrogates(calls)
    if isinstance(calls, dict):
        if not limits.accept_bare_object:
            return _invalid(
                "not_a_list",
                '<tool_call> must hold a JSON list of calls, e.g. [{"name": …, "arguments": {…}}]'
                ", not a single object",
                think,
            )
        calls = [calls]
    if not isinstance(calls, list) or not calls:
        return _invalid("bad_call", "<tool_call> must hold a non-empty JSON list of calls", think)
    if len(calls) > limits.max_calls_per_turn:
        return _invalid(
            "too_many_calls",
            f"{len(calls)} calls in one turn; the limit is {limits.max_calls_per_turn}",
            think,
        )
    out = []
    for i, call in enumerate(calls, 1):
        shape = 'each call is {"name": "<tool>", "arguments": {…}}'
        if not isinstance(call, dict):
            return _invalid("bad_call", f"call {i} is not an object; {shape}", think)
        extra = sorted(set(call) - {"name", "arguments"})
        if extra:
            return _invalid("bad_call", f"call {i} has unexpected keys {extra}; {shape}", think)
        name, arguments = call.get("name"), call.get("arguments", {})
        if not isinstance(name, str) or not name:
            return _invalid("bad_call", f'call {i} needs a string "name"; {shape}', think)
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, dict):
            return _invalid("bad_call", f'call {i}: "arguments" must be an object; {shape}', think)
        size = len(json.dumps(arguments, ensure_ascii=False))
        if size > limits.max_argument_chars:
            return _invalid(
                "arguments_too_large",
                f"call {i} ({name}) has {size} characters of arguments; "
                f"the limit is {limits.max_argument_chars}",
                think,
            )
        out.append({"name": name, "arguments": arguments})
    return Turn(think=think, tool_calls=out)


def format_turn(think: str, tool_calls: list[dict] | None = None, answer: str | None = None) -> str:
    """The canonical text of a turn (what a well-behaved policy emits; used by tests and demos)."""
    if (tool_calls is None) == (answer is None):
        raise ValueError("give exactly one of tool_calls or answer")
    if answer is not None:
        action = f"<answer>{answer}</answer>"
    else:
        # "<\/" is a valid JSON escape, so arguments may contain the closing tag verbatim.
        payload = json.dumps(tool_calls, ensure_ascii=False).replace("</", "<\\/")
        action = f"<tool_call>{payload}</tool_call>"
    return f"<think>{think}</think>\n{action}"
