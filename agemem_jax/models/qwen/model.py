"""One flax.nnx decoder for the Qwen family: Qwen2/2.5, Qwen3 and Llama-architecture checkpoints.

The variants differ in two switches only: `qkv_bias` (Qwen2) and `qk_norm` (Qwen3, per-head
RMSNorm on q and k). Everything else (GQA, RoPE, SwiGLU, RMSNorm, tied or untied head) is shared.

Every parameter carries logical axis names in its `axes` metadata; `agemem_jax.sharding` maps them
to mesh axes with one rule table, so the model never names a mesh axis itself.

Two entry points:
  * `__call__` / `hidden_states`: a full forward (training, scoring, parity). Padding is given by
    `attention_mask`; positions default to the mask's cumulative sum, so left padding is exact.
    `segment_ids` keeps packed sequences from attending to each other.
  * `extend`: writes new tokens into a KV cache at a per-row offset and attends over the cache.
    Prefill, decode and ragged multi-turn continuation are all this one call.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp
from absl import logging
from flax import nnx

from agemem_jax import sharding as shd

Array = jax.Array

ARCHITECTURES = {
    # HF `architectures[0]` -> (qkv_bias, qk_norm)
    "Qwen2ForCausalLM": (True, False),
    "Qwen3ForCausalLM": (False, True),
    "LlamaForCausalLM": (False, False),
}

# Every dense projection of a block; LoRA adapts any subset of them.
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# dense: the reference ([T, T] scores, masked). blockwise: query x key tiles, skipping tiles
# that are fully masked (causal upper half, across packed segments). cudnn / splash: fused
# kernels on GPU / TPU; elsewhere they fall back to dense with a warning.
ATTENTION_IMPLS = ("dense", "blockwise", "cudnn", "splash")

REMAT_POLICIES = {
    "none": None,
    "full": "nothing_saveable",
    "dots": "checkpoint_dots",
    "dots_no_batch": "checkpoint_dots_with_no_batch_dims",
}


# Named shapes, as their HF config.json files give them. `vocab_size` 0 (tiny) means "the
# tokenizer's size", filled in by whoever pairs the shape with a tokenizer.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        vocab_size=0, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
        num_kv_heads=2, head_dim=16, qk_norm=True, tie_word_embeddings=True, rope_theta=1e6,
        architecture="Qwen3ForCausalLM", max_position_embeddings=4096,
    ),
    # The embedded default (SmolLM2-135M-Instruct), Llama architecture.
    "smollm2_135m": dict(
        vocab_size=49_152, hidden_size=576, intermediate_size=1536, num_layers=30, num_heads=9,
        num_kv_heads=3, head_dim=64, rope_theta=1e5, rms_norm_eps=1e-5, tie_word_embeddings=True,
        architecture="LlamaForCausalLM", max_position_embeddings=8192,
    ),
    # The paper's backbones (spec section 7).
    "qwen3_4b": dict(
        vocab_size=151_936, hidden_size=2560, intermediate_size=9728, num_layers=36,
        num_heads=32, num_kv_heads=8, head_dim=128, rope_theta=5e6, rms_norm_eps=1e-6,
        tie_word_embeddings=True, qk_norm=True, architecture="Qwen3ForCausalLM",
        max_position_embeddings=262_144,
    ),
    "qwen25_7b": dict(
        vocab_size=152_064, hidden_size=3584, intermediate_size=18_944, num_layers=28,
        num_heads=28, num_kv_heads=4, head_dim=128, rope_theta=1e6, rms_norm_eps=1e-6,
        tie_word_embeddings=False, qkv_bias=True, architecture="Qwen2ForCausalLM",
        max_position_embeddings=32_768,
    ),
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shape and numerics of a decoder. `from_hf` reads a transformers `config.json` dict."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float = 10_000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    qk_norm: bool = False
    max_position_embeddings: int = 32_768
    architecture: str = "LlamaForCausalLM"
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    # Numerics and layout: f32 on CPU, bf16 on accelerators.
    dtype: str = "float32"
    param_dtype: str = "float32"
    scan_layers: bool = False
    remat_policy: str = "none"
    # Low-rank adapters: rank 0 = none (full fine-tuning). Each target projection W becomes
    # W + (alpha / rank) · A B with B zero at init, so a fresh adapter changes nothing.
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] = LORA_TARGETS
    # Attention of the full forward (training, scoring); the cached path is always dense.
    attention_impl: str = "dense"
    attention_block: int = 128  # query/key tile of the blockwise path

    def __post_init__(self):
        object.__setattr__(self, "lora_targets", tuple(self.lora_targets))
        if self.lora_rank < 0:
            raise ValueError(f"lora_rank={self.lora_rank} must be >= 0")
        bad = sorted(set(self.lora_targets) - set(LORA_TARGETS))
        if bad:
            raise ValueError(f"lora_targets {bad} unknown; choose from {list(LORA_TARGETS)}")
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ValueError(
                f"attention_impl={self.attention_impl!r}; choose one of {list(ATTENTION_IMPLS)}"
            )
        if self.attention_block < 1:
            raise ValueError(f"attention_block={self.attention_block} must be >= 1")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}"
            )
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(
                f"remat_policy={self.remat_policy!r}; choose one of {sorted(REMAT_POLICIES)}"
            )

    @classmethod
    def from_hf(cls, hf: dict[str, Any], **overrides) -> ModelConfig:
        arch = (hf.get("architectures") or ["?"])[0]
        if arch not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {arch!r}; supported: {sorted(ARCHITECTURES)}")
        scaling = hf.get("rope_scaling") or (hf.get("rope_parameters") or {})
        rope_type = scaling.get("rope_type", scaling.get("type", "default"))
        if rope_type not in (None, "default"):
            raise ValueError(f"rope scaling type {rope_type!r} is not supported")
        theta = hf.get("rope_theta", scaling.get("rope_theta", 10_000.0))
        qkv_bias, qk_norm = ARCHITECTURES[arch]
        if arch == "LlamaForCausalLM" and hf.get("attention_bias"):
            qkv_bias = True
        n_heads = hf["num_attention_heads"]
        fields = dict(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=n_heads,
            num_kv_heads=hf.get("num_key_value_heads") or n_heads,
            head_dim=hf.get("head_dim") or hf["hidden_size"] // n_heads,
            rope_theta=float(theta),
            rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            qkv_bias=qkv_bias,
            qk_norm=qk_norm,
            max_position_embeddings=hf.get("max_position_embeddings", 32_768),
            architecture=arch,
            bos_token_id=hf.get("bos_token_id"),
            eos_token_id=hf.get("eos_token_id"),
        )
        fields.update(overrides)
        return cls(**fields)

    @classmethod
    def preset(cls, name: str, **overrides) -> ModelConfig:
        """A named shape from `PRESETS` (the paper's backbones, the embedded default, `tiny`)."""
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**(PRESETS[name] | overrides))

    @classmethod
    def tiny(cls, **overrides) -> ModelConfig:
        """A two-layer Qwen3-shaped decoder that compiles in seconds (tests, loop checks)."""
        return cls.preset("tiny", **overrides)

    def to_hf(self) -> dict[str, Any]:
        """The transformers `config.json` for this model (used by export)."""
        model_type = {
            "Qwen2ForCausalLM": "qwen2",
            "Qwen3ForCausalLM": "qwen3",
            "LlamaForCausalLM": "llama",
        }[self.architecture]
        out: dict[str, Any] = dict(
            architectures=[self.architecture],
            model_type=model_type,
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads,
            head_dim=self.head_dim,
            rope_theta=self.rope_theta,
            rms_norm_eps=self.rms_norm_eps,
            tie_word_embeddings=self.tie_word_embeddings,
            max_position_embeddings=self.max_position_embeddings,
            hidden_act="silu",
            torch_dtype=self.param_dtype,
            bos_token_id=self.bos_token_id,
            eos_token_id=self.eos_token_id,
        )
        if self.architecture == "LlamaForCausalLM":
            out["attention_bias"] = self.qkv_bias
            out["mlp_bias"] = False
        return out


