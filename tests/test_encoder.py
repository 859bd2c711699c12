"""MiniLM in JAX matches sentence-transformers; batching and the cache change nothing."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the reference loads from the package folder

import numpy as np
import pytest

from agemem_jax.encoder import HashEncoder, MiniLMEncoder, default_encoder, minilm_path

SENTENCES = [
    "Alice was born in Paris in 1990.",
    "Where was Alice born?",
    "The Eiffel Tower is 330 metres tall.",
    "Scott Derrickson directed Doctor Strange.",
    "Ed Wood was an American filmmaker.",
    "Were Scott Derrickson and Ed Wood of the same nationality?",
    "a",
    "",
    "   leading and trailing spaces   ",
    "UPPER CASE and lower case",
    "Numbers: 3.14159, 2,718 and 1e-9!",
    "Émile Zola écrivit Germinal en 1885.",
    "東京は日本の首都です。",
    "emoji 🙂 and symbols <|im_end|> [SEP]",
    "tab\tand\nnewlines\r\nmixed",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "The quick brown fox jumps over the lazy dog. " * 3,
    "A memory agent stores facts, retrieves them, and filters distractors. " * 10,
    "word " * 400,  # longer than the 256-token window: truncated on both sides
    '{"tool": "Retrieve_memory", "status": "ok", "results": []}',
]


@pytest.fixture(scope="module")
def minilm():
    return MiniLMEncoder(cache_size=0)


def test_parity_with_sentence_transformers(minilm):
    from sentence_transformers import SentenceTransformer

    ref = SentenceTransformer(str(minilm_path()), device="cpu")
    want = ref.encode(SENTENCES, batch_size=8, normalize_embeddings=True)
    got = minilm.encode(SENTENCES)
    assert got.shape == (20, 384) and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    cos = (got * want).sum(1) / np.linalg.norm(want, axis=1)
    assert cos.min() >= 0.9999, cos


def test_batching_and_padding_do_not_change_embeddings(minilm):
    together = minilm.encode(SENTENCES)
    for i in (0, 7, 12, 18):
        np.testing.assert_allclose(minilm.encode([SENTENCES[i]])[0], together[i], atol=2e-5)
    small = MiniLMEncoder(batch_size=4, cache_size=0)
    np.testing.assert_allclose(small.encode(SENTENCES), together, atol=2e-5)


def test_semantics_sanity(minilm):
    v = minilm.encode(["Where was Alice born?", "Alice was born in Paris.", "Tea is a drink."])
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2


def test_cache_encodes_each_distinct_text_once():
    enc = HashEncoder(cache_size=3)
    calls = []
    inner = enc._encode_batch
    enc._encode_batch = lambda texts: calls.append(list(texts)) or inner(texts)
    first = enc.encode(["a b", "c d", "a b"])
    assert calls == [["a b", "c d"]]
    np.testing.assert_array_equal(first[0], first[2])
    again = enc.encode(["c d", "e f", "a b"])
    assert calls[1] == ["e f"]
    np.testing.assert_array_equal(again[[0, 2]], first[[1, 0]])
    enc.encode(["g h"])  # capacity 3: the least recently used ("c d") is dropped
    assert len(enc.cache) == 3
    enc.encode(["c d"])
    assert calls[-1] == ["c d"]


def test_encode_wants_a_sequence():
    with pytest.raises(TypeError, match="sequence"):
        HashEncoder().encode("text")


def test_hash_encoder_is_deterministic_and_word_based():
    a, b = HashEncoder(), HashEncoder()
    v = a.encode(["Red apple pie", "red APPLE pie!", "apple juice", "blue sky", ""])
    np.testing.assert_array_equal(
        v, b.encode(["Red apple pie", "red APPLE pie!", "apple juice", "blue sky", ""])
    )
    assert v[0] @ v[1] == pytest.approx(1.0)
    assert 0.2 < v[0] @ v[2] < 0.9
    assert abs(v[0] @ v[3]) < 0.3 and not v[4].any()


def test_default_encoder_is_minilm_and_shared():
    enc = default_encoder()
    assert isinstance(enc, MiniLMEncoder) and enc.dim == 384 and enc is default_encoder()
