"""Short-term context: exact ids, render masks, token budget, summary and filter semantics.

Runs with the real SmolLM2 tokenizer and with a WordPiece (BERT) tokenizer given ChatML
tokens, to show the context only relies on `ChatFormat`.
"""

import numpy as np
import pytest

from agemem_jax.chat import ChatFormat
from agemem_jax.encoder import HashEncoder, minilm_path
from agemem_jax.prompts import SUMMARY_SYSTEM_PROMPT
from agemem_jax.stm import (
    ROLE_IDS,
    ContextError,
    ShortTermContext,
    summary_request,
)


@pytest.fixture(scope="module")
def smol():
    from agemem_jax.models import resolve_path
    from agemem_jax.models.gguf_import import load_gguf_tokenizer

    return ChatFormat(load_gguf_tokenizer(resolve_path("smollm2-135m-instruct")))


@pytest.fixture(scope="module")
def bert():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(minilm_path()))
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    return ChatFormat(tok)


@pytest.fixture(params=["smol", "bert"])
def chat(request):
    return request.getfixturevalue(request.param)


def _ctx(chat, **kw):
    return ShortTermContext(chat, encoder=HashEncoder(), **kw)


def test_injected_messages_render_like_the_whole_conversation(chat):
    c = _ctx(chat)
    c.add("system", "You manage memory.")
    c.add("user", "Alice was born in Paris in 1990.", protected=True)
    c.add("tool", '{"status": "ok"}')
    r = c.render()
    assert list(r.ids) == chat.conversation(c.as_chat(), add_generation_prompt=True)
    assert r.ids.dtype == np.int32 and not r.loss_mask.any()
    assert c.prompt_tokens == len(r.ids) == c.num_tokens + len(chat.header("assistant"))
    assert list(c.render(add_generation_prompt=False).ids) == chat.conversation(
        c.as_chat(), add_generation_prompt=False
    )
    want_roles = np.concatenate(
        [np.full(m.num_tokens, ROLE_IDS[m.role]) for m in c.messages]
        + [np.full(len(chat.header("assistant")), ROLE_IDS["assistant"])]
    )
    np.testing.assert_array_equal(r.role_ids, want_roles)


def test_generated_ids_are_kept_exactly_and_carry_the_loss(smol):
    c = _ctx(smol)
    c.add("user", "hi")
    # A non-canonical tokenization of the text: character by character. It must survive as is.
    text = "<think>ok</think><answer>Paris</answer>"
    chars = [i for ch in text for i in smol.encode(ch)]
    assert chars != smol.encode(text)
    m = c.add_generated([*chars, smol.im_end])
    head = smol.header("assistant")
    assert list(m.ids) == head + chars + [smol.im_end] + smol.newline  # footer: newline only
    assert m.generated == (len(head), len(head) + len(chars) + 1)
    assert m.text == text
    r = c.render(add_generation_prompt=False)
    n_user = c.messages[0].num_tokens
    assert list(r.ids[n_user:]) == list(m.ids)
    assert list(r.ids[r.loss_mask]) == [*chars, smol.im_end]  # exactly the sampled tokens
    assert set(r.role_ids[n_user:]) == {ROLE_IDS["assistant"]}

    # Stopped on a stop string: the missing <|im_end|> is appended, without loss.
    m2 = c.add_generated(smol.encode("<think>a</think><answer>b</answer>"), text="custom")
    assert list(m2.ids[-len(smol.footer()) :]) == smol.footer() and m2.text == "custom"
    assert m2.generated[1] == len(m2.ids) - len(smol.footer())
    with pytest.raises(ValueError):
        m2.ids[0] = 1  # stored ids are read-only
    # A special token emitted mid-turn stays visible to the parser; trailing stop ids do not.
    m3 = c.add_generated([*smol.encode("<think>a</think>"), smol.im_start, smol.im_end])
    assert m3.text == "<think>a</think><|im_start|>"


def test_budget_evicts_oldest_and_records_the_overflow(chat):
    c = _ctx(chat, t_max=60)
    sys_msg = c.add("system", "system prompt here")
    query = c.add("user", "what is the capital of France", protected=True)
    added = [c.add("user", f"filler message number {i} with several words") for i in range(8)]
    assert c.prompt_tokens <= 60 and not c.over_budget
    assert c.overflows > 0 and c.evicted > 0 and c.peak_tokens > 60
    assert c.messages[:2] == [sys_msg, query] and c.messages[-1] is added[-1]
    assert c.num_tokens == sum(m.num_tokens for m in c.messages)
    # Unevictable content over the budget is flagged, not a crash.
    c.add("user", "a very long task statement " * 20, protected=True)
    assert c.over_budget and c.stats()["overflows"] == c.overflows
    # A new context for the next stage continues the accounting instead of restarting it.
    nxt = _ctx(chat, t_max=60)
    nxt.carry_usage(c)
    nxt.add("user", "short")
    assert (nxt.peak_tokens, nxt.overflows, nxt.evicted) == (c.peak_tokens, c.overflows, c.evicted)