class KVCache(NamedTuple):
    """Keys and values of every layer: keys `[batch, kv_heads, head_dim, slots]`, values
    `[batch, kv_heads, slots, head_dim]`.

    With heads before slots, every (row, kv-head) is one contiguous matrix, and keys stored
    transposed make both attention matmuls plain `[M, K] x [K, N]` ones, the layout XLA's CPU
    matmuls run fastest (decode attention took a third less time than with `[slots, head_dim]`
    keys). The unrolled decoder keeps one buffer per layer (tuples): XLA then updates each in
    place, while slicing a layer out of one stacked array copies it on every decode step (several
    times slower on CPU). The scanned decoder keeps one stacked `[layers, ...]` array per kind,
    which is what `lax.scan` slices.
    """

    k: Array | tuple[Array, ...]
    v: Array | tuple[Array, ...]

    @classmethod
    def zeros(cls, cfg: ModelConfig, batch: int, slots: int, dtype=None) -> KVCache:
        k_shape = (batch, cfg.num_kv_heads, cfg.head_dim, slots)
        v_shape = (batch, cfg.num_kv_heads, slots, cfg.head_dim)
        dtype = dtype or cfg.dtype
        if cfg.scan_layers:
            n = cfg.num_layers
            return cls(jnp.zeros((n, *k_shape), dtype), jnp.zeros((n, *v_shape), dtype))
        k = tuple(jnp.zeros(k_shape, dtype) for _ in range(cfg.num_layers))
        v = tuple(jnp.zeros(v_shape, dtype) for _ in range(cfg.num_layers))
        return cls(k, v)

    @property
    def slots(self) -> int:
        return (self.v[0] if isinstance(self.v, tuple) else self.v).shape[-2]

    @property
    def batch(self) -> int:
        return (self.v[0] if isinstance(self.v, tuple) else self.v).shape[-4]


def _param(rngs: nnx.Rngs, init, shape, axes, dtype) -> nnx.Param:
    return nnx.Param(init(rngs.params(), shape, dtype), axes=axes)


def lora_a_init(key: Array, shape: tuple[int, ...], dtype) -> Array:
    """A of an adapter, `[*in_dims, rank]`: normal with variance 1 / fan-in (all input dims)."""
    fan_in = math.prod(shape[:-1])
    return (jax.random.normal(key, shape, jnp.float32) / math.sqrt(fan_in)).astype(dtype)


