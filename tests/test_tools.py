"""Tool schemas match the spec; rendering, filtering and argument validation."""

import json

import pytest

from agemem_jax import tools as T


def _props(name):
    return T.TOOLS[name].parameters["properties"]


def test_names_arguments_and_required_match_the_spec():
    spec = {
        "Add_memory": ({"content", "metadata", "memory_type"}, {"content"}),
        "Update_memory": ({"memory_id", "content", "metadata"}, {"memory_id", "content"}),
        "Delete_memory": ({"memory_id", "confirmation"}, {"memory_id", "confirmation"}),
        "Retrieve_memory": ({"query", "top_k", "metadata_filter"}, {"query"}),
        "Summary_context": ({"span"}, {"span"}),
        "Filter_context": ({"criteria"}, {"criteria"}),
    }
    assert list(T.TOOLS) == list(spec) == list(T.TOOL_NAMES)
    for name, (args, required) in spec.items():
        assert set(_props(name)) == args, name
        assert set(T.TOOLS[name].parameters["required"]) == required, name
    types = {"content": "string", "metadata": "object", "memory_type": "string"}
    assert {k: v["type"] for k, v in _props("Add_memory").items()} == types
    assert _props("Delete_memory")["confirmation"]["type"] == "boolean"
    assert _props("Retrieve_memory")["top_k"]["type"] == "integer"
    assert _props("Retrieve_memory")["top_k"]["default"] == 3
    assert _props("Retrieve_memory")["metadata_filter"]["type"] == "object"
    assert _props("Summary_context")["span"]["type"] == "string"


def test_build_tools_sets_top_k_and_rejects_nonsense():
    tools = T.build_tools(top_k=5, max_top_k=8)
    assert tools["Retrieve_memory"].parameters["properties"]["top_k"]["default"] == 5
    with pytest.raises(ValueError, match="top_k"):
        T.build_tools(top_k=9, max_top_k=8)


def test_select_tools_filters_in_canonical_order():
    got = T.select_tools(["Filter_context", "Add_memory"])
    assert list(got) == ["Add_memory", "Filter_context"]
    assert list(T.select_tools(None)) == list(T.TOOL_NAMES)
    assert list(T.select_tools(T.LTM_TOOLS)) == list(T.LTM_TOOLS)
    with pytest.raises(ValueError, match="Search_web"):
        T.select_tools(["Add_memory", "Search_web"])


def test_system_prompt_lists_exactly_the_enabled_tools():
    enabled = T.select_tools(["Add_memory", "Retrieve_memory"])
    prompt = T.system_prompt(enabled, "Answer about the story.")
    for line in T.render_tools(enabled).splitlines():
        assert json.loads(line)["name"] in enabled
        assert line in prompt
    for name in ("Update_memory", "Delete_memory", "Summary_context", "Filter_context"):
        assert name not in prompt
    for tag in ("<think>", "<tool_call>", "<answer>"):
        assert tag in prompt
    assert prompt.endswith("Answer about the story.")
    assert "<tools>" not in T.system_prompt({})


def _check(name, args):
    return T.validate_arguments(T.TOOLS[name], args)


def test_validation_accepts_and_fills_defaults():
    args, err = _check("Retrieve_memory", {"query": "q"})
    assert err is None and args == {"query": "q", "top_k": 3}
    args, err = _check("Add_memory", {"content": "c", "metadata": {"tags": ["a"]}})
    assert err is None and args == {"content": "c", "metadata": {"tags": ["a"]}}
    assert _check("Summary_context", {"span": "all"})[1] is None
    assert _check("Summary_context", {"span": "12"})[1] is None


@pytest.mark.parametrize(
    "name, args, code, needle",
    [
        ("Add_memory", {}, "bad_args", "missing required argument 'content'"),
        ("Add_memory", {"content": "  "}, "bad_args", "must not be empty"),
        ("Add_memory", {"content": 3}, "bad_args", "must be of type string"),
        ("Add_memory", {"content": "c", "tags": []}, "bad_args", "unknown argument 'tags'"),
        ("Add_memory", {"content": "c", "metadata": "x"}, "bad_args", "must be of type object"),
        ("Retrieve_memory", {"query": "q", "top_k": "5"}, "bad_args", "must be of type integer"),
        ("Retrieve_memory", {"query": "q", "top_k": True}, "bad_args", "must be of type integer"),
        ("Retrieve_memory", {"query": "q", "top_k": 2.0}, "bad_args", "must be of type integer"),
        ("Retrieve_memory", {"query": "q", "top_k": 0}, "bad_args", "at least 1"),
        ("Retrieve_memory", {"query": "q", "top_k": 11}, "limit", "at most 10"),
        ("Delete_memory", {"memory_id": "m", "confirmation": "yes"}, "bad_args", "of type boolean"),
        ("Summary_context", {"span": "last"}, "bad_args", "must match"),
        ("Summary_context", {"span": "0"}, "bad_args", "must match"),
        ("Summary_context", {"span": 3}, "bad_args", "must be of type string"),
        ("Filter_context", {"criteria": ""}, "bad_args", "must not be empty"),
    ],
)
def test_validation_errors(name, args, code, needle):
    out, err = _check(name, args)
    assert out == {} and err is not None
    assert err[0] == code and needle in err[1], err


def test_compact_prompt_lists_every_enabled_tool_briefly():
    from agemem_jax import tools as T

    full = T.system_prompt(T.TOOLS, style="json")
    compact = T.system_prompt(T.TOOLS, style="compact")
    assert len(compact) < len(full) / 2
    for name in T.TOOL_NAMES:
        assert name in compact
    assert "Delete_memory(memory_id: string, confirmation: boolean)" in compact
    assert "Retrieve_memory(query: string, top_k?: integer, metadata_filter?: object)" in compact
    ablated = T.system_prompt(T.select_tools(["Add_memory"]), style="compact")
    assert "Add_memory(" in ablated and "Filter_context" not in ablated
    with pytest.raises(ValueError, match="prompt style"):
        T.render_tools(T.TOOLS, "yaml")