def _summarizer(seen):
    def summarize(messages):
        seen.append(list(messages))
        return f"{len(messages)} messages about the task"

    return summarize


def test_summary_all_keeps_system_query_and_current_turn(smol):
    c = _ctx(smol)
    sys_msg = c.add("system", "sys")
    old = [c.add("user", "fact one"), c.add("assistant", "noted")]
    query = c.add("user", "the question", protected=True)
    later = c.add("tool", "result")
    current = c.add("assistant", "<think>x</think><tool_call>[]</tool_call>")
    seen = []
    removed, summary = c.summarize("all", _summarizer(seen), keep={current})
    assert removed == [*old, later] and seen == [removed]
    assert c.messages == [sys_msg, summary, query, current]
    assert summary.role == "user" and summary.text.endswith("3 messages about the task")
    assert summary.kind == "summary" and not any(m.kind for m in c.messages if m is not summary)
    assert list(summary.ids) == smol.message("user", summary.text)
    assert c.num_tokens == sum(m.num_tokens for m in c.messages)


def test_summary_last_n_and_errors(smol):
    c = _ctx(smol, summary_role="tool", summary_prefix="")
    msgs = [c.add("user", f"m{i}") for i in range(5)]
    removed, summary = c.summarize("2", _summarizer([]))
    assert removed == msgs[-2:] and c.messages == [*msgs[:3], summary]
    assert summary.role == "tool" and summary.text == "2 messages about the task"
    rest = list(c.messages)
    removed, summary = c.summarize("99", _summarizer([]))  # N beyond the context: everything
    assert removed == rest and c.messages == [summary]
    before = list(c.messages)
    for bad in ("0", "-1", "last", "", "1.5"):
        with pytest.raises(ContextError, match="span"):
            c.summarize(bad, _summarizer([]))
    with pytest.raises(ContextError, match="no text"):
        c.summarize("all", lambda ms: "  ")
    assert c.messages == before
    only_sys = _ctx(smol)
    only_sys.add("system", "s")
    assert only_sys.summarize("all", _summarizer([])) == ([], None)


def test_summary_request_prompt():
    c = _ctx_plain()
    m = c.add("user", "Bob is 42")
    req = summary_request([m])
    assert req[0] == {"role": "system", "content": SUMMARY_SYSTEM_PROMPT}
    assert "Bob is 42" in req[1]["content"]


def _ctx_plain():
    class Tok:  # the smallest ChatML tokenizer: one id per character, specials at 1 and 2
        unk_token_id = 0
        eos_token_id = 2

        def convert_tokens_to_ids(self, t):
            return {"<|im_start|>": 1, "<|im_end|>": 2}.get(t, 0)

        def encode(self, text, add_special_tokens=False):
            return [ord(ch) + 10 for ch in text]

        def decode(self, ids, skip_special_tokens=False):
            return "".join(chr(i - 10) for i in ids if i >= 10)

    return ShortTermContext(ChatFormat(Tok()), encoder=HashEncoder())


def test_filter_removes_similar_messages_only_where_allowed(smol):
    c = _ctx(smol)
    sys_msg = c.add("system", "football scores today")
    query = c.add("user", "football scores today", protected=True)
    noise = [c.add("user", "football scores today"), c.add("tool", "Football Scores, today!")]
    keep = c.add("user", "Alice was born in Paris")
    current = c.add("assistant", "football scores today")
    removed = c.filter("football scores today", keep={current})
    assert removed == noise
    assert c.messages == [sys_msg, query, keep, current]
    assert c.num_tokens == sum(m.num_tokens for m in c.messages)
    # theta is the threshold: above every possible cosine, nothing goes.
    strict = _ctx(smol, theta=1.01)
    strict.add("user", "same text")
    assert strict.filter("same text") == [] and len(strict) == 1
    with pytest.raises(ContextError, match="encoder"):
        ShortTermContext(smol).filter("x")


def test_filter_threshold_is_inclusive():
    enc = HashEncoder()
    a, b = "red green blue", "red green yellow"
    cos = float(enc.encode([a])[0] @ enc.encode([b])[0])
    c = ShortTermContext(_ctx_plain().chat, encoder=enc, theta=cos)
    c.add("user", b)
    assert len(c.filter(a)) == 1
    c = ShortTermContext(_ctx_plain().chat, encoder=enc, theta=cos + 1e-6)
    c.add("user", b)
    assert c.filter(a) == []


def test_reset_and_copy(smol):
    c = _ctx(smol)
    s = c.add("system", "sys")
    c.add("user", "u")
    d = c.copy()
    c.reset()
    assert c.messages == [s] and c.num_tokens == s.num_tokens
    assert len(d) == 2
    c.reset(keep_system=False)
    assert len(c) == 0 and c.num_tokens == 0 and len(c.render(add_generation_prompt=False).ids) == 0
    with pytest.raises(ContextError, match="role"):
        c.add("narrator", "x")