def _add_lora(module, name, cfg: ModelConfig, rngs, in_shape, in_axes, out_shape, out_axes):
    """Give `module` the adapter pair of projection `name` when the config targets it. They are
    `nnx.LoRAParam`s, so the trainer can select them with a type filter."""
    if not cfg.lora_rank or name not in cfg.lora_targets:
        return
    r, pd = cfg.lora_rank, cfg.param_dtype
    a = lora_a_init(rngs.params(), (*in_shape, r), pd)
    setattr(module, f"{name}_lora_a", nnx.LoRAParam(a, axes=(*in_axes, "lora")))
    b = jnp.zeros((r, *out_shape), pd)
    setattr(module, f"{name}_lora_b", nnx.LoRAParam(b, axes=("lora", *out_axes)))


def _lora_delta(module, name: str, x: Array, cfg: ModelConfig) -> Array | None:
    """(alpha / rank) · (x A) B for the adapter of `name`, or None without one. `x` carries the
    projection's input flattened into its last axis; the result has the output dims unflattened.
    """
    a = getattr(module, f"{name}_lora_a", None)
    if a is None:
        return None
    b = getattr(module, f"{name}_lora_b")
    dt, r = cfg.dtype, cfg.lora_rank
    b_val = b.value.astype(dt)
    xa = x @ a.value.astype(dt).reshape(-1, r)
    out = (xa @ b_val.reshape(r, -1)) * (cfg.lora_alpha / r)
    return out.reshape(*x.shape[:-1], *b_val.shape[1:])


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, eps: float, *, cfg: ModelConfig, rngs: nnx.Rngs):
        self.scale = _param(rngs, nnx.initializers.ones, (dim,), ("norm",), cfg.param_dtype)
        self.eps = eps
        self.dtype = cfg.dtype

    def __call__(self, x: Array) -> Array:
        # Statistics in f32 whatever the compute dtype, as the reference implementations do.
        xf = x.astype(jnp.float32)
        xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        return self.scale.value.astype(self.dtype) * xf.astype(self.dtype)


def rope_tables(positions: Array, dim: int, theta: float) -> tuple[Array, Array]:
    """cos and sin of the rotary angles, [B, T, 1, dim // 2] in f32."""
    half = dim // 2
    inv_freq = 1.0 / (theta ** (jnp.arange(0, half, dtype=jnp.float32) * 2 / dim))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, half]
    return jnp.cos(angles)[:, :, None, :], jnp.sin(angles)[:, :, None, :]


