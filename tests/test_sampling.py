"""The jitted sampler against transformers, against full forward passes, and against itself."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_tiny_tokenizer
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from agemem_jax.chat import ChatFormat
from agemem_jax.models import load_checkpoint, resolve_path
from agemem_jax.models.qwen.model import Decoder, ModelConfig
from agemem_jax.sampler import (
    SamplerSession,
    SamplingParams,
    compile_count,
    generate,
    select_tokens,
    slot_bucket,
)
from agemem_jax.stop_strings import StopMatcher, token_bytes

ROOT = Path(__file__).resolve().parents[1]
STOPS = ("</tool_call>", "</answer>")


@pytest.fixture(scope="module")
def smol():
    model, tokenizer = load_checkpoint("smollm2-135m-instruct")
    return model, tokenizer


@pytest.fixture(scope="module")
def hf_smol():
    import torch
    from transformers import AutoModelForCausalLM

    # One thread: on a shared machine torch's spinning worker threads make generate erratic.
    torch.set_num_threads(1)
    path = resolve_path("smollm2-135m-instruct")
    return AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    ).eval()


def tiny_model(vocab=128, scan=False, seed=0) -> Decoder:
    cfg = ModelConfig.tiny(vocab_size=vocab, max_position_embeddings=512, scan_layers=scan)
    return Decoder(cfg, rngs=nnx.Rngs(seed))


def full_logits(model, ids) -> np.ndarray:
    return np.asarray(model(jnp.asarray([ids])), np.float64)[0]


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


# ----------------------------------------------------------------- greedy parity with HF
CHATS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how photosynthesis works, step by step.",
    "Describe the water cycle in detail.",
    "Give me a recipe for pancakes with all the steps.",
]


def test_greedy_matches_transformers(smol, hf_smol):
    import torch

    model, tokenizer = smol
    # With a system message the template adds nothing of its own, so ChatFormat must equal it.
    system = {"role": "system", "content": "You are a helpful assistant."}
    chats = [[system, {"role": "user", "content": c}] for c in CHATS]
    fmt = ChatFormat(tokenizer)
    outs = generate(model, tokenizer, chats, 48)
    for chat, out in zip(chats, outs, strict=True):
        ids = fmt.conversation(chat)
        assert ids == tokenizer.apply_chat_template(
            chat, add_generation_prompt=True, return_dict=False
        )
        with torch.no_grad():
            ref = hf_smol.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                do_sample=False,
                max_new_tokens=48,
            )[0, len(ids) :].tolist()
        assert out.tokens == ref
        assert len(out.tokens) == 48 and out.finish_reason == "length"
        assert out.text == tokenizer.decode(ref)
        assert all(lp == 0.0 for lp in out.logprobs)  # greedy: a point mass


# ----------------------------------------------------------------- ragged continuation
def test_ragged_continuation_equals_reprefill(smol):
    """Different-length appends to 3 rows (and a reset row) equal fresh runs on the full text."""
    model, tokenizer = smol
    fmt = ChatFormat(tokenizer)
    prompts = [
        fmt.conversation([{"role": "user", "content": c}])
        for c in ("Name a fruit.", "What is 7 times 6?", "Say hello in French.")
    ]
    # min_slots=64 makes the cache grow mid-test, so growth is covered too.
    session = SamplerSession(model, tokenizer, batch_size=3, eos_ids=(), min_slots=64)
    session.start(prompts)
    first = session.decode(10)
    history = [p + o.tokens for p, o in zip(prompts, first, strict=True)]
    chunks = [
        fmt.footer() + fmt.message("tool", "ok"),
        fmt.footer() + fmt.message("user", "Tell me more about it, please, in two sentences."),
        fmt.footer() + fmt.message("tool", "result: 42 " * 12) + fmt.header("assistant"),
    ]
    assert len({len(c) for c in chunks}) == 3
    session.append(chunks)
    history = [h + c for h, c in zip(history, chunks, strict=True)]
    assert session.lengths.tolist() == [len(h) for h in history]
    second = session.decode(12)

    fresh = SamplerSession(model, tokenizer, batch_size=3, eos_ids=())
    fresh.start(history)
    np.testing.assert_allclose(
        fresh.next_logits(),
        np.stack([full_logits(model, h)[-1] for h in history]),
        atol=1e-4,
        rtol=0,
    )
    again = fresh.decode(12)
    for got, want in zip(second, again, strict=True):
        assert got.tokens == want.tokens
        np.testing.assert_allclose(got.model_logprobs, want.model_logprobs, atol=1e-4)

    # The continuation logits themselves: append one more chunk and compare before decoding.
    tail = fmt.footer() + fmt.message("user", "Thanks!") + fmt.header("assistant")
    session.append({0: tail, 2: tail})
    fresh.append({0: tail, 2: tail})
    logits_a, logits_b = session.next_logits(), fresh.next_logits()
    assert np.isnan(logits_a[1]).all()  # row 1 was left alone and has nothing to decode
    np.testing.assert_allclose(logits_a[[0, 2]], logits_b[[0, 2]], atol=1e-4, rtol=0)

    # Reset-row: row 1's context is replaced; the others are untouched.
    edited = fmt.conversation([{"role": "user", "content": "Summarize: the sky is blue."}])
    session.reset_row(1, edited)
    out = session.decode(8, rows=[1])
    assert out[0] is None and out[2] is None
    solo = generate(model, tokenizer, [edited], 8, eos_ids=())
    assert out[1].tokens == solo[0].tokens


def test_twenty_turns_compile_a_handful_and_stay_exact():
    """A 20-turn run with ragged appends, resets and cache growth: few compiles, exact state."""
    model = tiny_model()
    rng = np.random.default_rng(0)
    b = 4
    session = SamplerSession(model, None, batch_size=b, eos_ids=(), min_slots=128, max_len=512)
    history = [list(rng.integers(4, 128, int(n))) for n in rng.integers(5, 40, b)]
    before = compile_count()
    session.start(history)
    for turn in range(20):
        outs = session.decode(int(rng.integers(4, 24)), SamplingParams(temperature=1.0))
        history = [h + o.tokens for h, o in zip(history, outs, strict=True)]
        reset = int(rng.integers(b)) if turn % 7 == 6 else None
        if reset is not None:
            history[reset] = list(rng.integers(4, 128, int(rng.integers(5, 30))))
            session.reset_row(reset, history[reset])
        chunks = {r: list(rng.integers(4, 128, int(rng.integers(0, 20)))) for r in range(b)}
        chunks = {r: c for r, c in chunks.items() if r != reset}
        session.append(chunks)
        for r, c in chunks.items():
            history[r] += c
    compiles = compile_count() - before
    assert session.lengths.tolist() == [len(h) for h in history]
    assert max(map(len, history)) > 256  # the cache grew twice: 128 -> 256 -> 512
    print("compiles", compiles, "slots", session.describe()["slots"])
    assert compiles <= 14, compiles
    want = np.stack([full_logits(model, h)[-1] for h in history])
    np.testing.assert_allclose(session.next_logits(), want, atol=1e-4, rtol=0)


def test_cache_grows_with_use_not_with_max_new_tokens():
    """A turn allowed 1000 tokens that stops after a few never allocates 1000 slots."""
    model = tiny_model()
    prompt = [3, 4, 5, 6]
    free = generate(model, None, [prompt], 8, eos_ids=(), min_slots=16)[0].tokens
    eos = free[5]
    session = SamplerSession(model, None, eos_ids=(eos,), min_slots=16)
    session.start([prompt])
    out = session.decode(1000)[0]
    assert out.finish_reason == "eos" and out.tokens == free[: free.index(eos) + 1]
    assert session.describe()["slots"] == 16


def test_cache_grows_in_steps_past_slot_step_and_stays_exact():
    """Past `slot_step` the cache grows by steps (48 -> 64 -> 96), not doubling to 128."""
    assert [slot_bucket(n, 16, 32) for n in (1, 17, 32, 33, 64, 65, 97)] == [
        16, 32, 32, 64, 64, 96, 128,
    ]  # fmt: skip
    model = tiny_model()
    rng = np.random.default_rng(1)
    history = [list(rng.integers(4, 128, n)) for n in (30, 12)]
    session = SamplerSession(model, None, batch_size=2, eos_ids=(), min_slots=16, slot_step=32)
    session.start(history)
    seen = []
    for _ in range(3):
        outs = session.decode(12, SamplingParams(temperature=1.0))
        history = [h + o.tokens for h, o in zip(history, outs, strict=True)]
        chunk = list(rng.integers(4, 128, 9))
        session.append([chunk, []])
        history[0] += chunk
        seen.append(session.describe()["slots"])
    assert max(map(len, history)) == 30 + 3 * 21 and seen[-1] == 96  # 93 tokens in 96 slots
    want = np.stack([full_logits(model, h)[-1] for h in history])
    np.testing.assert_allclose(session.next_logits(), want, atol=1e-4, rtol=0)


# ----------------------------------------------------------------- stops
STOP_PROMPTS = [
    # Induction-style prompts: the model continues the pattern, so the stop strings appear.
    "<answer>1</answer>\n<answer>2</answer>\n<answer>3</answer>\n<answer>",
    '<tool_call>[{"name": "a"}]</tool_call>\n<tool_call>[{"name": "b"}]</tool_call>\n<tool_call>',
    "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,",
]


def test_stop_strings_end_rows_and_others_continue(smol):
    model, tokenizer = smol
    for s in STOPS:
        assert len(tokenizer.encode(s, add_special_tokens=False)) > 1  # genuinely multi-token
    free = generate(model, tokenizer, STOP_PROMPTS, 24, eos_ids=())
    stopped = generate(model, tokenizer, STOP_PROMPTS, 24, eos_ids=(), stop=STOPS)
    for i, want_stop in enumerate(["</answer>", "</tool_call>", None]):
        ref = free[i].tokens
        if want_stop is None:
            assert stopped[i].tokens == ref and stopped[i].finish_reason == "length"
            continue
        # The row ends at the first token whose text completes the stop string.
        n = next(k for k in range(1, len(ref) + 1) if want_stop in tokenizer.decode(ref[:k]))
        assert stopped[i].tokens == ref[:n]
        assert stopped[i].finish_reason == "stop" and stopped[i].stop_sequence == want_stop
        assert want_stop in stopped[i].text


@pytest.fixture(scope="module")
def smol_tokens(smol):
    _, tokenizer = smol
    return (
        tokenizer,
        token_bytes(tokenizer, 49152),
        StopMatcher(STOPS, token_bytes(tokenizer, 49152)),
    )


def test_stop_matcher_catches_merged_tokens(smol_tokens):
    tokenizer, _, matcher = smol_tokens
    ids = tokenizer.encode("42 </answer>.", add_special_tokens=False)
    # The tokenizer merges the stop string with its neighbours: ' </' ... '>.'.
    canonical = tokenizer.encode("</answer>", add_special_tokens=False)
    assert ids[-len(canonical) :] != canonical
    assert matcher.match(ids) == (len(ids), 1)
    assert matcher.match(tokenizer.encode("</answer", add_special_tokens=False))[1] is None


@settings(max_examples=150, deadline=None)
@given(
    before=st.text(alphabet="ab </>_.\"'\n", max_size=12),
    after=st.text(alphabet="ab </>_.\"'\n", max_size=6),
    which=st.sampled_from(STOPS),
)
def test_stop_matcher_is_text_level(smol_tokens, before, after, which):
    """Whatever the tokenization, the match fires at the first token whose text has a stop."""
    tokenizer, tb, matcher = smol_tokens
    ids = tokenizer.encode(before + which + after, add_special_tokens=False)
    text, expected = b"", None
    for n, i in enumerate(ids, start=1):
        text += tb[i]
        if any(s.encode() in text for s in STOPS):
            expected = n
            break
    got_n, got_which = matcher.match(ids)
    assert got_n == expected
    # The reported stop string is one that occurs (ends) within the matched text.
    assert STOPS[got_which].encode() in text


def test_eos_ends_rows(smol):
    model, tokenizer = smol
    out = generate(model, tokenizer, [[{"role": "user", "content": "Say yes."}]], 40)[0]
    assert out.finish_reason == "eos" and out.tokens[-1] == ChatFormat(tokenizer).im_end
    assert "<|im_end|>" not in out.text


# ----------------------------------------------------------------- log-probs
@pytest.mark.parametrize(
    "sampling", [dict(temperature=0.7, top_k=20), dict(temperature=1.3, top_p=0.9)]
)
def test_logprobs_match_full_forward(smol, sampling):
    model, tokenizer = smol
    prompts = ["The history of Rome", [{"role": "user", "content": "Tell me a joke."}]]
    outs = generate(model, tokenizer, prompts, 20, eos_ids=(), seed=3, **sampling)
    session = SamplerSession(model, tokenizer)
    for prompt, out in zip(prompts, outs, strict=True):
        ids = session.encode(prompt)
        logits = full_logits(model, ids + out.tokens)[len(ids) - 1 : -1]
        pos = np.arange(len(out.tokens))
        raw = log_softmax(logits)[pos, out.tokens]
        np.testing.assert_allclose(out.model_logprobs, raw, atol=1e-4)
        expected = np.log(processed_probs(logits, **sampling)[pos, out.tokens])
        np.testing.assert_allclose(out.logprobs, expected, atol=1e-4)


def processed_probs(logits, temperature=1.0, top_k=0, top_p=1.0) -> np.ndarray:
    """The sampling distribution, written out in numpy: temperature, then top-k, then top-p."""
    x = np.asarray(logits, np.float64) / temperature
    if top_k:
        kth = np.sort(x, -1)[..., -top_k][..., None]
        x = np.where(x < kth, -np.inf, x)
    p = np.exp(log_softmax(x))
    if top_p < 1:
        order = np.argsort(-p, -1, kind="stable")
        sorted_p = np.take_along_axis(p, order, -1)
        keep_sorted = (np.cumsum(sorted_p, -1) - sorted_p) < top_p
        keep = np.zeros_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, -1)
        p = np.where(keep, p, 0)
        p = p / p.sum(-1, keepdims=True)
    return p


# ----------------------------------------------------------------- sampling distribution
@pytest.mark.parametrize(
    "sampling",
    [dict(temperature=1.0), dict(temperature=0.6), dict(temperature=1.5, top_k=3), dict(top_p=0.7)],
)
def test_sampling_matches_softmax_and_is_reproducible(sampling):
    model = tiny_model(vocab=8)
    prompt = [1, 5, 2, 7]
    n = 4000
    sampling = {"temperature": 1.0, **sampling}
    outs = generate(model, None, [prompt] * n, 1, eos_ids=(), seed=11, min_slots=16, **sampling)
    draws = np.array([o.tokens[0] for o in outs])
    probs = processed_probs(full_logits(model, prompt)[-1], **sampling)
    counts = np.bincount(draws, minlength=8)
    assert (counts[probs == 0] == 0).all()  # truncated tokens are never drawn
    support = probs > 0
    chi2 = stats.chisquare(counts[support], probs[support] * n)
    assert chi2.pvalue > 1e-3, (counts, probs * n)
    np.testing.assert_allclose([o.logprobs[0] for o in outs], np.log(probs[draws]), atol=1e-5)
    again = generate(model, None, [prompt] * n, 1, eos_ids=(), seed=11, min_slots=16, **sampling)
    assert [o.tokens for o in again] == [o.tokens for o in outs]
    other = generate(model, None, [prompt] * n, 1, eos_ids=(), seed=12, min_slots=16, **sampling)
    assert [o.tokens for o in other] != [o.tokens for o in outs]


def test_rows_draw_independently_of_each_other():
    """A row's samples depend on the seed and its row index, not on what other rows do."""
    model = tiny_model()
    prompts = [[3, 4, 5], [9, 10], [20, 21, 22, 23]]
    a = generate(model, None, prompts, 12, temperature=1.0, eos_ids=(), seed=5, min_slots=16)
    swapped = [prompts[0], [40, 41, 42, 43, 44], prompts[2]]
    b = generate(model, None, swapped, 12, temperature=1.0, eos_ids=(), seed=5, min_slots=16)
    assert a[0].tokens == b[0].tokens and a[2].tokens == b[2].tokens


