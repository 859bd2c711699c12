"""The six memory tools as data: JSON-schema specs, the system prompt, and argument checking.

The schemas are the single source of truth. They are rendered into the system prompt the policy
reads, and the same dicts validate the arguments it sends back. Ablations choose which tools are
enabled by name (`select_tools`); a disabled tool is absent from the prompt and unknown to the
environment.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from agemem_jax import prompts

ADD, UPDATE, DELETE = "Add_memory", "Update_memory", "Delete_memory"
RETRIEVE, SUMMARY, FILTER = "Retrieve_memory", "Summary_context", "Filter_context"
TOOL_NAMES = (ADD, UPDATE, DELETE, RETRIEVE, SUMMARY, FILTER)
# The spec's tool table (section 2): Retrieve_memory targets STM, since it writes its hits into
# the context; the RAG variants replace these three with automatic retrieval (methods.py).
LTM_TOOLS = (ADD, UPDATE, DELETE)  # tools that change the long-term store
STM_TOOLS = (RETRIEVE, SUMMARY, FILTER)  # tools that change the context
SPAN_PATTERN = r"all|[1-9][0-9]{0,8}"


@dataclasses.dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    parameters: dict[str, Any]  # JSON schema of the arguments object

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "parameters": self.parameters}


def _string(description: str, **extra) -> dict[str, Any]:
    return {"type": "string", "description": description, **extra}


def _object(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


_METADATA = {
    "type": "object",
    "description": "Optional attributes such as tags, source or time, as a JSON object.",
}
# Names no other tool: a method without Retrieve_memory sees ids from automatic retrieval.
_MEMORY_ID = _string("Id of an entry, as returned by Add_memory or shown by a retrieval (mem_…).")


def build_tools(top_k: int = 3, max_top_k: int = 10) -> dict[str, ToolSpec]:
    """All six tools; `top_k` is Retrieve_memory's default and `max_top_k` its ceiling."""
    if not 1 <= top_k <= max_top_k:
        raise ValueError(f"need 1 <= top_k={top_k} <= max_top_k={max_top_k}")
    specs = [
        ToolSpec(
            ADD,
            "Store a new fact in long-term memory and get its id back. Keep each entry short, "
            "self-contained and useful for later questions.",
            _object(
                {
                    "content": _string("The information to remember.", minLength=1),
                    "metadata": _METADATA,
                    "memory_type": _string("A category for the entry, e.g. fact or event."),
                },
                ["content"],
            ),
        ),
        ToolSpec(
            UPDATE,
            "Replace the content of an existing long-term memory entry (it is re-embedded). "
            "Given metadata keys are merged into the entry's metadata.",
            _object(
                {
                    "memory_id": _MEMORY_ID,
                    "content": _string("The new content.", minLength=1),
                    "metadata": _METADATA,
                },
                ["memory_id", "content"],
            ),
        ),
        ToolSpec(
            DELETE,
            "Remove an entry from long-term memory. Requires confirmation set to true.",
            _object(
                {
                    "memory_id": _MEMORY_ID,
                    "confirmation": {
                        "type": "boolean",
                        "description": "Must be true; guards against accidental deletion.",
                    },
                },
                ["memory_id", "confirmation"],
            ),
        ),
        ToolSpec(
            RETRIEVE,
            "Search long-term memory by meaning. The best matches, with their ids, are added to "
            "the context.",
            _object(
                {
                    "query": _string("What to look for.", minLength=1),
                    "top_k": {
                        "type": "integer",
                        "description": "How many entries to return.",
                        "default": top_k,
                        "minimum": 1,
                        "maximum": max_top_k,
                    },
                    "metadata_filter": {
                        "type": "object",
                        "description": "Only entries whose metadata (or memory_type) has these "
                        "values; a list value matches any of its items.",
                    },
                },
                ["query"],
            ),
        ),
        ToolSpec(
            SUMMARY,
            "Replace part of the conversation with one concise summary to free context space. "
            'span is "all" (every message except the system prompt) or a number N (the last '
            "N messages).",
            _object(
                {
                    "span": _string(
                        '"all" or a positive integer as a string, e.g. "4".',
                        pattern=SPAN_PATTERN,
                    )
                },
                ["span"],
            ),
        ),
        ToolSpec(
            FILTER,
            "Remove every context message that is semantically similar to the criteria, e.g. "
            "off-topic or misleading material. The system prompt and the task are kept.",
            _object({"criteria": _string("Describes what to remove.", minLength=1)}, ["criteria"]),
        ),
    ]
    return {s.name: s for s in specs}


TOOLS = build_tools()


