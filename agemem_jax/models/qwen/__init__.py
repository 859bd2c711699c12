"""The Qwen-family decoder (Qwen2/2.5, Qwen3, Llama-architecture) and its HF parameter mapping."""

from agemem_jax.models.qwen.model import Decoder, KVCache, ModelConfig

__all__ = ["Decoder", "KVCache", "ModelConfig"]
