"""Read a GGUF file as an HF config plus HF-named, dequantized tensors.

The GGUF reader memory-maps the file; tensors are dequantized lazily, one at a time, when the
parameter loader asks for them. llama.cpp stores Llama q/k projections with the rotary halves
interleaved; `_unpermute` restores the HF rotate-half layout (Qwen2/Qwen3 files are not permuted).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from agemem_jax.models.safetensors_io import CheckpointError

ARCH = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}

# GGUF block tensor name -> HF name inside `model.layers.{i}.`
LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
TOP_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


class GGUFTensors:
    """`TensorSource` over a GGUF file, answering in HF tensor names."""

    def __init__(self, path: str | os.PathLike):
        import gguf

        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"{self.path}: file not found")
        try:
            self.reader = gguf.GGUFReader(self.path)
        except Exception as e:  # the reader raises assorted errors on corrupt files
            raise CheckpointError(f"{self.path}: not a readable GGUF file ({e})") from None
        self.arch_name = str(self._field("general.architecture"))
        if self.arch_name not in ARCH:
            raise CheckpointError(
                f"{self.path}: unknown architecture {self.arch_name!r}; supported: {sorted(ARCH)}"
            )
        self._tensors = {}
        for t in self.reader.tensors:
            hf = self._hf_name(t.name)
            if hf is not None:
                self._tensors[hf] = t

    def _field(self, key: str, default: Any = None) -> Any:
        f = self.reader.fields.get(key)
        if f is None:
            return default
        return f.contents()

    @staticmethod
    def _hf_name(name: str) -> str | None:
        if name in TOP_NAMES:
            return TOP_NAMES[name]
        if name.startswith("blk."):
            _, i, rest = name.split(".", 2)
            if rest in LAYER_NAMES:
                return f"model.layers.{i}.{LAYER_NAMES[rest]}"
        return None

    def hf_config(self) -> dict[str, Any]:
        a = self.arch_name
        n_heads = int(self._field(f"{a}.attention.head_count"))
        hidden = int(self._field(f"{a}.embedding_length"))
        embed = self._tensors["model.embed_tokens.weight"]
        cfg = {
            "architectures": [ARCH[a]],
            "vocab_size": int(self._field(f"{a}.vocab_size", embed.shape[-1])),
            "hidden_size": hidden,
            "intermediate_size": int(self._field(f"{a}.feed_forward_length")),
            "num_hidden_layers": int(self._field(f"{a}.block_count")),
            "num_attention_heads": n_heads,
            "num_key_value_heads": int(self._field(f"{a}.attention.head_count_kv", n_heads)),
            "head_dim": int(self._field(f"{a}.attention.key_length", hidden // n_heads)),
            "rope_theta": float(self._field(f"{a}.rope.freq_base", 10_000.0)),
            "rms_norm_eps": float(self._field(f"{a}.attention.layer_norm_rms_epsilon", 1e-6)),
            "max_position_embeddings": int(self._field(f"{a}.context_length", 32_768)),
            "tie_word_embeddings": "lm_head.weight" not in self._tensors,
            "bos_token_id": self._field("tokenizer.ggml.bos_token_id"),
            "eos_token_id": self._field("tokenizer.ggml.eos_token_id"),
        }
        if a == "llama" and "model.layers.0.self_attn.q_proj.bias" in self._tensors:
            cfg["attention_bias"] = True
        return cfg

    def keys(self) -> list[str]:
        return list(self._tensors)

    def source(self, key: str) -> str:
        return str(self.path)

    def get(self, key: str) -> np.ndarray:
        import gguf

        if key not in self._tensors:
            raise CheckpointError(f"{self.path}: tensor {key!r} not found")
        t = self._tensors[key]
        w = gguf.quants.dequantize(t.data, t.tensor_type)
        w = np.asarray(w, dtype=np.float32).reshape(tuple(int(s) for s in reversed(t.shape)))
        if self.arch_name == "llama":
            if key.endswith(("self_attn.q_proj.weight", "self_attn.q_proj.bias")):
                w = _unpermute(w, int(self._field("llama.attention.head_count")))
            elif key.endswith(("self_attn.k_proj.weight", "self_attn.k_proj.bias")):
                n_kv = self._field("llama.attention.head_count_kv")
                w = _unpermute(w, int(n_kv or self._field("llama.attention.head_count")))
        return w


def cache_root() -> Path:
    return Path(os.environ.get("AGEMEM_CACHE", Path.home() / ".cache" / "agemem_jax"))


def load_gguf_tokenizer(path: str | os.PathLike, use_cache: bool = True):
    """transformers rebuilds a fast tokenizer (and the chat template) from GGUF metadata.

    The rebuild takes seconds, so the result is kept as an HF tokenizer folder keyed by the
    file's identity and reloaded from there; the cache is written atomically (temp dir, rename).
    """
    from transformers import AutoTokenizer

    path = Path(path)
    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()
    cached = cache_root() / "tokenizers" / key[:16]
    if use_cache and (cached / "tokenizer.json").is_file():
        try:
            return AutoTokenizer.from_pretrained(str(cached))
        except Exception:  # a damaged cache entry is rebuilt, never trusted
            shutil.rmtree(cached, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    if use_cache:
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=cached.parent))
            tokenizer.save_pretrained(str(tmp))
            os.replace(tmp, cached)
        except OSError:  # read-only home or a concurrent writer: the cache is only an optimization
            shutil.rmtree(tmp, ignore_errors=True)
    return tokenizer