def test_a_session_never_replays_its_random_numbers():
    model = tiny_model()
    prompts = [[3, 4, 5]] * 2
    hot = SamplingParams(temperature=1.0)

    def run(session):
        session.start(prompts)
        return [o.tokens for o in session.decode(12, hot)]

    session = SamplerSession(model, None, batch_size=2, eos_ids=(), min_slots=16)
    first, second = run(session), run(session)
    assert first[0] != first[1]  # same prompt, different rows: independent draws
    assert first != second  # a new batch in the same session draws fresh numbers
    # A new session with the same seed replays the first batch exactly.
    assert run(SamplerSession(model, None, batch_size=2, eos_ids=(), min_slots=16)) == first


def test_select_tokens_greedy_and_logprobs():
    logits = jnp.asarray([[0.0, 2.0, 1.0], [3.0, -1.0, 3.5]])
    keys = jax.random.split(jax.random.key(0), 2)
    tok, lp, mlp = select_tokens(logits, keys, 1.0, 1.0, greedy=True, top_k=0, use_top_p=False)
    assert tok.tolist() == [1, 2]
    np.testing.assert_allclose(mlp, log_softmax(np.asarray(logits))[[0, 1], [1, 2]], atol=1e-6)
    np.testing.assert_array_equal(lp, 0.0)