def apply_rope(x: Array, cos: Array, sin: Array) -> Array:
    half = x.shape[-1] // 2
    cos, sin = cos.astype(x.dtype), sin.astype(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def rope(x: Array, positions: Array, theta: float) -> Array:
    """Rotary embedding in the rotate-half layout HF checkpoints use. x: [B, T, N, D]."""
    return apply_rope(x, *rope_tables(positions, x.shape[-1], theta))


class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        d, h, kv, hd = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        init, pd = nnx.initializers.lecun_normal(), cfg.param_dtype
        self.q_proj = _param(rngs, init, (d, h, hd), ("embed", "heads", "head_dim"), pd)
        self.k_proj = _param(rngs, init, (d, kv, hd), ("embed", "kv_heads", "head_dim"), pd)
        self.v_proj = _param(rngs, init, (d, kv, hd), ("embed", "kv_heads", "head_dim"), pd)
        self.o_proj = _param(rngs, init, (h, hd, d), ("heads", "head_dim", "embed"), pd)
        for name, n in (("q_proj", h), ("k_proj", kv), ("v_proj", kv)):
            heads = "heads" if name == "q_proj" else "kv_heads"
            _add_lora(self, name, cfg, rngs, (d,), ("embed",), (n, hd), (heads, "head_dim"))
        _add_lora(self, "o_proj", cfg, rngs, (h, hd), ("heads", "head_dim"), (d,), ("embed",))
        if cfg.qkv_bias:
            zeros = nnx.initializers.zeros
            self.q_bias = _param(rngs, zeros, (h, hd), ("heads", "head_dim"), pd)
            self.k_bias = _param(rngs, zeros, (kv, hd), ("kv_heads", "head_dim"), pd)
            self.v_bias = _param(rngs, zeros, (kv, hd), ("kv_heads", "head_dim"), pd)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(hd, cfg.rms_norm_eps, cfg=cfg, rngs=rngs)
            self.k_norm = RMSNorm(hd, cfg.rms_norm_eps, cfg=cfg, rngs=rngs)
        self.cfg = cfg

    def _project(
        self, x: Array, positions: Array | None, tables: tuple[Array, Array] | None = None
    ) -> tuple[Array, Array, Array]:
        """q, k (rotated) and v. `tables` = precomputed `rope_tables`, else from `positions`."""
        cfg, dt = self.cfg, self.cfg.dtype
        q, k, v = (self._dense_in(x, name) for name in ("q_proj", "k_proj", "v_proj"))
        if cfg.qkv_bias:
            q = q + self.q_bias.value.astype(dt)
            k = k + self.k_bias.value.astype(dt)
            v = v + self.v_bias.value.astype(dt)
        if cfg.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if tables is None:
            if positions is None:
                raise ValueError("give either the rope `tables` or the `positions`")
            return rope(q, positions, cfg.rope_theta), rope(k, positions, cfg.rope_theta), v
        return apply_rope(q, *tables), apply_rope(k, *tables), v

    def _dense_in(self, x: Array, name: str) -> Array:
        """x [B,T,D] through projection `name` ([D, N, head_dim]) and its adapter, if any."""
        y = jnp.einsum("btd,dnh->btnh", x, getattr(self, name).value.astype(self.cfg.dtype))
        delta = _lora_delta(self, name, x, self.cfg)
        return y if delta is None else y + delta

    def _out(self, out: Array) -> Array:
        """Heads [B,T,H*head_dim] through o_proj and its adapter, if any."""
        h, hd = self.cfg.num_heads, self.cfg.head_dim
        y = out @ self.o_proj.value.astype(self.cfg.dtype).reshape(h * hd, -1)
        delta = _lora_delta(self, "o_proj", out, self.cfg)
        return y if delta is None else y + delta

    def _attend(self, q: Array, k: Array, v: Array, mask: Array) -> Array:
        """q [B,T,H,D], k/v [B,S,KV,D], mask [B,T,S] (True = visible) -> [B,T,D_model].

        Runs in the cache layout: transposing k and v ([B,S,KV,D], small) lets the scores come
        out of the matmul already in [B,KV,G,T,S] order; left to itself, XLA computed them
        transposed and moved every [T,S] score matrix in memory inside the mask fusion, which
        took longer than all the layer's matmuls together on CPU.
        """
        return self._attend_cached(q, k.transpose(0, 2, 3, 1), v.transpose(0, 2, 1, 3), mask)

    def __call__(self, x: Array, positions: Array, mask: Array | SegmentMask) -> Array:
        q, k, v = self._project(x, positions)
        if not isinstance(mask, SegmentMask):
            return self._attend(q, k, v, mask)
        b, t = q.shape[:2]
        if mask.impl == "blockwise":
            # custom_vjp hides the return type from type checkers.
            out = cast(
                Array, blockwise_attention(q, k, v, mask.segment_ids, mask.valid, mask.block)
            )
        elif mask.impl == "cudnn":
            out = _cudnn_attention(q, k, v, mask.segment_ids, mask.valid)
        elif mask.impl == "splash":
            out = _splash_attention(q, k, v, mask.segment_ids, mask.valid)
        else:
            raise ValueError(f"no attention implementation {mask.impl!r}")
        return self._out(out.reshape(b, t, -1))

    def _attend_cached(self, q: Array, k: Array, v: Array, mask: Array) -> Array:
        """Attention over keys [B,KV,D,S] and values [B,KV,S,D] (the `KVCache` layout);
        q [B,T,H,D], mask [B,T,S] -> [B,T,D_model].

        Each (row, kv-head) is one plain `[G*T, D] x [D, S]` and `[G*T, S] x [S, D]` matmul, so
        XLA neither transposes the cache nor the output projection inside the decode loop.
        """
        b, t, h, hd = q.shape
        kvh = k.shape[1]
        g = h // kvh
        q = q.reshape(b, t, kvh, g, hd).transpose(0, 2, 3, 1, 4).reshape(b, kvh, g * t, hd)
        scores = jnp.einsum("bkqd,bkds->bkqs", q, k, preferred_element_type=jnp.float32)
        scores = scores.reshape(b, kvh, g, t, -1) * (hd**-0.5)
        scores = jnp.where(mask[:, None, None], scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype).reshape(b, kvh, g * t, -1)
        out = jnp.einsum("bkqs,bksd->bkqd", probs, v).reshape(b, kvh, g, t, hd)
        out = out.transpose(0, 3, 1, 2, 4).reshape(b, t, h * hd)
        return self._out(out)

    def extend(
        self,
        x: Array,
        tables: tuple[Array, Array],
        mask: Array,
        k_cache: Array,
        v_cache: Array,
        slots: Array,
    ) -> tuple[Array, Array, Array]:
        """Write this chunk's k/v at `slots` [B,T] of the caches, then attend over the caches."""
        q, k, v = self._project(x, None, tables)
        rows = jnp.arange(x.shape[0])[:, None]
        # Both index expressions address [B, T, KV, D], the layout k and v come in.
        # mode="drop": padding tokens past the cache end are discarded, never wrapped or clamped.
        k_cache = k_cache.at[rows, :, :, slots].set(k.astype(k_cache.dtype), mode="drop")
        v_cache = v_cache.at[rows, :, slots].set(v.astype(v_cache.dtype), mode="drop")
        return self._attend_cached(q, k_cache, v_cache, mask), k_cache, v_cache


class SegmentMask(NamedTuple):
    """What a tiled or fused attention needs instead of a dense `[B, T, T]` mask: a query sees
    the keys at or before it that are `valid` and in its segment."""

    segment_ids: Array  # [B, T] int
    valid: Array  # [B, T] bool: real (non-padding) tokens
    impl: str  # blockwise | cudnn | splash
    block: int  # tile size of the blockwise path


_FUSED_BACKENDS = {"cudnn": "gpu", "splash": "tpu"}
_WARNED: set[tuple[str, str]] = set()


def resolve_attention_impl(impl: str, t: int, block: int) -> str:
    """The implementation a forward of length `t` actually runs. A fused kernel needs its
    backend; elsewhere it falls back, once warned, to the dense reference. A blockwise forward
    of one tile (or of a length the tile does not divide) is the dense one."""
    backend = jax.default_backend()
    want = _FUSED_BACKENDS.get(impl)
    if want is not None and backend != want:
        if (impl, backend) not in _WARNED:
            _WARNED.add((impl, backend))
            logging.warning(
                "attention_impl=%r needs a %s backend, this is %s: using dense attention",
                impl, want, backend,
            )  # fmt: skip
        return "dense"
    if impl == "blockwise" and (t <= block or t % block):
        return "dense"
    return impl


def _tile(i, j, seg_q: Array, seg_k: Array, valid_k: Array, block: int) -> tuple[Array, Array]:
    """The mask of query tile i x key tile j, `[B, bq, bk]`, and whether any entry is visible
    (the tile is computed only then)."""
    offs = jnp.arange(block)
    diag = (i * block + offs)[:, None] >= (j * block + offs)[None, :]
    mask = (seg_q[:, :, None] == seg_k[:, None, :]) & valid_k[:, None, :] & diag
    return mask, (j <= i) & jnp.any(mask)


def visible_tiles(segment_ids: Array, valid: Array, block: int) -> Array:
    """`[n, n]` bool: which (query tile, key tile) pairs blockwise attention computes."""
    b, t = segment_ids.shape
    n = t // block
    seg = segment_ids.reshape(b, n, block).swapaxes(0, 1)
    val = valid.astype(bool).reshape(b, n, block).swapaxes(0, 1)
    idx = jnp.arange(n)
    one = lambda i, j: _tile(i, j, seg[i], seg[j], val[j], block)[1]
    return jax.vmap(lambda i: jax.vmap(lambda j: one(i, j))(idx))(idx)


def _q_tiles(x: Array, n: int, block: int, kvh: int) -> Array:
    """[B,T,H,D] -> [n,B,KV,G,bq,D]: query-side tiles grouped by the key head they read."""
    b, _t, h, hd = x.shape
    return x.reshape(b, n, block, kvh, h // kvh, hd).transpose(1, 0, 3, 4, 2, 5)


def _kv_tiles(x: Array, n: int, block: int) -> Array:
    """[B,T,KV,D] -> [n,B,KV,bk,D]."""
    b, _t, kvh, hd = x.shape
    return x.reshape(b, n, block, kvh, hd).transpose(1, 0, 3, 2, 4)


def _untile_q(x: Array, shape) -> Array:
    return x.transpose(1, 0, 4, 2, 3, 5).reshape(shape)


def _untile_kv(x: Array, shape) -> Array:
    return x.transpose(1, 0, 3, 2, 4).reshape(shape)


def _blockwise_forward(q, k, v, segment_ids, valid, block):
    """Output [B,T,H,D] and the per-query log-sum-exp [n,B,KV,G,bq] (0 where no key is seen)."""
    b, t, _h, hd = q.shape
    kvh, n = k.shape[2], t // block
    f32 = jnp.float32
    qb, kb, vb = _q_tiles(q, n, block, kvh), _kv_tiles(k, n, block), _kv_tiles(v, n, block)
    segb = segment_ids.reshape(b, n, block).swapaxes(0, 1)
    validb = valid.astype(bool).reshape(b, n, block).swapaxes(0, 1)
    scale, low = hd**-0.5, jnp.finfo(f32).min

    def q_tile(_, xs):
        i, qi, sq = xs

        def kv_tile(j, carry):
            kj, vj, sk, vk = kb[j], vb[j], segb[j], validb[j]
            mask, visible = _tile(i, j, sq, sk, vk, block)

            def compute(carry):
                m, den, acc = carry
                s = jnp.einsum("bkgqd,bksd->bkgqs", qi, kj, preferred_element_type=f32) * scale
                s = jnp.where(mask[:, None, None], s, low)
                m_new = jnp.maximum(m, s.max(-1))
                p = jnp.where(mask[:, None, None], jnp.exp(s - m_new[..., None]), 0.0)
                alpha = jnp.exp(m - m_new)
                pv = jnp.einsum(
                    "bkgqs,bksd->bkgqd", p.astype(vj.dtype), vj, preferred_element_type=f32
                )
                return m_new, alpha * den + p.sum(-1), alpha[..., None] * acc + pv

            return jax.lax.cond(visible, compute, lambda c: c, carry)

        init = (
            jnp.full(qi.shape[:-1], low, f32),
            jnp.zeros(qi.shape[:-1], f32),
            jnp.zeros(qi.shape, f32),
        )
        # Key tiles past the diagonal are never visible: the loop stops at i.
        m, den, acc = jax.lax.fori_loop(0, i + 1, kv_tile, init)
        seen = den > 0
        out = (acc / jnp.where(seen, den, 1.0)[..., None]).astype(q.dtype)
        return None, (out, jnp.where(seen, m + jnp.log(jnp.where(seen, den, 1.0)), 0.0))

    _, (out, lse) = jax.lax.scan(q_tile, None, (jnp.arange(n), qb, segb))
    return _untile_q(out, q.shape), lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def blockwise_attention(
    q: Array, k: Array, v: Array, segment_ids: Array, valid: Array, block: int
) -> Array:
    """Causal attention within segments, tile by tile, computing only tiles with a visible key.

    q [B,T,H,D], k/v [B,T,KV,D] -> [B,T,H,D]. For each query tile a loop walks the key tiles
    up to the diagonal with an online softmax; a tile where no query and key of a row share a
    segment is skipped by `lax.cond`, in the forward and in the backward. In a packed row of
    many short step rows most tiles off the diagonal are skipped. The key loops are while loops
    (never differentiated, as the backward is written out): scans there, inside the decoder's
    layer scan, made JAX keep every tile's values for the gradient, O(T^2) memory.
    Queries that see no key at all (padding) get zeros, where the dense path averages.

    The backward is written out (flash-attention style): it keeps only the output and the
    per-query log-sum-exp and recomputes each visible tile's probabilities, so training memory
    is O(T) per head. Differentiating the scans instead would save every tile's probabilities,
    O(T^2), more than the dense path.
    """
    return _blockwise_forward(q, k, v, segment_ids, valid, block)[0]


def _blockwise_fwd(q, k, v, segment_ids, valid, block):
    out, lse = _blockwise_forward(q, k, v, segment_ids, valid, block)
    return out, (q, k, v, segment_ids, valid, out, lse)


def _blockwise_bwd(block, res, d_out):
    q, k, v, segment_ids, valid, out, lse = res
    b, t, _h, hd = q.shape
    kvh, n = k.shape[2], t // block
    f32 = jnp.float32
    qb, kb, vb = _q_tiles(q, n, block, kvh), _kv_tiles(k, n, block), _kv_tiles(v, n, block)
    dob = _q_tiles(d_out, n, block, kvh)
    # delta_q = sum_d dO * O: the softmax-backward term shared by every key tile of a query.
    delta = jnp.sum(
        dob.astype(f32) * _q_tiles(out, n, block, kvh).astype(f32), axis=-1
    )  # [n,B,KV,G,bq]
    segb = segment_ids.reshape(b, n, block).swapaxes(0, 1)
    validb = valid.astype(bool).reshape(b, n, block).swapaxes(0, 1)
    scale = hd**-0.5

    def q_tile(carry, xs):
        i, qi, doi, lsei, di, sq = xs

        def kv_tile(j, c):
            kj, vj, sk, vk = kb[j], vb[j], segb[j], validb[j]
            mask, visible = _tile(i, j, sq, sk, vk, block)

            def compute(c):
                dqi, dk, dv = c
                s = jnp.einsum("bkgqd,bksd->bkgqs", qi, kj, preferred_element_type=f32) * scale
                p = jnp.where(mask[:, None, None], jnp.exp(s - lsei[..., None]), 0.0)
                dv_j = jnp.einsum("bkgqs,bkgqd->bksd", p, doi.astype(f32))
                dp = jnp.einsum("bkgqd,bksd->bkgqs", doi, vj, preferred_element_type=f32)
                ds = p * (dp - di[..., None]) * scale
                dqi = dqi + jnp.einsum("bkgqs,bksd->bkgqd", ds, kj.astype(f32))
                dk_j = jnp.einsum("bkgqs,bkgqd->bksd", ds, qi.astype(f32))
                return dqi, dk.at[j].add(dk_j), dv.at[j].add(dv_j)

            return jax.lax.cond(visible, compute, lambda c: c, c)

        init = (jnp.zeros(qi.shape, f32), *carry)
        dqi, dk, dv = jax.lax.fori_loop(0, i + 1, kv_tile, init)
        return (dk, dv), dqi

    zeros = jnp.zeros(kb.shape, f32)
    (dk, dv), dq = jax.lax.scan(q_tile, (zeros, zeros), (jnp.arange(n), qb, dob, lse, delta, segb))
    return (
        _untile_q(dq, q.shape).astype(q.dtype),
        _untile_kv(dk, k.shape).astype(k.dtype),
        _untile_kv(dv, v.shape).astype(v.dtype),
        None,
        None,
    )


blockwise_attention.defvjp(_blockwise_fwd, _blockwise_bwd)


def _cudnn_attention(q: Array, k: Array, v: Array, segment_ids: Array, valid: Array) -> Array:
    """cuDNN flash attention (GPU): causal, with the segment mask as a boolean input."""
    same = (segment_ids[:, :, None] == segment_ids[:, None, :]) & valid[:, None, :]
    return jax.nn.dot_product_attention(
        q, k, v, mask=same[:, None], is_causal=True, implementation="cudnn"
    )


def _splash_attention(q: Array, k: Array, v: Array, segment_ids: Array, valid: Array) -> Array:
    """Splash attention (TPU Pallas kernel): causal mask, segment ids keep packed rows apart."""
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_kernel as sk,
    )
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_mask as sm,
    )

    t, h, hd = q.shape[1:]
    g = h // k.shape[2]
    mask = sm.MultiHeadMask([sm.CausalMask((t, t)) for _ in range(h)])
    kernel = sk.make_splash_mha(mask, head_shards=1, q_seq_shards=1)
    # Padding gets its own segment, so no real query sees it.
    seg = jnp.where(valid, segment_ids, -1).astype(jnp.int32)
    qh = (q * hd**-0.5).transpose(0, 2, 1, 3)
    kh = jnp.repeat(k, g, axis=2).transpose(0, 2, 1, 3)
    vh = jnp.repeat(v, g, axis=2).transpose(0, 2, 1, 3)
    out = jax.vmap(lambda a, b_, c, s: kernel(a, b_, c, segment_ids=sk.SegmentIds(s, s)))(
        qh, kh, vh, seg
    )
    return jnp.asarray(out).transpose(0, 2, 1, 3)


