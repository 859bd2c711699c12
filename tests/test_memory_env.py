"""The environment end to end with the real SmolLM2 tokenizer: every tool, every error path,
statistics, token-in/token-out, forks and replay."""

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agemem_jax.chat import ChatFormat
from agemem_jax.dataclass_config import build
from agemem_jax.encoder import HashEncoder
from agemem_jax.memory_env import ERROR_CODES, MemoryEnv, MemoryEnvConfig
from agemem_jax.protocol import format_turn


@pytest.fixture(scope="module")
def chat():
    from agemem_jax.models import resolve_path
    from agemem_jax.models.gguf_import import load_gguf_tokenizer

    return ChatFormat(load_gguf_tokenizer(resolve_path("smollm2-135m-instruct")))


ENC = HashEncoder()


def _summarize(messages):
    return " | ".join(m.text[:20] for m in messages)


def _env(chat, **kw):
    kw.setdefault("encoder", ENC)
    kw.setdefault("summarizer", _summarize)
    env = MemoryEnv(chat, clock=iter(range(10**6)).__next__, **kw)
    env.stage = "stage1"
    env.reset_context()
    return env


def _call(env, *calls, think="plan"):
    """One agent step whose response ids are the tokenization of a well-formed turn."""
    text = format_turn(think, [{"name": n, "arguments": a} for n, a in calls])
    return env.step([*env.chat.encode(text), env.chat.im_end])


def _obs(result):
    return [json.loads(m.text) for m in result.observations]


def test_add_retrieve_update_delete(chat):
    env = _env(chat)
    (add,) = _obs(
        _call(
            env,
            (
                "Add_memory",
                {
                    "content": "Alice was born in Paris",
                    "metadata": {"tags": ["bio"]},
                    "memory_type": "fact",
                },
            ),
        )
    )
    assert add["status"] == "ok" and add["tool"] == "Add_memory"
    mid = add["memory_id"]
    entry = env.ltm.get(mid)
    assert entry.metadata == {"source": "stage1", "tags": ["bio"]} and entry.memory_type == "fact"
    _call(env, ("Add_memory", {"content": "Bob likes green tea"}))

    (ret,) = _obs(_call(env, ("Retrieve_memory", {"query": "Alice born Paris", "top_k": 1})))
    assert [r["memory_id"] for r in ret["results"]] == [mid]
    assert ret["results"][0]["content"] == "Alice was born in Paris"
    (ret,) = _obs(
        _call(env, ("Retrieve_memory", {"query": "tea", "metadata_filter": {"tags": "bio"}}))
    )
    assert [r["memory_id"] for r in ret["results"]] == [mid]
    assert env.retrieved[-1] == (4, "stage1", mid)

    (upd,) = _obs(_call(env, ("Update_memory", {"memory_id": mid, "content": "Alice: Rome"})))
    assert upd == {"tool": "Update_memory", "status": "ok", "memory_id": mid, "updated": True}
    assert env.ltm.get(mid).content == "Alice: Rome"
    (dele,) = _obs(_call(env, ("Delete_memory", {"memory_id": mid, "confirmation": True})))
    assert dele["status"] == "ok" and mid not in env.ltm and len(env.ltm) == 1

    s = env.stats
    assert s.calls == {
        "Add_memory": 2,
        "Retrieve_memory": 2,
        "Update_memory": 1,
        "Delete_memory": 1,
    }
    assert s.ok == s.calls and not s.errors and s.turns == 6
    assert [r.step for r in s.records] == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize(
    "call, code",
    [
        (("Delete_memory", {"memory_id": "ID", "confirmation": False}), "missing_confirmation"),
        (("Delete_memory", {"memory_id": "ID"}), "missing_confirmation"),
        (("Delete_memory", {"memory_id": "ID", "confirmation": "true"}), "missing_confirmation"),
        (("Delete_memory", {"memory_id": "mem_00000000", "confirmation": True}), "unknown_id"),
        (("Update_memory", {"memory_id": "mem_00000000", "content": "x"}), "unknown_id"),
        (("Update_memory", {"memory_id": "HIDDEN", "content": "x"}), "unseen_id"),
        (("Delete_memory", {"memory_id": "HIDDEN", "confirmation": True}), "unseen_id"),
        (("Update_memory", {"memory_id": "ID"}), "bad_args"),
        (("Retrieve_memory", {"query": "x", "top_k": 11}), "limit"),
        (("Retrieve_memory", {"query": "x", "top_k": "3"}), "bad_args"),
        (("Summary_context", {"span": "last"}), "bad_args"),
        (("Search_web", {"q": "x"}), "unknown_tool"),
    ],
)
def test_errors_are_observations_and_change_nothing(chat, call, code):
    env = _env(chat)
    mid = _obs(_call(env, ("Add_memory", {"content": "keep me"})))[0]["memory_id"]
    hidden = env.ltm.add("never shown to the agent").id  # e.g. left over from another episode
    name, args = call
    args = {
        k: {"ID": mid, "HIDDEN": hidden}.get(v, v) if isinstance(v, str) else v
        for k, v in args.items()
    }
    before = [(e.id, e.content) for e in env.ltm.entries()]
    (obs,) = _obs(_call(env, (name, args)))
    tool = "<unknown>" if code == "unknown_tool" else name
    assert obs["status"] == "error" and obs["tool"] == tool and obs["error"]
    assert env.stats.tool_errors == {(tool, code): 1}
    assert [(e.id, e.content) for e in env.ltm.entries()] == before
    assert env.stats.errors == {code: 1} and code in ERROR_CODES
    assert env.stats.records[-1].code == code and not env.stats.records[-1].ok