# ----------------------------------------------------------------- layouts
def test_scanned_model_samples_like_unrolled():
    # Same seed and config give the same weights whatever the layer layout.
    loop, scan = tiny_model(), tiny_model(scan=True)
    prompts = [[3, 4, 5, 6], [9, 10]]
    a = generate(loop, None, prompts, 10, eos_ids=(), min_slots=16)
    session = SamplerSession(scan, None, batch_size=2, eos_ids=(), min_slots=16)
    session.start(prompts)
    np.testing.assert_allclose(
        session.next_logits(),
        np.stack([full_logits(loop, p)[-1] for p in prompts]),
        atol=1e-5,
    )
    b = session.decode(10)
    assert [o.tokens for o in a] == [o.tokens for o in b]
    # A scanned, rematerialized (training-layout) model sampled through its unrolled copy:
    # same tokens, per-layer cache buffers.
    scan.cfg = dataclasses.replace(scan.cfg, remat_policy="full")
    unrolled = SamplerSession(scan, None, batch_size=2, eos_ids=(), min_slots=16,
                              unroll_layers=True)  # fmt: skip
    unrolled.start(prompts)
    c = unrolled.decode(10)
    assert [o.tokens for o in a] == [o.tokens for o in c]
    assert isinstance(unrolled._cache.k, tuple) and len(unrolled._cache.k) == scan.cfg.num_layers
    # Remat applies to training forwards only: an unscanned remat model samples the same.
    loop.cfg = dataclasses.replace(loop.cfg, remat_policy="full")
    d = generate(loop, None, prompts, 10, eos_ids=(), min_slots=16)
    assert [o.tokens for o in a] == [o.tokens for o in d]