class MLP(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        d, f = cfg.hidden_size, cfg.intermediate_size
        init, pd = nnx.initializers.lecun_normal(), cfg.param_dtype
        self.gate_proj = _param(rngs, init, (d, f), ("embed", "mlp"), pd)
        self.up_proj = _param(rngs, init, (d, f), ("embed", "mlp"), pd)
        self.down_proj = _param(rngs, init, (f, d), ("mlp", "embed"), pd)
        _add_lora(self, "gate_proj", cfg, rngs, (d,), ("embed",), (f,), ("mlp",))
        _add_lora(self, "up_proj", cfg, rngs, (d,), ("embed",), (f,), ("mlp",))
        _add_lora(self, "down_proj", cfg, rngs, (f,), ("mlp",), (d,), ("embed",))
        self.cfg = cfg

    def _dense(self, x: Array, name: str) -> Array:
        y = x @ getattr(self, name).value.astype(self.cfg.dtype)
        delta = _lora_delta(self, name, x, self.cfg)
        return y if delta is None else y + delta

    def __call__(self, x: Array) -> Array:
        gate = jax.nn.silu(self._dense(x, "gate_proj"))
        return self._dense(gate * self._dense(x, "up_proj"), "down_proj")


class Block(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.input_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg=cfg, rngs=rngs)
        self.attn = Attention(cfg, rngs=rngs)
        self.post_attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg=cfg, rngs=rngs)
        self.mlp = MLP(cfg, rngs=rngs)

    def __call__(self, x: Array, positions: Array, mask: Array | SegmentMask) -> Array:
        x = x + self.attn(self.input_norm(x), positions, mask)
        return x + self.mlp(self.post_attn_norm(x))

    def extend(self, x, tables, mask, k_cache, v_cache, slots):
        h, k_cache, v_cache = self.attn.extend(
            self.input_norm(x), tables, mask, k_cache, v_cache, slots
        )
        x = x + h
        return x + self.mlp(self.post_attn_norm(x)), k_cache, v_cache