def test_unknown_tool_names_are_bounded_in_observations_and_stats(chat):
    env = _env(chat)
    for name in ("x" * 5000, "y" * 5000):
        (obs,) = _obs(_call(env, (name, {})))
        assert obs["tool"] == "<unknown>" and len(obs["error"]) < 300
    assert env.stats.calls == {"<unknown>": 2}
    assert env.metrics()["tool_errors/<unknown>/unknown_tool"] == 2


def test_seen_ids_can_be_relaxed(chat):
    env = _env(chat, require_seen_id=False)
    hidden = env.ltm.add("old entry").id
    (obs,) = _obs(_call(env, ("Delete_memory", {"memory_id": hidden, "confirmation": True})))
    assert obs["status"] == "ok" and len(env.ltm) == 0


def test_update_and_delete_need_an_id_from_a_retrieval(chat):
    """Spec: an id seen in an earlier retrieval. An id only Add_memory returned is not enough."""
    env = _env(chat)
    mid = _obs(_call(env, ("Add_memory", {"content": "Alice was born in Paris"})))[0]["memory_id"]
    (obs,) = _obs(_call(env, ("Update_memory", {"memory_id": mid, "content": "Alice: Rome"})))
    assert obs["status"] == "error" and env.stats.errors == {"unseen_id": 1}
    assert "Retrieve_memory" in obs["error"] and env.ltm.get(mid).content.endswith("Paris")
    (obs,) = _obs(_call(env, ("Delete_memory", {"memory_id": mid, "confirmation": True})))
    assert obs["status"] == "error" and env.stats.errors == {"unseen_id": 2}
    _call(env, ("Retrieve_memory", {"query": "Alice"}))
    (obs,) = _obs(_call(env, ("Update_memory", {"memory_id": mid, "content": "Alice: Rome"})))
    assert obs["status"] == "ok" and env.ltm.get(mid).content == "Alice: Rome"

    # The lenient rule is a setting: ids returned by Add_memory count as seen.
    env = _env(chat, added_ids_are_seen=True)
    mid = _obs(_call(env, ("Add_memory", {"content": "Alice was born in Paris"})))[0]["memory_id"]
    (obs,) = _obs(_call(env, ("Update_memory", {"memory_id": mid, "content": "Alice: Rome"})))
    assert obs["status"] == "ok"