MESH_SCRIPT = textwrap.dedent(
    """
    import jax, numpy as np
    from flax import nnx
    from agemem_jax import sharding as shd
    from agemem_jax.models.qwen.model import Decoder, ModelConfig
    from agemem_jax.sampler import SamplerSession, generate

    assert jax.device_count() == 8
    cfg = ModelConfig.tiny(vocab_size=128, max_position_embeddings=512)
    model = Decoder(cfg, rngs=nnx.Rngs(0))
    mesh = shd.make_mesh((2, 2, 2))
    rng = np.random.default_rng(0)
    prompts = [list(rng.integers(4, 128, n)) for n in (5, 17, 9, 30, 12)]
    runs = {}
    for name, m in (("plain", None), ("mesh", mesh)):
        s = SamplerSession(model, None, batch_size=5, eos_ids=(), mesh=m, min_slots=32)
        s.start(prompts)
        first = s.decode(16)
        s.append({0: [7, 8, 9], 3: list(range(4, 44))})
        second = s.decode(16, rows=[0, 3])
        runs[name] = ([o.tokens for o in first], [second[0].tokens, second[3].tokens], s)
    assert runs["plain"][0] == runs["mesh"][0], runs
    assert runs["plain"][1] == runs["mesh"][1], runs
    s = runs["mesh"][2]
    assert s.batch_size == 8  # 5 rows padded to the 4 batch shards
    k = s._cache.k[0]
    assert len(k.sharding.device_set) == 8 and k.sharding.spec[0] == ("data", "fsdp"), k.sharding
    print("OK")
    """
)


