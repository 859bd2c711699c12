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
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

Array = jax.Array

ARCHITECTURES = {
    # HF `architectures[0]` -> (qkv_bias, qk_norm)
    "Qwen2ForCausalLM": (True, False),
    "Qwen3ForCausalLM": (False, True),
    "LlamaForCausalLM": (False, False),
}

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

    def __post_init__(self):
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
        q = jnp.einsum("btd,dnh->btnh", x, self.q_proj.value.astype(dt))
        k = jnp.einsum("btd,dnh->btnh", x, self.k_proj.value.astype(dt))
        v = jnp.einsum("btd,dnh->btnh", x, self.v_proj.value.astype(dt))
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

    def _attend(self, q: Array, k: Array, v: Array, mask: Array) -> Array:
        """q [B,T,H,D], k/v [B,S,KV,D], mask [B,T,S] (True = visible) -> [B,T,D_model].

        Runs in the cache layout: transposing k and v ([B,S,KV,D], small) lets the scores come
        out of the matmul already in [B,KV,G,T,S] order; left to itself, XLA computed them
        transposed and moved every [T,S] score matrix in memory inside the mask fusion, which
        took longer than all the layer's matmuls together on CPU.
        """
        return self._attend_cached(q, k.transpose(0, 2, 3, 1), v.transpose(0, 2, 1, 3), mask)

    def __call__(self, x: Array, positions: Array, mask: Array) -> Array:
        q, k, v = self._project(x, positions)
        return self._attend(q, k, v, mask)

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
        return out @ self.o_proj.value.astype(self.cfg.dtype).reshape(h * hd, -1)

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


class MLP(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        d, f = cfg.hidden_size, cfg.intermediate_size
        init, pd = nnx.initializers.lecun_normal(), cfg.param_dtype
        self.gate_proj = _param(rngs, init, (d, f), ("embed", "mlp"), pd)
        self.up_proj = _param(rngs, init, (d, f), ("embed", "mlp"), pd)
        self.down_proj = _param(rngs, init, (f, d), ("mlp", "embed"), pd)
        self.dtype = cfg.dtype

    def __call__(self, x: Array) -> Array:
        dt = self.dtype
        gate = jax.nn.silu(x @ self.gate_proj.value.astype(dt))
        return (gate * (x @ self.up_proj.value.astype(dt))) @ self.down_proj.value.astype(dt)


class Block(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.input_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg=cfg, rngs=rngs)
        self.attn = Attention(cfg, rngs=rngs)
        self.post_attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg=cfg, rngs=rngs)
        self.mlp = MLP(cfg, rngs=rngs)

    def __call__(self, x: Array, positions: Array, mask: Array) -> Array:
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
            return fn(block, x, carry_extra, layer_in)

        if policy is not None:
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
        causal = jnp.tril(jnp.ones((t, t), bool))
        mask = causal[None] & attention_mask.astype(bool)[:, None, :]
        if segment_ids is not None:
            mask = mask & (segment_ids[:, :, None] == segment_ids[:, None, :])

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
