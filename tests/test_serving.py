"""The OpenAI-compatible server, driven by the official `openai` client over loopback HTTP.

A tiny random model with SmolLM2's tokenizer (so the grammar can spell any JSON) stands behind
the server; the embedder is the real MiniLM.
"""

from __future__ import annotations

import json
import re
import threading
import time

import httpx
import openai
import pytest

from agemem_jax.encoder import MiniLMEncoder
from agemem_jax.models import LoadConfig, load
from agemem_jax.sampler import generate
from agemem_jax.serving.api import BackgroundServer, build_server, create_app
from agemem_jax.serving.engine import ServeConfig

KEY = "sk-test"
MODEL = "tiny-test"
CFG = ServeConfig(max_rows=4, decode_chunk=8, max_prompt_tokens=400, max_output_tokens=512,
                  max_body_bytes=32_000, model_name=MODEL, api_key=KEY)  # fmt: skip


@pytest.fixture(scope="module")
def served():
    model, tokenizer = load(LoadConfig(random="tiny"))
    server = build_server(model, tokenizer, CFG, MODEL, MiniLMEncoder(), max_len=1024)
    with BackgroundServer(create_app(server)) as url:
        yield server, url, model, tokenizer
    server.engine.close()


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=served[1], api_key=KEY, max_retries=0, timeout=600)


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_models_lists_the_chat_and_embedding_models(client):
    assert {m.id for m in client.models.list()} == {MODEL, CFG.embedding_model}


def test_greedy_through_the_server_equals_generate(served, client):
    _, _, model, tokenizer = served
    # Four prompts: generate's batch has the server's shape, so it reuses the server's programs.
    prompts = [ask("Where is Paris?"), ask("who was born in the city"), ask("a year"),
               [{"role": "system", "content": "Be brief."}, *ask("the capital of France")]]  # fmt: skip
    want = generate(model, tokenizer, prompts, 30)
    for msgs, ref in zip(prompts, want, strict=True):
        r = client.chat.completions.create(model=MODEL, messages=msgs, temperature=0,
                                           max_tokens=30, logprobs=True)  # fmt: skip
        choice = r.choices[0]
        assert choice.message.content == ref.text
        assert choice.finish_reason == {"eos": "stop", "length": "length"}[ref.finish_reason]
        assert r.usage.completion_tokens == len(ref.tokens) == 30
        got = [e.logprob for e in choice.logprobs.content]
        assert got == pytest.approx(ref.model_logprobs, abs=1e-4)


def test_stream_concatenates_to_the_same_text(client):
    kw = dict(model=MODEL, messages=ask("the river of the city"), temperature=0, max_tokens=40)
    whole = client.chat.completions.create(**kw).choices[0].message.content
    chunks = list(client.chat.completions.create(**kw, stream=True,
                                                 stream_options={"include_usage": True}))  # fmt: skip
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 40
    assert len(chunks) > 3  # it streamed, rather than arriving in one piece


def test_seed_n_and_stop(client):
    kw = dict(model=MODEL, messages=ask("a film"), temperature=1.0, max_tokens=12, n=2)
    a = client.chat.completions.create(**kw, seed=7)
    b = client.chat.completions.create(**kw, seed=7)
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    assert a.choices[0].message.content != a.choices[1].message.content
    text = a.choices[0].message.content
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    r = client.chat.completions.create(**kw, seed=7, stop=[stop])
    assert r.choices[0].message.content == text[: text.index(stop)]
    assert r.choices[0].finish_reason == "stop"


SCHEMA = {
    "type": "object",
    "properties": {
        "answer": {"enum": ["yes", "no", "unknown"]},
        "year": {"type": "integer", "minimum": 1900, "maximum": 2030},
        "sure": {"type": "boolean"},
    },
    "required": ["answer", "year", "sure"],
    "additionalProperties": False,
}


def test_json_schema_output_is_schema_valid(client):
    for seed in range(3):
        r = client.chat.completions.create(
            model=MODEL, messages=ask("Was the film made in France?"), seed=seed,
            max_tokens=64, response_format={"type": "json_schema",
                                            "json_schema": {"name": "a", "schema": SCHEMA}},
        )  # fmt: skip
        assert r.choices[0].finish_reason == "stop"
        value = json.loads(r.choices[0].message.content)
        assert set(value) == {"answer", "year", "sure"}
        assert value["answer"] in ("yes", "no", "unknown")
        assert isinstance(value["year"], int) and 1900 <= value["year"] <= 2030
        assert isinstance(value["sure"], bool)


TOOLS = [
    {"type": "function", "function": {"name": "add_memory", "description": "Store a fact.",
     "parameters": {"type": "object", "properties": {"kind": {"enum": ["fact", "preference"]},
                    "weight": {"type": "integer", "minimum": 0, "maximum": 9}},
                    "required": ["kind", "weight"], "additionalProperties": False}}},
    {"type": "function", "function": {"name": "noop", "parameters": {
        "type": "object", "properties": {}, "additionalProperties": False}}},
]  # fmt: skip