def test_mesh_sampling_matches_unsharded():
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu"
    )
    out = subprocess.run(
        [sys.executable, "-c", MESH_SCRIPT],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]


# ----------------------------------------------------------------- bad input
def test_bad_input_is_one_clear_error():
    model = tiny_model()
    tok = make_tiny_tokenizer()
    with pytest.raises(ValueError, match="non-empty list"):
        generate(model, tok, [], 4)
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        generate(model, tok, [[5], []], 4)
    with pytest.raises(ValueError, match=r"outside \[0, 128\)"):
        generate(model, tok, [[5, 999]], 4)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, tok, [[5]], 0)
    with pytest.raises(ValueError, match="temperature"):
        generate(model, tok, [[5]], 4, temperature=-1)
    with pytest.raises(ValueError, match="top_p"):
        generate(model, tok, [[5]], 4, top_p=0)
    with pytest.raises(ValueError, match="exceeds the vocabulary"):
        generate(model, tok, [[5]], 4, temperature=1.0, top_k=1000)
    with pytest.raises(ValueError, match="need a tokenizer"):
        generate(model, None, ["text"], 4)
    with pytest.raises(ValueError, match="stop strings need a tokenizer"):
        generate(model, None, [[5]], 4, stop=("</answer>",))
    with pytest.raises(ValueError, match="non-empty str"):
        generate(model, tok, [[5]], 4, stop=("",))
    session = SamplerSession(model, tok, batch_size=2, max_len=20, min_slots=16, eos_ids=())
    with pytest.raises(ValueError, match="over max_len=20"):
        session.start([[5] * 21])
    session.start([[5] * 10, [6] * 3])
    with pytest.raises(IndexError, match="row 2"):
        session.append({2: [5]})
    session.decode(4, rows=[0])
    with pytest.raises(ValueError, match=r"rows \[0\] cannot decode"):
        session.decode(4, rows=[0])
    session.append({0: [5] * 6})  # 10 + 3 generated + pending + 6 = 20 = max_len
    with pytest.raises(ValueError, match="at max_len=20"):
        session.decode(4, rows=[0])
    out = session.decode(50, rows=[1])[1]  # clipped to the room left
    assert out.finish_reason == "length" and len(out.tokens) == 20 - 3