def test_step_returns_structured_records(chat):
    """The step's records carry the results; the observation is only their JSON rendering."""
    env = _env(chat)
    env.ltm.add("Paris is the capital of France")
    r = _call(
        env,
        ("Add_memory", {"content": "Alice was born in Paris"}),
        ("Retrieve_memory", {"query": "capital of France", "top_k": 1}),
        ("Update_memory", {"memory_id": "mem_00000000", "content": "x"}),
    )
    assert r.records == tuple(env.stats.records)
    add, ret, upd = r.records
    assert add.arguments == {"content": "Alice was born in Paris"} and add.ok
    assert ret.result["results"][0]["content"] == "Paris is the capital of France"
    assert not upd.ok and upd.code == "unknown_id" and "error" in upd.result
    for rec, msg in zip(r.records, r.observations, strict=True):
        body = json.loads(msg.text)
        assert body.pop("tool") == rec.name and body.pop("status") == ("ok" if rec.ok else "error")
        assert body == rec.result and msg.data is rec.result
    assert [m.kind for m in r.observations] == ["", "retrieval", ""]
    assert r.peak_tokens == env.stm.peak_tokens and not r.limit_hit
    rejected = env.step(chat.encode("no tags"))
    assert [rec.name for rec in rejected.records] == ["<turn>"]


def test_no_op_summary_and_filter_say_so_and_do_not_count_as_reductions(chat):
    env = _env(chat)
    (obs,) = _obs(_call(env, ("Filter_context", {"criteria": "quantum chromodynamics"})))
    assert obs["status"] == "ok" and obs["removed_messages"] == 0 and "unchanged" in obs["note"]
    assert not env.stats.records[-1].reduced
    env_empty = _env(chat)  # only the system prompt: nothing to summarize
    (obs,) = _obs(_call(env_empty, ("Summary_context", {"span": "all"})))
    assert obs["summarized_messages"] == 0 and "unchanged" in obs["note"]
    assert not env_empty.stats.records[-1].reduced

    env.add_message("user", "football scores from the weekend league")
    (obs,) = _obs(_call(env, ("Filter_context", {"criteria": "football scores weekend league"})))
    assert obs["removed_messages"] == 1 and "note" not in obs
    rec = env.stats.records[-1]
    assert rec.reduced and rec.before_limit and rec.tokens_after < rec.tokens_before

    # A summary longer than what it replaced is not a reduction either.
    env_long = _env(chat, summarizer=lambda ms: "a very long summary " * 40)
    env_long.add_message("user", "hi")
    (obs,) = _obs(_call(env_long, ("Summary_context", {"span": "1"})))
    assert obs["summarized_messages"] == 1 and "not shorter" in obs["note"]
    assert not env_long.stats.records[-1].reduced


def test_token_usage_and_the_limit_span_the_whole_episode(chat):
    """Stage resets keep the peak and the first overflow: they belong to the episode."""
    env = _env(chat, t_max=1400)
    for i in range(30):
        env.add_message("user", f"message {i} " + "padding words " * 20)
    assert env.limit_hit and env.stm.peak_tokens > 1400
    peak = env.stm.peak_tokens
    env.stage = "stage2"
    env.reset_context()
    assert env.stm.prompt_tokens < 1400
    assert env.stm.peak_tokens == peak and env.limit_hit and env.stm.overflows > 0
    env.add_message("user", "a distractor about football")
    r = _call(env, ("Filter_context", {"criteria": "a distractor about football"}))
    rec = r.records[0]
    assert rec.reduced and not rec.before_limit  # reduced, but only after the limit was hit
    assert r.peak_tokens == peak and r.limit_hit


def test_malformed_turns_and_limits(chat):
    env = _env(chat, limits={"max_calls_per_turn": 2})
    r = env.step(chat.encode("I will just talk."))
    assert r.turn.violation == "text_outside_tags" and not r.done
    (obs,) = _obs(r)
    assert obs["status"] == "error" and "outside tags" in obs["error"] and "tool" not in obs
    r = _call(env, *[("Add_memory", {"content": f"c{i}"}) for i in range(3)])
    assert r.turn.violation == "too_many_calls" and len(env.ltm) == 0
    assert env.stats.errors == {"malformed": 1, "limit": 1}
    assert env.stats.violations == {"text_outside_tags": 1, "too_many_calls": 1}
    assert not env.stats.calls  # rejected turns ran no call


