"""HF <-> agemem_jax parameter mapping for the Qwen family, with streaming import and export.

Import walks the *abstract* model (shapes only, nothing allocated), pulls each HF tensor from a
reader one at a time, reshapes it to our layout, casts it, and places it straight into its target
sharding. Export walks the live model and yields HF-named numpy arrays in the inverse layout.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from agemem_jax import sharding as shd
from agemem_jax.models.qwen.model import (
    Decoder,
    ModelConfig,
    is_lora_path,
    lora_a_init,
    merge_lora,
)
from agemem_jax.models.safetensors_io import CheckpointError, iter_shards, save_file

Fn = Callable[[np.ndarray], np.ndarray]


class TensorSource(Protocol):
    def get(self, key: str) -> np.ndarray: ...
    def keys(self) -> list[str]: ...
    def source(self, key: str) -> str: ...


def _layer_map(cfg: ModelConfig) -> dict[tuple[str, ...], tuple[str, Fn, Fn]]:
    """Our path inside a block -> (HF name inside `model.layers.{i}.`, to ours, to HF)."""
    d, h, kv, hd = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim

    def ident(x):
        return x

    def t(x):
        return x.T

    def proj_in(n):  # HF [n*hd, d] <-> ours [d, n, hd]
        return (lambda w: w.T.reshape(d, n, hd)), (lambda p: p.reshape(d, n * hd).T)

    def bias(n):
        return (lambda b: b.reshape(n, hd)), (lambda p: p.reshape(n * hd))

    m: dict[tuple[str, ...], tuple[str, Fn, Fn]] = {
        ("input_norm", "scale"): ("input_layernorm.weight", ident, ident),
        ("post_attn_norm", "scale"): ("post_attention_layernorm.weight", ident, ident),
        ("attn", "q_proj"): ("self_attn.q_proj.weight", *proj_in(h)),
        ("attn", "k_proj"): ("self_attn.k_proj.weight", *proj_in(kv)),
        ("attn", "v_proj"): ("self_attn.v_proj.weight", *proj_in(kv)),
        ("attn", "o_proj"): (
            "self_attn.o_proj.weight",
            lambda w: w.T.reshape(h, hd, d),
            lambda p: p.reshape(h * hd, d).T,
        ),
        ("mlp", "gate_proj"): ("mlp.gate_proj.weight", t, t),
        ("mlp", "up_proj"): ("mlp.up_proj.weight", t, t),
        ("mlp", "down_proj"): ("mlp.down_proj.weight", t, t),
    }
    if cfg.qkv_bias:
        m[("attn", "q_bias")] = ("self_attn.q_proj.bias", *bias(h))
        m[("attn", "k_bias")] = ("self_attn.k_proj.bias", *bias(kv))
        m[("attn", "v_bias")] = ("self_attn.v_proj.bias", *bias(kv))
    if cfg.qk_norm:
        m[("attn", "q_norm", "scale")] = ("self_attn.q_norm.weight", ident, ident)
        m[("attn", "k_norm", "scale")] = ("self_attn.k_norm.weight", ident, ident)
    return m


def _top_map(cfg: ModelConfig) -> dict[tuple[str, ...], tuple[str, Fn, Fn]]:
    m = {
        ("embed",): ("model.embed_tokens.weight", lambda x: x, lambda x: x),
        ("final_norm", "scale"): ("model.norm.weight", lambda x: x, lambda x: x),
    }
    if not cfg.tie_word_embeddings:
        m[("lm_head",)] = ("lm_head.weight", lambda x: x.T, lambda x: x.T)
    return m


def _entries(cfg: ModelConfig, path: tuple) -> list[tuple[str, Fn, Fn]]:
    """HF tensors behind one of our param paths: one, or one per layer when layers are scanned."""
    path = tuple(str(p) for p in path)
    if path[0] != "layers":
        return [_top_map(cfg)[path]]
    lmap = _layer_map(cfg)
    if cfg.scan_layers:
        name, fwd, back = lmap[path[1:]]
        return [(f"model.layers.{i}.{name}", fwd, back) for i in range(cfg.num_layers)]
    name, fwd, back = lmap[path[2:]]
    return [(f"model.layers.{path[1]}.{name}", fwd, back)]


def abstract_model(cfg: ModelConfig) -> Decoder:
    return nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0)))


def load_into_model(
    cfg: ModelConfig,
    tensors: TensorSource,
    mesh: jax.sharding.Mesh | None = None,
    rules: shd.Rules | str = "train",
    seed: int = 0,
) -> Decoder:
    """Build a Decoder from HF-named tensors, one tensor in host memory at a time. Adapters
    (`cfg.lora_rank` > 0) start from `seed`: A random, B zero."""
    model = abstract_model(cfg)
    graphdef, state = nnx.split(model)
    rules = shd.rules_from(rules)
    dtype = jnp.dtype(cfg.param_dtype)
    lora_key = jax.random.key(seed)
    for i, (path, var) in enumerate(nnx.to_flat_state(state)):
        want = tuple(var.value.shape)
        if is_lora_path(path):
            # Adapters are not in the checkpoint: A random, B zero, so the model is the base.
            if str(path[-1]).endswith("_lora_b"):
                arr = np.zeros(want, dtype)
            else:
                lead = 1 if cfg.scan_layers else 0
                keys = jax.random.split(jax.random.fold_in(lora_key, i), max(1, lead * want[0]))
                arr = np.stack([np.asarray(lora_a_init(k, want[lead:], dtype)) for k in keys])
                arr = arr.reshape(want)
            _place(var, arr, mesh, rules, want)
            continue
        parts = []
        for key, fwd, _ in _entries(cfg, path):
            try:
                raw = tensors.get(key)
            except CheckpointError as e:
                raise CheckpointError(f"{e} (needed for {'/'.join(map(str, path))})") from None
            arr = fwd(np.asarray(raw))
            parts.append(arr)
        arr = np.stack(parts) if cfg.scan_layers and path[0] == "layers" else parts[0]
        if tuple(arr.shape) != want:
            key = _entries(cfg, path)[0][0]
            raise CheckpointError(
                f"{tensors.source(key)}: tensor {key!r} has shape {tuple(raw.shape)}, "
                f"which does not fit {'/'.join(map(str, path))} {want}"
            )
        _place(var, arr.astype(dtype), mesh, rules, want)
    return nnx.merge(graphdef, state)


def _place(var, arr: np.ndarray, mesh, rules, shape) -> None:
    if mesh is not None:
        var.value = jax.device_put(arr, shd.named_sharding(shd.param_axes(var), mesh, rules, shape))
    else:
        var.value = jnp.asarray(arr)


def iter_hf_tensors(model: Decoder) -> Iterator[tuple[str, np.ndarray]]:
    """HF-named host arrays of a model, in the inverse layout of `load_into_model`; adapters
    are merged into their projections first."""
    model = merge_lora(model)
    cfg = model.cfg
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        host = np.asarray(jax.device_get(var.value))
        entries = _entries(cfg, path)
        if cfg.scan_layers and path[0] == "layers":
            for i, (key, _, back) in enumerate(entries):
                yield key, np.ascontiguousarray(back(host[i]))
        else:
            key, _, back = entries[0]
            yield key, np.ascontiguousarray(back(host))


def save_hf(model: Decoder, out_dir: str | os.PathLike, max_shard_bytes: int = 2 << 30) -> None:
    """Write `config.json` and safetensors (with an index when sharded) that transformers loads."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shards = list(iter_shards(iter_hf_tensors(model), max_shard_bytes))
    if len(shards) == 1:
        save_file(shards[0], out / "model.safetensors")
    else:
        weight_map, total = {}, 0
        for i, shard in enumerate(shards):
            name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, out / name)
            weight_map.update({k: name for k in shard})
            total += sum(a.nbytes for a in shard.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (out / "config.json").write_text(json.dumps(model.cfg.to_hf(), indent=2))