def test_decode_utilization_counts_kept_tokens_per_row_step():
    """Without compaction, rows that sit out a turn (or finished early) still cost a row-step
    each loop step; with it, once half the batch has stopped the rest decode as a batch of 2."""
    prompts = [[5, 6, 7], [8, 9], [10], [11, 12]]
    session = SamplerSession(tiny_model(), None, batch_size=4, eos_ids=(), compact_rows=False)
    session.start(prompts)
    session.decode(6, rows=[0, 1])
    assert session.stats == {"decode_row_steps": 4 * 6, "decode_kept_tokens": 2 * 6}
    session.append({r: [3] for r in range(4)})
    session.decode(6)
    assert session.utilization == pytest.approx((12 + 24) / (24 + 24))
    compact = SamplerSession(tiny_model(), None, batch_size=4, eos_ids=())
    compact.start(prompts)
    compact.decode(6, rows=[0, 1])
    # The first token comes from the prefill's logits at batch 4; five model steps at batch 2.
    assert compact.stats == {"decode_row_steps": 4 * 1 + 2 * 5, "decode_kept_tokens": 2 * 6}


@pytest.mark.parametrize("scan", [False, True], ids=["per_layer_cache", "stacked_cache"])
def test_compacted_rows_decode_exactly_as_in_the_full_batch(scan):
    """Rows with different budgets finish at different steps, so the batch shrinks 8 -> 4 -> 2
    -> 1 (and the cache grows inside the small batches). Tokens, log-probs, finish reasons and
    the state left for the next turn equal those of the same session decoding lockstep."""
    model = tiny_model(scan=scan)
    rng = np.random.default_rng(3)
    prompts = [rng.integers(4, 128, int(n)).tolist() for n in rng.integers(3, 40, 8)]
    budgets = {0: 2, 1: 60, 2: 5, 3: 9, 4: 1, 5: 17, 6: 33, 7: 3}
    outs, states = {}, {}
    before = compile_count()
    for compact in (False, True):
        session = SamplerSession(
            model, None, batch_size=8, eos_ids=(), min_slots=32, compact_rows=compact, seed=1
        )
        session.start(prompts)
        first = session.decode(budgets, SamplingParams(temperature=1.0))
        session.append({r: [7, 8] for r in range(8)})
        second = session.decode(5, SamplingParams(temperature=1.0), rows=[1, 6])
        outs[compact] = (first, second)
        states[compact] = (session.lengths.tolist(), session.describe()["slots"], session.stats)
        session.append({1: [9], 6: [9]})
        states[compact] += (session.next_logits()[[1, 6]],)
    assert compile_count() - before > 0
    for a, b in zip(outs[False][0] + outs[False][1], outs[True][0] + outs[True][1], strict=True):
        if a is None:
            assert b is None
            continue
        assert b is not None
        assert a.tokens == b.tokens and a.finish_reason == b.finish_reason
        np.testing.assert_allclose(a.model_logprobs, b.model_logprobs, atol=1e-5)
    assert [len(o.tokens) for o in outs[True][0] if o] == [budgets[r] for r in range(8)]
    lockstep, compacted = states[False], states[True]
    assert lockstep[:2] == compacted[:2]  # lengths and cache slots
    np.testing.assert_allclose(lockstep[3], compacted[3], atol=1e-4)
    # What compaction saves: row-steps of rows that had already stopped.
    assert lockstep[2]["decode_kept_tokens"] == compacted[2]["decode_kept_tokens"]
    assert compacted[2]["decode_row_steps"] < lockstep[2]["decode_row_steps"] / 2