def test_answer_ends_the_episode_without_observations(chat):
    env = _env(chat)
    r = env.step(chat.encode(format_turn("done", answer="Paris")))
    assert r.done and r.answer == "Paris" and r.observations == []
    assert env.stats.answers == 1 and env.stm.messages[-1] is r.assistant


def test_disabled_tools_are_unknown_and_absent_from_the_prompt(chat):
    env = _env(chat, enabled_tools=["Add_memory", "Retrieve_memory"], summarizer=None)
    assert "Filter_context" not in env.system_prompt()
    assert "Filter_context" not in env.stm.messages[0].text
    (obs,) = _obs(_call(env, ("Filter_context", {"criteria": "x"})))
    assert obs["status"] == "error" and env.stats.errors == {"unknown_tool": 1}
    with pytest.raises(ValueError, match="summarizer"):
        MemoryEnv(chat, encoder=ENC)


def test_config_sources_and_defaults(chat):
    cfg = MemoryEnvConfig()
    assert (cfg.theta, cfg.top_k, cfg.t_max) == (0.6, 3, 8192)
    assert (
        build(
            MemoryEnvConfig, {"theta": 0.5, "limits": {"max_turn_chars": 10}}
        ).limits.max_turn_chars
        == 10
    )
    import ml_collections

    env = _env(
        chat,
        config=ml_collections.ConfigDict(
            {"top_k": 2, "enabled_tools": ["Add_memory", "Retrieve_memory"]}
        ),
        summarizer=None,
    )
    for i in range(4):
        env.ltm.add(f"entry {i}")
    (obs,) = _obs(_call(env, ("Retrieve_memory", {"query": "entry"})))
    assert len(obs["results"]) == 2  # the configured default top_k
    with pytest.raises(ValueError, match="thetta"):
        build(MemoryEnvConfig, {"thetta": 0.5})


def test_token_in_token_out_through_steps(chat):
    env = _env(chat)
    env.add_message("user", "Remember: the meeting is on Friday.")
    text = format_turn(
        "store", [{"name": "Add_memory", "arguments": {"content": "meeting Friday"}}]
    )
    ids = [i for ch in text for i in chat.encode(ch)] + [chat.im_end]  # non-canonical ids
    r = env.step(ids)
    rendered = env.stm.render()
    assert list(rendered.ids[rendered.loss_mask]) == ids
    assert r.turn.tool_calls and len(env.ltm) == 1
    for m in r.observations:
        assert m.role == "tool" and list(m.ids) == chat.message("tool", m.text)
    assert rendered.ids[-len(chat.header("assistant")) :].tolist() == chat.header("assistant")


def test_summary_and_filter_through_steps(chat):
    env = _env(chat)
    sys_msg = env.stm.messages[0]
    env.add_message("user", "distractor about football scores")
    env.add_message("user", "another distractor about football scores")
    query = env.add_message("user", "Where was Alice born?", protected=True)
    r = _call(env, ("Filter_context", {"criteria": "football scores distractor about"}))
    assert _obs(r)[0]["removed_messages"] == 2
    assert env.stm.messages == [sys_msg, query, r.assistant, *r.observations]

    env.add_message("user", "chatter one")
    env.add_message("user", "chatter two")
    r = _call(env, ("Summary_context", {"span": "all"}))
    assert _obs(r)[0]["summarized_messages"] == 4  # previous step's pair + two chatters
    msgs = env.stm.messages
    assert (
        len(msgs) == 5
        and msgs[:2] == [sys_msg, query]
        and msgs[3:] == [r.assistant, *r.observations]
    )
    assert msgs[2].text.startswith("Summary of earlier context:")  # where the span began
    rec = env.stats.records[-1]
    assert rec.name == "Summary_context" and rec.tokens_after < rec.tokens_before


def test_failed_summary_is_an_error(chat):
    env = _env(chat, summarizer=lambda ms: "")
    env.add_message("user", "something")
    (obs,) = _obs(_call(env, ("Summary_context", {"span": "all"})))
    assert obs["status"] == "error" and env.stats.errors == {"failed": 1}


def test_overflow_is_recorded_not_raised(chat):
    env = _env(chat, t_max=1400)
    for i in range(30):
        env.add_message("user", f"message {i} " + "padding words " * 20)
    _call(env, ("Add_memory", {"content": "still works"}))
    assert env.stm.prompt_tokens <= 1400 and env.stm.overflows > 0 and len(env.ltm) == 1
    assert env.metrics()["stm/overflows"] == env.stm.overflows