def select_tools(
    enabled: Iterable[str] | None = None, tools: Mapping[str, ToolSpec] | None = None
) -> dict[str, ToolSpec]:
    """The enabled subset, in canonical order. An unknown name is a configuration error."""
    tools = TOOLS if tools is None else tools
    if enabled is None:
        return dict(tools)
    wanted = list(enabled)
    unknown = sorted(set(wanted) - set(tools))
    if unknown:
        raise ValueError(f"unknown tools {unknown}; choose from {list(tools)}")
    return {name: spec for name, spec in tools.items() if name in wanted}


# ---------------------------------------------------------------------------------------------
# Prompt rendering


PROMPT_STYLES = ("json", "compact")


def _signature(spec: ToolSpec) -> str:
    props = spec.parameters.get("properties", {})
    required = set(spec.parameters.get("required", []))
    args = [
        f"{name}{'' if name in required else '?'}: {p.get('type', 'any')}"
        for name, p in props.items()
    ]
    return f"{spec.name}({', '.join(args)})"


def render_tools(tools: Mapping[str, ToolSpec] | Iterable[ToolSpec], style: str = "json") -> str:
    """The tool list for the system prompt.

    `json` is the spec's rendering (name, description, JSON-schema parameters, one per line).
    `compact` **(ours)** is a one-line signature and description per tool, about a third of the
    tokens: what a small model on a CPU budget can afford to read at every step.
    """
    specs = list(tools.values() if isinstance(tools, Mapping) else tools)
    if style == "json":
        return "\n".join(json.dumps(s.to_json(), ensure_ascii=False) for s in specs)
    if style == "compact":
        return "\n".join(f"- {_signature(s)}: {s.description}" for s in specs)
    raise ValueError(f"unknown prompt style {style!r}; choose one of {PROMPT_STYLES}")


def system_prompt(
    tools: Mapping[str, ToolSpec] | Iterable[ToolSpec] | None = None,
    instructions: str = "",
    style: str = "json",
) -> str:
    """The protocol, the tool list, then task-specific `instructions`."""
    tools = TOOLS if tools is None else tools
    listing = render_tools(tools, style)
    parts = [prompts.PROTOCOL_RULES if listing else prompts.PROTOCOL_RULES_NO_TOOLS]
    if listing:
        parts.append(prompts.TOOL_LISTING.format(listing=listing))
    if instructions:
        parts.append(instructions.strip())
    return "\n\n".join(parts)


# ---------------------------------------------------------------------------------------------
# Argument validation

_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
}


def _type_ok(value: Any, kind: str) -> bool:
    if kind in ("integer", "number") and isinstance(value, bool):
        return False  # JSON true is not a number, though Python's bool is an int
    return isinstance(value, _TYPES[kind])


def validate_arguments(
    spec: ToolSpec, arguments: Mapping[str, Any]
) -> tuple[dict[str, Any], tuple[str, str] | None]:
    """Check `arguments` against the spec's schema and fill defaults.

    Returns (arguments with defaults, None) or ({}, (code, message)), with code "bad_args" for a
    wrong shape and "limit" for a value past a maximum.
    """
    schema = spec.parameters
    props: dict[str, Any] = schema.get("properties", {})
    if not isinstance(arguments, Mapping):
        return {}, ("bad_args", f"{spec.name}: arguments must be a JSON object")
    allowed = ", ".join(props) or "none"
    for key in arguments:
        if key not in props and schema.get("additionalProperties", True) is False:
            return {}, ("bad_args", f"{spec.name}: unknown argument {key!r} (allowed: {allowed})")
    for key in schema.get("required", []):
        if key not in arguments:
            return {}, ("bad_args", f"{spec.name}: missing required argument {key!r}")
    out: dict[str, Any] = {}
    for key, p in props.items():
        if key not in arguments:
            if "default" in p:
                out[key] = p["default"]
            continue
        value = arguments[key]
        where = f"{spec.name}: argument {key!r}"
        kind = p.get("type")
        if kind and not _type_ok(value, kind):
            return {}, ("bad_args", f"{where} must be of type {kind}, got {json.dumps(value)[:40]}")
        if "enum" in p and value not in p["enum"]:
            return {}, ("bad_args", f"{where} must be one of {p['enum']}")
        if isinstance(value, str):
            if len(value.strip()) < p.get("minLength", 0):
                return {}, ("bad_args", f"{where} must not be empty")
            if "maxLength" in p and len(value) > p["maxLength"]:
                return {}, ("limit", f"{where} is longer than {p['maxLength']} characters")
            if "pattern" in p and not re.fullmatch(p["pattern"], value):
                return {}, ("bad_args", f"{where} must match {p['pattern']}")
        if kind in ("integer", "number"):
            if "minimum" in p and value < p["minimum"]:
                return {}, ("bad_args", f"{where} must be at least {p['minimum']}")
            if "maximum" in p and value > p["maximum"]:
                return {}, ("limit", f"{where} must be at most {p['maximum']}")
        out[key] = value
    return out, None
