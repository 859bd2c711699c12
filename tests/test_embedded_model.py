"""The embedded default (SmolLM2-135M-Instruct, GGUF Q4_1) against transformers' own GGUF import."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from agemem_jax.chat import ChatFormat
from agemem_jax.models import load_checkpoint, resolve_path

PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a prime."}],
    [{"role": "user", "content": "Write <think>one idea</think> then an <answer>."}],
    [{"role": "user", "content": 'Call {"name": "Add_memory"} with JSON.'}],
]


@pytest.fixture(scope="module")
def both():
    from transformers import AutoModelForCausalLM

    path = resolve_path("smollm2-135m-instruct")
    model, tokenizer = load_checkpoint("smollm2-135m-instruct")
    hf = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    ).eval()
    return model, tokenizer, hf


def test_logits_and_greedy_tokens_match_transformers(both):
    model, tokenizer, hf = both
    chat = ChatFormat(tokenizer)
    worst = 0.0
    for messages in PROMPTS:
        ids = np.asarray([chat.conversation(messages)])
        ours = np.asarray(model(jnp.asarray(ids)))[0]
        with torch.no_grad():
            ref = hf(input_ids=torch.tensor(ids)).logits.numpy()[0]
        worst = max(worst, float(np.abs(ours - ref).max()))
        np.testing.assert_array_equal(ours.argmax(-1), ref.argmax(-1))
    assert worst <= 1e-3, f"max abs logit diff {worst}"


def test_tokenizer_speaks_chatml(both):
    _, tokenizer, _ = both
    chat = ChatFormat(tokenizer)
    for messages in PROMPTS:
        # The template invents a default system prompt when none is given; ours never does.
        if messages[0]["role"] != "system":
            messages = [{"role": "system", "content": "Be helpful."}, *messages]
        ref = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
        assert chat.conversation(messages) == list(ref)
    assert tokenizer.convert_ids_to_tokens(chat.stop_ids[0]) == "<|im_end|>"


def test_tokenizer_cache_is_faithful(tmp_path, monkeypatch):
    from agemem_jax.models.gguf_import import load_gguf_tokenizer

    monkeypatch.setenv("AGEMEM_CACHE", str(tmp_path))
    path = resolve_path("smollm2-135m-instruct")
    fresh = load_gguf_tokenizer(path, use_cache=False)
    load_gguf_tokenizer(path)  # builds the cache entry
    assert list((tmp_path / "tokenizers").iterdir())
    cached = load_gguf_tokenizer(path)
    text = 'Hi <think>x</think>\n<tool_call>[{"name": "Add_memory"}]</tool_call> ünï 12345  \n\n'
    assert fresh.encode(text) == cached.encode(text)
    assert ChatFormat(fresh).conversation(PROMPTS[1]) == ChatFormat(cached).conversation(PROMPTS[1])
    assert fresh.get_chat_template() == cached.get_chat_template()
    # A damaged entry is rebuilt, not trusted.
    entry = next((tmp_path / "tokenizers").iterdir())
    (entry / "tokenizer.json").write_text("{broken")
    assert load_gguf_tokenizer(path).encode(text) == fresh.encode(text)