@pytest.mark.parametrize(
    "choice", ["required", {"type": "function", "function": {"name": "add_memory"}}]
)
def test_tool_calls_come_back_in_the_api_shape(client, choice):
    r = client.chat.completions.create(model=MODEL, messages=ask("I like paris"), tools=TOOLS,
                                       tool_choice=choice, max_tokens=64, seed=3)  # fmt: skip
    c = r.choices[0]
    assert c.finish_reason == "tool_calls"
    (call,) = c.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    args = json.loads(call.function.arguments)
    if isinstance(choice, dict) or call.function.name == "add_memory":
        assert call.function.name == "add_memory"
        assert args["kind"] in ("fact", "preference") and 0 <= args["weight"] <= 9
    else:
        assert call.function.name == "noop" and args == {}
    # The call goes back into the conversation and the tool's result follows it.
    follow = client.chat.completions.create(
        model=MODEL, max_tokens=4, tools=TOOLS, messages=[
            *ask("I like paris"), c.message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "stored"}],
    )  # fmt: skip
    assert follow.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_embeddings_are_minilm(served, client):
    server = served[0]
    texts = ["Paris is the capital of France.", "the river"]
    got = client.embeddings.create(model=CFG.embedding_model, input=texts)  # base64 on the wire
    want = server.embedder.encode(texts)
    assert [d.index for d in got.data] == [0, 1]
    for d, w in zip(got.data, want, strict=True):
        assert d.embedding == pytest.approx(w.tolist(), abs=1e-6)
    floats = client.embeddings.create(model=CFG.embedding_model, input=texts[0],
                                      encoding_format="float")  # fmt: skip
    assert floats.data[0].embedding == pytest.approx(want[0].tolist(), abs=1e-6)


def test_errors_have_the_api_shape_and_the_server_survives(served, client):
    url = served[1]
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    r = httpx.post(f"{url}/chat/completions", content=b'{"model": "tiny-test", "messages": [',
                   headers=headers)  # fmt: skip
    assert r.status_code == 400 and "malformed JSON" in r.json()["error"]["message"]
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-9", messages=ask("hi"))
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=ask("the city " * 300))
    assert e.value.body["code"] == "context_length_exceeded"
    count = re.search(r"resulted in (\d+) tokens", e.value.body["message"])
    assert count is not None and int(count[1]) > 600
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(model=MODEL, messages=ask("x" * 40_000))
    assert e.value.status_code == 413
    wrong = openai.OpenAI(base_url=url, api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.chat.completions.create(model=MODEL, messages=ask("hi"))
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    for bad in [dict(temperature=-1), dict(n=99), dict(messages=[]),
                dict(messages=[{"role": "wizard", "content": "hi"}]),
                dict(tool_choice="required"),
                dict(response_format={"type": "json_schema", "json_schema": {"schema": 3}})]:  # fmt: skip
        body = dict(model=MODEL, messages=ask("hi"), max_tokens=2) | bad
        r = httpx.post(f"{url}/chat/completions", json=body, headers=headers)
        assert r.status_code == 400, (bad, r.text)
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert client.chat.completions.create(model=MODEL, messages=ask("hi"), max_tokens=2).choices


def test_a_long_request_does_not_block_a_short_one(client):
    # The long request streams, so the short one is sent only once the long row is decoding. The
    # engine admits the short row at its next iteration and ends it within one decode chunk,
    # while the long row still has about 60 chunks to go: no race on wall time.
    decoding, ended, finish = threading.Event(), threading.Event(), []

    def long():
        stream = client.chat.completions.create(model=MODEL, messages=ask("the album"),
                                                max_tokens=500, temperature=0, stream=True)  # fmt: skip
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                decoding.set()
            if chunk.choices and chunk.choices[0].finish_reason:
                finish.append(chunk.choices[0].finish_reason)
        ended.set()
        decoding.set()  # never leave the main thread waiting, even if the stream ended at once

    thread = threading.Thread(target=long)
    thread.start()
    assert decoding.wait(timeout=300)
    short = client.chat.completions.create(model=MODEL, messages=ask("the album"), max_tokens=4,
                                           temperature=0)  # fmt: skip
    assert not ended.is_set()  # the short one joined the running batch and left first
    thread.join(timeout=300)
    assert short.usage.completion_tokens == 4
    assert finish == ["length"]  # the long row ran to its budget: it was never cut short


def test_a_disconnecting_client_frees_its_row(served):
    server, url = served[0], served[1]
    body = dict(model=MODEL, messages=ask("the band"), max_tokens=500, stream=True)
    with httpx.stream("POST", f"{url}/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as r:  # fmt: skip
        # The first event only announces the role; a content event means the row is decoding.
        events = (json.loads(ln[5:]) for ln in r.iter_lines() if ln.startswith("data:"))
        next(e for e in events if e["choices"] and e["choices"][0]["delta"].get("content"))
        assert server.engine.busy_rows == 1
    deadline = time.monotonic() + 20
    while server.engine.busy_rows and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.engine.busy_rows == 0
    assert server.engine.stats["cancelled"] >= 1