def _stack_blocks(blocks: list[Block]) -> Block:
    """Merge per-layer blocks into one block whose params have a leading 'layers' axis."""
    graphdef, _ = nnx.split(blocks[0])
    states = [nnx.state(b) for b in blocks]
    stacked = jax.tree.map(
        lambda *vs: vs[0].replace(jnp.stack([v.value for v in vs])),
        *states,
        is_leaf=lambda x: isinstance(x, nnx.Variable),
    )
    for _, var in nnx.to_flat_state(stacked):
        var.set_metadata("axes", ("layers", *var.get_metadata()["axes"]))
    return nnx.merge(graphdef, stacked)


def default_positions(attention_mask: Array) -> Array:
    """Positions that skip left padding: the first real token is position 0."""
    return jnp.maximum(jnp.cumsum(attention_mask.astype(jnp.int32), axis=-1) - 1, 0)


class Decoder(nnx.Module):
    """Causal LM. `Decoder(cfg, rngs=nnx.Rngs(0))` gives a randomly initialized model."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed = _param(
            rngs,
            nnx.initializers.normal(0.02),
            (cfg.vocab_size, cfg.hidden_size),
            ("vocab", "embed"),
            cfg.param_dtype,
        )
        blocks = [Block(cfg, rngs=rngs) for _ in range(cfg.num_layers)]
        if cfg.scan_layers:
            self.layers = _stack_blocks(blocks)
        else:
            self.layers = nnx.List(blocks)
        self.final_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg=cfg, rngs=rngs)
        if not cfg.tie_word_embeddings:
            self.lm_head = _param(
                rngs,
                nnx.initializers.lecun_normal(),
                (cfg.hidden_size, cfg.vocab_size),
                ("embed", "vocab"),
                cfg.param_dtype,
            )

    # ----------------------------------------------------------------- layers
    def _run_layers(self, x: Array, fn, carry_extra=None, per_layer=None) -> tuple[Array, Any]:
        """Apply `fn(block, x, extra, layer_inputs) -> (x, layer_outputs)` over all layers.

        Scanned layers go through `lax.scan`, and `per_layer` (the KV cache) is a pytree with a
        leading layer axis; unscanned ones go through a Python loop, and `per_layer` is a list with
        one entry per layer. Layer outputs come back stacked or as a list, likewise.
        """
        cfg = self.cfg
        policy = REMAT_POLICIES[cfg.remat_policy]

        def body(block, x, layer_in):
            # Activations stay split by rows (a no-op unless the caller set a layout).
            x, out = fn(block, shd.constrain(x, ("batch", None, None)), carry_extra, layer_in)
            return shd.constrain(x, ("batch", None, None)), out

        # Remat serves the backward of training forwards; a cached forward (sampling) has none.
        if policy is not None and per_layer is None:
            body = nnx.remat(body, policy=getattr(jax.checkpoint_policies, policy))

        if cfg.scan_layers:
            graphdef, state = nnx.split(self.layers)

            def scan_fn(x, xs):
                layer_state, layer_in = xs
                return body(nnx.merge(graphdef, layer_state), x, layer_in)

            return jax.lax.scan(scan_fn, x, (state, per_layer))
        outs = []
        assert isinstance(self.layers, nnx.List)  # unscanned blocks are kept as a list
        for i, block in enumerate(self.layers):
            x, out = body(block, x, None if per_layer is None else per_layer[i])
            outs.append(out)
        return x, (None if per_layer is None else outs)

    def _embed(self, input_ids: Array) -> Array:
        return jnp.take(self.embed.value, input_ids, axis=0).astype(self.cfg.dtype)

    # ------------------------------------------------------------ full forward
    def hidden_states(
        self,
        input_ids: Array,
        attention_mask: Array | None = None,
        *,
        positions: Array | None = None,
        segment_ids: Array | None = None,
    ) -> Array:
        """Final-normed hidden states [B, T, hidden]. Use `logits()` on the rows you need."""
        b, t = input_ids.shape
        if attention_mask is None:
            attention_mask = jnp.ones((b, t), jnp.int32)
        if positions is None:
            positions = default_positions(attention_mask)
        cfg = self.cfg
        impl = resolve_attention_impl(cfg.attention_impl, t, cfg.attention_block)
        mask: Array | SegmentMask
        if impl == "dense":
            causal = jnp.tril(jnp.ones((t, t), bool))
            mask = causal[None] & attention_mask.astype(bool)[:, None, :]
            if segment_ids is not None:
                mask = mask & (segment_ids[:, :, None] == segment_ids[:, None, :])
        else:
            valid = attention_mask.astype(bool)
            seg = jnp.ones((b, t), jnp.int32) if segment_ids is None else segment_ids
            mask = SegmentMask(seg, valid, impl, cfg.attention_block)

        def fn(block, x, _, __):
            return block(x, positions, mask), None

        x, _ = self._run_layers(self._embed(input_ids), fn)
        return self.final_norm(x)

    def logits(self, hidden: Array) -> Array:
        dt = self.cfg.dtype
        if self.cfg.tie_word_embeddings:
            return hidden @ self.embed.value.astype(dt).T
        return hidden @ self.lm_head.value.astype(dt)

    def __call__(
        self,
        input_ids: Array,
        attention_mask: Array | None = None,
        *,
        positions: Array | None = None,
        segment_ids: Array | None = None,
    ) -> Array:
        """Logits [B, T, vocab]. Training should prefer `hidden_states` + chunked `logits`."""
        h = self.hidden_states(
            input_ids, attention_mask, positions=positions, segment_ids=segment_ids
        )
        return self.logits(h)

    # ------------------------------------------------------------ cached path
    def extend(self, input_ids: Array, cache: KVCache, cache_index: Array) -> tuple[Array, KVCache]:
        """Append `input_ids` [B, T] to each row's cache at its own offset `cache_index` [B].

        Rows keep their tokens in slots 0..len-1 with no holes, so slot = position and a query at
        slot s sees exactly the slots <= s. Right-padding in the chunk writes past the row's new
        length, where nothing can see it until a later write replaces it. Returns final-normed
        hidden states [B, T, hidden] and the updated cache.
        """
        t = input_ids.shape[1]
        slots = cache_index[:, None] + jnp.arange(t)[None, :]  # [B, T]
        mask = jnp.arange(cache.slots)[None, None, :] <= slots[:, :, None]  # [B, T, S]
        # Rotary tables for every slot, gathered by slot. The table depends on the cache size
        # only, so XLA hoists it out of the decode loop instead of recomputing sines and cosines
        # inside every layer's rotation. Padding past the cache end reads the last row: it only
        # has to be finite.
        table = rope_tables(jnp.arange(cache.slots)[None], self.cfg.head_dim, self.cfg.rope_theta)
        tables = tuple(jnp.take(a[0], slots, axis=0, mode="clip") for a in table)

        def fn(block, x, _, kv):
            x, k, v = block.extend(x, tables, mask, kv[0], kv[1], slots)
            return x, (k, v)

        x = self._embed(input_ids)
        if self.cfg.scan_layers:
            x, (k, v) = self._run_layers(x, fn, per_layer=(cache.k, cache.v))
            return self.final_norm(x), KVCache(k, v)
        x, kv = self._run_layers(x, fn, per_layer=list(zip(cache.k, cache.v, strict=True)))
        k, v = zip(*kv, strict=True)
        return self.final_norm(x), KVCache(tuple(k), tuple(v))


def is_lora_path(path: tuple) -> bool:
    """Whether a parameter path (as `nnx.to_flat_state` gives it) names an adapter matrix."""
    return str(path[-1]).endswith(("_lora_a", "_lora_b"))


def merge_lora(model: Decoder) -> Decoder:
    """The same function without adapters: every adapted W becomes W + (alpha / rank) · A B.

    What export writes (plain HF weights) and what a sampler may run to skip the adapter
    matmuls. A model without adapters comes back as is.
    """
    cfg = model.cfg
    if not cfg.lora_rank:
        return model
    flat = dict(nnx.to_flat_state(nnx.state(model)))
    scale, r = cfg.lora_alpha / cfg.lora_rank, cfg.lora_rank
    plain = dataclasses.replace(cfg, lora_rank=0)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Decoder(plain, rngs=nnx.Rngs(0))))
    for path, var in nnx.to_flat_state(state):
        w = flat[path].value
        *parent, name = path
        a_var = flat.get((*parent, f"{name}_lora_a"))
        if a_var is not None:
            a, b = a_var.value, flat[(*parent, f"{name}_lora_b")].value
            lead = a.ndim - (w.ndim - (b.ndim - 1)) - 1  # 1 for scanned layers, else 0
            a2 = a.reshape(*a.shape[:lead], -1, r).astype(jnp.float32)
            b2 = b.reshape(*b.shape[:lead], r, -1).astype(jnp.float32)
            w = (w.astype(jnp.float32) + scale * (a2 @ b2).reshape(w.shape)).astype(w.dtype)
        var.value = w
    return nnx.merge(graphdef, state)