def test_model_policy_prefills_resets_and_appends_together_and_exactly():
    """A turn where one row's context was edited (Filter/Summary) and the others grew: the
    policy prefills them in one call, and every row acts as if it were decoded alone."""
    from agemem_jax.policies import AgentView, ModelPolicy
    from agemem_jax.sampler import SamplingConfig

    model, tok = tiny_model(), make_tiny_tokenizer()
    cfg = SamplingConfig(temperature=0.0, max_new_tokens=6, stop=())
    rng = np.random.default_rng(1)

    def view(row, ids):
        return AgentView(row=row, rollout=row, task=None, stage=1, turn=0, turn_step=0,
                         incoming="", last_turn_of_stage=False, prompt_ids=tuple(ids))  # fmt: skip

    def alone(ids):
        p = ModelPolicy(model, tok, cfg, max_len=256)
        p.begin(1)
        return p.act([view(0, ids)])[0].token_ids

    policy = ModelPolicy(model, tok, cfg, max_len=256)
    policy.begin(3)
    prompts = [list(map(int, rng.integers(4, 128, n))) for n in (9, 14, 6)]
    first = policy.act([view(r, p) for r, p in enumerate(prompts)])
    grown = [p + a.token_ids + list(map(int, rng.integers(4, 128, 5)))
             for p, a in zip(prompts, first, strict=True)]  # fmt: skip
    grown[1] = list(map(int, rng.integers(4, 128, 11)))  # row 1's context was edited
    calls = []
    feed = policy.session.feed
    policy.session.feed = lambda **kw: (calls.append(sorted(kw)), feed(**kw))[1]
    second = policy.act([view(r, p) for r, p in enumerate(grown)])
    assert calls == [["append", "reset"]]  # one prefill for the reset row and the appends
    assert policy.stats["row_resets"] == 3 + 1  # the first turn's three, then row 1
    for ids, action in zip(grown, second, strict=True):
        assert action.token_ids == alone(ids)