def test_retrieve_into_context_is_not_an_agent_call(chat):
    env = _env(chat)
    env.ltm.add("Paris is the capital of France")
    msg = env.retrieve_into_context("capital of France")
    body = json.loads(msg.text)
    assert body["results"][0]["content"] == "Paris is the capital of France"
    assert not env.stats.calls and env.stm.messages[-1] is msg and not env.retrieved
    mid = body["results"][0]["memory_id"]  # shown to the agent, so it may now edit it
    (obs,) = _obs(_call(env, ("Update_memory", {"memory_id": mid, "content": "Paris, France"})))
    assert obs["status"] == "ok"


def _script():
    return [
        [("Add_memory", {"content": "fact A about rivers"})],
        [
            ("Add_memory", {"content": "fact B about mountains"}),
            ("Retrieve_memory", {"query": "rivers"}),
        ],
        [("Summary_context", {"span": "2"})],
    ]


def test_forks_are_independent_and_deterministic(chat):
    parent = _env(chat)
    _call(parent, ("Add_memory", {"content": "shared fact"}))
    forks = [parent.fork() for _ in range(3)]
    runs = []
    for f in forks[:2]:
        for calls in _script():
            _call(f, *calls)
        runs.append((f.ltm.ids(), f.stm.render().ids, f.stats.as_dict()))
    assert runs[0][0] == runs[1][0]  # same actions, same ids
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    assert runs[0][2] == runs[1][2]
    _call(forks[2], ("Retrieve_memory", {"query": "shared fact"}))  # Delete needs a retrieval
    _call(forks[2], ("Delete_memory", {"memory_id": parent.ltm.ids()[0], "confirmation": True}))
    assert len(forks[2].ltm) == 0 and len(parent.ltm) == 1 and len(forks[0].ltm) == 3
    assert parent.stats.turns == 1 and len(parent.stm) == 3


def test_snapshot_restore_replays_an_episode(chat):
    env = _env(chat)
    snap = env.snapshot()
    for calls in _script():
        _call(env, *calls)
    first = (env.ltm.ids(), env.stm.render().ids.copy(), env.stats.as_dict())
    env.restore(snap)
    assert len(env.ltm) == 0 and env.stats.turns == 0
    for calls in _script():
        _call(env, *calls)
    assert env.ltm.ids() == first[0] and env.stats.as_dict() == first[2]
    np.testing.assert_array_equal(env.stm.render().ids, first[1])


def test_default_encoder_is_minilm_and_retrieves_by_meaning(chat):
    env = MemoryEnv(chat, enabled_tools=["Add_memory", "Retrieve_memory"])
    assert env.encoder.name == "all-MiniLM-L6-v2"
    env.reset_context()
    for fact in (
        "Alice was born in Paris.",
        "The stock market fell on Monday.",
        "Bananas are rich in potassium.",
    ):
        _call(env, ("Add_memory", {"content": fact}))
    (obs,) = _obs(
        _call(env, ("Retrieve_memory", {"query": "What is Alice's birthplace?", "top_k": 1}))
    )
    assert obs["results"][0]["content"] == "Alice was born in Paris."


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.text(max_size=200)
    | st.sampled_from(
        [
            '<think>x</think><tool_call>[{"name": "Add_memory", "arguments": {"content": 5}}]</tool_call>',
            '<think>x</think><tool_call>[{"name": "Retrieve_memory", "arguments": {"query": "q", '
            '"metadata_filter": {"a": [[1], {"b": null}]}}}]</tool_call>',
            '<think>x</think><tool_call>[{"name": "Summary_context", "arguments": {"span": "99"}}, '
            '{"name": "Filter_context", "arguments": {"criteria": "x"}}]</tool_call>',
        ]
    )
)
def test_fuzz_steps_never_raise(chat, text):
    env = _env(chat)
    r = env.step(chat.encode(text))
    assert r.turn.kind in ("invalid", "answer", "tool_call")
    assert env.stats.turns == 1
